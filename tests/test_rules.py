"""The rule plug-ins: Brian2 training against each rule's numpy reference, closed forms per rule.

Expected values come from closed forms (KP contraction, the FA and BP
backward passes written out here, the primitives' fixed points) or from
the rules' numpy references, which share no code with the C++ plasticity.
"""

import math

import numpy as np
import pytest

from arsim import metrics

from arsim.reference import oracle
from arsim.activations import get_activation
from arsim.cli import main
from arsim.config import ConfigError, resolve
from arsim.brian.devices import get_runner
from arsim.brian.network import topology_for
from arsim.relax import Problem, draw_problem, network_params, run_relaxation
from arsim.rules import RULES, cards, primitives
from arsim.training import BrianTrainer, init_params
from arsim.spec import Experiment

E = Experiment.from_config  # tests type a resolved config as the CLI does
from conftest import training_data

SIZES = [5, 4, 3, 2]
GAIT_SIZES = [5, 4, 3, 3]  # W^1 in the tower form (3 x 4 reading 3 units), W^2 square
N_SAMPLES, BATCH = 12, 4
SIMULATED = [name for name, cls in RULES.items() if cls.simulated]


def _train_config(rule, **keys):
    base = {
        "sizes": SIZES, "activation": "tanh", "output_activation": "tanh", "bias": True, "init_std": 0.6,
        "feedback_std": 0.4, "duration": 30.0, "train.batch_size": BATCH, "train.lr": 0.05, "train.align_every": 1,
        "rule": rule,
    }
    if rule == "wm":
        base.update({"wm.mirror_samples": 5, "wm.mirror_steps": 2})
    if rule == "kp":
        base["kp.decay"] = 0.7
    if rule == "pal":
        # the noise is Brian2's own draw: tests/test_pal.py replays it; here B only decays, exactly
        base.update({"pal.sigma": 0.0, "pal.eta_b": 2.0, "pal.alpha": 0.05})
    if rule == "gait":
        base["sizes"] = GAIT_SIZES  # targets pass through (W^l)^-1: square or narrowing layers above the input
        # the error gamma^-k (xbar - t) amplifies rounding by gamma^-k: a larger gamma keeps it below 1e-10
        base["gait.gamma"] = 0.05
    return resolve({**base, **keys})


def _max_diff(a, b):
    return max(float(np.max(np.abs(u - v))) for u, v in zip(a, b))


CASES = [(rule, "batch") for rule in SIMULATED] + [(rule, "sample") for rule in ("dfa", "kp", "wm", "ia", "sign", "gait")]


@pytest.mark.parametrize("rule,parallel", CASES, ids=[f"{r}-{p}" for r, p in CASES])
def test_brian_training_equals_the_rules_numpy_reference(rule, parallel, build_dir):
    config = _train_config(rule, **{"train.parallel": parallel})
    x, targets = training_data(config, N_SAMPLES)
    start = init_params(E(config))
    # every batch in one run (GAIT-prop too: its inverses and penalty are computed inside the run)
    assert not E(config).rule.updates_between_runs
    trainer = BrianTrainer(E(config), N_SAMPLES)
    trained = trainer.run_chunk(start, x, targets, epoch=1).params
    reference = E(config).rule.reference_epoch(E(config), start, x, targets, noise=trainer.mirror_noise(1, 0))
    for name in ("W", "b", "B"):
        assert _max_diff(getattr(trained, name), getattr(reference, name)) < 1e-10, name
    # the comparison can fail: the weights moved by much more than the tolerance
    assert _max_diff(reference.W, start.W) > 1e-2
    if rule in ("kp", "wm", "ia", "sign", "pal"):
        assert _max_diff(reference.B, start.B) > 1e-3
    if rule in ("fa", "dfa"):
        assert _max_diff(trained.B, start.B) == 0.0  # fixed random feedback
    if rule == "gait":
        for l in range(1, len(GAIT_SIZES) - 1):
            n = GAIT_SIZES[l + 1]
            np.testing.assert_allclose(trained.B[l][:n] @ trained.W[l][:, :n], np.eye(n), atol=1e-12)
            assert not np.any(trained.W[l][:, n:]) and not np.any(trained.B[l][n:])  # auxiliary units stay out
    if rule == "kp":
        # SPEC 3.4: B - W^T shrinks by exactly (1 - lr lambda) per update (3 updates here)
        factor = (1 - config["train.lr"] * config["kp.decay"]) ** (N_SAMPLES // BATCH)
        for l in range(len(SIZES) - 1):
            before = start.B[l] - start.W[l].T
            after = trained.B[l] - trained.W[l].T
            assert np.max(np.abs(after - factor * before)) < 1e-12 * np.max(np.abs(before))
    if rule == "sign":
        for l in range(len(SIZES) - 1):
            scale = math.sqrt(2.0 / (SIZES[l] + SIZES[l + 1]))
            np.testing.assert_array_equal(trained.B[l], scale * np.sign(trained.W[l]).T)


@pytest.fixture(scope="module")
def relax_runner(build_dir):
    runners = {}

    def get(config):
        topo = topology_for(E(config))
        if topo not in runners:
            runners[topo] = get_runner(topo)
        return runners[topo]

    return get


def _relax_config(rule, **keys):
    sizes = [6, 4, 4, 4] if rule == "gait" else [6, 5, 4, 3]  # GAIT-prop: square layers above the input
    return resolve({"sizes": sizes, "init_std": 0.5, "feedback_std": 0.5, "duration": 300.0, "rule": rule, **keys})


def _relax(config, runner, problem):
    raw = runner.run(network_params(runner.topology, E(config).network, problem))
    return [raw[f"layer{l}.x"] for l in range(len(config["sizes"]))]


def _fa_backward(problem, config):
    """Feedback alignment's backward signals, written out: g^L = e, g^l = B^l (f'^{l+1} g^{l+1})."""
    hidden = get_activation(config["activation"])
    output = get_activation(config["output_activation"])
    fwd = oracle.forward(problem.W, problem.b, problem.x_in, hidden, output, config["loss"])
    n_layers = len(problem.W)
    g = [None] * (n_layers + 1)
    g[n_layers] = oracle.output_error(fwd.xbar[-1], problem.target, config["loss"])
    for l in range(n_layers - 1, 0, -1):
        g[l] = problem.B[l] @ (fwd.fp[l + 1] * g[l + 1])
    return g


@pytest.mark.parametrize("eta_steps", [(0.1, 300), (1.0, 2)], ids=["equilibrium", "eta1-L-1-steps"])
def test_fa_relaxation_is_the_fa_backward_pass(eta_steps, relax_runner):
    eta, steps = eta_steps
    config = _relax_config("fa", dt=10.0 * eta, duration=10.0 * eta * steps)
    problem = draw_problem(E(config))
    x = _relax(config, relax_runner(config), problem)
    g = _fa_backward(problem, config)
    for l in (1, 2):
        assert metrics.relative_error(x[l], g[l]) < 1e-10
    bp = oracle.backward(problem.W, oracle.forward(problem.W, problem.b, problem.x_in, get_activation("tanh"),
                                                   get_activation("linear"), "mse"), problem.target, "mse")
    assert metrics.relative_error(x[1], bp.dxbar[1]) > 0.1  # random feedback is not backprop


def test_dfa_on_a_linear_net_with_transposed_products_is_backprop(relax_runner):
    config = _relax_config("dfa", activation="linear")
    problem = draw_problem(E(config))
    W = problem.W
    n_layers = len(W)
    # D^l = (W^{L-1} ... W^l)^T: the linear chain's exact adjoint map
    B = []
    for l in range(n_layers):
        product = np.eye(W[-1].shape[0])
        for k in range(n_layers - 1, l - 1, -1):
            product = product @ W[k]
        B.append(product.T)
    exact = Problem(W=W, b=problem.b, B=B, x_in=problem.x_in, target=problem.target)
    x = _relax(config, relax_runner(config), exact)
    linear = get_activation("linear")
    bp = oracle.backward(W, oracle.forward(W, problem.b, problem.x_in, linear, linear, "mse"), problem.target, "mse")
    for l in (1, 2):
        assert metrics.relative_error(x[l], bp.dxbar[l]) < 1e-10
    # negative control: with tanh the same D is not the adjoint (the f' diagonals are missing)
    tanh_config = _relax_config("dfa")
    x_tanh = _relax(tanh_config, relax_runner(tanh_config), exact)
    bp_tanh = oracle.backward(W, oracle.forward(W, problem.b, problem.x_in, get_activation("tanh"), linear, "mse"),
                              problem.target, "mse")
    assert metrics.relative_error(x_tanh[1], bp_tanh.dxbar[1]) > 1e-3


@pytest.mark.parametrize("rule", list(RULES))
def test_arsim_relax_runs_every_rule_and_compares_with_bp(rule, relax_runner):
    config = _relax_config(rule)
    result = run_relaxation(config, runner=relax_runner(config) if RULES[rule].simulated else None)
    assert [row["layer"] for row in result.layers] == [1, 2, 3]
    exact = rule in ("ar", "bp", "pc")  # pc: fixed prediction by default, BP at equilibrium
    for row in result.layers[:-1]:
        assert (row["dW_rel_error"] < 1e-8) == exact, (rule, row)


# ---------------------------------------------------------------------------- primitives, closed forms


def _layer(n_in=20, n_out=10, seed=3):
    return np.random.default_rng(seed).normal(0.0, 1.0 / math.sqrt(n_in), size=(n_out, n_in))


def test_primitive_gradients_against_finite_differences():
    rng = np.random.default_rng(0)
    W, B = _layer(6, 4), rng.normal(size=(6, 4))
    x = rng.normal(size=(9, 6))
    losses = {
        "decay": lambda B: np.sum(W**2) + np.sum(B**2),
        "amp": lambda B: -np.mean(np.einsum("si,ij,jk,sk->s", x, B, W, x)),
        "null": lambda B: np.mean(np.sum((x @ W.T @ B.T) ** 2, axis=1)),
    }
    for name, loss in losses.items():
        numeric = np.zeros_like(B)
        for idx in np.ndindex(B.shape):
            step = np.zeros_like(B)
            step[idx] = 1e-6
            numeric[idx] = (loss(B + step) - loss(B - step)) / 2e-6
        analytic = primitives.backward_gradient(B, W, x, None, **{name: 1.0})
        assert np.max(np.abs(analytic - numeric)) < 1e-7 * max(1.0, np.max(np.abs(numeric))), name


def test_weight_mirror_expected_update_converges_to_its_fixed_point_and_noise_to_the_predicted_angle():
    W = _layer()
    n_in = W.shape[1]
    sigma, alpha, beta, eta = 0.7, 0.05, 0.2, 1.0
    target = primitives.mirror_fixed_point(W, sigma, alpha, beta)
    # the expected update (Sigma = sigma^2 I) contracts B - B* by (1 - 2 eta alpha) per step
    B = np.random.default_rng(1).normal(size=W.T.shape)
    for _ in range(400):
        B = B - eta * (2 * alpha * B - beta * sigma**2 * W.T)
    assert np.max(np.abs(B - target)) < 1e-12 * np.max(np.abs(target))
    # with N noise samples per step the stationary angle obeys tan^2 = ((1 - rho) / (1 + rho)) (n + 1) / N
    rng = np.random.default_rng(2)
    n_samples, rho = 32, 1 - 2 * eta * alpha
    B, tan2 = target.copy(), []
    for step in range(3000):
        noise = rng.normal(0.0, sigma, size=(n_samples, n_in))
        B = B - eta * primitives.backward_gradient(B, W, noise, None, decay=alpha, amp=beta)
        if step >= 200:
            tan2.append(math.tan(math.radians(metrics.angle_deg(B, W.T))) ** 2)
    predicted = (1 - rho) / (1 + rho) * (n_in + 1) / n_samples
    assert 0.8 * predicted < np.mean(tan2) < 1.25 * predicted


def test_information_alignment_reaches_the_ridge_pseudo_inverse_not_w_transpose():
    W = _layer()
    n_in = W.shape[1]
    sigma, alpha, beta, gamma, eta = 1.0, 2e-3, 1e-3, 1e-3, 40.0
    target = primitives.ia_fixed_point(W, sigma, alpha, beta, gamma)
    # expected update with Sigma = sigma^2 I
    B = np.zeros(W.T.shape)
    for _ in range(5000):
        B = B - eta * (-alpha * sigma**2 * W.T + 2 * beta * sigma**2 * B @ W @ W.T + 2 * gamma * B)
    assert np.max(np.abs(B - target)) < 1e-10 * np.max(np.abs(target))
    # and with white-noise samples through the rule's primitives
    rng = np.random.default_rng(4)
    n_samples = 2048
    B = np.zeros(W.T.shape)
    tan2 = []
    for step in range(3000):
        x = rng.normal(0.0, sigma, size=(n_samples, n_in))
        B = B - eta * primitives.backward_gradient(B, W, x, None, amp=alpha, null=beta, decay=gamma)
        if step >= 1500:
            tan2.append(math.tan(math.radians(metrics.angle_deg(B, target))) ** 2)
    # the fluctuation is bounded by that of the fastest-contracting mode,
    # 1 - rho = 2 eta (beta sigma^2 s_max^2 + gamma), as in the weight-mirror law
    s_max = np.linalg.svd(W, compute_uv=False)[0]
    fastest = 2 * eta * (beta * sigma**2 * s_max**2 + gamma)
    bound = fastest / (2 - fastest) * (n_in + 1) / n_samples
    assert np.mean(tan2) < bound
    gap = metrics.angle_deg(target, W.T)
    assert gap > 5.0  # the ridge pseudo-inverse is not aligned with W^T for this W
    assert math.degrees(math.atan(math.sqrt(np.mean(tan2)))) < 0.2 * gap


# ---------------------------------------------------------------------------- configuration and cards


def test_docs_rules_md_is_generated_from_the_declarations():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "rules.md").read_text()
    assert text == cards(), "docs/rules.md is stale: regenerate it with `arsim rules --markdown > docs/rules.md`"
    for name, cls in RULES.items():
        for key, spec in cls.params.items():
            assert f"| `{key}` |" in RULES[name].card()


@pytest.mark.parametrize(
    "keys,named",
    [
        ({"rule": "kp", "kp.decay": -1e-3}, "kp.decay"),
        ({"rule": "wm", "wm.sigma": -0.5}, "wm.sigma"),
        ({"rule": "wm", "wm.mirror_samples": 0}, "wm.mirror_samples"),
        ({"rule": "kp", "kp.lambda": 0.1}, "kp.lambda"),
        ({"rule": "ar", "kp.decay": 0.1}, "kp.decay"),
        ({"rule": "sign", "sign.magnitude": "huge"}, "sign.magnitude"),
        ({"rule": "hebb"}, "rule"),
        ({"rule": "fa", "feedback": "learned"}, "feedback"),
        ({"rule": "dfa", "projection": "synapses"}, "projection"),
        ({"train.rule": "bp"}, "rule"),
    ],
)
def test_bad_rule_input_is_one_line_naming_the_key(keys, named):
    with pytest.raises(ConfigError) as info:
        resolve({"sizes": [4, 3, 2], **keys})
    message = str(info.value)
    assert "\n" not in message and named in message


def test_bad_rule_table_in_a_model_file_exits_2_and_writes_nothing(tmp_path, capsys):
    model = tmp_path / "m.toml"
    model.write_text('sizes = [64, 8, 10]\nrule = "kp"\n[kp]\ndecay = -1.0\n')
    out = tmp_path / "out"
    assert main(["train", str(model), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "kp.decay" in err[0]
    assert not out.exists()
