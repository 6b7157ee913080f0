"""Parameter sweeps: grid expansion, compile-once scheduling, engines.

A sweep is a list of points, each a fully resolved config
(`arsim.config.resolve`), run by one *command* of the registry `COMMANDS`:
``relax`` (the relaxation of `arsim relax`), ``train`` (`arsim.experiment.train`,
to pick hyper-parameters) or ``sxl`` (the Song-Xu-Lafferty study, numpy
only, no build). The whole grid is expanded and validated before anything
is built, so an unknown key or a value of the wrong type stops the sweep
with one line and no compilation.

Compile once
    Points are grouped by their build key (the `arsim.brian.network.Topology`
    without the step budget). Each group is compiled once, for the largest
    number of relaxation steps in the group; every point then passes its own
    parameters (weights, tau, dt, its number of steps, ...) as run-time
    arguments of that one binary. Each free worker gets a point of a
    finished build if there is one, else the next build.

Workers
    A build is compiled once into the shared build cache (under its lock);
    every worker process (or thread) then runs from that one directory,
    which is safe because `arsim.brian.devices` gives every run its own
    directory for inputs and results.

Engines
    ``inline`` (``--jobs 1``: the coordinating process runs everything),
    ``local`` (a process pool) and ``dask`` (a dask.distributed cluster, or a
    LocalCluster when no scheduler is given). In every engine only the
    coordinating process writes the results store.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import itertools
import math
import os
import re
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable

import numpy as np

from .. import __version__
from ..config import SCHEMA, ConfigError, _flatten, n_relax_steps, parse_override, resolve
from ..spec import Experiment
from .store import Store, point_hash

__all__ = [
    "DERIVED_KEYS",
    "Command",
    "COMMANDS",
    "SweepPoint",
    "SweepPlan",
    "SweepReport",
    "split_values",
    "parse_axis",
    "plan_sweep",
    "derived_values",
    "record_values",
    "parse_where",
    "select",
    "compile_build",
    "run_point",
    "check_engine",
    "make_engine",
    "run_sweep",
]


# ---------------------------------------------------------------------------
# derived keys: grid coordinates that are not model keys


@dataclass(frozen=True)
class DerivedKey:
    """A sweep coordinate that sets model keys (``depth`` sets ``sizes``, ...).

    Attributes
    ----------
    kind : type
        ``int`` or ``float``.
    minimum : number
        Smallest accepted value (exclusive for floats, inclusive for ints).
    sets : tuple of str
        Model keys it determines (giving both is an error).
    doc : str
        Meaning, for docs and errors.
    """

    kind: type
    minimum: float
    sets: tuple
    doc: str

    def check(self, name: str, value, source: str):
        """Return ``value`` converted, or raise a one-line `ConfigError`."""
        if self.kind is int:
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"{source}: {name} = {value!r} has the wrong type; expected an integer")
            if value < self.minimum:
                raise ConfigError(f"{source}: {name} = {value!r} is out of range; expected an integer >= {self.minimum}")
            return value
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"{source}: {name} = {value!r} has the wrong type; expected a number")
        if not (value > self.minimum and math.isfinite(value)):
            raise ConfigError(f"{source}: {name} = {value!r} is out of range; expected a finite number > {self.minimum}")
        return float(value)


DERIVED_KEYS: dict[str, DerivedKey] = {
    "depth": DerivedKey(int, 1, ("sizes",), "number of weight layers L: sizes = [n_0] + [width] * (L - 1) + [n_L] (n_0, n_L from the model or --set sizes)"),
    "width": DerivedKey(int, 1, ("sizes",), "size of every hidden layer (with depth; default: the model's hidden size)"),
    "eta": DerivedKey(float, 0.0, ("dt",), "dt / tau: sets dt = eta * tau"),
    "steps": DerivedKey(int, 1, ("duration",), "relaxation steps: sets duration = steps * dt"),
}


def _round15(value: float) -> float:
    # eta * tau = 0.3 * 10 gives 3.0000000000000004; stored configs read better
    # (and eta = dt / tau is recovered exactly) at 15 significant digits
    return float(f"{value:.15g}")


def _apply_derived(raw: dict, derived: dict, source: str) -> dict:
    """Set the model keys of the derived coordinates in ``raw`` (a flat dict)."""
    raw = dict(raw)
    if "depth" in derived or "width" in derived:
        sizes = raw.get("sizes")
        if not (isinstance(sizes, list) and len(sizes) >= 2):
            raise ConfigError(f"{source}: depth/width need sizes = [n_0, ..., n_L] in the model for the input and output sizes")
        depth = derived.get("depth", len(sizes) - 1)
        width = derived.get("width")
        if width is None and depth > 1:
            hidden = sizes[1:-1]
            if not hidden or len(set(hidden)) != 1:
                raise ConfigError(
                    f"{source}: depth = {depth} needs width (the model's hidden sizes {hidden} are not one width);"
                    " expected --set width=N or --grid width=..."
                )
            width = hidden[0]
        raw["sizes"] = [sizes[0], *([width] * (depth - 1)), sizes[-1]]
    if "eta" in derived:
        tau = raw.get("tau", SCHEMA["tau"].default)
        if isinstance(tau, (int, float)) and not isinstance(tau, bool):
            raw["dt"] = _round15(derived["eta"] * tau)
    if "steps" in derived:
        dt = raw.get("dt", SCHEMA["dt"].default)
        if isinstance(dt, (int, float)) and not isinstance(dt, bool):
            raw["duration"] = _round15(derived["steps"] * dt)
    return raw


def derived_values(config: dict) -> dict:
    """The derived coordinates of a resolved config (``width`` None if hidden sizes differ)."""
    sizes = config["sizes"]
    hidden = sizes[1:-1]
    return {
        "depth": len(sizes) - 1,
        "width": hidden[0] if hidden and len(set(hidden)) == 1 else None,
        "eta": config["dt"] / config["tau"],
        "steps": n_relax_steps(config),
    }


# ---------------------------------------------------------------------------
# commands: what a point runs


@dataclass(frozen=True)
class Command:
    """A sweepable command.

    Attributes
    ----------
    Every callable takes the point as an `arsim.spec.Experiment` (the
    point's resolved config, typed once).

    shape : callable
        ``shape(experiment)``: the build key without the step budget (hashable);
        points with equal shapes share one build. None: the point needs no
        build (numpy only); it runs at once, with ``runner = None``.
    budget : callable
        ``budget(experiment)``: relaxation steps the point needs.
    topology : callable
        ``topology(shape, max_budget)``: the `Topology` compiled for a group.
    run : callable
        ``run(experiment, runner, want_arrays) -> dict`` with ``layers`` (list of
        per-layer metric dicts), ``summary`` (numeric metrics), ``arrays``
        (dict or None) and ``run_seconds`` (simulation time); optionally
        ``compile_seconds`` (time the run spent compiling a build itself). A
        FloatingPointError (NaN/Inf) is recorded as status ``diverged``.
    check : callable, optional
        ``check(experiment, source)``: what `arsim.config.resolve` cannot check
        for this command; raises a one-line `ConfigError` while the sweep is
        planned, before anything runs.
    columns : tuple of str
        Summary metrics ``arsim results`` prints for this command (empty:
        relax's per-layer table).
    """

    shape: Callable[[Experiment], Hashable | None]
    budget: Callable[[Experiment], int]
    topology: Callable[[Hashable, int], Any]
    run: Callable[[Experiment, Any, bool], dict]
    check: Callable[[Experiment, str], None] | None = None
    columns: tuple = ()


def _relax_shape(experiment: Experiment):
    from ..brian.network import topology_for

    return topology_for(experiment, max_relax=0)


def _steps(experiment: Experiment) -> int:
    return experiment.network.n_relax_steps


def _relax_run(experiment: Experiment, runner, want_arrays: bool) -> dict:
    from ..relax import run_relaxation

    result = run_relaxation(experiment, runner=runner)
    layers = [dict(row) for row in result.layers]
    hidden = [row for row in layers if row["role"] == "hidden"] or layers
    summary = {
        "n_layers": len(layers),
        # the slowest hidden layer (the deepest below the output) sets the
        # time the whole network needs
        "t_conv_max_tau": max(row["t_conv_tau"] for row in hidden),
        "x_rel_error_max": max(row["x_rel_error"] for row in hidden),
        "dW_cosine_min": min(row["dW_cosine"] for row in layers),
    }
    return {
        "layers": layers,
        "summary": summary,
        "arrays": result.arrays() if want_arrays else None,
        "run_seconds": result.run_seconds,
    }


def _no_build(experiment: Experiment):
    return None


def _sxl_check(experiment: Experiment, source: str) -> None:
    from ..studies.song_xu_lafferty import check_config

    check_config(experiment.config, source)


def _sxl_run(experiment: Experiment, runner, want_arrays: bool) -> dict:
    """The Song-Xu-Lafferty study (numpy; `arsim.studies.song_xu_lafferty`, which types its own keys)."""
    from ..studies.song_xu_lafferty import run_config

    _, result, summary = run_config(experiment.config)
    arrays = None
    if want_arrays:
        arrays = {"step": result.step, "loss": result.loss, "alignment": result.alignment}
    return {"layers": [], "summary": summary, "arrays": arrays, "run_seconds": result.seconds}


#: samples per standalone run of a training point (experiment.train's max_run_samples)
TRAIN_RUN_SAMPLES = 1024


@functools.lru_cache(maxsize=256)
def _n_train(data, seed: int, n_in: int, n_out: int, batch: int) -> int:
    from ..experiment import checked_dataset

    # checked_dataset also checks the data against sizes and the batch size (one-line ConfigError)
    return checked_dataset(data, seed, (n_in, n_out), batch).n_train


def _train_shape(experiment: Experiment):
    """The build `experiment.train` uses for ``experiment`` (None for a rule without one, e.g. bp)."""
    from ..training import chunk_batches, train_topology

    if not experiment.rule.simulated:
        return None
    batch = experiment.training.batch_size
    sizes = experiment.network.sizes
    n_train = _n_train(experiment.data, experiment.seed, sizes[0], sizes[-1], batch)
    # the topology experiment.train builds itself (its chunking, the experiment's own step budget):
    # the sweep compiles it once, and train finds it in the build cache
    return train_topology(experiment, chunk_batches(n_train // batch, batch, TRAIN_RUN_SAMPLES) * batch)


_BUILD_ENV_LOCK = threading.Lock()
_BUILD_ENV_USERS = [0, None]  # runs inside _build_dir_env, the variable's value before the first


@contextlib.contextmanager
def _build_dir_env(runner):
    """Point ``$ARSIM_BUILD_DIR`` at ``runner``'s build root while a training runs.

    `experiment.train` takes no runner; it builds its own from the build
    cache that ``$ARSIM_BUILD_DIR`` names. Setting it to the root the sweep
    compiled into (``--build-dir``) makes it find that build. Every point of
    a sweep has the same root, so concurrent threads agree on the value; the
    old value comes back when the last of them is done.
    """
    if runner is None:
        yield
        return
    with _BUILD_ENV_LOCK:
        if _BUILD_ENV_USERS[0] == 0:
            _BUILD_ENV_USERS[1] = os.environ.get("ARSIM_BUILD_DIR")
        _BUILD_ENV_USERS[0] += 1
        os.environ["ARSIM_BUILD_DIR"] = str(runner.directory.parent)
    try:
        yield
    finally:
        with _BUILD_ENV_LOCK:
            _BUILD_ENV_USERS[0] -= 1
            if _BUILD_ENV_USERS[0] == 0:
                if _BUILD_ENV_USERS[1] is None:
                    os.environ.pop("ARSIM_BUILD_DIR", None)
                else:
                    os.environ["ARSIM_BUILD_DIR"] = _BUILD_ENV_USERS[1]


def _train_run(experiment: Experiment, runner, want_arrays: bool) -> dict:
    """Train the point (`arsim.experiment.train`) in a temporary directory.

    Summary: the final ``test_accuracy``, ``train_loss``, ``train_accuracy``
    and ``test_loss``, the ``best_test_accuracy`` over the trained epochs and
    its ``best_epoch``, ``epochs``, ``train_seconds`` and
    ``samples_per_second``. One ``layers`` row per epoch (``layer`` = epoch,
    0 = untrained) with the metric row of ``metrics.csv``; arrays: those
    columns by epoch plus the final weights ``W{l}``, ``b{l}``, ``B{l}``.
    """
    import tempfile

    from ..brian.devices import BUILD_COUNTER
    from ..experiment import train

    compiled_before = BUILD_COUNTER["compiled"]
    with tempfile.TemporaryDirectory(prefix="arsim_sweep_train_") as out_dir, _build_dir_env(runner):
        result = train(experiment, out_dir, progress=False, max_run_samples=TRAIN_RUN_SAMPLES)
    rows = [dict(row) for row in result.rows]
    trained = rows[1:] or rows
    best = max(trained, key=lambda row: row["test_accuracy"])
    final = rows[-1]
    summary = {
        "test_accuracy": final["test_accuracy"],
        "train_loss": final["train_loss"],
        "train_accuracy": final["train_accuracy"],
        "test_loss": final["test_loss"],
        "best_test_accuracy": best["test_accuracy"],
        "best_epoch": best["epoch"],
        "epochs": final["epoch"],
        "train_seconds": result.train_seconds,
        "samples_per_second": result.samples_per_second,
    }
    arrays = None
    if want_arrays:
        columns = {key: np.array([row.get(key, np.nan) for row in rows]) for key in rows[0]}
        arrays = {**columns, **result.params.arrays()}
    return {
        "layers": [{"layer": row["epoch"], **row} for row in rows],
        "summary": summary,
        "arrays": arrays,
        "run_seconds": result.train_seconds,
        # a build the sweep did not compile (its topology differs from train's own): count it
        "compile_seconds": result.compile_seconds if BUILD_COUNTER["compiled"] > compiled_before else 0.0,
    }


#: sweepable commands by name
COMMANDS: dict[str, Command] = {
    "relax": Command(
        shape=_relax_shape,
        budget=_steps,
        topology=lambda shape, steps: dataclasses.replace(shape, max_relax=steps),
        run=_relax_run,
    ),
    # training runs compile the build experiment.train itself uses (its own step budget): points that
    # differ in run-time keys (train.lr, seed, ...) share it; the bp rule needs no build
    "train": Command(
        shape=_train_shape, budget=_steps, topology=lambda shape, steps: shape, run=_train_run,
        columns=("test_accuracy", "best_test_accuracy", "train_accuracy", "train_loss", "epochs"),
    ),
    # the Song-Xu-Lafferty study: numpy only, no build
    "sxl": Command(
        shape=_no_build, budget=lambda experiment: 0, topology=lambda shape, steps: None, run=_sxl_run, check=_sxl_check,
        columns=("n_steps", "final_mse", "alignment", "loss_decay_rate"),
    ),
}


# ---------------------------------------------------------------------------
# grid syntax and expansion


def split_values(text: str) -> list:
    """Split ``text`` at the commas outside brackets and quotes.

    ``"1,2"`` -> ``["1", "2"]``; ``"[4,3,2],[8,2]"`` -> ``["[4,3,2]", "[8,2]"]``.
    """
    items, current, depth, quote = [], [], 0, None
    escaped = False
    for ch in text:
        if quote:
            current.append(ch)
            if escaped:
                escaped = False
            elif ch == "\\" and quote == '"':
                escaped = True
            elif ch == quote:
                quote = None
            continue
        if ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    items.append("".join(current).strip())
    return items


def parse_axis(text: str, option: str = "--grid") -> tuple:
    """Parse ``key=v1,v2,...`` into ``(key, [values])`` (values as TOML literals or bare words)."""
    if "=" not in text:
        raise ConfigError(f"{option} {text!r}: expected key=value1,value2,...")
    key, values_text = (part.strip() for part in text.split("=", 1))
    _check_key(key, option)
    items = split_values(values_text)
    if any(item == "" for item in items):
        raise ConfigError(f"{option} {text!r}: empty value; expected key=value1,value2,... (lists as [a, b])")
    return key, [parse_override(f"{key}={item}")[1] for item in items]


def _check_key(key: str, option: str) -> None:
    if key not in SCHEMA and key not in DERIVED_KEYS:
        raise ConfigError(
            f"{option} {key}: unknown key; accepted keys: {', '.join(SCHEMA)}; derived keys: {', '.join(DERIVED_KEYS)}"
        )


@dataclass
class SweepPoint:
    """One point: its swept values, resolved config and content hash."""

    values: dict
    config: dict
    hash: str

    @property
    def experiment(self) -> Experiment:
        """The point typed (what the command's callables take)."""
        return Experiment.from_config(self.config)


@dataclass
class SweepPlan:
    """The validated points of a sweep (duplicates merged)."""

    command: str
    model: str
    points: list
    duplicates: int = 0

    def groups(self, points=None) -> dict:
        """Map each build `Topology` to its points (all points by default); None holds those without a build."""
        command = COMMANDS[self.command]
        by_shape = collections.defaultdict(list)
        for point in self.points if points is None else points:
            by_shape[command.shape(point.experiment)].append(point)
        return {
            (None if shape is None else command.topology(shape, max(command.budget(p.experiment) for p in group))): group
            for shape, group in by_shape.items()
        }


def _read_model(path) -> dict:
    import tomllib

    path = Path(path)
    try:
        return _flatten(tomllib.loads(path.read_text()))
    except FileNotFoundError:
        raise ConfigError(f"{path}: model file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory; expected a model file") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None


def plan_sweep(
    model,
    grid=(),
    zipped=(),
    sets=(),
    repeat: int = 1,
    command: str = "relax",
) -> SweepPlan:
    """Expand and validate a sweep; nothing is built.

    Parameters
    ----------
    model : path
        Model file (TOML).
    grid : list of str
        ``key=v1,v2,...``: axes of a cartesian product, in the given order.
    zipped : list of str
        ``key=v1,v2,...`` of equal lengths, iterated together as one more
        axis (after the grid axes).
    sets : list of str
        ``key=value`` overrides of every point (model or derived keys).
    repeat : int
        Run every point with seeds ``seed, seed + 1, ..., seed + repeat - 1``.
    command : str
        A key of `COMMANDS`.

    Returns
    -------
    SweepPlan

    Raises
    ------
    ConfigError
        On an unknown key or command, a key given twice, conflicting keys,
        zipped axes of unequal length, or any point that does not resolve.
    """
    if command not in COMMANDS:
        raise ConfigError(f"--command {command}: unknown; expected one of {', '.join(COMMANDS)}")
    if not isinstance(repeat, int) or repeat < 1:
        raise ConfigError(f"--repeat {repeat!r}: expected an integer >= 1")
    base = _read_model(model)
    fixed = {}
    for text in sets:
        key, value = parse_override(text)
        _check_key(key, "--set")
        fixed[key] = value
    axes = [parse_axis(text, "--grid") for text in grid]
    zip_axes = [parse_axis(text, "--zip") for text in zipped]
    given = [("--set", k) for k in fixed] + [("--grid", k) for k, _ in axes] + [("--zip", k) for k, _ in zip_axes]
    seen = {}
    for option, key in given:
        if key in seen:
            raise ConfigError(f"{option} {key}: {key} is already given by {seen[key]}; give each key once")
        seen[key] = option
    if repeat > 1 and seen.get("seed", "--set") != "--set":
        raise ConfigError(f"--repeat {repeat} and {seen['seed']} seed: both set the seed; use one of them")
    for name, spec in DERIVED_KEYS.items():
        for target in spec.sets:
            if name not in seen or target not in seen:
                continue
            if target == "sizes" and seen[target] == "--set":
                continue  # --set sizes is the template: depth and width keep its first and last sizes
            raise ConfigError(f"{seen[name]} {name} and {seen[target]} {target}: {name} sets {target}; give one of them")
    if zip_axes and len({len(values) for _, values in zip_axes}) != 1:
        lengths = ", ".join(f"{k}: {len(v)}" for k, v in zip_axes)
        raise ConfigError(f"--zip: the zipped keys need equal numbers of values ({lengths})")

    for key, value in fixed.items():
        if key in DERIVED_KEYS:
            fixed[key] = DERIVED_KEYS[key].check(key, value, "--set")
    for option, axis_list in (("--grid", axes), ("--zip", zip_axes)):
        for key, values in axis_list:
            if key in DERIVED_KEYS:
                values[:] = [DERIVED_KEYS[key].check(key, v, option) for v in values]

    product_axes = [[{key: v} for v in values] for key, values in axes]
    if zip_axes:
        product_axes.append([dict(zip((k for k, _ in zip_axes), combo)) for combo in zip(*(v for _, v in zip_axes))])
    points, hashes, duplicates = [], set(), 0
    for combo in itertools.product(*product_axes):
        values = {k: v for part in combo for k, v in part.items()}
        assignment = {**fixed, **values}
        plain = {k: v for k, v in assignment.items() if k not in DERIVED_KEYS}
        derived = {k: v for k, v in assignment.items() if k in DERIVED_KEYS}
        described = ", ".join(f"{k}={v!r}" for k, v in values.items()) or "no swept keys"
        source = f"{model} with {described}"
        raw = _apply_derived({**base, **plain}, derived, source)
        config = resolve(raw, source=source)
        if COMMANDS[command].check is not None:
            COMMANDS[command].check(Experiment.from_config(config), source)
        for r in range(repeat):
            point_config = dict(config, seed=config["seed"] + r) if repeat > 1 else config
            point_values = dict(values, seed=point_config["seed"]) if repeat > 1 else dict(values)
            digest = point_hash(command, point_config)
            if digest in hashes:
                duplicates += 1
                continue
            hashes.add(digest)
            points.append(SweepPoint(point_values, point_config, digest))
    return SweepPlan(command=command, model=str(model), points=points, duplicates=duplicates)


# ---------------------------------------------------------------------------
# worker side: builds and points

_LOCAL = threading.local()


def _worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{threading.get_ident()}"


def _private_runner(topology, build_root=None):
    """This thread's runner for ``topology``, compiling the shared build if needed.

    Concurrent runs of one build are safe: `arsim.brian.devices.StandaloneRunner`
    gives every run its own directory for inputs and results.

    Returns
    -------
    runner : StandaloneRunner
    compile_seconds : float
        Time this call spent compiling (0 when the build existed).
    """
    from ..brian.devices import StandaloneRunner

    runners = _LOCAL.__dict__.setdefault("runners", {})
    key = (topology, str(build_root))
    if key in runners:
        return runners[key], 0.0
    runner = StandaloneRunner(topology, cache_dir=build_root)
    runners[key] = runner
    return runner, runner.compile_seconds


def compile_build(topology, build_root=None) -> dict:
    """Ensure the shared build of ``topology`` exists (compiling it if needed).

    Returns a dict with ``compiled`` (bool), ``compile_seconds`` and ``worker``.
    """
    from ..brian.devices import StandaloneRunner

    runner = StandaloneRunner(topology, cache_dir=build_root)
    return {
        "compiled": runner.compile_seconds > 0,
        "compile_seconds": runner.compile_seconds,
        "directory": str(runner.directory),
        "worker": _worker_name(),
    }


def run_point(command: str, config: dict, topology, build_root=None, want_arrays: bool = True, expected_build: str | None = None) -> dict:
    """Run one point on a worker; the coordinator records the returned dict.

    ``expected_build`` is the build directory name the coordinator's compile
    task produced; a worker whose arsim or Brian2 code gives another name
    (sources edited during the sweep, a cluster node with another install)
    raises instead of mixing code versions in one sweep.

    Returns
    -------
    dict
        ``status`` (``ok`` or ``diverged``), ``error``, ``layers``,
        ``summary``, ``arrays``, ``run_seconds`` (simulation),
        ``point_seconds`` (the whole call), ``compile_seconds`` (if this call
        had to compile), ``topology`` (build directory name) and ``worker``.
    """
    started = time.perf_counter()
    if expected_build is not None and topology is not None:
        from ..brian.devices import _topology_hash

        if _topology_hash(topology) != expected_build:
            raise RuntimeError(
                f"this worker's arsim/Brian2 code differs from the code that compiled build {expected_build}"
                " (sources edited during the sweep, or another installation); rerun the sweep"
            )
    # topology None: a point without a build (numpy only)
    runner, compiled = _private_runner(topology, build_root) if topology is not None else (None, 0.0)
    try:
        out = COMMANDS[command].run(Experiment.from_config(config), runner, want_arrays)
        out.update(status="ok", error=None)
    except FloatingPointError as err:
        # a diverging point is a result of the sweep (e.g. dt/tau beyond the
        # Euler stability limit), not a failure to retry
        out = {"status": "diverged", "error": str(err), "layers": [], "summary": {}, "arrays": None, "run_seconds": float("nan")}
    out.update(
        point_seconds=time.perf_counter() - started,
        compile_seconds=compiled + out.pop("compile_seconds", 0.0),
        topology=None if runner is None else runner.directory.name,
        worker=_worker_name(),
    )
    return out


# ---------------------------------------------------------------------------
# engines


class InlineEngine:
    """Run tasks in the coordinating process, one at a time, when waited for."""

    name = "inline"

    def __init__(self):
        self.jobs = 1
        self._queue = collections.deque()

    def submit(self, fn, *args):
        future = concurrent.futures.Future()
        self._queue.append((future, fn, args))
        return future

    def capacity(self) -> int:
        return 1

    def wait_first(self, futures) -> set:
        # tasks run in submission order, so points are recorded as they finish
        future, fn, args = self._queue.popleft()
        try:
            future.set_result(fn(*args))
        except Exception as err:  # handed to the coordinator like a worker's error
            future.set_exception(err)
        return {future}

    def close(self):
        self._queue.clear()


def _init_worker(parent: int):
    # Ctrl-C goes to the coordinator, which cancels queued points and lets
    # running ones finish, instead of every worker printing a traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # a pool worker holds both ends of its task queue, so it never sees the
    # coordinator die (kill -9) and would wait forever: watch the parent
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _exit_with_parent(parent: int):
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


class LocalEngine:
    """A process pool of ``jobs`` workers (spawned: no fork of a threaded parent)."""

    name = "local"

    def __init__(self, jobs: int):
        import multiprocessing

        self.jobs = jobs
        self.pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
            initargs=(os.getpid(),),
        )

    def submit(self, fn, *args):
        return self.pool.submit(fn, *args)

    def capacity(self) -> int:
        return self.jobs

    def wait_first(self, futures) -> set:
        return concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_COMPLETED).done

    def close(self):
        self.pool.shutdown(wait=True, cancel_futures=True)


class DaskEngine:
    """Tasks on a dask.distributed cluster (``scheduler`` address) or a LocalCluster of ``jobs`` workers."""

    name = "dask"

    def __init__(self, jobs: int, scheduler: str | None = None):
        try:
            import logging

            from distributed import Client, LocalCluster
        except ImportError:
            raise ConfigError("--engine dask: dask.distributed is not installed; pip install 'arsim[dask]'") from None
        self.cluster = None
        if scheduler:
            try:
                self.client = Client(scheduler, timeout=30)
            except (OSError, TimeoutError) as err:
                raise ConfigError(f"--scheduler {scheduler}: cannot connect ({err})") from None
            self.jobs = max(1, sum(w.get("nthreads", 1) for w in self.client.scheduler_info()["workers"].values()))
        else:
            self.cluster = LocalCluster(
                n_workers=jobs, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.ERROR
            )
            self.client = Client(self.cluster)
            self.jobs = jobs

    def submit(self, fn, *args):
        return self.client.submit(fn, *args, pure=False)

    def capacity(self) -> int:
        """Threads of the cluster now: workers of a batch system (SLURM) join and leave."""
        if self.cluster is None:
            with contextlib.suppress(Exception):
                self.jobs = max(1, sum(self.client.nthreads().values()))
        return self.jobs

    def wait_first(self, futures) -> set:
        from distributed import wait

        try:
            # wake up now and then to hand tasks to workers that joined meanwhile
            return set(wait(list(futures), timeout=5, return_when="FIRST_COMPLETED").done)
        except TimeoutError:
            return set()

    def close(self):
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def default_jobs() -> int:
    """The number of CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def check_engine(engine: str = "local", jobs: int | None = None, scheduler: str | None = None) -> int:
    """Validate engine options (before anything is created); return the number of jobs."""
    jobs = default_jobs() if jobs is None else jobs
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs}: expected an integer >= 1")
    if scheduler and engine != "dask":
        raise ConfigError("--scheduler: only with --engine dask")
    if engine not in ("local", "dask"):
        raise ConfigError(f"--engine {engine}: expected 'local' or 'dask'")
    if engine == "dask":
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise ConfigError("--engine dask: dask.distributed is not installed; pip install 'arsim[dask]'") from None
    return jobs


def make_engine(engine: str = "local", jobs: int | None = None, scheduler: str | None = None):
    """An engine by name: ``local`` (``inline`` when ``jobs == 1``) or ``dask``."""
    jobs = check_engine(engine, jobs, scheduler)
    if engine == "local":
        return InlineEngine() if jobs == 1 else LocalEngine(jobs)
    return DaskEngine(jobs, scheduler)


# ---------------------------------------------------------------------------
# the coordinator


@dataclass
class SweepReport:
    """What a sweep did and what it cost (times in seconds).

    ``overhead_per_point`` is ``(jobs * wall - compile - simulation) / points
    run``: the worker time per point spent on anything but compiling and
    simulating (drawing the problem, the oracle, metrics, transfers,
    recording, scheduling, idle workers). With ``--jobs 1`` it is the wall
    time beyond compile and simulation, per point.
    """

    points_total: int = 0
    points_skipped: int = 0
    points_run: int = 0
    points_failed: int = 0
    duplicates: int = 0
    builds: int = 0
    compiles: int = 0
    compile_seconds: float = 0.0
    run_seconds: float = 0.0
    point_seconds: float = 0.0
    record_seconds: float = 0.0
    wall_seconds: float = 0.0
    jobs: int = 1
    engine: str = "inline"
    failures: list = field(default_factory=list)

    @property
    def overhead_per_point(self) -> float:
        if not self.points_run:
            return float("nan")
        return (self.jobs * self.wall_seconds - self.compile_seconds - self.run_seconds) / self.points_run

    def summary(self) -> str:
        """A few lines for the terminal."""
        lines = [
            f"sweep: {self.points_total} points: {self.points_run} run, {self.points_skipped} already in the store,"
            f" {self.points_failed} failed" + (f" ({self.duplicates} duplicate points merged)" if self.duplicates else ""),
            f"builds: {self.builds} network shapes, {self.compiles} compiled ({self.compile_seconds:.1f} s)",
            f"simulation: {self.run_seconds:.2f} s in {self.points_run} runs;"
            f" wall {self.wall_seconds:.1f} s on {self.jobs} {self.engine} job(s)",
        ]
        if self.points_run:
            lines.append(
                f"overhead: {self.overhead_per_point:.3f} s per point (jobs x wall - compile - simulation, per point run);"
                f" in the worker beyond the simulation {(self.point_seconds - self.run_seconds) / self.points_run:.3f} s,"
                f" recording {self.record_seconds / self.points_run:.3f} s"
            )
        for values, message in self.failures[:10]:
            lines.append(f"failed: {values}: {message}")
        return "\n".join(lines)


def run_sweep(
    plan: SweepPlan,
    store: Store,
    engine,
    build_root=None,
    want_arrays: bool = True,
    progress: bool = True,
    argv: str | None = None,
) -> SweepReport:
    """Run the points of ``plan`` that ``store`` does not hold yet and record them.

    The engine gets one task per free worker: a point of a finished build
    when there is one, else the next build (one per network shape), so
    points run while other shapes compile. Each finished point is recorded
    at once (npz first, then the rows in one transaction), so a killed sweep
    loses at most the points in flight.

    Parameters
    ----------
    plan : SweepPlan
        Validated points (`plan_sweep`).
    store : Store
        The results store (written only here).
    engine : InlineEngine, LocalEngine or DaskEngine
        Where builds and points run (`make_engine`); not closed here.
    build_root : path, optional
        Build cache (default: each worker's ``$ARSIM_BUILD_DIR`` or
        ``~/.cache/arsim/builds``); must be visible to the workers.
    want_arrays : bool
        Store each point's arrays in an npz file.
    progress : bool
        Show a tqdm progress bar (points done/total, ETA) on stderr.
    argv : str, optional
        The command line, kept in the ``sweeps`` table.
    """
    import brian2
    from tqdm import tqdm
    from ..io import provenance

    started = time.perf_counter()
    report = SweepReport(engine=engine.name, jobs=engine.jobs, duplicates=plan.duplicates)
    done = store.completed()
    pending = [p for p in plan.points if p.hash not in done]
    report.points_total = len(plan.points)
    report.points_skipped = report.points_total - len(pending)
    groups = plan.groups(pending)
    unbuilt = groups.pop(None, [])  # points without a build run at once
    report.builds = len(groups)
    git_revision = provenance(None)["git_revision"] if pending else None
    build_root = None if build_root is None else str(Path(build_root).resolve())
    sweep_id = store.begin_sweep(
        {"argv": argv, "command": plan.command, "engine": engine.name, "jobs": engine.jobs, "points_total": report.points_total}
    )
    bar = tqdm(total=report.points_total, initial=report.points_skipped, unit="point", desc="sweep", disable=not progress, file=sys.stderr)
    # Tasks are handed to the engine one per free worker, points of finished
    # builds before further builds: results (and a useful ETA) arrive while
    # other shapes compile, instead of every point queueing behind every build.
    to_compile = collections.deque(groups)
    ready = collections.deque((point, None, None) for point in unbuilt)  # (point, topology, build name)
    compiling, running = {}, {}
    builds_done = 0

    def _postfix():
        bar.set_postfix_str(f"builds {builds_done}/{len(groups)}", refresh=True)

    def _fill():
        capacity = engine.capacity()
        report.jobs = max(report.jobs, capacity)
        while len(compiling) + len(running) < capacity and (ready or to_compile):
            if ready:
                point, topo, name = ready.popleft()
                future = engine.submit(run_point, plan.command, point.config, topo, build_root, want_arrays, name)
                running[future] = point
            else:
                topo = to_compile.popleft()
                compiling[engine.submit(compile_build, topo, build_root)] = topo

    try:
        if groups:
            _postfix()
        _fill()
        while compiling or running:
            for future in engine.wait_first(set(compiling) | set(running)):
                if future in compiling:
                    topo = compiling.pop(future)
                    builds_done += 1
                    _postfix()
                    try:
                        info = future.result()
                    except Exception as err:
                        for point in groups[topo]:
                            report.failures.append((point.values, f"build failed: {_one_line(err)}"))
                        report.points_failed += len(groups[topo])
                        continue
                    report.compiles += int(info["compiled"])
                    report.compile_seconds += info["compile_seconds"]
                    ready.extend((point, topo, Path(info["directory"]).name) for point in groups[topo])
                    continue
                point = running.pop(future)
                try:
                    out = future.result()
                except Exception as err:
                    report.failures.append((point.values, _one_line(err)))
                    report.points_failed += 1
                    continue
                if out["compile_seconds"]:
                    # a worker that cannot see the coordinator's build (no
                    # shared file system) compiled its own copy
                    report.compiles += 1
                    report.compile_seconds += out["compile_seconds"]
                record_started = time.perf_counter()
                store.record(
                    {
                        "hash": point.hash,
                        "command": plan.command,
                        "status": out["status"],
                        "error": out["error"],
                        "sweep_id": sweep_id,
                        "point": point.values,
                        "config": point.config,
                        "seed": point.config.get("seed"),
                        "topology": out["topology"],
                        "compile_seconds": out["compile_seconds"],
                        "run_seconds": out["run_seconds"],
                        "point_seconds": out["point_seconds"],
                        "worker": out["worker"],
                        "arsim_version": __version__,
                        "brian2_version": brian2.__version__,
                        "git_revision": git_revision,
                        "summary": out["summary"],
                    },
                    out["layers"],
                    out["arrays"],
                )
                report.record_seconds += time.perf_counter() - record_started
                report.points_run += 1
                if math.isfinite(out["run_seconds"]):
                    report.run_seconds += out["run_seconds"]
                report.point_seconds += out["point_seconds"]
                bar.update(1)
            _fill()
    finally:
        bar.close()
        report.wall_seconds = time.perf_counter() - started
        with contextlib.suppress(Exception):
            store.end_sweep(
                sweep_id,
                {
                    "jobs": report.jobs,
                    "points_skipped": report.points_skipped,
                    "points_run": report.points_run,
                    "points_failed": report.points_failed,
                    "builds": report.builds,
                    "compiles": report.compiles,
                    "compile_seconds": report.compile_seconds,
                    "run_seconds": report.run_seconds,
                    "point_seconds": report.point_seconds,
                    "wall_seconds": report.wall_seconds,
                    "overhead_per_point": report.overhead_per_point if report.points_run else None,
                },
            )
    return report


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:500]}"


# ---------------------------------------------------------------------------
# selecting stored points

_WHERE = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(<=|>=|!=|==|=|<|>)\s*(.*?)\s*$")
_BOOKKEEPING = ("hash", "command", "status", "sweep_id", "seed", "worker", "arsim_version", "git_revision")


def record_values(record: dict) -> dict:
    """Flat values of a stored point: config keys, derived keys, bookkeeping, summary metrics."""
    values = dict(record["config"])
    values.update(derived_values(record["config"]))
    values.update({key: record.get(key) for key in _BOOKKEEPING})
    values.update(record.get("summary") or {})
    return values


def parse_where(text: str) -> tuple:
    """Parse ``KEY OP VALUE`` (OP one of = == != < <= > >=) into ``(key, op, value)``."""
    match = _WHERE.match(text)
    if not match or not match.group(3):
        raise ConfigError(f"--where {text!r}: expected KEY=VALUE or KEY<VALUE (operators = != < <= > >=)")
    key, op, value_text = match.groups()
    return key, "=" if op == "==" else op, parse_override(f"{key}={value_text}")[1]


def _compare(left, op: str, right) -> bool:
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (left, right))
    if op in ("=", "!="):
        equal = math.isclose(left, right, rel_tol=1e-9, abs_tol=1e-12) if numeric else left == right
        return equal if op == "=" else not equal
    if not numeric:
        raise TypeError
    return {"<": left < right, "<=": left <= right, ">": left > right, ">=": left >= right}[op]


def select(records: list, where=()) -> list:
    """The records matching every ``KEY OP VALUE`` condition in ``where``."""
    conditions = [parse_where(text) for text in where]
    if not records or not conditions:
        return list(records)
    known = set(SCHEMA) | set(DERIVED_KEYS) | set(_BOOKKEEPING)
    for record in records:
        known |= set(record.get("summary") or {})
    for key, _, _ in conditions:
        if key not in known:
            raise ConfigError(f"--where {key}: unknown key; accepted: {', '.join(sorted(known))}")
    selected = []
    for record in records:
        values = record_values(record)
        keep = True
        for key, op, value in conditions:
            try:
                keep = values.get(key) is not None and _compare(values[key], op, value)
            except TypeError:
                raise ConfigError(f"--where: cannot compare {key} = {values.get(key)!r} with {op} {value!r}") from None
            if not keep:
                break
        if keep:
            selected.append(record)
    return selected
