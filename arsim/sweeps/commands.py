"""Sweepable commands: what one point runs (``relax``, ``train``, ``sxl``).

A `Command` says how a point (an `arsim.spec.Experiment`) maps to its build,
its step budget and its run; `COMMANDS` is the registry ``--command`` reads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import threading
from dataclasses import dataclass
from typing import Any, Callable, Hashable

import numpy as np

from ..spec import Experiment

__all__ = ["Command", "COMMANDS", "TRAIN_RUN_SAMPLES"]


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
