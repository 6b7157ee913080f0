"""Predictive coding (rule = "pc", SPEC 3.7): closed forms, BP at equilibrium, Brian2 against numpy.

Expected values come from the binomial law of the fixed-prediction
trajectory (research/pc.md section 2), the BP oracle, the linear-net closed
form of strict PC (research/pc.md section 1) and the rule's numpy Euler loop
over value nodes, which shares no code with the C++ of the compiled network.
"""

import numpy as np
import pytest
from scipy.stats import binom

from arsim import metrics
from arsim.brian.devices import get_runner
from arsim.brian.network import topology_for
from arsim.cli import main
from arsim.config import ConfigError, resolve
from arsim.reference import oracle
from arsim.relax import Problem, draw_problem, network_params, run_relaxation
from arsim.spec import Experiment
from arsim.training import BrianTrainer, init_params

from conftest import training_data

E = Experiment.from_config
SIZES = [5, 7, 6, 4, 3]
MAX_RELAX = 300


@pytest.fixture(scope="module")
def pc_runner(build_dir):
    runners = {}

    def get(config):
        topo = topology_for(E(config), max_relax=MAX_RELAX)
        if topo not in runners:
            runners[topo] = get_runner(topo)
        return runners[topo]

    return get


def _config(steps, eta=0.1, **keys):
    base = {"sizes": SIZES, "activation": "tanh", "bias": True, "init_std": 0.5, "feedback_std": 0.5, "rule": "pc",
            "tau": 10.0, "dt": 10.0 * eta, "duration": 10.0 * eta * steps}
    return resolve({**base, **keys})


def _relax(config, pc_runner):
    return run_relaxation(config, runner=pc_runner(config))


def _bp(problem, experiment):
    net = experiment.network
    fwd = oracle.forward(problem.W, problem.b, problem.x_in, net.hidden, net.output, net.loss)
    return oracle.backward(problem.W, fwd, problem.target, net.loss)


# ---------------------------------------------------------------------------- fixed prediction


def test_fixed_prediction_follows_the_binomial_law(pc_runner):
    """-eps^l_n = (1 - P[Bin(n, eta) <= k]) dL/dxbar^l, k the depth below the top hidden layer."""
    config = _config(30)
    result = _relax(config, pc_runner)
    bp = result.bp
    n_layers = len(SIZES) - 1
    checked = 0
    for n in (1, 3, 10, 30):
        row = int(np.nonzero(np.isclose(result.t, n * 0.1))[0][0])
        for l in range(1, n_layers):
            k = n_layers - 1 - l
            share = 1.0 - binom.cdf(k, n, 0.1)
            signal = result.xtrace[l][row]
            assert np.linalg.norm(signal - share * bp.dxbar[l]) <= 1e-12 * np.linalg.norm(bp.dxbar[l]), (n, l)
            if n <= k:
                assert np.max(np.abs(signal)) < 1e-14  # the error has not reached this layer yet
            else:
                assert metrics.cosine(signal, bp.dxbar[l]) > 1 - 1e-12  # the direction is exact at every step
            checked += 1
    assert checked == 12
    # after 30 steps the deepest layer is still well short of BP: the law is not the equilibrium
    assert metrics.relative_error(result.x[1], bp.dxbar[1]) > 0.3


def test_fixed_prediction_equals_bp_at_equilibrium_and_after_L_minus_1_steps_at_eta_1(pc_runner):
    for config in (_config(300), _config(len(SIZES) - 2, eta=1.0)):
        result = _relax(config, pc_runner)
        for l in range(1, len(SIZES)):
            assert metrics.relative_error(result.x[l], result.bp.dxbar[l]) < 1e-10
            assert metrics.relative_error(result.dW[l - 1], result.bp.dW[l - 1]) < 1e-10
            assert metrics.relative_error(result.db[l - 1], result.bp.db[l - 1]) < 1e-10
    # one step fewer at eta = 1: the deepest hidden layer has received nothing
    short = _relax(_config(len(SIZES) - 3, eta=1.0), pc_runner)
    assert np.max(np.abs(short.x[1])) < 1e-14


def test_fixed_prediction_with_cross_entropy_is_bp(pc_runner):
    config = _config(300, loss="ce")
    result = _relax(config, pc_runner)
    for l in range(1, len(SIZES) - 1):
        assert metrics.relative_error(result.dW[l - 1], result.bp.dW[l - 1]) < 1e-10


# ---------------------------------------------------------------------------- Brian2 against the numpy reference


CASES = [
    {"pc.prediction": "fixed", "pc.backward": "random", "pc.variance_ratio": 0.3},
    {"pc.prediction": "strict"},
    {"pc.prediction": "strict", "pc.backward": "random", "pc.derivative": False, "pc.variance_ratio": 0.5},
]


@pytest.mark.parametrize("keys", CASES, ids=["fixed-random", "strict", "strict-random-noderiv"])
def test_relaxation_equals_the_numpy_value_node_loop(keys, pc_runner):
    config = _config(40, **keys)
    experiment = E(config)
    result = _relax(config, pc_runner)
    problem = draw_problem(experiment)
    _, signal, _, _, _, trace = experiment.rule.reference_values(
        experiment.network, problem.W, problem.b, problem.B, problem.x_in[None], problem.target[None], record=True
    )
    dW, db, _ = experiment.rule.reference_update(experiment.network, problem.W, problem.b, problem.B,
                                                 problem.x_in[None], problem.target[None])
    for l in range(1, len(SIZES)):
        scale = np.max(np.abs(trace[l]))
        assert np.max(np.abs(result.xtrace[l] - trace[l][:, 0])) < 1e-10 * scale, l
        assert np.max(np.abs(result.dW[l - 1] - dW[l - 1])) < 1e-10 * np.max(np.abs(dW[l - 1])), l
        assert np.max(np.abs(result.db[l - 1] - db[l - 1])) < 1e-10 * np.max(np.abs(db[l - 1])), l
    # the comparison can fail: the signals moved from their start
    assert np.max(np.abs(trace[1][-1] - trace[1][0])) > 1e-3


def test_runtime_device_equals_the_numpy_value_node_loop():
    config = _config(20, **{"pc.prediction": "strict", "pc.backward": "learned"})
    experiment = E(config)
    result = run_relaxation(config, device="runtime")
    problem = draw_problem(experiment)
    _, _, _, _, _, trace = experiment.rule.reference_values(
        experiment.network, problem.W, problem.b, problem.B, problem.x_in[None], problem.target[None], n_steps=20, record=True
    )
    for l in range(1, len(SIZES)):
        assert np.max(np.abs(result.xtrace[l] - trace[l][:, 0])) < 1e-12


# ---------------------------------------------------------------------------- strict PC


def test_strict_pc_is_not_bp_on_a_nonlinear_net(pc_runner):
    """Negative control: strict PC's fixed point is not the BP adjoint (f' at the relaxed state, moving output)."""
    result = _relax(_config(300, **{"pc.prediction": "strict"}), pc_runner)
    gaps = [metrics.relative_error(result.dW[l], result.bp.dW[l]) for l in range(len(SIZES) - 1)]
    assert min(gaps) > 1e-3, gaps


def _linear_closed_form(W, e, sigma_out):
    """Strict PC on a linear net: eps^L = (sigma_L I + sum_hidden P_l P_l^T)^-1 (-e), signal^l = -sigma_L P_l^T eps^L."""
    n_layers = len(W)
    products = [None] * (n_layers + 1)
    products[n_layers] = np.eye(len(e))
    for l in range(n_layers - 1, 0, -1):
        products[l] = products[l + 1] @ W[l]
    system = sigma_out * np.eye(len(e)) + sum(products[l] @ products[l].T for l in range(1, n_layers))
    eps_out = np.linalg.solve(system, -e)
    return [None] + [-sigma_out * products[l].T @ eps_out for l in range(1, n_layers + 1)]


def test_strict_pc_on_a_linear_net_matches_the_closed_form_and_approaches_bp(pc_runner):
    gaps = []
    # strict PC descends the energy: its slowest mode (the Hessian's smallest eigenvalue, ~0.25 at this
    # init_std) sets the convergence and Euler is stable only below 2 / (largest, ~3.1), so eta = 0.5
    for ratio in (1.0, 0.1, 0.01):
        config = _config(300, eta=0.5, activation="linear", init_std=0.25, **{"pc.prediction": "strict", "pc.variance_ratio": ratio})
        result = _relax(config, pc_runner)
        fwd = oracle.forward(result.problem.W, result.problem.b, result.problem.x_in, E(config).network.hidden,
                             E(config).network.output, "mse")
        e = oracle.output_error(fwd.xbar[-1], result.problem.target, "mse")
        expected = _linear_closed_form(result.problem.W, e, 1.0 / ratio)
        for l in range(1, len(SIZES)):
            assert metrics.relative_error(result.x[l], expected[l]) < 1e-10, (ratio, l)
        gaps.append(metrics.relative_error(result.x[1], result.bp.dxbar[1]))
    assert gaps[0] > 0.05
    assert gaps[0] > 5 * gaps[1] > 25 * gaps[2]  # the gap shrinks like the variance ratio


def test_strict_pc_on_the_one_one_one_net(build_dir):
    """research/pc.md H3 at arsim's loss sum (y - T)^2: e = 2 (y - T), strict signal = e / (1 + w1^2 / sigma_L)."""
    config = resolve({"sizes": [1, 1, 1], "activation": "linear", "rule": "pc", "pc.prediction": "strict", "tau": 10.0,
                      "dt": 2.5, "duration": 1000.0})
    problem = Problem(W=[np.array([[0.5]]), np.array([[2.0]])], b=[np.zeros(1), np.zeros(1)], B=[np.zeros((1, 1))] * 2,
                      x_in=np.array([1.0]), target=np.array([2.0]))
    runner = get_runner(topology_for(E(config)))
    for ratio, expected in ((1.0, -2.0 / 5.0), (0.01, -2.0 * 100.0 / 104.0)):
        experiment = E(resolve({**config, "pc.variance_ratio": ratio}))
        raw = runner.run(network_params(runner.topology, experiment.network, problem, rule=experiment.rule))
        values = [raw[f"layer{l}.x"] for l in range(3)]
        fp = [raw[f"layer{l}.fp"] for l in range(3)]
        signal, _, _ = experiment.rule.local_factors(values, problem.W, problem.b, values, fp, experiment.network)
        assert abs(signal[2][0] - expected) < 1e-10
        assert abs(signal[1][0] - 2.0 * expected) < 1e-10  # signal^1 = w1 signal^2
    # BP: dL/dy = 2 (1 - 2) = -2; the strict signal approaches it as sigma_L grows (100 / 104 of it)


# ---------------------------------------------------------------------------- error connections (constraint c)


@pytest.mark.parametrize("connections", ["random", "learned"])
def test_error_connections_leave_the_equilibrium_at_bp(connections, pc_runner):
    """research/pc.md H5: under fixed prediction Phi only moves eps(0); the fixed point is BP whatever Phi is."""
    config = _config(MAX_RELAX, eta=0.5, **{"pc.error_connections": connections, "pc.error_std": 0.3})
    result = _relax(config, pc_runner)
    phi = result.problem.state
    assert sorted(phi) == ["Phi1", "Phi2", "Phi3"] and all(np.all(p >= 0) for p in phi.values())
    assert all(np.max(np.abs(p - np.eye(len(p)))) > 0.1 for p in phi.values())  # far from one to one
    bp = _bp(result.problem, E(config))
    for l in range(1, len(SIZES)):
        assert metrics.relative_error(result.x[l], bp.dxbar[l]) < 1e-10, l


def test_error_connections_add_the_free_response_of_the_start_offset(pc_runner):
    """eps_Phi(n) - eps_I(n) is the free response of the hidden error dynamics from (I - Phi) xbar, written here."""
    steps, eta = 12, 0.1
    config = _config(steps, eta=eta, **{"pc.error_connections": "random", "pc.error_std": 0.3})
    with_phi = _relax(config, pc_runner)
    identity = _relax(_config(steps, eta=eta), pc_runner)
    problem = with_phi.problem
    assert all(np.array_equal(u, v) for u, v in zip(problem.W, identity.problem.W))
    assert np.array_equal(problem.x_in, identity.problem.x_in) and np.array_equal(problem.target, identity.problem.target)
    xbar, fp = with_phi.xbar, with_phi.fp
    n_layers = len(SIZES) - 1
    # the free response: d = eps_Phi - eps_I starts at (I - Phi) xbar in the hidden layers, 0 at the clamped output,
    # and d^l <- d^l + eta (-d^l + W^l^T (fp^{l+1} d^{l+1})) synchronously
    d = [None] + [xbar[l] - problem.state[f"Phi{l}"] @ xbar[l] for l in range(1, n_layers)] + [np.zeros(SIZES[-1])]
    for _ in range(steps):
        drive = [None] + [problem.W[l].T @ (fp[l + 1] * d[l + 1]) for l in range(1, n_layers)]
        for l in range(1, n_layers):
            d[l] = d[l] + eta * (drive[l] - d[l])
    for l in range(1, n_layers):
        # the learning signal is -eps (variance ratio 1)
        difference = identity.x[l] - with_phi.x[l]
        assert np.max(np.abs(difference - d[l])) < 1e-12 * max(1.0, np.max(np.abs(d[l]))), l
        assert np.max(np.abs(d[l])) > 1e-3, l  # the offset has not died out: the test can fail


@pytest.mark.parametrize("device", ["cpp", "runtime"])
def test_training_with_learned_error_connections_equals_the_reference(device, build_dir):
    config = resolve({"sizes": [5, 4, 3, 2], "activation": "tanh", "output_activation": "tanh", "bias": True, "init_std": 0.6,
                      "duration": 3.0, "train.batch_size": 4, "train.lr": 0.05, "rule": "pc",
                      "pc.error_connections": "learned", "pc.error_std": 0.3})
    experiment = E(config)
    x, targets = training_data(config, 12)
    start = init_params(experiment)
    assert sorted(start.state) == ["Phi1", "Phi2"]
    result = BrianTrainer(experiment, 12, device=device).run_chunk(start, x, targets, epoch=1)
    reference = experiment.rule.reference_epoch(experiment, start, x, targets)
    for name in ("W", "b"):
        assert max(float(np.max(np.abs(u - v))) for u, v in zip(getattr(result.params, name), getattr(reference, name))) < 1e-10
    for key in ("Phi1", "Phi2"):
        assert np.max(np.abs(result.params.state[key] - reference.state[key])) < 1e-10, key
        assert np.max(np.abs(result.params.state[key] - start.state[key])) > 1e-3, key  # Phi learned
    # one batch's step by hand: Phi <- Phi - lr sum eps xbar^T, eps = x - Phi xbar after the relaxation
    values, _, _, _, fwd, _ = experiment.rule.reference_values(experiment.network, start.W, start.b, start.B, x[:4], targets[:4],
                                                               phi=[None, start.state["Phi1"], start.state["Phi2"], None])
    one = experiment.rule.reference_epoch(experiment, start, x[:4], targets[:4])
    eps = values[1] - fwd.xbar[1] @ start.state["Phi1"].T
    assert np.max(np.abs(one.state["Phi1"] - (start.state["Phi1"] - 0.05 * eps.T @ fwd.xbar[1]))) < 1e-14


# ---------------------------------------------------------------------------- training


@pytest.mark.parametrize("prediction", ["fixed", "strict"])
def test_training_with_learned_backward_weights_equals_the_reference_and_keeps_B_minus_WT(prediction, build_dir):
    config = resolve({"sizes": [5, 4, 3, 2], "activation": "tanh", "output_activation": "tanh", "bias": True, "init_std": 0.6,
                      "feedback_std": 0.4, "duration": 30.0, "train.batch_size": 4, "train.lr": 0.05, "rule": "pc",
                      "pc.prediction": prediction, "pc.backward": "learned", "pc.variance_ratio": 0.7})
    experiment = E(config)
    x, targets = training_data(config, 12)
    start = init_params(experiment)
    result = BrianTrainer(experiment, 12).run_chunk(start, x, targets, epoch=1)
    reference = experiment.rule.reference_epoch(experiment, start, x, targets)
    for name in ("W", "b", "B"):
        assert max(float(np.max(np.abs(u - v))) for u, v in zip(getattr(result.params, name), getattr(reference, name))) < 1e-10
    for l in range(3):
        before = start.B[l] - start.W[l].T
        after = result.params.B[l] - result.params.W[l].T
        assert np.max(np.abs(after - before)) < 1e-12
        assert np.max(np.abs(result.params.W[l] - start.W[l])) > 1e-3  # W (and so B) moved


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "keys,named",
    [
        ({"pc.variance_ratio": 0.0}, "pc.variance_ratio = 0.0"),
        ({"pc.prediction": "exact"}, "pc.prediction = 'exact'"),
        ({"pc.backward": "mirror"}, "pc.backward = 'mirror'"),
        ({"derivative": False}, "derivative = False with rule = 'pc'"),
        ({"initial_state": "zero"}, "initial_state = 'zero' with rule = 'pc'"),
        ({"pc.prediction": "strict", "loss": "ce"}, "loss = 'ce' with rule = 'pc'"),
        ({"projection": "synapses"}, "projection = 'synapses'"),
        ({"pc.error_connections": "dense"}, "pc.error_connections = 'dense'"),
        ({"pc.error_std": -1.0}, "pc.error_std = -1.0"),
        ({"pc.error_connections": "learned", "pc.prediction": "strict"}, "pc.prediction = 'strict' with rule = 'pc'"),
    ],
)
def test_bad_pc_settings_are_refused_in_one_line(keys, named):
    with pytest.raises(ConfigError) as info:
        resolve({"sizes": SIZES, "rule": "pc", **keys})
    assert named in str(info.value) and "\n" not in str(info.value)


def test_a_pc_table_for_another_rule_is_refused():
    with pytest.raises(ConfigError, match=r"pc.prediction = 'strict' belongs to table \[pc\] but rule = 'ar'"):
        resolve({"sizes": SIZES, "pc": {"prediction": "strict"}})


def test_arsim_relax_prints_the_pc_table(tmp_path, capfd, build_dir):
    model = tmp_path / "pc.toml"
    model.write_text('name = "pc"\nsizes = [4, 5, 3]\nrule = "pc"\nduration = 300.0\n[pc]\nprediction = "fixed"\n')
    out = tmp_path / "pc.npz"
    assert main(["relax", str(model), "--save", str(out)]) == 0
    text = capfd.readouterr().out
    assert "rule pc [prediction fixed" in text and "dW rel.err" in text
    saved = np.load(out)
    assert {"x1", "xtrace1", "dW0", "B1"} <= set(saved.files)
