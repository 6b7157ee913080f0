"""AR on convolutional networks in Brian2: the relaxation through conv and pool layers, and training.

Expected values: the BP adjoint of the numpy oracle on the same layers (whose
operators `tests/test_layers.py` checks against loops and finite
differences), the binomial law of a cold start (SPEC section 2,
research/ar_cnn.md H1), the pool's routing (H3), the learned-kernel invariant
(H4), and each variant's numpy reference (`Rule.reference_epoch`), which
shares no code with the C++ of `arsim.brian.conv_projection`.
"""

import json

import numpy as np
import pytest
from scipy.stats import binom

from arsim import metrics
from arsim.brian.devices import get_runner, parameter_sizes
from arsim.brian.network import topology_for
from arsim.cli import main
from arsim.config import resolve
from arsim.relax import draw_problem, network_params, run_relaxation
from arsim.spec import Experiment
from arsim.training import BrianTrainer, init_params, train_topology
from conftest import training_data

E = Experiment.from_config
#: two convolutions (the second on a pooled, padded input) and a dense output
LAYERS = [{"kind": "conv", "channels": 3, "kernel": 3}, {"kind": "maxpool", "size": 2},
          {"kind": "conv", "channels": 2, "kernel": 2, "padding": 1}, {"kind": "dense", "units": 4}]
N_SAMPLES, BATCH = 12, 4


def _config(**keys):
    base = {"input_shape": [2, 8, 8], "layers": LAYERS, "activation": "tanh", "bias": True, "init_std": 0.4, "feedback_std": 0.4,
            "duration": 600.0, "input": "normal"}
    return resolve({**base, **keys})


@pytest.fixture(scope="module")
def relaxed(build_dir):
    """One 600-step relaxation of the CNN (records every step), shared by the relaxation tests."""
    runs = {}

    def get(initial_state):
        if initial_state not in runs:
            config = _config(initial_state=initial_state)
            runs[initial_state] = run_relaxation(config)
        return runs[initial_state]

    return get


def test_long_relaxation_through_conv_and_pool_layers_is_the_bp_adjoint(relaxed):
    result = relaxed("forward")
    assert result.experiment.network.sizes == (128, 108, 32, 4)
    for row in result.layers:
        assert row["x_rel_error"] < 1e-8 and row["dW_rel_error"] < 1e-8, row
    assert result.dW[0].shape == (3, 2, 3, 3) and result.dW[1].shape == (2, 3, 2, 2)


def test_cold_start_every_unit_follows_the_binomial_law(relaxed):
    """From x(0) = 0 the layer d below the clamp is ``P(Bin(n, h) >= d)`` times its adjoint, unit by unit (H1)."""
    result = relaxed("zero")
    n_layers = len(result.problem.W)
    h = result.experiment.network.eta
    steps = np.rint(result.t / h).astype(int)
    for layer in range(1, n_layers):
        depth = n_layers - layer
        target = result.bp.dxbar[layer]
        law = 1.0 - binom.cdf(depth - 1, steps, h)
        np.testing.assert_allclose(result.xtrace[layer], law[:, None] * target[None, :], rtol=0,
                                   atol=1e-12 * np.abs(target).max(), err_msg=f"layer {layer}")


def test_the_pool_routes_feedback_to_the_argmax_units_only(relaxed):
    """Below the pool every unit that was not its window's maximum gets no feedback: 0 from a cold start (H3)."""
    cold, warm = relaxed("zero"), relaxed("forward")
    xbar = cold.xbar[1].reshape(3, 3, 2, 3, 2).transpose(0, 1, 3, 2, 4).reshape(3, 3, 3, 4)  # 3 x 6 x 6 in 2 x 2 windows
    winner = np.argmax(xbar, axis=-1)
    for result, start in ((cold, 0.0), (warm, 1.0)):
        trace = result.xtrace[1].reshape(-1, 3, 3, 2, 3, 2).transpose(0, 1, 2, 4, 3, 5).reshape(-1, 3, 3, 3, 4)
        others = np.ones(xbar.shape, dtype=bool)
        np.put_along_axis(others, winner[..., None], False, axis=-1)
        h = result.experiment.network.eta
        steps = np.rint(result.t / h)
        # a unit without feedback decays from its start: exactly 0, or (1 - h)^n xbar from the forward start
        expected = start * (1.0 - h) ** steps[:, None] * xbar[others][None, :]
        np.testing.assert_allclose(trace[:, others], expected, rtol=1e-12, atol=0)
        assert np.all(np.abs(trace[-1][~others]) > 0)
    assert np.count_nonzero(cold.xtrace[1][-1]) == 3 * 3 * 3  # one unit per window


CASES = {
    "exact": {},
    "learned": {"feedback": "learned"},
    "conv-learned": {"conv_feedback": "learned"},
    "dense-learned+conv-noderiv": {"feedback": "learned", "conv_feedback": "transpose", "conv_derivative": "off"},
    "random+noderiv-dense+sample": {"feedback": "random", "derivative": False, "conv_derivative": "on", "train.parallel": "sample"},
    "ce+relu": {"loss": "ce", "activation": "relu", "output_activation": "linear"},
    # Han et al.'s DFA into convolutions: D^l fixed, dense from the output to every unit
    "dfa": {"rule": "dfa"},
    # a pool in front of a dense layer (digits_cnn's shape) with learned B, and DFA through it
    "pooled-dense-learned": {"feedback": "learned", "layers": [{"kind": "conv", "channels": 3, "kernel": 3},
                                                               {"kind": "maxpool", "size": 2}, {"kind": "dense", "units": 5},
                                                               {"kind": "dense", "units": 4}]},
}


@pytest.mark.parametrize("case", list(CASES))
def test_brian_cnn_training_equals_the_numpy_reference(case, build_dir):
    config = _config(duration=30.0, **{"train.batch_size": BATCH, "train.lr": 0.02, "train.align_every": 1, **CASES[case]})
    experiment = E(config)
    x, targets = training_data(config, N_SAMPLES)
    start = init_params(experiment)
    result = BrianTrainer(experiment, N_SAMPLES).run_chunk(start, x, targets)
    trained = result.params
    reference = experiment.rule.reference_epoch(experiment, start, x, targets)
    for name in ("W", "b", "B"):
        deviation = max(float(np.max(np.abs(u - v))) for u, v in zip(getattr(trained, name), getattr(reference, name)))
        assert deviation < 1e-10, (name, deviation)
    assert max(float(np.max(np.abs(u - v))) for u, v in zip(trained.W, start.W)) > 1e-2
    assert not np.any(trained.b[0])  # convolutions have no bias
    if config["rule"] == "dfa":
        np.testing.assert_array_equal(trained.B[1], start.B[1])  # D^1, into the conv layer, is fixed
        assert trained.B[1].shape == (108, 4) and trained.B[2].shape == (32, 4)
    for l in range(len(start.W)):
        if config["feedback"] == "learned" and (l == 2 or config["conv_feedback"] in ("same", "learned")) or (
                config["conv_feedback"] == "learned" and l < 2):
            # H4: dB = dW^T (a kernel's in its own layout) keeps B - W^T at its start, entry by entry
            shift = (lambda B, W: B - (W if W.ndim == 4 else W.T))
            np.testing.assert_allclose(shift(trained.B[l], trained.W[l]), shift(start.B[l], start.W[l]), rtol=0, atol=1e-12)
            assert np.max(np.abs(trained.B[l] - start.B[l])) > 1e-3
    # the update angles to BP are measured for every layer: the dense output's is BP's
    top = len(start.W) - 1
    assert {row[1] for row in result.alignment} == set(range(top + 1))
    assert all(row[2] < 1e-6 for row in result.alignment if row[1] == top)


def test_runtime_device_trains_the_cnn_like_the_compiled_one(build_dir):
    config = _config(duration=10.0, **{"train.batch_size": BATCH, "train.lr": 0.02, "feedback": "learned"})
    experiment = E(config)
    x, targets = training_data(config, BATCH)
    start = init_params(experiment)
    compiled = BrianTrainer(experiment, BATCH).run_chunk(start, x, targets).params
    runtime = BrianTrainer(experiment, BATCH, device="runtime").run_chunk(start, x, targets).params
    for name in ("W", "b", "B"):
        assert max(float(np.max(np.abs(u - v))) for u, v in zip(getattr(compiled, name), getattr(runtime, name))) < 1e-12


def test_the_kernel_exists_once_per_convolution():
    """The mnist CNN's run-time arrays: 150 and 2,400 kernel entries, however many positions share them (H2)."""
    experiment = E(resolve({"name": "mnist_cnn", **_load("mnist_cnn")}))
    assert experiment.network.sizes == (784, 3456, 1024, 120, 120, 10)
    topo = train_topology(experiment, 64)
    sizes = parameter_sizes(topo)
    assert sizes["proj0.w"] == 6 * 1 * 5 * 5 == 150 and sizes["proj1.w"] == 16 * 6 * 5 * 5 == 2400
    assert sizes["proj2.w"] == 120 * 1024 and sizes["layer1.b"] == 64 * 3456
    assert [w.shape for w in init_params(experiment).W] == [(6, 1, 5, 5), (16, 6, 5, 5), (120, 1024), (120, 120), (10, 120)]


def _load(name):
    from arsim.config import load
    from arsim.models import resolve_model

    return dict(load(resolve_model(name)))


def test_arsim_train_and_relax_run_the_digits_cnn_from_the_shell(tmp_path, capsys):
    assert main(["train", "digits_cnn", "--epochs", "1", "--set", "train.max_samples=320", "--out", str(tmp_path / "ar"),
                 "--quiet"]) == 0
    rows = json.loads((tmp_path / "ar" / "metrics.json").read_text())
    assert rows[-1]["test_accuracy"] > 0.2 and np.isfinite(rows[-1]["angle_deg_0"])
    with np.load(tmp_path / "ar" / "weights.npz") as weights:
        assert weights["W0"].shape == (8, 1, 3, 3)
    capsys.readouterr()
    assert main(["relax", "digits_cnn", "--set", "duration=400.0", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert [row["layer"] for row in table["layers"]] == [1, 2, 3]
    assert all(row["x_rel_error"] < 1e-6 for row in table["layers"])


# ---------------------------------------------------------------------------- the plain-Synapses cross-check

NO_POOL = [{"kind": "conv", "channels": 3, "kernel": 3}, {"kind": "conv", "channels": 2, "kernel": 2, "padding": 1, "stride": 2},
           {"kind": "dense", "units": 4}]


@pytest.mark.parametrize("keys", [{}, {"feedback": "learned"}, {"feedback": "random", "derivative": False}],
                         ids=["exact", "learned", "random-noderiv"])
def test_the_synapses_path_trains_like_the_fast_path(keys, build_dir):
    """Linked weights on unrolled Brian2 Synapses against im2col + gemm: the same numbers to 1e-10."""
    trained = {}
    for projection in ("dense", "synapses"):
        config = _config(layers=NO_POOL, input_shape=[2, 6, 6], duration=30.0, projection=projection,
                         **{"train.parallel": "sample", "train.batch_size": BATCH, "train.lr": 0.05}, **keys)
        experiment = E(config)
        x, targets = training_data(config, N_SAMPLES)
        start = init_params(experiment)
        trained[projection] = BrianTrainer(experiment, N_SAMPLES).run_chunk(start, x, targets).params
    for name in ("W", "b", "B"):
        fast, plain = getattr(trained["dense"], name), getattr(trained["synapses"], name)
        assert max(float(np.max(np.abs(u - v))) for u, v in zip(fast, plain)) < 1e-10, name
    assert max(float(np.max(np.abs(u - v))) for u, v in zip(trained["dense"].W, start.W)) > 1e-2


def test_every_unrolled_connection_reads_the_one_kernel():
    """The mnist CNN's convolutions as Synapses: 86,400 and 153,600 connections, 150 and 2,400 distinct weights (H2)."""
    from brian2 import NeuronGroup
    from brian2.devices.device import reset_device

    from arsim.brian.conv_synapses import add_conv_synapses, conv_connections
    from arsim.layers import Conv

    reset_device("runtime")
    rng = np.random.default_rng(7)
    for op, connections in ((Conv(in_shape=(1, 28, 28), pool=0, channels=6, kernel=5), 86_400),
                            (Conv(in_shape=(6, 12, 12), pool=0, channels=16, kernel=5), 153_600)):
        pre_units, post_units, entries = conv_connections(op)
        assert len(pre_units) == connections
        rule = E(resolve({"sizes": [3, 2]})).rule
        pre, post = NeuronGroup(int(np.prod(op.in_shape)), "xbar : 1\nx : 1\nfp : 1\nfb : 1"), NeuronGroup(
            int(np.prod(op.out_shape)), "xbar : 1\nx : 1\nfp : 1\na : 1")
        kernel, (unrolled,) = add_conv_synapses(0, op, pre, post, rule, pre.clock, pre.clock, pre.clock.dt, {}, False, False, False,
                                                orders={"forward": 1})
        values = rng.normal(size=kernel.N)
        kernel.w = values
        weights = np.asarray(unrolled.w[:])
        assert len(weights) == connections and len(np.unique(weights)) == kernel.N == np.prod(op.weight_shape)
        np.testing.assert_array_equal(weights, values[entries])  # synapse s reads kernel entry k[s]
        # the same pairs as the loops of tests/test_layers.py: a = K * x through the synapses' (pre, post, k)
        x = rng.normal(size=int(np.prod(op.in_shape)))
        a = np.zeros(int(np.prod(op.out_shape)))
        np.add.at(a, post_units, values[entries] * x[pre_units])
        np.testing.assert_allclose(a, op.forward(values.reshape(op.weight_shape), x[None])[0][0], rtol=0, atol=1e-12)
