"""GAIT-prop (rule = "gait"): the Brian2 target relaxation against the numpy mathematics and the BP oracle.

Expected values come from `arsim.reference.gait.gait_pass` (targets through
exact inverses, written without the rule code), the rule's numpy Euler loop,
and the BP oracle with orthogonal weights (research/gait_pal_di.md A.3).
"""

import numpy as np
import pytest
from scipy.stats import ortho_group

from arsim.brian.devices import get_runner
from arsim.brian.network import topology_for
from arsim.config import resolve
from arsim.reference import oracle
from arsim.reference.gait import gait_pass
from arsim.relax import draw_problem, network_params, run_relaxation
from arsim.spec import Experiment

E = Experiment.from_config
SIZES = [6, 8, 8, 8]
GAMMA = 1e-2


def _config(steps, eta, **keys):
    base = {"sizes": SIZES, "activation": "leaky_relu", "leaky_slope": 0.1, "output_activation": "linear", "bias": True,
            "init_std": 0.4, "rule": "gait", "tau": 1.0, "dt": eta, "duration": eta * steps, "gait.gamma": GAMMA, "seed": 1}
    return resolve({**base, **keys})


@pytest.fixture(scope="module")
def gait_runner(build_dir):
    runners = {}

    def get(config):
        topo = topology_for(E(config), max_relax=2000)
        if topo not in runners:
            runners[topo] = get_runner(topo)
        return runners[topo]

    return get


def _expected(result, config):
    net = E(config).network
    p = result.problem
    fwd = oracle.forward(p.W, p.b, p.x_in, net.hidden, net.output, net.loss)
    e = oracle.output_error(fwd.xbar[-1], p.target, net.loss)
    return gait_pass(p.W, p.b, fwd, e, GAMMA, "leaky_relu", output_activation="linear"), fwd


@pytest.mark.parametrize("steps,eta", [(2, 1.0), (2000, 0.1)])
def test_the_relaxed_targets_are_the_authors_targets(steps, eta, gait_runner):
    """L-1 synchronous steps at dt/tau = 1 compute the cascade exactly; a long relaxation converges to it."""
    config = _config(steps, eta)
    result = run_relaxation(config, runner=gait_runner(config))
    expected, fwd = _expected(result, config)
    assert not any(expected.crossings)
    assert result.diagnostics == {"kink_crossings_1": 0, "kink_crossings_2": 0}
    for l in range(1, len(SIZES)):
        signal = expected.errors[l] / fwd.fp[l]
        assert np.max(np.abs(result.x[l] - signal)) < 1e-9 * np.max(np.abs(signal)), l
        assert np.max(np.abs(result.dW[l - 1] - expected.dW[l - 1])) < 1e-9 * np.max(np.abs(expected.dW[l - 1])), l


def test_arsim_relax_counts_the_kink_crossings_of_its_relaxed_state(gait_runner):
    """Large target steps (gamma 3) push units over the kink: the counts are `gait_pass`'s for the same sample."""
    config = _config(2, 1.0, **{"gait.gamma": 3.0, "seed": 4})
    result = run_relaxation(config, runner=gait_runner(config))
    p = result.problem
    net = E(config).network
    fwd = oracle.forward(p.W, p.b, p.x_in, net.hidden, net.output, net.loss)
    e = oracle.output_error(fwd.xbar[-1], p.target, net.loss)
    crossings = gait_pass(p.W, p.b, fwd, e, 3.0, "leaky_relu", output_activation="linear").crossings
    assert crossings[1] + crossings[2] > 0, crossings
    assert result.diagnostics == {"kink_crossings_1": crossings[1], "kink_crossings_2": crossings[2]}


def test_the_tower_form_relaxes_to_the_authors_targets(gait_runner):
    """Narrowing layers W^l = [S^l, 0]: auxiliary units keep displacement 0 (target = forward activity)."""
    config = _config(2, 1.0, sizes=[6, 10, 8, 5])
    result = run_relaxation(config, runner=gait_runner(config))
    p = result.problem
    assert not np.any(p.W[1][:, 8:]) and not np.any(p.W[2][:, 5:])  # drawn in the tower form
    expected, fwd = _expected(result, config)
    assert not any(expected.crossings)
    for l in (1, 2, 3):
        signal = expected.errors[l] / fwd.fp[l]
        assert np.max(np.abs(result.x[l] - signal)) < 1e-9 * np.max(np.abs(signal)), l
    assert not np.any(result.x[1][8:]) and not np.any(result.x[2][5:])
    assert np.max(np.abs(result.x[1][:8])) > 0


def test_orthogonal_layers_give_the_bp_update_through_brian2(gait_runner):
    config = _config(2, 1.0)
    experiment = E(config)
    problem = draw_problem(experiment)
    problem.W = [problem.W[0]] + [ortho_group.rvs(8, random_state=l) for l in (1, 2)]
    problem.B = experiment.rule.initial_backward(problem.W, None, 0.0)
    runner = gait_runner(config)
    raw = runner.run(network_params(runner.topology, experiment.network, problem, rule=experiment.rule))
    net = experiment.network
    fwd = oracle.forward(problem.W, problem.b, problem.x_in, net.hidden, net.output, net.loss)
    bp = oracle.backward(problem.W, fwd, problem.target, net.loss)
    for l in range(1, len(SIZES)):
        signal = raw[f"layer{l}.x"] * GAMMA ** -(len(SIZES) - 1 - l)
        dW = np.outer(signal * fwd.fp[l], fwd.xbar[l - 1])
        cosine = np.sum(dW * bp.dW[l - 1]) / (np.linalg.norm(dW) * np.linalg.norm(bp.dW[l - 1]))
        assert 1 - cosine < 1e-12, l


def test_runtime_device_equals_the_numpy_target_loop():
    config = _config(20, 0.3)
    experiment = E(config)
    result = run_relaxation(config, device="runtime")
    p = result.problem
    t, fwd, trace = experiment.rule.reference_displacements(experiment.network, p.W, p.b, p.B, p.x_in[None], p.target[None], record=True)
    for l in range(1, len(SIZES)):
        gain = GAMMA ** -(len(SIZES) - 1 - l)
        expected = trace[l][:, 0] * gain
        assert np.max(np.abs(result.xtrace[l] - expected)) < 1e-9 * np.max(np.abs(expected)), l


# ---------------------------------------------------------------------------- training

GAIT_TINY = """
name = "gait-tiny"
sizes = [64, 10, 10, 10]
activation = "leaky_relu"
leaky_slope = 0.1
output_activation = "linear"
bias = true
init = "orthogonal"
seed = 2
rule = "gait"
tau = 1.0
dt = 1.0
duration = 2.0
[gait]
gamma = 0.01
orthogonal_reg = 0.1
[train]
data = "digits"
epochs = 1
batch_size = 16
lr = 0.01
max_samples = 96
"""


def _tiny_config(tmp_path, **keys):
    from arsim.config import load

    model = tmp_path / "gait.toml"
    model.write_text(GAIT_TINY)
    return model, load(model, [f"{k}={v}" for k, v in keys.items()])


def test_one_training_run_is_the_authors_update_plus_the_orthogonality_penalty(tmp_path, build_dir):
    """W' = W - lr (<eps xbar^T> + lambda dR/dW), written from `gait_pass` and the regulariser, B' = (W')^-1."""
    from arsim.reference.gait import orthogonality_gradient
    from arsim.training import BrianTrainer, init_params

    _, config = _tiny_config(tmp_path, **{"init_std": 0.4, "init": '"normal"'})
    experiment = E(config)
    net, lr, lam = experiment.network, 0.01, 0.1
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, size=(16, 64))
    targets = np.eye(10)[rng.integers(10, size=16)]
    start = init_params(experiment)
    trainer = BrianTrainer(experiment, 16)
    trained = trainer.run_chunk(start, x, targets).params
    fwd = oracle.forward(start.W, start.b, x, net.hidden, net.output, net.loss)
    expected = gait_pass(start.W, start.b, fwd, oracle.output_error(fwd.xbar[-1], targets, net.loss), 0.01, "leaky_relu",
                         0.1, "linear")
    for l in range(3):
        penalty = lam * orthogonality_gradient(start.W[l]) if l >= 1 else 0.0
        W = start.W[l] - lr * (expected.dW[l] + penalty)
        assert np.max(np.abs(trained.W[l] - W)) < 1e-10 * np.max(np.abs(W)), l
        np.testing.assert_allclose(trained.b[l], start.b[l] - lr * expected.db[l], rtol=0, atol=1e-10)
        if l >= 1:
            # the test can fail: the penalty moved W by far more than the tolerance
            assert np.max(np.abs(lr * penalty)) > 1e-4
            np.testing.assert_allclose(trained.B[l] @ trained.W[l], np.eye(10), rtol=0, atol=1e-10)
    # the next run, handed back the stabilised weights, does not invert them again; a copy of them is inverted
    calls = []
    stabilise = experiment.rule.stabilise
    trainer.rule.stabilise = lambda *a: calls.append(a[3]) or stabilise(*a)
    again = trainer.run_chunk(trained, x, targets).params
    assert len(calls) == 1 and calls[0].startswith("after"), calls
    fresh = trainer.run_chunk(trained.copy(), x, targets).params
    assert len(calls) == 3 and calls[1].startswith("before"), calls
    for l in range(3):
        np.testing.assert_array_equal(again.W[l], fresh.W[l])
        np.testing.assert_array_equal(again.B[l], fresh.B[l])


def _tower_experiment(tmp_path, **keys):
    """The tiny model as a tower (64-14-12-10): W^1 = [S^1, 0] reads 12 of 14 units, W^2 = [S^2, 0] 10 of 12."""
    from arsim.config import load

    model = tmp_path / "tower.toml"
    model.write_text(GAIT_TINY.replace("sizes = [64, 10, 10, 10]", "sizes = [64, 14, 12, 10]"))
    return E(load(model, [f"{k}={v}" for k, v in {"init": '"normal"', "init_std": 0.4, **keys}.items()]))


def _batch_counts(experiment, before, x, targets, batch):
    """Kink crossings per hidden layer, summed over the batches, each at the weights it started from (`gait_pass`)."""
    net, counts = experiment.network, np.zeros(3, dtype=int)
    for index, params in enumerate(before):
        rows = slice(batch * index, batch * (index + 1))
        fwd = oracle.forward(params.W, params.b, x[rows], net.hidden, net.output, net.loss)
        e = oracle.output_error(fwd.xbar[-1], targets[rows], net.loss)
        counts += gait_pass(params.W, params.b, fwd, e, experiment.rule.gamma, "leaky_relu", 0.1, "linear").crossings[:3]
    return counts


@pytest.mark.parametrize("device", ["cpp", "runtime"])
def test_a_run_of_several_batches_penalises_inverts_and_counts_inside_the_run(tmp_path, build_dir, device):
    """Three batches in one run: each update is the authors' plus the penalty, with B^l = (S^l)^-1 after every one.

    The expected weights are the rule's numpy reference epoch (inverses by `np.linalg.inv` between batches),
    the crossing counts `gait_pass`'s at the weights each batch started from.
    """
    from arsim.training import BrianTrainer, init_params

    experiment = _tower_experiment(tmp_path, **{"gait.gamma": 0.5, "train.lr": 0.003})  # large target steps: units cross
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, size=(48, 64))
    targets = np.eye(10)[rng.integers(10, size=48)]
    start = init_params(experiment)
    result = BrianTrainer(experiment, 48, device=device).run_chunk(start, x, targets)
    before = [start]
    expected = experiment.rule.reference_epoch(experiment, start, x, targets, after_batch=lambda i, p: before.append(p.copy()))
    for l in range(3):
        assert np.max(np.abs(result.params.W[l] - expected.W[l])) < 1e-10 * np.max(np.abs(expected.W[l])), l
        np.testing.assert_allclose(result.params.b[l], expected.b[l], rtol=0, atol=1e-10)
    for l, n in ((1, 12), (2, 10)):
        # the tower's unread columns stayed 0 although every update's data gradient reaches them
        assert np.all(result.params.W[l][:, n:] == 0) and np.any(start.W[l] != expected.W[l])
        np.testing.assert_allclose(result.params.B[l][:n] @ result.params.W[l][:, :n], np.eye(n), rtol=0, atol=1e-10)
    counts = _batch_counts(experiment, before[:-1], x, targets, 16)
    assert counts[1] + counts[2] > 0, counts  # the comparison below can fail: some units do cross
    assert [result.diagnostics["kink_crossings_1"], result.diagnostics["kink_crossings_2"]] == list(counts[1:])


@pytest.mark.parametrize("smallest,stops,device", [(1e-11, False, "cpp"), (1e-13, True, "cpp"), (0.0, True, "cpp"),
                                                   (1e-13, True, "runtime")])
def test_the_run_s_guard_records_the_first_singular_update_and_its_condition_number(tmp_path, build_dir, smallest, stops,
                                                                                    device):
    """S^2 = diag(1, .., 1, smallest) (1-norm condition number 1 / smallest) held fixed by lr = 0, against the limit 1e12."""
    from arsim.training import BrianTrainer, init_params

    experiment = _tower_experiment(tmp_path)
    rule = experiment.rule
    trainer = BrianTrainer(experiment, 48, device=device)
    params = init_params(experiment)
    params.W[2] = np.zeros((10, 12))
    params.W[2][:, :10] = np.diag([1.0] * 9 + [smallest])
    params.B[2] = np.zeros((12, 10))  # finite: the run itself must find the block singular
    rng = np.random.default_rng(4)
    run_params = trainer.params_for_run(params, rng.uniform(0, 1, size=(48, 64)), np.eye(10)[rng.integers(10, size=48)])
    for layer in range(4):
        run_params[f"layer{layer}.lr"] = np.array([0.0])
    raw = trainer.runner.run(run_params)
    if not stops:
        assert raw["proj2.singular_update"][0] == 0
        B = rule.backward_from_results(raw, params.W, params.B)[2]
        np.testing.assert_allclose(B[:10] @ params.W[2][:, :10], np.eye(10), rtol=0, atol=1e-12)
        assert np.all(B[10:] == 0)
        return
    assert raw["proj2.singular_update"][0] == 1 and raw["proj1.singular_update"][0] == 0  # the first of three
    condition = raw["proj2.singular_condition"][0]
    assert (condition == np.inf) if smallest == 0 else abs(condition * smallest - 1) < 1e-6, condition
    with pytest.raises(FloatingPointError) as raised:
        rule.check_run(raw, 3, epoch=2, first_batch=3)
    message = str(raised.value)
    assert "\n" not in message and "W^2 is singular after update 4 of epoch 2" in message, message
    assert f"1-norm condition number {condition:.3g}, limit 1e+12" in message, message


def test_non_finite_weights_at_initialisation_raise_one_line():
    rule = E(_config(2, 1.0)).rule
    W = [np.ones((8, 6)), np.full((8, 8), np.nan), np.eye(8)]
    with pytest.raises(FloatingPointError, match=r"W\^1 holds NaN or Inf at initialisation"):
        rule.initial_backward(W, None, 0.1)


@pytest.mark.parametrize("smallest,stops", [(1e-11, False), (1e-13, True), (0.0, True)])
def test_a_singular_block_stops_in_one_line_naming_the_layer_and_its_condition_number(smallest, stops):
    # S^2 = diag(1, ..., 1, smallest): its 1-norm condition number is 1 / smallest (the closed form), against the limit 1e12
    rule = E(_config(2, 1.0)).rule
    rng = np.random.default_rng(5)
    W = [rng.normal(size=(8, 6)), np.linalg.qr(rng.normal(size=(8, 8)))[0], np.diag([1.0] * 7 + [smallest])]
    if not stops:
        B, _ = rule.stabilise(W, None, 0.1, "after update 3")
        np.testing.assert_allclose(B[2] @ W[2], np.eye(8), rtol=0, atol=1e-12)
        assert 1 / smallest < rule.MAX_CONDITION
        return
    with pytest.raises(FloatingPointError) as raised:
        rule.stabilise(W, None, 0.1, "after update 3")
    message = str(raised.value)
    assert "\n" not in message and "W^2 is singular after update 3" in message, message
    assert f"1-norm condition number {1 / smallest if smallest else np.inf:.3g}" in message, message


def test_arsim_train_counts_kink_crossings_per_epoch_and_replays_in_numpy(tmp_path, capfd):
    """The metrics' crossing counts are those of the epoch's batches at the weights each started from."""
    import json

    from arsim.cli import main
    from arsim.experiment import dataset_for
    from arsim.training import Params, epoch_order, init_params

    model, config = _tiny_config(tmp_path)
    out = tmp_path / "run"
    assert main(["train", str(model), "--out", str(out), "--quiet"]) == 0
    rows = json.loads((out / "metrics.json").read_text())
    assert {"kink_crossings_1", "kink_crossings_2"} <= set(rows[1]) and "kink_crossings_0" not in rows[1]
    experiment = E(config)
    data = dataset_for(experiment)
    order = epoch_order(experiment, data.n_train, 1)
    x, targets = data.x_train[order], data.targets(data.y_train[order])
    net = experiment.network
    before = [init_params(experiment)]
    final = experiment.rule.reference_epoch(experiment, before[0], x, targets, after_batch=lambda i, p: before.append(p.copy()))
    counts = [0, 0, 0]
    for index, params in enumerate(before[:-1]):
        batch = slice(16 * index, 16 * (index + 1))
        fwd = oracle.forward(params.W, params.b, x[batch], net.hidden, net.output, net.loss)
        e = oracle.output_error(fwd.xbar[-1], targets[batch], net.loss)
        crossings = gait_pass(params.W, params.b, fwd, e, 0.01, "leaky_relu", 0.1, "linear").crossings
        counts = [c + k for c, k in zip(counts, crossings)]
    assert [rows[1]["kink_crossings_1"], rows[1]["kink_crossings_2"]] == counts[1:]
    with np.load(out / "weights.npz") as stored:
        trained = Params.from_arrays({k: stored[k] for k in stored.files}, n_layers=3)
    for l in range(3):
        assert np.max(np.abs(trained.W[l] - final.W[l])) < 1e-10 * np.max(np.abs(final.W[l])), l


@pytest.mark.parametrize("keys,named", [
    ({"sizes": [6, 6, 8, 8]}, "layer 1 (W^1) is 8 x 6"),
    ({"activation": "relu"}, "activation = 'relu'"),
    ({"output_activation": "relu"}, "output_activation = 'relu'"),
    ({"activation": "leaky_relu", "leaky_slope": 0.0}, "leaky_slope = 0"),
    ({"gait.gamma": 0.0}, "gait.gamma"),
    ({"gait.gamma": -1e-3}, "gait.gamma"),
    ({"gait.orthogonal_reg": -0.1}, "gait.orthogonal_reg"),
    ({"loss": "ce"}, "loss = 'ce'"),
])
def test_bad_gait_input_is_refused_in_one_line(keys, named):
    from arsim.config import ConfigError

    with pytest.raises(ConfigError) as err:
        resolve({"sizes": [6, 8, 8, 8], "rule": "gait", "activation": "tanh", **keys})
    assert named in str(err.value) and "\n" not in str(err.value)


def test_a_widening_model_exits_2_and_writes_nothing(tmp_path, capsys):
    from arsim.cli import main

    model = tmp_path / "bad.toml"
    model.write_text(GAIT_TINY.replace("sizes = [64, 10, 10, 10]", "sizes = [64, 10, 32, 10]"))
    out = tmp_path / "out"
    assert main(["train", str(model), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "layer 1 (W^1) is 32 x 10" in err[0]
    assert not out.exists()


def test_the_cancellation_floor_warning_follows_u_over_gamma_to_the_l_minus_1():
    def warnings(gamma, sizes, precision="float64"):
        experiment = E(resolve({"sizes": sizes, "rule": "gait", "gait.gamma": gamma, "precision": precision}))
        return experiment.rule.config_warnings(experiment.network)

    assert warnings(1e-3, [4, 6, 6, 6]) == []  # u / gamma^2 = 1e-10
    assert warnings(1e-3, [4, 6, 6, 6, 6, 6]) != []  # u / gamma^4 = 1e-4
    assert warnings(1e-2, [4, 6, 6, 6, 6, 6]) == []  # u / gamma^4 = 1e-8
    assert warnings(1e-3, [4, 6, 6], "float32") != []  # u32 / gamma = 6e-5
    assert "gait.gamma = 0.001" in warnings(1e-3, [4, 6, 6, 6, 6, 6])[0]
