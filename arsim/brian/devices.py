"""Compiling and running networks: Brian2 cpp_standalone (default) or runtime.

A `Runner` takes named parameter arrays (``"proj0.w"``, ``"layer1.b"``,
``"layer1.tau"``, ``"input_values"``, ...) and returns named result arrays
(``"layer1.x"``, ``"monitor1.x"``, ...). Two implementations:

`StandaloneRunner`
    Compiles the network once with Brian2's cpp_standalone device into a
    build directory keyed by the `Topology` (and the Brian2/arsim
    versions), then runs the binary with ``run_args``-style command-line
    arguments for every call. It talks to the binary directly (the same
    ``name=static_arrays/file`` arguments Brian2 >= 2.6 writes), which lets
    several runs of one build proceed concurrently in separate results
    directories and lets one process hold several builds. The file names
    of Brian2's arrays are device-internal; they are read once at build
    time and stored in ``manifest.json``. `tests/test_devices.py` guards this
    against a Brian2 upgrade.
`RuntimeRunner`
    Builds the same objects under Brian2's runtime (numpy) target: slow,
    no compiler needed, for debugging.

Sizes of every array are checked here, because the standalone binary
silently ignores a wrong-size array (BRIAN2_NOTES.md).
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .. import __version__
from .network import Topology, build_network
from .blas import blas_library
from .cpp_projection import SHARED_COUNTERS
from .conv_projection import weight_count
from .neuron import run_time_terms
from ..rules import PLASTICITY_SCALARS

__all__ = ["Runner", "StandaloneRunner", "RuntimeRunner", "build_cache_dir", "get_runner", "BUILD_COUNTER"]

#: neuron variables replaced at run time (all but ``b`` are shared scalars)
RUNTIME_NEURON_PARAMETERS = ("b", "tau", "n_relax", "act_kind", "act_slope", "x_start", "lr", "batch_size", "learn_bias",
                             "err_gain", "signal_gain", "leak")
_INTEGER_PARAMETERS = ("n_relax", "act_kind", "batch_size")

#: number of compilations done by this process (tests count builds with it)
BUILD_COUNTER = {"compiled": 0}


def build_cache_dir() -> Path:
    """Directory of compiled builds (``$ARSIM_BUILD_DIR`` or the user cache)."""
    root = os.environ.get("ARSIM_BUILD_DIR")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "arsim" / "builds"


def run_files_dir() -> Path | None:
    """Where a run's input and result files go (``$ARSIM_RUN_DIR``, else ``/dev/shm``).

    The binary writes every array of the network at the end of a run (25 MB
    for a batch-parallel 784-300-300-100-10 build) and the files live only
    until they are read back: on a disk file system that cost 0.09 s of a
    0.25 s run (``arsim bench``), in RAM almost nothing. None (the build
    directory) where no RAM file system is writable. A run killed before it
    ends leaves its ``results_<build>_*`` directory there.
    """
    chosen = os.environ.get("ARSIM_RUN_DIR")
    if chosen:
        return Path(chosen)
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else None


#: the modules whose code ends up in the compiled network, relative to the package root
_MODEL_SOURCES = ("brian/*.py", "rules/*.py", "activations.py")


@functools.lru_cache(maxsize=None)
def _model_source_digest() -> str:
    """Digest of the modules that generate the network, as this process imported them.

    Part of the build key, so an edit to the model code (a new release or a
    development checkout) can never run a stale binary from the cache. It is
    taken once, at import: a long-running process that builds with the code
    it loaded must not file that build under the digest of files edited
    since.
    """
    here = Path(__file__).resolve().parent.parent  # the arsim package
    digest = hashlib.sha256()
    for pattern in _MODEL_SOURCES:
        for path in sorted(here.glob(pattern)):
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


_model_source_digest()


def _topology_hash(topo: Topology) -> str:
    import brian2

    key = {"topology": asdict(topo), "brian2": brian2.__version__, "arsim": __version__, "source": _model_source_digest()}
    # the binary links its CBLAS by absolute path (rpath)
    key["blas"] = blas_library(topo.blas).key
    payload = json.dumps(key, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _parameter_views(built):
    """Map parameter keys to the Brian2 objects that can be replaced per run."""
    views = {"input_values": built.input_values, "target_values": built.target_values}
    for group in (*built.layers, *built.controllers):
        for var in RUNTIME_NEURON_PARAMETERS:
            views[f"{group.name}.{var}"] = getattr(group, var)
    for group in built.layers:
        for var in built.rule_parameters:
            views[f"{group.name}.{var}"] = getattr(group, var)
    for syn in built.projections:
        for var in syn.variables:
            if var in ("w", "wb", *PLASTICITY_SCALARS):
                views[f"{syn.name}.{var}"] = getattr(syn, var)
    for group in built.noise_groups:
        views[f"{group.name}.v"] = group.v
    return views


def _result_variables(built):
    """Map result keys to Brian2 variables written by the binary."""
    out = {}
    for group in built.layers:
        for var in ("x", "xbar", "fp", "fb", "b", "mu"):
            if var in group.variables:
                out[f"{group.name}.{var}"] = group.variables[var]
    for group in built.controllers:
        out[f"{group.name}.x"] = group.variables["x"]
    for syn in built.projections:
        for var in ("w", "wb", *SHARED_COUNTERS):
            if var in syn.variables:
                out[f"{syn.name}.{var}"] = syn.variables[var]
    for mon in (*built.monitors.values(), *built.align_monitors.values()):
        out[f"{mon.name}.t"] = mon.variables["t"]
        out[f"{mon.name}.N"] = mon.variables["N"]
        for var in mon.record_variables:
            out[f"{mon.name}.{var}"] = mon.variables[var]
    return out


def parameter_sizes(topo: Topology) -> dict:
    """Number of elements of every run-time parameter of ``topo``."""
    sizes = {
        "input_values": topo.samples_per_run * topo.sizes[0],
        "target_values": topo.samples_per_run * topo.sizes[-1],
    }
    rule = topo.make_rule()
    for index, size in enumerate(topo.sizes):
        for var in RUNTIME_NEURON_PARAMETERS:
            sizes[f"layer{index}.{var}"] = topo.copies * size if var == "b" else 1
        for var in run_time_terms(rule.neuron_terms(), rule.stochastic):
            sizes[f"layer{index}.{var}"] = 1
    n_layers = topo.n_layers
    if rule.controllers:
        for index in range(2, n_layers + 1):
            for var in RUNTIME_NEURON_PARAMETERS:
                sizes[f"ctrl{index}.{var}"] = topo.copies * topo.sizes[index] if var == "b" else 1
    if rule.error_units == "connected":
        for index in range(1, n_layers):
            sizes[f"err{index}.w"] = topo.sizes[index] ** 2
    for index in range(n_layers):
        sizes[f"proj{index}.w"] = weight_count(topo.ops[index]) if topo.ops else topo.sizes[index] * topo.sizes[index + 1]
        if topo.train and topo.projection == "dense":
            for name in PLASTICITY_SCALARS:
                sizes[f"proj{index}.{name}"] = 1
        holder = rule.backward_holder(index, n_layers)
        if holder is not None:
            sizes[f"{holder}.wb"] = (sizes[f"proj{index}.w"] if topo.ops and not rule.direct
                                     else topo.sizes[index] * topo.sizes[rule.feedback_source(index, n_layers)])
        if topo.train and rule.mirror and holder == f"proj{index}" and index >= 1:
            steps, samples = rule.mirror_shape()
            sizes[f"mirror{index}.v"] = max(1, topo.n_batches) * steps * samples * topo.sizes[index]
    return sizes


class Runner:
    """Common interface: ``run(params) -> results`` for one `Topology`."""

    topology: Topology

    def parameter_sizes(self) -> dict:
        """Expected number of elements of every parameter."""
        return parameter_sizes(self.topology)

    def check_params(self, params: dict) -> dict:
        """Return float64 copies of ``params``, raising ValueError on a wrong key or size."""
        sizes = self.parameter_sizes()
        checked = {}
        rule = self.topology.make_rule()
        integers = set(_INTEGER_PARAMETERS) | {k for k, kind in run_time_terms(rule.neuron_terms(), rule.stochastic).items()
                                                if kind == "integer"}
        for key, value in params.items():
            if key not in sizes:
                raise ValueError(f"unknown network parameter {key!r}; known: {', '.join(sorted(sizes))}")
            integer = key.split(".")[-1] in integers
            array = np.asarray(value, dtype=np.int64 if integer else np.float64)
            if array.size != sizes[key]:
                raise ValueError(f"parameter {key!r} has {array.size} elements; the network needs {sizes[key]}")
            checked[key] = array
        return checked

    def run(self, params: dict) -> dict:
        raise NotImplementedError


def _reshape_results(topo: Topology, raw: dict) -> dict:
    """Give monitor arrays their (time, unit) shape, and float32 results float64 (exact) like every arsim result."""
    results = {}
    for key, value in raw.items():
        if value.dtype == np.float32:
            value = value.astype(np.float64)
        name, var = key.split(".", 1)
        if name.startswith("monitor") and var not in ("t", "N"):
            layer = int(name[len("monitor"):])
            value = value.reshape(-1, topo.copies * topo.sizes[layer])  # copy c: columns c*n .. c*n + n - 1
        elif name.startswith("alignb") and var not in ("t", "N"):
            value = value.reshape(-1, topo.sizes[int(name[len("alignb"):])])
        elif name.startswith("align") and var not in ("t", "N"):
            index = int(name[len("align"):])
            value = value.reshape(-1, weight_count(topo.ops[index]) if topo.ops else topo.sizes[index] * topo.sizes[index + 1])
        results[key] = value
    return results


#: the headers every generated source file includes, compiled once per build (`_make`)
_PRECOMPILED_HEADER = """#ifndef ARSIM_PRECOMPILED_HEADER
#define ARSIM_PRECOMPILED_HEADER
#include "objects.h"
#include "brianlib/common_math.h"
#include "brianlib/stdint_compat.h"
#include <climits>
#include <cmath>
#include <ctime>
#include <fstream>
#include <iostream>
#include <random>
#include <string>
#include <vector>
#endif
"""


def _make(directory: Path) -> None:
    """Compile a generated standalone project: Brian2's makefile, with its common headers precompiled.

    Every one of a build's ~30 source files spends most of its compile time
    parsing the same standard headers; GCC's precompiled header (forced in
    first with ``-include``) parses them once, which halves the make time of
    a small network (measured: 13.5 s -> 7.5 s at ``make -j2``). It reads the
    compiler flags from the ``OPTIMISATIONS`` line of Brian2's makefile (the
    same in brian2 2.9-2.11, guarded by ``tests/test_brian_internals.py``) so
    the header is compiled with exactly the flags of the sources; GCC checks
    that and includes the header textually where it does not match, so the
    binary is the same either way. Without a usable header (another
    compiler, or a makefile of another shape) it is Brian2's plain ``make``.
    """
    from brian2 import prefs

    make = [*shlex.split(prefs.devices.cpp_standalone.make_cmd_unix), *prefs.devices.cpp_standalone.extra_make_args_unix]
    makefile = (directory / "makefile").read_text()
    flags = re.search(r"^OPTIMISATIONS = (.*)$", makefile, re.MULTILINE)
    compiler = os.environ.get("CXX", "g++")
    if flags is not None:
        (directory / "arsim_pch.h").write_text(_PRECOMPILED_HEADER)
        header = subprocess.run(f"{compiler} -x c++-header -c -Wno-write-strings {flags.group(1)} -I. arsim_pch.h"
                                " -o arsim_pch.h.gch", shell=True, cwd=directory, capture_output=True, text=True)
        if header.returncode == 0:
            make.append(f"OPTIMISATIONS={flags.group(1)} -include arsim_pch.h")
    proc = subprocess.run(make, cwd=directory, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"compiling the standalone network in {directory} failed: {proc.stderr.strip()[-2000:]}")


class StandaloneRunner(Runner):
    """Run a compiled cpp_standalone build of ``topology``.

    Parameters
    ----------
    topology : Topology
        The network's build key.
    cache_dir : path, optional
        Root of build directories (default `build_cache_dir`).
    """

    def __init__(self, topology: Topology, cache_dir: str | os.PathLike | None = None):
        self.topology = topology
        root = Path(cache_dir) if cache_dir is not None else build_cache_dir()
        self.directory = root / _topology_hash(topology)
        self.compile_seconds = 0.0
        self.manifest = self._ensure_built()

    def _ensure_built(self) -> dict:
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.directory.parent / (self.directory.name + ".lock")
        with open(lock_path, "w") as lock:
            # one compiler per build directory; concurrent users wait for it
            fcntl.flock(lock, fcntl.LOCK_EX)
            manifest_path = self.directory / "manifest.json"
            if manifest_path.exists():
                return json.loads(manifest_path.read_text())
            started = time.perf_counter()
            manifest = self._compile()
            self.compile_seconds = time.perf_counter() - started
            manifest["compile_seconds"] = self.compile_seconds
            tmp = manifest_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(manifest, indent=1))
            os.replace(tmp, manifest_path)
            return manifest

    def _compile(self) -> dict:
        from brian2 import device, prefs, second, set_device
        from brian2.devices.device import reset_device

        if self.directory.exists():
            shutil.rmtree(self.directory)  # a half-finished earlier build
        prefs.reset_to_defaults()
        # Brian2's default "make -j" starts a compiler for every source file at
        # once (dozens of processes on a 2-core machine, and several builds
        # may run side by side): cap the jobs at the core count
        prefs.devices.cpp_standalone.extra_make_args_unix = [f"-j{os.cpu_count() or 1}"]
        set_device("cpp_standalone", build_on_run=False, directory=str(self.directory))
        try:
            built = build_network(self.topology)
            built.network.run(built.duration * second)
            views = _parameter_views(built)
            params = {}
            for key, view in views.items():
                if key in ("input_values", "target_values"):
                    params[key] = {"arg": f"{view.name}.values", "dtype": str(np.asarray(view.values).dtype)}
                else:
                    params[key] = {"arg": f"{view.group_name}.{view.name}", "dtype": str(np.dtype(view.dtype))}
            outputs = {
                key: {"file": device.get_array_filename(var), "dtype": str(np.dtype(var.dtype))}
                for key, var in _result_variables(built).items()
            }
            device.build(directory=str(self.directory), compile=False, run=False, with_output=False)
            _make(self.directory)
            BUILD_COUNTER["compiled"] += 1
        finally:
            device.reinit()
            reset_device("runtime")
        return {"topology": asdict(self.topology), "params": params, "outputs": outputs}


    def run(self, params: dict, keep_results: bool = False) -> dict:
        """Run the binary once with ``params``; return every result array."""
        checked = self.check_params(params)
        # inputs go into this run's own directory: concurrent runs of one build
        # (sweep workers, parallel trainings) can never delete each other's files
        results_dir = Path(tempfile.mkdtemp(prefix=f"results_{self.directory.name}_", dir=run_files_dir() or self.directory))
        args = ["--results_dir", str(results_dir) + os.sep]
        try:
            for key, value in checked.items():
                spec = self.manifest["params"][key]
                value = value.astype(spec["dtype"])
                if value.size == 1 and key not in ("input_values", "target_values"):
                    args.append(f"{spec['arg']}={value.item()!r}")
                    continue
                path = results_dir / f"arsim_input_{key}.dat"
                value.tofile(path)
                args.append(f"{spec['arg']}={path}")
            env = dict(os.environ)
            if self.topology.blas != "mkl":
                # as Brian2's own runs: symbols bound at start-up, not lazily in the timed steps; MKL's
                # dispatcher libraries resolve each other lazily and refuse to load when bound at once
                env["LD_BIND_NOW"] = "1"
            # one BLAS thread unless the user asks for more: on shared cores
            # OpenBLAS's workers spin at a barrier inside every ~0.1 ms dgemm of
            # a batch-parallel step while their partner is descheduled (bench)
            env.setdefault(blas_library(self.topology.blas).threads_variable, "1")
            proc = subprocess.run(["./main", *args], cwd=self.directory, env=env, capture_output=True, text=True)
            if proc.returncode != 0 or "Error" in proc.stderr:
                raise RuntimeError(
                    f"standalone run failed in {self.directory} (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}"
                )
            raw = {}
            for key, spec in self.manifest["outputs"].items():
                path = results_dir / spec["file"]
                if not path.exists():  # a result the binary did not write is an error, never an empty array
                    raise RuntimeError(f"standalone run in {self.directory} wrote no {spec['file']} (result {key})")
                raw[key] = np.fromfile(path, dtype=spec["dtype"])
            return _reshape_results(self.topology, raw)
        finally:
            if not keep_results:
                shutil.rmtree(results_dir, ignore_errors=True)


class RuntimeRunner(Runner):
    """Run the same network with Brian2's runtime (numpy) target, for debugging."""

    def __init__(self, topology: Topology):
        self.topology = topology
        self.compile_seconds = 0.0

    def run(self, params: dict) -> dict:
        from brian2 import TimedArray, prefs, second
        from brian2.devices.device import reset_device

        checked = self.check_params(params)
        reset_device("runtime")
        prefs.reset_to_defaults()
        prefs.codegen.target = "numpy"
        built = build_network(self.topology)
        for key, value in checked.items():
            if key in ("input_values", "target_values"):
                old = getattr(built, key)
                new = TimedArray(value.reshape(old.values.shape), dt=old.dt * second, name=key)
                for group in built.layers:
                    group.namespace[key] = new
                continue
            obj_name, var = key.split(".")
            obj = next(o for o in (*built.layers, *built.controllers, *built.projections, *built.noise_groups) if o.name == obj_name)
            if obj.variables[var].dim == second.dim:  # tau and a rule's time constants: values in seconds
                setattr(obj, var, value.item() * second)
            else:
                setattr(obj, var, value if value.size > 1 else value.item())
        built.network.run(built.duration * second)
        raw = {}
        for key, var in _result_variables(built).items():
            raw[key] = np.asarray(var.get_value()).ravel().copy()
        return _reshape_results(self.topology, raw)


def get_runner(topology: Topology, device: str = "cpp", cache_dir=None) -> Runner:
    """Return a runner for ``device`` (``"cpp"`` standalone or ``"runtime"``)."""
    if device == "cpp":
        return StandaloneRunner(topology, cache_dir=cache_dir)
    if device == "runtime":
        return RuntimeRunner(topology)
    raise ValueError(f"device = {device!r}; expected 'cpp' or 'runtime'")
