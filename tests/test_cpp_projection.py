"""The dense projection backend (``projection = "dense"``) against independent numpy code.

`arsim.brian.cpp_projection` computes the per-step feedback ``fb = B (x * f')``, the
relaxed current drive ``anow = W x`` and the once-per-sample forward drive
``a = W xbar`` in C++ that reaches Brian2's arrays
through device-internal global names (``brian::_array_*``,
``brian::_dynamic_array_*``). This file is the regression test that guards
those names against a Brian2 upgrade: if a new version renames, retypes or
relocates them, the build fails or the numbers here stop matching.

Every compiled network here is a *training* network that also records ``x``
of every layer at every step, so one build checks both (a) the relaxation
trajectory of every sample against `arsim.reference.euler.relax_euler` (with the
weights the numpy reference holds at that sample's batch) and (b) the
trained weights against the rule's numpy reference (`arsim.rules.Rule.reference_epoch`), both to 1e-10. Six builds
cover exact AR, sequential ordering with random feedback, learned feedback
with and without the derivative, ce with relu and biases, and the relaxed
forward pass. The numpy implementations of the same functions (runtime
device) are checked without compiling.
"""

from dataclasses import replace

import numpy as np
import pytest

from arsim.reference import oracle
from arsim.activations import get_activation
from arsim.config import n_relax_steps, resolve
from arsim.brian.devices import Runner, StandaloneRunner
from arsim.brian.network import Topology, build_network, topology_for
from arsim.reference.euler import relax_euler
from arsim.training import BrianTrainer, init_params, train_topology
from arsim.spec import Experiment

E = Experiment.from_config  # tests type a resolved config as the CLI does
from conftest import training_data

SIZES = [6, 5, 4, 3, 2]
N_SAMPLES, BATCH = 12, 4
MAX_RELAX = 60

#: one compiled network each
VARIANTS = {
    "exact": {},
    "random+sequential": {"feedback": "random", "feedback_std": 0.5, "ordering": "sequential"},
    "learned": {"feedback": "learned", "feedback_std": 0.5},
    "learned+noderiv": {"feedback": "learned", "feedback_std": 0.5, "derivative": False},
    "ce+relu+bias": {"loss": "ce", "activation": "relu", "output_activation": "linear"},
    "all_current": {"forward": "all_current"},
}


def _config(**keys):
    base = {
        "sizes": SIZES, "activation": "tanh", "output_activation": "tanh", "bias": True, "init_std": 0.6,
        "tau": 10.0, "dt": 1.5, "duration": 1.5 * MAX_RELAX, "projection": "dense",
        "train.batch_size": BATCH, "train.lr": 0.05, "train.align_every": 1,
    }
    return resolve({**base, **keys})


def _data(config, seed=5):
    return training_data(config, N_SAMPLES, seed)


class _Recording(Runner):
    """Presents a build that also records ``x`` as the plain training topology."""

    def __init__(self, topology: Topology, inner: Runner):
        self.topology, self.inner, self.last = topology, inner, None

    def run(self, params):
        self.last = self.inner.run(params)
        return self.last


@pytest.fixture(scope="module")
def trained(build_dir):
    """``trained(variant)``: config, initial params, data, Brian2 chunk result and recorded traces."""
    cache = {}

    def get(variant):
        if variant not in cache:
            config = _config(**VARIANTS[variant])
            topology = train_topology(E(config), N_SAMPLES, MAX_RELAX)
            assert topology.projection == "dense"
            runner = _Recording(topology, StandaloneRunner(replace(topology, record_variables=("x",), record_every=1)))
            params = init_params(E(config))
            x, targets = _data(config)
            result = BrianTrainer(E(config), N_SAMPLES, max_relax=MAX_RELAX, runner=runner).run_chunk(params, x, targets)
            cache[variant] = (config, params, x, targets, result, runner.last, topology.copies)
        return cache[variant]

    return get


def _reference_epoch(config, params, x, targets):
    """Numpy training (batched, no Brian2) and the weights in force at each batch."""
    before = [params.copy()]
    final = E(config).rule.reference_epoch(E(config), params, x, targets, after_batch=lambda index, p: before.append(p.copy()))
    return final, before


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "all_current"])
def test_dense_relaxation_trajectory_equals_numpy_euler(trained, variant):
    """Every sample's recorded x(t) equals relax_euler with the weights of its batch.

    Training relaxes a batch at once (copies of the layers): sample ``s`` is
    copy ``s % copies`` of sample period ``s // copies``.
    """
    config, params, x, targets, _, raw, copies = trained(variant)
    assert copies == BATCH
    _, before = _reference_epoch(config, params, x, targets)
    hidden = get_activation(config["activation"])
    output = get_activation(config["output_activation"])
    eta, steps = config["dt"] / config["tau"], n_relax_steps(config)
    per_sample = steps + 1
    moved = 0.0
    for s in range(N_SAMPLES):
        p = before[s // BATCH]
        fwd = oracle.forward(p.W, p.b, x[s], hidden, output, config["loss"])
        e = oracle.output_error(fwd.xbar[-1], targets[s], config["loss"])
        _, trace = relax_euler(p.B, fwd.xbar, fwd.fp, e, eta, steps, config["derivative"], config["ordering"])
        for layer in range(1, len(SIZES)):
            period, copy, n = s // copies, s % copies, SIZES[layer]
            recorded = raw[f"monitor{layer}.x"][period * per_sample:(period + 1) * per_sample, copy * n:(copy + 1) * n]
            np.testing.assert_allclose(recorded, trace[layer], rtol=0, atol=1e-10)
        moved = max(moved, np.abs(trace[1][-1] - trace[1][0]).max())
    assert moved > 1e-2  # the hidden layers really relaxed: the comparison is not vacuous


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_dense_training_equals_numpy(trained, variant):
    config, params, x, targets, result, _, _ = trained(variant)
    final, _ = _reference_epoch(config, params, x, targets)
    for l in range(len(SIZES) - 1):
        np.testing.assert_allclose(result.params.W[l], final.W[l], rtol=0, atol=1e-10)
        np.testing.assert_allclose(result.params.b[l], final.b[l], rtol=0, atol=1e-10)
        np.testing.assert_allclose(result.params.B[l], final.B[l], rtol=0, atol=1e-10)
    assert min(np.abs(result.params.W[l] - params.W[l]).max() for l in range(len(SIZES) - 1)) > 1e-4


def test_dense_network_has_no_per_step_synaptic_sums():
    """No (summed) variable is left on a dense projection: a, anow and fb are C++ mat-vecs."""
    import gc

    from brian2.devices.device import reset_device
    from brian2.utils.logger import catch_logs

    reset_device("runtime")
    config = _config(forward="all_current", feedback="learned")
    with catch_logs():  # the objects are never run: silence Brian2's "unused object" warnings
        dense = build_network(train_topology(E(config), N_SAMPLES, MAX_RELAX))
        synapses = build_network(train_topology(E(resolve({**config, "projection": "synapses"})), N_SAMPLES, MAX_RELAX))
        for index, (d, s) in enumerate(zip(dense.projections, synapses.projections)):
            assert not d.summed_updaters
            assert set(s.summed_updaters) == {"a_post", "anow_post"} | ({"fb_pre"} if index else set())
            names = {obj.name for obj in d.contained_objects}
            assert {f"proj{index}_a", f"proj{index}_anow"} <= names
            assert (f"proj{index}_feedback" in names) == (index >= 1)
        del dense, synapses, d, s
        gc.collect()


def test_projection_key_reaches_the_build_key():
    config = _config()
    assert topology_for(E(config)).projection == "dense"
    assert train_topology(E(config), N_SAMPLES).projection == "dense"
    assert topology_for(E(resolve({**config, "projection": "synapses"}))).projection == "synapses"
    assert topology_for(E(config)) != topology_for(E(resolve({**config, "projection": "synapses"})))


@pytest.mark.parametrize("keys", [{}, {"feedback": "learned", "feedback_std": 0.5, "derivative": False}], ids=["exact", "learned+noderiv"])
def test_runtime_device_dense_relaxation_equals_numpy_euler(relax, keys):
    """The numpy implementations of the dense functions (runtime device, no compiler)."""
    res = relax(device="runtime", projection="dense", duration=30.0, dt=1.5, tau=10.0, bias=True, **keys)
    cfg = res.experiment.config
    fwd = oracle.forward(
        res.problem.W, res.problem.b, res.problem.x_in, get_activation(cfg["activation"]), get_activation(cfg["output_activation"]), cfg["loss"]
    )
    e = oracle.output_error(fwd.xbar[-1], res.problem.target, cfg["loss"])
    _, trace = relax_euler(res.problem.B, fwd.xbar, fwd.fp, e, 0.15, 20, cfg["derivative"], cfg["ordering"])
    for layer in range(1, len(trace)):
        np.testing.assert_allclose(res.xtrace[layer], trace[layer], rtol=0, atol=1e-10)


def test_runtime_device_dense_relaxed_forward_training_equals_numpy():
    config = _config(forward="all_current", ordering="sequential", duration=15.0)
    params = init_params(E(config))
    x, targets = _data(config)
    result = BrianTrainer(E(config), N_SAMPLES, device="runtime", max_relax=10).run_chunk(params, x, targets)
    final, _ = _reference_epoch(config, params, x, targets)
    for l in range(len(SIZES) - 1):
        np.testing.assert_allclose(result.params.W[l], final.W[l], rtol=0, atol=1e-10)
        np.testing.assert_allclose(result.params.b[l], final.b[l], rtol=0, atol=1e-10)


@pytest.mark.parametrize("parallel", ["batch", "sample"])
def test_float32_training_equals_float32_numpy(build_dir, parallel):
    """precision = float32: the network computes in float32 (sgemm with batch copies).

    It agrees with numpy AR in float32 to float32 round-off and differs from
    the float64 reference by more than float64 round-off (it really ran in
    float32), but by no more than float32 accuracy allows.
    """
    config = _config(precision="float32", duration=30.0, **{"train.parallel": parallel})
    params = init_params(E(config))
    x, targets = _data(config)
    trainer = BrianTrainer(E(config), N_SAMPLES, max_relax=20 if parallel == "batch" else MAX_RELAX)
    assert trainer.topology.precision == "float32"
    result = trainer.run_chunk(params, x, targets).params
    single = E(config).rule.reference_epoch(E(config), params.astype(np.float32), x.astype(np.float32), targets.astype(np.float32))
    double = E(config).rule.reference_epoch(E(config), params, x, targets)
    assert single.W[0].dtype == np.float32  # the reference itself stayed in float32
    to_double, to_single = 0.0, 0.0
    for l in range(len(SIZES) - 1):
        to_single = max(to_single, np.abs(result.W[l] - single.W[l]).max(), np.abs(result.b[l] - single.b[l]).max())
        to_double = max(to_double, np.abs(result.W[l] - double.W[l]).max())
    assert to_single < 1e-5
    assert 1e-12 < to_double < 1e-5
    assert min(np.abs(result.W[l] - params.W[l]).max() for l in range(len(SIZES) - 1)) > 1e-4


def test_float32_relaxation_equals_numpy_euler(relax):
    """The batch-1 mat-vec loops in float32 against the float64 integration."""
    res = relax(projection="dense", precision="float32", duration=30.0, dt=1.5, tau=10.0, bias=True)
    cfg = res.experiment.config
    fwd = oracle.forward(
        res.problem.W, res.problem.b, res.problem.x_in, get_activation(cfg["activation"]), get_activation(cfg["output_activation"]), cfg["loss"]
    )
    e = oracle.output_error(fwd.xbar[-1], res.problem.target, cfg["loss"])
    _, trace = relax_euler(res.problem.B, fwd.xbar, fwd.fp, e, 0.15, 20, cfg["derivative"], cfg["ordering"])
    deviation = max(np.abs(res.xtrace[layer] - trace[layer]).max() for layer in range(1, len(trace)))
    assert 1e-12 < deviation < 1e-5
