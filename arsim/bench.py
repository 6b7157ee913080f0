"""``arsim bench``: Brian2 against dense numpy, side by side, on the same network.

Every number is a ratio of two timings taken in the same process, one right
after the other, repeated ``R`` times (median and min-max spread reported),
because these machines are shared and absolute times drift. Each pair does
the same work and the bench checks that it computes the same numbers
(relaxed state or trained weights equal to 1e-9; with ``--set
precision=float32`` both sides compute in float32 and must agree to 1e-4
of the relaxed state's scale, or to 1% of the run's weight change in
training) before it reports a ratio.

Measured (float64 unless ``precision = "float32"``):

relaxation, batch 1
    the compiled Brian2 network relaxing one sample for ``--steps`` Euler
    steps against `arsim.reference.euler.relax_euler` (a dense BLAS mat-vec loop
    over the same equations), ``--relax-samples`` samples per run;
    throughput in synapse-updates per second,
    counting one multiply-add per weight of every mat-vec done (the forward
    sweep once, the feedback of projections ``1..L-1`` every step).
training
    `arsim.training.BrianTrainer` against the rule's batched numpy reference (`arsim.rules.Rule.reference_epoch`)
    (batched numpy, batch 64: what a user of an array library writes), in
    samples per second, 100 relaxation steps per sample by default, on runs
    of ``--samples`` samples (default 1,024, the longest run `arsim train`
    makes). With ``projection = "dense"`` the Brian2 network is timed both
    ways it can train: a whole batch relaxing at once as copies of the
    layers (``train.parallel = "batch"``, `arsim train`'s default, CBLAS
    dgemm) and one sample after another (``"sample"``).
compile time
    of each build, measured when it was compiled (``arsim bench`` compiles
    into a fresh directory unless ``--cached``).
run_args overhead
    runs of a one-sample build against one run of as many samples: the
    cost of starting the binary and moving arrays, per run.

``threads`` sets the BLAS threads of both sides (numpy through
threadpoolctl, the binary through ``OPENBLAS_NUM_THREADS`` or ``MKL_NUM_THREADS``). The binary's CBLAS is
the model key ``blas`` (``--set blas=mkl``, `arsim.brian.blas`), reported beside numpy's.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import tempfile
import time

import numpy as np

from . import __version__
from .brian.blas import blas_library
from .brian.devices import StandaloneRunner
from .brian.network import Topology, topology_for
from .reference import oracle
from .reference.euler import relax_euler
from .relax import draw_problem, network_params
from .rules import RULES
from .spec import Experiment
from .training import BrianTrainer, epoch_order, init_params, train_topology

#: the learning rate of every timed training, the MLP's and a model's alike (the work timed does not depend on it)
BENCH_LR = 5e-4

__all__ = ["run_bench", "format_table"]


def _stats(values: list) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def _relax_topology(experiment: Experiment, n_samples: int) -> Topology:
    """The relaxation build of ``experiment`` for ``n_samples`` samples per run, without monitors."""
    return dataclasses.replace(topology_for(experiment, n_samples=n_samples), record_variables=())


def _numpy_dtype(experiment: Experiment):
    """The numpy side computes in the network's precision, so both do the same work."""
    return np.float32 if experiment.network.precision == "float32" else np.float64


def _check_equal(deviation: float, float32_tolerance: float, precision: str, what: str) -> float:
    """Raise unless the two sides agree: 1e-9 in float64, ``float32_tolerance`` in float32.

    Returns the tolerance used.
    """
    tolerance = 1e-9 if precision == "float64" else float32_tolerance
    if not deviation <= tolerance:
        raise AssertionError(
            f"Brian2 and numpy {what} differ by {deviation:.3g} (> {tolerance:.3g}): the ratio would compare unequal work"
        )
    return tolerance


def _synapse_updates(sizes, steps: int) -> int:
    weights = [sizes[l] * sizes[l + 1] for l in range(len(sizes) - 1)]
    return sum(weights) + steps * sum(weights[1:])


#: one-sample runs timed to measure the per-run overhead
OVERHEAD_RUNS = 100


def bench_relaxation(experiment: Experiment, repeat: int, n_samples: int, build_root) -> dict:
    """Relaxation throughput of Brian2 and the numpy loop, and the per-run overhead.

    The timed Brian2 run relaxes ``n_samples`` samples one after the other
    (the network is reset by each sample's forward sweep), so the cost of
    starting the binary is spread over them; numpy relaxes the same samples
    one by one. The overhead of one run is measured separately: up to
    `OVERHEAD_RUNS` runs of a one-sample build against the run of
    ``n_samples`` samples.
    """
    net, rule = experiment.network, experiment.rule
    steps = net.n_relax_steps
    runner = StandaloneRunner(_relax_topology(experiment, n_samples), cache_dir=build_root)
    compile_seconds = runner.manifest["compile_seconds"]
    problem = draw_problem(experiment)
    params = network_params(runner.topology, net, problem)
    params["input_values"] = np.tile(problem.x_in, (n_samples, 1))
    params["target_values"] = np.tile(problem.target, (n_samples, 1))
    hidden, output = net.hidden, net.output
    eta = net.eta
    dtype = _numpy_dtype(experiment)
    W, b, B = ([m.astype(dtype) for m in arrays] for arrays in (problem.W, problem.b, problem.B))
    x_in, target = problem.x_in.astype(dtype), problem.target.astype(dtype)

    def numpy_relax():
        for _ in range(n_samples):
            fwd = oracle.forward(W, b, x_in, hidden, output, net.loss)
            e = oracle.output_error(fwd.xbar[-1], target, net.loss)
            state, _ = relax_euler(B, fwd.xbar, fwd.fp, e, eta, steps, rule.derivative, rule.ordering,
                                   record_every=steps + 1)
        return state

    brian_times, numpy_times = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        raw = runner.run(params)
        brian_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        state = numpy_relax()
        numpy_times.append(time.perf_counter() - t0)
    n_layers = net.n_layers
    deviation = max(float(np.max(np.abs(raw[f"layer{l}.x"] - state[l]))) for l in range(1, n_layers))
    scale = max(float(np.max(np.abs(state[l]))) for l in range(1, n_layers))
    tolerance = _check_equal(deviation, 1e-4 * scale, experiment.network.precision, "relaxations")
    updates = n_samples * _synapse_updates(net.sizes, steps)
    ratios = [n / b for b, n in zip(brian_times, numpy_times)]

    single = StandaloneRunner(_relax_topology(experiment, 1), cache_dir=build_root)
    one_params = network_params(single.topology, net, problem)
    k = min(n_samples, OVERHEAD_RUNS)
    t0 = time.perf_counter()
    for _ in range(k):
        single.run(one_params)
    many_runs = time.perf_counter() - t0
    # k runs cost k (o + c) and one run of n samples T = o + n c: solve for the overhead o
    long_run = statistics.median(brian_times)
    overhead = (many_runs - k * long_run / n_samples) / (k * (1 - 1 / n_samples)) if n_samples > 1 else float("nan")
    return {
        "steps": steps,
        "samples_per_run": n_samples,
        "synapse_updates_per_run": updates,
        "brian2_seconds": _stats(brian_times),
        "numpy_seconds": _stats(numpy_times),
        "brian2_updates_per_second": updates / statistics.median(brian_times),
        "numpy_updates_per_second": updates / statistics.median(numpy_times),
        "ratio_brian2_over_numpy": _stats(ratios),
        "max_abs_deviation": deviation,
        "tolerance": tolerance,
        "compile_seconds": compile_seconds,
        "single_sample_runs_seconds": many_runs,
        "single_sample_runs": k,
        "overhead_per_run_seconds": overhead,
    }


def bench_training(experiment: Experiment, repeat: int, n_samples: int, build_root) -> dict:
    """Training throughput of the Brian2 network (``train.parallel``) and of the rule's batched numpy reference."""
    batch = experiment.training.batch_size
    sizes = experiment.network.sizes
    n_samples = max(batch, (n_samples // batch) * batch)
    # a rule that repairs its dynamics between runs (dynamic inversion) trains one batch per run, as arsim train does
    per_run = batch if experiment.rule.updates_between_runs else n_samples
    trainer = BrianTrainer(experiment, per_run, runner=StandaloneRunner(train_topology(experiment, per_run), cache_dir=build_root))
    compile_seconds = trainer.runner.manifest["compile_seconds"]
    rng = np.random.default_rng([experiment.seed, 9])
    x = rng.uniform(0.0, 1.0, size=(n_samples, sizes[0]))
    targets = np.eye(sizes[-1])[rng.integers(sizes[-1], size=n_samples)]
    order = epoch_order(experiment, n_samples, 1)
    x, targets = x[order], targets[order]
    params = init_params(experiment)
    dtype = _numpy_dtype(experiment)
    numpy_params = params.astype(dtype)
    numpy_x, numpy_targets = x.astype(dtype), targets.astype(dtype)
    rule = experiment.rule
    noise = trainer.mirror_noise(1, 0)
    brian_times, numpy_times = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        trained = params
        for first in range(0, n_samples, per_run):
            rows = slice(first, first + per_run)
            trained = trainer.run_chunk(trained, x[rows], targets[rows], first_batch=first // batch, noise=noise).params
        brian_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        reference = rule.reference_epoch(experiment, numpy_params, numpy_x, numpy_targets, noise=noise)
        numpy_times.append(time.perf_counter() - t0)
    deviation = max(
        max(float(np.max(np.abs(a - b))) for a, b in zip(trained.W, reference.W)),
        max(float(np.max(np.abs(a - b))) for a, b in zip(trained.b, reference.b)),
        # the backward matrices too: a rule's backward step left undone would show only here
        max(float(np.max(np.abs(a - b))) for a, b in zip(trained.B, reference.B)),
    )
    # float32: round-off can flip the ReLU derivative of a unit whose drive is
    # near zero, after which runs with different summation orders part by
    # ~1e-4 (measured: numpy float32 against float64 after 11 of 16 batches);
    # work left undone would differ by the order of the weight change itself
    change = max(float(np.max(np.abs(a - b))) for a, b in zip(reference.W, numpy_params.W))
    tolerance = _check_equal(deviation, 1e-2 * change, experiment.network.precision, "training")
    ratios = [n / b for b, n in zip(brian_times, numpy_times)]
    peer = _bench_torch(experiment, params, x, targets, trained, repeat, brian_times)
    return {
        **peer,
        "samples": n_samples,
        "samples_per_run": per_run,
        "batch_size": batch,
        "parallel_copies": trainer.topology.copies,
        "steps_per_sample": experiment.network.n_relax_steps,
        "brian2_samples_per_second": n_samples / statistics.median(brian_times),
        "numpy_samples_per_second": n_samples / statistics.median(numpy_times),
        "brian2_seconds": _stats(brian_times),
        "numpy_seconds": _stats(numpy_times),
        "ratio_brian2_over_numpy": _stats(ratios),
        "max_abs_deviation": deviation,
        "tolerance": tolerance,
        "compile_seconds": compile_seconds,
    }


def _bench_torch(experiment: Experiment, params, x, targets, trained, repeat: int, brian_times: list) -> dict:
    """The same batched AR training in PyTorch (float64), when torch is importable and the experiment is exact AR."""
    from .reference import torch_peer

    if not torch_peer.available() or experiment.network.precision != "float64":
        return {}
    batch = experiment.training.batch_size
    try:
        torch_peer.ar_epoch_torch(experiment, params.W, params.b, x[:batch], targets[:batch])
    except ValueError:
        return {}  # another rule or switch: the peer writes exact AR only
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        W, b = torch_peer.ar_epoch_torch(experiment, params.W, params.b, x, targets)
        times.append(time.perf_counter() - t0)
    deviation = max(max(float(np.max(np.abs(u - v))) for u, v in zip(W, trained.W)),
                    max(float(np.max(np.abs(u - v))) for u, v in zip(b, trained.b)))
    _check_equal(deviation, 0.0, experiment.network.precision, "training (torch)")
    return {
        "torch": torch_peer.blas_description(),
        "torch_samples_per_second": len(x) / statistics.median(times),
        "torch_seconds": _stats(times),
        "ratio_brian2_over_torch": _stats([t / b for b, t in zip(brian_times, times)]),
        "torch_max_abs_deviation": deviation,
    }


def bench_experiment(sizes: list, steps: int, batch: int, overrides: dict | None = None) -> Experiment:
    """The benchmark network: the paper's training setting on ``sizes``."""
    return Experiment.from_raw({
        "name": "bench", "sizes": sizes, "activation": "relu", "output_activation": "linear", "loss": "mse", "bias": True,
        "init_std": 0.05, "tau": 10.0, "dt": 1.0, "duration": float(steps), "seed": 0,
        "train.batch_size": batch, "train.lr": BENCH_LR, "train.align_every": 0, **(overrides or {}),
    }, "arsim bench")


#: training modes timed per projection backend: (result key, train.parallel)
TRAINING_MODES = {"dense": (("training", "batch"), ("training_by_sample", "sample")), "synapses": (("training", "sample"),)}


def run_bench(sizes: list, steps: int = 100, repeat: int = 5, train_samples: int = 1024, batch: int = 64,
              overrides: dict | None = None, parts=("relax", "train"), relax_samples: int = 1000, build_root=None,
              projections=("dense", "synapses"), threads: int | None = None, rules=(), models=()) -> dict:
    """Run the benchmark and return every measurement with the machine description.

    ``build_root`` is where the builds go (default: a fresh temporary
    directory, so the compile is part of this run). Compile times are those
    measured when each build was made (stored in its manifest). ``rules``
    (names of `arsim.rules.RULES`) adds, per rule, its dense batch-parallel
    Brian2 training against the rule's batched numpy reference
    (`arsim.rules.Rule.reference_epoch`), with the rule's defaults. ``models``
    (resolved model configs, e.g. ``digits_cnn``) adds, per model, its network's
    batch-parallel training the same way: for a CNN the numpy side is the
    batched im2col reference of `arsim.layers`.
    """
    import brian2
    import scipy
    import scipy_openblas32
    from threadpoolctl import threadpool_info, threadpool_limits

    if threads is not None:
        # the standalone runner passes the environment to the binary (default 1 thread)
        os.environ["OPENBLAS_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    from .reference import torch_peer

    if torch_peer.available():
        import torch

        # the torch peer computes with the same number of threads as the other two sides
        torch.set_num_threads(1 if threads is None else threads)
    brian_blas = blas_library(bench_experiment(sizes, steps, batch, overrides).network.blas)
    result = {
        "sizes": list(sizes),
        "repeat": repeat,
        "precision": bench_experiment(sizes, steps, batch, overrides).network.precision,
        "machine": {"cores": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor()},
        "versions": {"arsim": __version__, "numpy": np.__version__, "python": platform.python_version(),
                     "brian2": brian2.__version__, "scipy": scipy.__version__,
                     "scipy_openblas32": scipy_openblas32.__version__},
    }
    with threadpool_limits(limits=threads, user_api="blas"), tempfile.TemporaryDirectory(prefix="arsim-bench-") as fresh:
        result["blas"] = {
            "numpy": sorted({f"{info.get('internal_api')} {info.get('version')}" for info in threadpool_info()
                             if info["user_api"] == "blas"}),
            "brian2": f"{brian_blas.describe()} (CBLAS of the dense projections, blas = {brian_blas.name!r})",
        }
        result["blas_threads"] = {
            "numpy": sorted({info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"}),
            "brian2": os.environ.get(brian_blas.threads_variable, "1"),
        }
        build_root = fresh if build_root is None else build_root
        for projection in projections:
            experiment = bench_experiment(sizes, steps, batch, {**(overrides or {}), "projection": projection})
            part = result.setdefault("projections", {}).setdefault(projection, {})
            if "relax" in parts:
                part["relaxation"] = bench_relaxation(experiment, repeat, relax_samples, build_root)
            if "train" in parts:
                for key, parallel in TRAINING_MODES[projection]:
                    part[key] = bench_training(experiment.replace(**{"train.parallel": parallel}), repeat, train_samples, build_root)
        for rule in rules:
            experiment = bench_experiment(sizes, steps, batch, {**(overrides or {}), **RULES[rule].bench_keys,
                                                                "projection": "dense", "rule": rule, "train.parallel": "batch"})
            result.setdefault("rules", {})[rule] = bench_training(experiment, repeat, train_samples, build_root)
        for config in models:
            # the bench's lr, not the model's: on the bench's uniform random inputs at batch 64, digits_cnn's lr 5e-3
            # blew its weights up to 7e6 within 10 batches, and Brian2 and numpy then part by rounding (3e-3 absolute
            # after 12 batches, 1e-13 relative); the lr does not change the work timed
            experiment = Experiment.from_config(config).replace(**{
                "duration": float(steps), "dt": 1.0, "tau": 10.0, "train.batch_size": batch, "train.lr": BENCH_LR,
                "train.align_every": 0, "train.parallel": "batch", **(overrides or {})})
            row = bench_training(experiment, repeat, train_samples, build_root)
            row["layers"] = "-".join(map(str, experiment.network.sizes))
            result.setdefault("models", {})[experiment.name] = row
    return result


def format_table(result: dict) -> str:
    """The human-readable report of `run_bench`."""
    lines = [
        f"arsim bench: {'-'.join(map(str, result['sizes']))}, {result['precision']}, median of {result['repeat']} (min-max);"
        f" {result['machine']['cores']} cores; brian2 {result['versions']['brian2']}, numpy {result['versions']['numpy']};"
        f" BLAS threads: numpy {','.join(map(str, result['blas_threads']['numpy']))}, Brian2 {result['blas_threads']['brian2']}",
        f"BLAS: numpy {', '.join(result['blas']['numpy'])}; Brian2 {result['blas']['brian2']}",
    ]
    for projection, part in result.get("projections", {}).items():
        relax = part.get("relaxation")
        if relax:
            r = relax["ratio_brian2_over_numpy"]
            lines += [
                f"[projection = {projection}] relaxation, batch 1, {relax['steps']} steps, {relax['samples_per_run']} samples per run:",
                f"  Brian2 cpp_standalone  {relax['brian2_updates_per_second'] / 1e6:10.1f} M synapse-updates/s"
                f"  ({relax['brian2_seconds']['median'] * 1e3:.1f} ms per run)",
                f"  numpy dense Euler      {relax['numpy_updates_per_second'] / 1e6:10.1f} M synapse-updates/s"
                f"  ({relax['numpy_seconds']['median'] * 1e3:.1f} ms)",
                f"  ratio Brian2/numpy     {r['median']:10.3f}  ({r['min']:.3f}-{r['max']:.3f}); max |dx| {relax['max_abs_deviation']:.1e}"
                f" (tolerance {relax['tolerance']:.0e})",
                f"  compile {relax['compile_seconds']:.1f} s; run_args overhead per run {relax['overhead_per_run_seconds'] * 1e3:.1f} ms"
                f" ({relax['single_sample_runs']} runs of 1 sample: {relax['single_sample_runs_seconds'] * 1e3:.0f} ms,"
                f" 1 run of {relax['samples_per_run']}: {relax['brian2_seconds']['median'] * 1e3:.0f} ms)",
            ]
        for key, _ in TRAINING_MODES[projection]:
            train = part.get(key)
            if not train:
                continue
            r = train["ratio_brian2_over_numpy"]
            mode = f"batch of {train['parallel_copies']} at once" if train["parallel_copies"] > 1 else "sample by sample"
            lines += [
                f"[projection = {projection}] training, {train['samples']} samples per run, {train['steps_per_sample']} steps/sample,"
                f" updates per batch of {train['batch_size']}:",
                f"  Brian2 ({mode}){' ' * max(1, 20 - len(mode))}{train['brian2_samples_per_second']:10.1f} samples/s",
                f"  numpy batched ({train['batch_size']})        {train['numpy_samples_per_second']:10.1f} samples/s",
                f"  ratio Brian2/numpy         {r['median']:10.3f}  ({r['min']:.3f}-{r['max']:.3f}); max |dW| {train['max_abs_deviation']:.1e}"
                f" (tolerance {train['tolerance']:.0e})",
            ]
            if "torch" in train:
                t = train["ratio_brian2_over_torch"]
                lines += [
                    f"  torch batched ({train['torch']}) {train['torch_samples_per_second']:10.1f} samples/s",
                    f"  ratio Brian2/torch         {t['median']:10.3f}  ({t['min']:.3f}-{t['max']:.3f});"
                    f" max |dW| {train['torch_max_abs_deviation']:.1e}",
                ]
            lines.append(f"  compile {train['compile_seconds']:.1f} s")
    for rule, train in result.get("rules", {}).items():
        r = train["ratio_brian2_over_numpy"]
        lines += [
            f"[rule = {rule}] training, dense, batch of {train['parallel_copies']} at once, {train['samples']} samples,"
            f" {train['samples_per_run']} per run:",
            f"  Brian2 {train['brian2_samples_per_second']:10.1f} samples/s, numpy reference {train['numpy_samples_per_second']:10.1f};"
            f" ratio {r['median']:.3f} ({r['min']:.3f}-{r['max']:.3f}); max |dW| {train['max_abs_deviation']:.1e}"
            f" (tolerance {train['tolerance']:.0e}); compile {train['compile_seconds']:.1f} s",
        ]
    for name, train in result.get("models", {}).items():
        r = train["ratio_brian2_over_numpy"]
        lines += [
            f"[model = {name}] training ({train['layers']} units), batch of {train['parallel_copies']} at once, {train['samples']} samples"
            f" per run, {train['steps_per_sample']} steps/sample:",
            f"  Brian2 {train['brian2_samples_per_second']:10.1f} samples/s, numpy batched (im2col) {train['numpy_samples_per_second']:10.1f};"
            f" ratio {r['median']:.3f} ({r['min']:.3f}-{r['max']:.3f}); max |dW| {train['max_abs_deviation']:.1e}"
            f" (tolerance {train['tolerance']:.0e}); compile {train['compile_seconds']:.1f} s",
        ]
    return "\n".join(lines)
