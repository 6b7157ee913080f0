"""A training experiment: data, epochs, metrics, checkpoints and resume.

``train(experiment, out_dir)`` trains with the experiment's rule (``rule``: every
simulated rule runs in the compiled Brian2 network, ``bp`` is the numpy
backprop baseline, `arsim.rules`) and writes into ``out_dir``:

``checkpoint.npz``
    Everything needed to continue: weights after the last complete epoch,
    the epoch count, the metrics so far and the config. Replaced atomically
    at the end of every epoch, so a crash or Ctrl-C leaves the last
    complete epoch.
``metrics.csv``, ``metrics.json``
    One row per epoch (epoch 0 is the untrained network): train loss, train
    and test accuracy, test loss, wall time, samples/s, and per layer the
    mean angle and relative error of the rule's batch update against BP on
    the same batch (every ``train.align_every``-th batch).
``run.json``
    The resolved config, seed, data set, package versions, git revision.
``weights.npz``
    Final ``W{l}``, ``b{l}``, ``B{l}``.

The sample order of epoch ``e`` depends only on ``(seed, e)`` and the
weights only on the previous epoch, so a resumed run is bit-identical to an
uninterrupted one.
"""

from __future__ import annotations

import csv
import io as _io
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import ConfigError
from .datasets import Dataset, load_dataset
from .io import atomic_write_bytes, provenance, save_npz, write_json
from .layers import exact_feedback
from .metrics import angle_deg
from .spec import DataSpec, Experiment
from .training import BrianTrainer, Params, bp_epoch, chunk_batches, epoch_order, evaluate, init_params

__all__ = ["train", "TrainSummary", "CHECKPOINT", "dataset_for", "checked_dataset"]

CHECKPOINT = "checkpoint.npz"

#: keys that may differ between a run and its resumption
_RESUMABLE_CHANGES = ("train.epochs",)


@dataclass
class TrainSummary:
    """Outcome of `train`: the metric rows and timing."""

    rows: list
    params: Params
    compile_seconds: float
    train_seconds: float
    samples_per_second: float


def dataset_for(experiment: Experiment) -> Dataset:
    """The experiment's data set, checked against the network's input and output sizes."""
    return checked_dataset(experiment.data, experiment.seed, experiment.network.sizes, experiment.training.batch_size)


def checked_dataset(spec: DataSpec, seed: int, sizes, batch: int) -> Dataset:
    """The data set of ``spec`` split by ``seed``; a one-line `ConfigError` unless it fits ``sizes`` and ``batch``."""
    data = load_dataset(spec.source, seed, spec.test_fraction, spec.max_samples)
    if sizes[0] != data.n_features:
        raise ConfigError(f"sizes[0] = {sizes[0]} does not match train.data = {spec.source!r}; expected {data.n_features} inputs")
    if sizes[-1] != data.n_classes:
        raise ConfigError(f"sizes[-1] = {sizes[-1]} does not match train.data = {spec.source!r}; expected {data.n_classes} outputs")
    if data.n_train < batch:
        raise ConfigError(f"train.batch_size = {batch} is larger than the {data.n_train} training samples; expected <= {data.n_train}")
    return data


def _check_finite(params: Params, where: str) -> str | None:
    for l in range(len(params.W)):
        for name, value in (("W", params.W[l]), ("b", params.b[l]), ("B", params.B[l])):
            if not np.all(np.isfinite(value)):
                return f"{where}, layer {l} ({name}^{l})"
    return None


def _locate_divergence(experiment: Experiment, params: Params, x, targets, epoch: int, first_batch: int, noise=None,
                       diverged: Params | None = None) -> str:
    """Replay a diverged stretch batch by batch in numpy to name the first bad batch and layer.

    A stochastic rule's noise is Brian2's own draw, which numpy cannot
    replay: its report names the run's batches and the first layer whose
    weights ``diverged`` holds NaN/Inf.
    """
    found = []
    n_batches = len(x) // experiment.training.batch_size
    if experiment.rule.stochastic:
        layer = _check_finite(diverged, f"epoch {epoch}, batches {first_batch + 1}..{first_batch + n_batches}") if diverged else None
        return (f"{layer or f'epoch {epoch}, batches {first_batch + 1}..{first_batch + n_batches}'}"
                " (the run's noise is Brian2's own draw: not replayed batch by batch)")

    def after_batch(index, state):
        if not found:
            where = _check_finite(state, f"epoch {epoch}, batch {first_batch + index + 1}")
            if where:
                found.append(where)

    try:
        with np.errstate(all="ignore"):
            experiment.rule.reference_epoch(experiment, params, x, targets, noise=noise, after_batch=after_batch)
    except FloatingPointError as err:
        # a rule that checks its own dynamics (dynamic inversion) stopped the replay first
        if not found:
            return f"epoch {epoch}, batches {first_batch + 1}..{first_batch + n_batches}, where the numpy replay stopped: {err}"
    if found:
        return found[0]
    return f"epoch {epoch}, batches {first_batch + 1}..{first_batch + n_batches} (the numpy replay stayed finite)"


def _metric_row(experiment: Experiment, params, data, epoch, seconds, samples, alignment, repairs: int = 0,
                diagnostics: dict | None = None) -> dict:
    with np.errstate(all="ignore"):
        on_train = evaluate(experiment.network, params, data.x_train, data.y_train, data.n_classes)
        on_test = evaluate(experiment.network, params, data.x_test, data.y_test, data.n_classes)
    row = {
        "epoch": epoch,
        "train_loss": on_train["loss"],
        "train_accuracy": on_train["accuracy"],
        "test_loss": on_test["loss"],
        "test_accuracy": on_test["accuracy"],
        "seconds": seconds,
        "samples_per_second": samples / seconds if seconds > 0 else float("nan"),
    }
    for l in range(len(params.W)):
        rows = [a for a in alignment if a[1] == l]
        row[f"angle_deg_{l}"] = float(np.mean([a[2] for a in rows])) if rows else float("nan")
        row[f"rel_error_{l}"] = float(np.mean([a[3] for a in rows])) if rows else float("nan")
    rule, ops = experiment.rule, experiment.network.ops
    for l in range(len(params.W)):
        # the angle between the rule's own backward matrix and W^T (NaN where B is W^T or not of W^T's shape)
        exact = exact_feedback(ops[l], params.W[l])
        own = rule.for_layer(l).separate_backward and params.B[l].shape == exact.shape
        row[f"b_angle_deg_{l}"] = angle_deg(params.B[l], exact) if own else float("nan")
    if rule.counts_repairs:
        row["b_repairs"] = repairs
    for key in rule.diagnostic_keys(len(params.W)):
        row[key] = (diagnostics or {}).get(key, 0)
    return row


def _write_tables(out_dir: Path, rows: list) -> None:
    buffer = _io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out_dir / "metrics.csv", buffer.getvalue().encode())
    write_json(out_dir / "metrics.json", [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()} for r in rows])


def _save_checkpoint(out_dir: Path, params: Params, epoch: int, rows: list, experiment: Experiment) -> None:
    save_npz(
        out_dir / CHECKPOINT,
        {**params.arrays(), "epoch": np.array(epoch), "metrics": np.array(json.dumps(rows)),
         "config": np.array(json.dumps(dict(experiment.config)))},
    )


def _check_same_model(stored: dict, config, what: str) -> None:
    for key in sorted(set(stored) | set(config)):
        if key not in _RESUMABLE_CHANGES and stored.get(key) != config.get(key):
            raise ConfigError(
                f"--resume: {key} = {config.get(key)!r} differs from the {what}'s {stored.get(key)!r}; expected the same model"
            )


def _load_checkpoint(out_dir: Path, config, n_layers: int, state_keys=()):
    """``(params, epoch, rows)`` of ``out_dir``'s checkpoint.

    None for a run killed before its first checkpoint (the untrained state,
    written once the network is built): ``run.json`` of the same model and no
    ``checkpoint.npz``; that run starts from the beginning.
    """
    path = out_dir / CHECKPOINT
    if not path.exists():
        run_json = out_dir / "run.json"
        if not run_json.exists():
            raise ConfigError(f"--resume: {path} does not exist; expected the output directory of an earlier run")
        try:
            stored = json.loads(run_json.read_text())["config"]
            if not isinstance(stored, dict):
                raise ValueError("'config' is not a table")
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"--resume: {run_json} is not the run.json of an arsim training run ({err})") from None
        _check_same_model(stored, config, "run.json")
        print(f"arsim: --resume: {out_dir} has no checkpoint yet (the run stopped before its first epoch); starting from epoch 0",
              file=sys.stderr)
        return None
    try:
        with np.load(path) as data:
            stored = json.loads(str(data["config"]))
            params = Params.from_arrays(data, n_layers, state_keys=state_keys)
            epoch = int(data["epoch"])
            rows = json.loads(str(data["metrics"]))
    except (OSError, ValueError, KeyError) as err:
        raise ConfigError(f"--resume: {path} is not a readable arsim checkpoint ({err})") from None
    _check_same_model(stored, config, "checkpoint")
    return params, epoch, rows


def train(experiment, out_dir, resume: bool = False, device: str = "cpp", progress: bool = True,
          max_run_samples: int = 1024) -> TrainSummary:
    """Train for ``train.epochs`` epochs and write the results into ``out_dir``.

    Parameters
    ----------
    experiment : arsim.spec.Experiment or dict
        The experiment, or a config resolved by `arsim.config.load` (typed
        here, once).
    out_dir : path
        Output directory (created). Without ``resume`` it must not hold a
        checkpoint already.
    resume : bool
        Continue from ``out_dir``'s checkpoint (the config must match, except
        ``train.epochs``); a run stopped before its first checkpoint (only
        its ``run.json``, same rule) starts from the beginning.
    device : {"cpp", "runtime"}
        Brian2 device of the AR rule.
    progress : bool
        Show a tqdm progress bar on stderr.
    max_run_samples : int
        Upper bound of the samples in one standalone run (`chunk_batches`).

    Raises
    ------
    ConfigError
        Bad data, mismatching sizes, or an output directory that does not fit.
    FloatingPointError
        NaN/Inf in the weights, naming the epoch, batch and layer.
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir}: exists and is not a directory")
    if not resume and (out_dir / CHECKPOINT).exists():
        raise ConfigError(f"--out {out_dir}: already holds a training run; use --resume to continue it or choose another directory")
    experiment = Experiment.from_config(experiment)
    data = dataset_for(experiment)
    n_layers = experiment.network.n_layers
    state_keys = experiment.rule.state_keys(experiment.network.sizes)
    loaded = _load_checkpoint(out_dir, experiment.config, n_layers, state_keys) if resume else None
    if loaded is not None:
        params, start_epoch, rows = loaded
    else:
        params, start_epoch, rows = init_params(experiment), 0, []
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "run.json", {**provenance(experiment), "data": {"spec": data.name, "source": data.source,
                                                                        "n_train": data.n_train, "n_test": data.n_test}})
    batch = experiment.training.batch_size
    n_batches = data.n_train // batch
    # a rule that repairs its dynamics does so between runs: one batch per run repairs after every update,
    # as its numpy reference does (an update inside a longer run could make the relaxation diverge unseen)
    per_run = 1 if experiment.rule.updates_between_runs else chunk_batches(n_batches, batch, max_run_samples)
    n_used = n_batches * batch
    targets_train = data.targets(data.y_train)

    compile_seconds = 0.0
    trainer = None
    if experiment.rule.simulated:
        if progress and device == "cpp":
            print("arsim: building the standalone network (cached after the first time)...", file=sys.stderr)
        started = time.perf_counter()
        trainer = BrianTrainer(experiment, per_run * batch, device=device)
        compile_seconds = time.perf_counter() - started
    if not rows:
        rows.append(_metric_row(experiment, params, data, 0, 0.0, 0, []))
        _save_checkpoint(out_dir, params, 0, rows, experiment)
        _write_tables(out_dir, rows)

    epochs = experiment.training.epochs
    bar = tqdm(total=epochs * n_used, initial=start_epoch * n_used, unit="sample", disable=not progress,
               desc=f"{experiment.name} ({experiment.rule.name})", dynamic_ncols=True)
    train_seconds = 0.0
    try:
        for epoch in range(start_epoch + 1, epochs + 1):
            order = epoch_order(experiment, data.n_train, epoch)
            x, targets = data.x_train[order], targets_train[order]
            started = time.perf_counter()
            alignment, repairs, diagnostics = [], 0, {}
            for first in range(0, n_batches, per_run):
                rows_slice = slice(first * batch, (first + per_run) * batch)
                before, noise = params, None
                if trainer is not None:
                    noise = trainer.mirror_noise(epoch, first)
                    result = trainer.run_chunk(params, x[rows_slice], targets[rows_slice], first_batch=first, epoch=epoch, noise=noise)
                    params = result.params
                    alignment.extend(result.alignment)
                    repairs += result.repairs
                    for key, value in result.diagnostics.items():
                        diagnostics[key] = diagnostics.get(key, 0) + value
                else:
                    with np.errstate(all="ignore"):
                        params = bp_epoch(experiment, params, x[rows_slice], targets[rows_slice])
                if _check_finite(params, ""):
                    where = _locate_divergence(experiment, before, x[rows_slice], targets[rows_slice], epoch, first, noise,
                                               diverged=params)
                    raise FloatingPointError(f"NaN/Inf in the weights at {where}; lower train.lr or init_std")
                bar.update(per_run * batch)
            seconds = time.perf_counter() - started
            train_seconds += seconds
            row = _metric_row(experiment, params, data, epoch, seconds, n_used, alignment, repairs, diagnostics)
            rows.append(row)
            if not math.isfinite(row["train_loss"]):
                raise FloatingPointError(f"NaN/Inf in the output activity at epoch {epoch} (train loss {row['train_loss']})")
            _save_checkpoint(out_dir, params, epoch, rows, experiment)
            _write_tables(out_dir, rows)
            bar.set_postfix(loss=f"{row['train_loss']:.4g}", train=f"{row['train_accuracy']:.3f}", test=f"{row['test_accuracy']:.3f}")
    finally:
        bar.close()
    save_npz(out_dir / "weights.npz", params.arrays())
    done = [r for r in rows[1:] if r["seconds"] > 0]
    rate = n_used * len(done) / sum(r["seconds"] for r in done) if done else float("nan")
    return TrainSummary(rows=rows, params=params, compile_seconds=compile_seconds, train_seconds=train_seconds, samples_per_second=rate)
