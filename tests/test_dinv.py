"""Dynamic inversion (rule = "dinv", SPEC 3.10): fixed points, the exact stability condition, Brian2 against numpy.

Expected values come from the closed forms of research/gait_pal_di.md C
(the fixed point ``B (W B - alpha I)^-1 delta``, the damped pseudo-inverse
for ``B = -W^T``), from the eigenvalues of the full Jacobian computed here,
and from the rule's numpy Euler loop, which shares no code with the C++.
"""

import numpy as np
import pytest

from arsim import metrics
from arsim.brian.devices import get_runner
from arsim.brian.network import topology_for
from arsim.cli import main
from arsim.config import ConfigError, resolve
from arsim.relax import draw_problem, run_relaxation
from arsim.rules.dinv import UnstableInversion, stability
from arsim.spec import Experiment

E = Experiment.from_config
SIZES = [5, 7, 6, 4, 3]
ALPHA = 0.1


@pytest.fixture(scope="module")
def di_runner(build_dir):
    runners = {}

    def get(config):
        topo = topology_for(E(config), max_relax=3000)
        if topo not in runners:
            runners[topo] = get_runner(topo)
        return runners[topo]

    return get


def _config(steps, **keys):
    base = {"sizes": SIZES, "activation": "tanh", "bias": True, "init_std": 0.5, "rule": "dinv", "tau": 10.0, "dt": 1.0,
            "duration": float(steps), "initial_state": "zero", "dinv.alpha": ALPHA}
    return resolve({**base, **keys})


def test_simulated_fixed_point_is_the_damped_pseudo_inverse_cascade(di_runner):
    config = _config(3000)
    result = run_relaxation(config, runner=di_runner(config))
    W, fp = result.problem.W, result.fp
    n_layers = len(SIZES) - 1
    x = {n_layers: result.x[n_layers]}
    for l in range(n_layers - 1, 0, -1):
        delta = x[l + 1] * fp[l + 1]
        # B = -W^T: x* = W^T (W W^T + alpha I)^-1 delta (written out, not the rule's solver)
        x[l] = W[l].T @ np.linalg.inv(W[l] @ W[l].T + ALPHA * np.eye(len(delta))) @ delta
        assert metrics.relative_error(result.x[l], x[l]) < 1e-10, l
    # not backprop: the pseudo-inverse differs from the transpose unless the singular values are equal
    assert metrics.relative_error(result.x[1], result.bp.dxbar[1]) > 0.05


def test_relaxation_equals_the_numpy_loop_and_the_general_fixed_point(di_runner):
    rng = np.random.default_rng(4)
    config = _config(3000, **{"dinv.feedback": "random", "feedback_std": 0.4, "dinv.alpha": 0.5})
    experiment = E(config)
    problem = draw_problem(experiment)
    # a random B that is stable for this draw: B = -W^T + small noise keeps the inversion stable
    problem.B = [-w.T + 0.05 * rng.normal(size=w.T.shape) for w in problem.W]
    runner = di_runner(config)
    from arsim.relax import network_params

    raw = runner.run(network_params(runner.topology, experiment.network, problem, rule=experiment.rule))
    x_ref, fwd, trace = experiment.rule.reference_errors(experiment.network, problem.W, problem.b, problem.B,
                                                         problem.x_in[None], problem.target[None], n_steps=3000, record=True)
    n_layers = len(SIZES) - 1
    for l in range(1, n_layers):
        assert np.max(np.abs(raw[f"monitor{l}.x"][-1] - trace[l][-1, 0])) < 1e-10 * np.max(np.abs(trace[l]))
        delta = x_ref[l + 1][0] * fwd.fp[l + 1][0]
        expected = problem.B[l] @ np.linalg.solve(problem.W[l] @ problem.B[l] - 0.5 * np.eye(len(delta)), delta)
        assert metrics.relative_error(raw[f"layer{l}.x"], expected) < 1e-10, l


def test_runtime_device_equals_the_numpy_loop():
    config = _config(30)
    experiment = E(config)
    result = run_relaxation(config, device="runtime")
    problem = draw_problem(experiment)
    _, _, trace = experiment.rule.reference_errors(experiment.network, problem.W, problem.b, problem.B,
                                                   problem.x_in[None], problem.target[None], record=True)
    for l in range(1, len(SIZES)):
        assert np.max(np.abs(result.xtrace[l] - trace[l][:, 0])) < 1e-12
    assert np.max(np.abs(trace[1][-1])) > 1e-4  # the error reached the bottom layer


def _jacobian_stable(W, B, alpha):
    n_above, n_below = W.shape
    M = np.block([[-np.eye(n_below), B], [W, -alpha * np.eye(n_above)]])
    # alpha = 0 under a wider layer leaves exact zero eigenvalues (null(B)): round-off must not count them stable
    return np.max(np.linalg.eigvals(M).real) < -1e-9


def test_stability_condition_agrees_with_the_full_jacobian_on_random_draws():
    rng = np.random.default_rng(0)
    agree = unstable = 0
    for _ in range(2000):
        n_above, n_below = rng.integers(1, 6, size=2)
        W = rng.normal(0.0, rng.uniform(0.2, 2.0), size=(n_above, n_below))
        B = rng.normal(0.0, rng.uniform(0.2, 2.0), size=(n_below, n_above))
        alpha = float(rng.choice([0.0, 0.01, 0.3, 1.0]))
        continuous, _ = stability(W, B, alpha, eta=1e-3)
        margin_ok = continuous is None
        agree += margin_ok == _jacobian_stable(W, B, alpha)
        unstable += not margin_ok
    assert agree == 2000
    assert 200 < unstable < 1800  # both outcomes were exercised


def test_the_counterexample_is_unstable_although_WB_minus_alpha_is_hurwitz():
    W, B = np.array([[0.0, 5.0], [-5.0, 0.0]]), np.eye(2)
    assert np.max(np.linalg.eigvals(W @ B - 0.1 * np.eye(2)).real) < 0
    continuous, _ = stability(W, B, 0.1, eta=1e-3)
    assert continuous is not None and "violates" in continuous
    assert not _jacobian_stable(W, B, 0.1)
    assert np.max(np.linalg.eigvals(np.block([[-np.eye(2), B], [W, -0.1 * np.eye(2)]])).real) > 1.0  # +1.06


def test_the_euler_limit_of_the_negative_transpose():
    """B = -W^T with simultaneous Euler converges iff s_max^2 < (1 + alpha) / eta - alpha."""
    rng = np.random.default_rng(1)
    Q1, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    Q2, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    eta, alpha = 0.5, 0.2
    bound = (1 + alpha) / eta - alpha
    for factor, stable in ((0.99, True), (1.01, False)):
        s = np.sqrt(factor * bound) * np.array([1.0, 0.7, 0.5, 0.3])
        W = Q1 @ np.hstack([np.diag(s), np.zeros((4, 2))]) @ Q2
        continuous, discrete = stability(W, -W.T, alpha, eta)
        assert continuous is None
        assert (discrete is None) == stable, factor


def test_an_unstable_draw_stops_arsim_relax_with_exit_3_and_one_line(tmp_path, capfd):
    model = tmp_path / "di.toml"
    model.write_text('sizes = [5, 7, 6, 4, 3]\nrule = "dinv"\ninit_std = 0.5\nfeedback_std = 0.5\nbias = true\n'
                     '[dinv]\nfeedback = "random"\nalpha = 0.1\n')
    out = tmp_path / "di.npz"
    assert main(["relax", str(model), "--save", str(out)]) == 3
    err = capfd.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("arsim: error:")]
    assert len(errors) == 1 and errors[0] == err[-1], err  # after the progress line, one error line
    assert errors[0].startswith("arsim: error: dynamic inversion of hidden layer 1 is unstable with the drawn weights")
    assert "eigenvalue mu = " in errors[0] and "Re mu + (Im mu)^2 / (1 + alpha)^2 < alpha" in errors[0]
    assert "Traceback" not in "\n".join(err)
    assert not out.exists()


def test_training_stops_at_the_update_that_makes_a_layer_unstable():
    """W^1 = I/2 and B^1 = -I/2 are stable; one large update W^1 - lr u v^T (v^T u > 0) turns an eigenvalue of W B positive."""
    from arsim.training import Params

    config = resolve({"sizes": [2, 2, 2], "activation": "linear", "rule": "dinv", "dinv.alpha": 0.1, "duration": 30.0,
                      "train.batch_size": 1, "initial_state": "zero"})
    experiment = E(config)
    W, b = [np.eye(2) * 0.5, np.eye(2) * 0.5], [np.zeros(2), np.zeros(2)]
    B = [-w.T for w in W]
    x, targets = np.array([[1.0, 0.3], [1.0, 0.3]]), np.array([[-1.0, 0.0], [-1.0, 0.0]])
    dW, _, _ = experiment.rule.reference_update(experiment.network, W, b, B, x[:1], targets[:1])
    # the eigenvalues of W^1 - lr dW^1 are 1/2 and 1/2 - lr tr(dW^1): mu = -(1/2) of them must stay below alpha
    lr = (0.5 + 2 * 0.1 + 0.5) / np.trace(dW[1])
    assert lr > 0
    params = Params(W, b, B)
    with pytest.raises(UnstableInversion, match=r"hidden layer 1 is unstable after update 1: eigenvalue mu = "):
        experiment.rule.reference_epoch(experiment.replace(**{"train.lr": float(lr)}), params, x, targets)
    experiment.rule.reference_epoch(experiment.replace(**{"train.lr": float(lr) / 100}), params, x, targets)  # stable
    with pytest.raises(UnstableInversion, match="before the epoch"):
        experiment.rule.reference_epoch(experiment, Params(W, b, [-b_.T for b_ in B]), x, targets)
    # a diverged Brian2 run is replayed in numpy to locate it: the replay names the unstable update
    from arsim.experiment import _locate_divergence

    where = _locate_divergence(experiment.replace(**{"train.lr": float(lr)}), params, x, targets, epoch=3, first_batch=4)
    assert where.startswith("epoch 3, batches 5..6, where the numpy replay stopped: dynamic inversion of hidden layer 1")
    assert "after update 1" in where


@pytest.mark.parametrize("keys,named", [
    ({"dinv.alpha": -0.1}, "dinv.alpha = -0.1"),
    ({"dinv.feedback": "mirror"}, "dinv.feedback = 'mirror'"),
    ({"ordering": "sequential"}, "ordering = 'sequential' with rule = 'dinv'"),
])
def test_bad_dinv_settings_are_refused_in_one_line(keys, named):
    with pytest.raises(ConfigError) as info:
        resolve({"sizes": SIZES, "rule": "dinv", **keys})
    assert named in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------------- repair of B (smoothed spectral abscissa)

def _lyapunov_energy(M, s):
    """``int_0^inf |exp((M - s I) t)|_F^2 dt = tr Q`` with ``(M - s I) Q + Q (M - s I)^T = -I``."""
    from scipy.linalg import solve_continuous_lyapunov

    return np.trace(solve_continuous_lyapunov(M - s * np.eye(len(M)), -np.eye(len(M))))


def _implicit_gradient_matches(M, gradient, energy, level, bracket, entries):
    """Central differences of the level set ``energy(A, s) = level`` (solved by brentq in ``bracket(A)``) match ``gradient``."""
    from scipy.optimize import brentq

    def level_crossing(A):
        # energy(A, s) falls from +inf at the spectral edge towards 0: the level is crossed once
        low, high = bracket(A)
        return brentq(lambda s: energy(A, s) - level, low, high, xtol=1e-14)

    h = 1e-6
    for i, j in entries:
        step = np.zeros_like(M)
        step[i, j] = h
        finite = (level_crossing(M + step) - level_crossing(M - step)) / (2 * h)
        assert abs(finite - gradient[i, j]) < 1e-7 * max(1.0, abs(finite)), (i, j)
    return level_crossing


def test_ssa_gradient_equals_finite_differences_of_the_implicit_abscissa():
    from arsim.rules.dinv import jacobian, ssa_gradient

    rng = np.random.default_rng(0)
    W, B = rng.normal(size=(3, 4)), 0.5 * rng.normal(size=(4, 3))
    M = jacobian(W, B, 0.1)
    s0 = np.max(np.linalg.eigvals(M).real) + 0.1

    def bracket(A):
        edge = np.max(np.linalg.eigvals(A).real)
        return edge + 1e-9, edge + 50.0

    abscissa = _implicit_gradient_matches(M, ssa_gradient(M, s0), _lyapunov_energy, _lyapunov_energy(M, s0), bracket,
                                          [(0, 5), (2, 4), (5, 1), (6, 6), (1, 0)])
    assert abs(abscissa(M) - s0) < 1e-10


def test_ssr_gradient_equals_finite_differences_of_the_implicit_radius():
    from scipy.linalg import solve_discrete_lyapunov

    from arsim.rules.dinv import ssr_gradient

    rng = np.random.default_rng(1)
    G = 0.4 * rng.normal(size=(5, 5))
    r0 = np.max(np.abs(np.linalg.eigvals(G))) + 0.05

    def energy(A, r):  # sum_k |(A / r)^k|_F^2
        return np.trace(solve_discrete_lyapunov(A / r, np.eye(len(A))))

    def bracket(A):
        edge = np.max(np.abs(np.linalg.eigvals(A)))
        return edge * (1 + 1e-9), 10 * edge + 10

    radius = _implicit_gradient_matches(G, ssr_gradient(G, r0), energy, energy(G, r0), bracket, [(0, 1), (3, 2), (4, 4), (2, 0)])
    assert abs(radius(G) - r0) < 1e-10


def test_repair_brings_eigenvalues_beyond_the_euler_disk_back():
    """B = -W^T with large W: Hurwitz, but eigenvalues far off the real axis leave the Euler disk at dt/tau = 0.1."""
    from arsim.rules.dinv import repair_feedback

    rng = np.random.default_rng(1)
    W = rng.normal(0, 3, size=(6, 8))
    continuous, discrete = stability(W, -W.T, 0.5, 0.1)
    assert continuous is None and discrete is not None
    repaired, steps = repair_feedback(W, -W.T, 0.5, 0.1)
    lam = _jacobian_eigenvalues(W, repaired, 0.5)
    assert steps > 0 and np.max(lam.real) < -0.01 and np.max(np.abs(1 + 0.1 * lam)) < 0.999


def _jacobian_eigenvalues(W, B, alpha):
    n_above, n_below = W.shape
    return np.linalg.eigvals(np.block([[-np.eye(n_below), B], [W, -alpha * np.eye(n_above)]]))


@pytest.mark.parametrize("n_above, n_below", [(3, 7), (5, 5), (8, 4), (1, 6), (6, 1)])
@pytest.mark.parametrize("alpha", [0.0, 0.01, 0.5, 2.0])
def test_the_jacobian_spectrum_from_the_smaller_product_is_the_full_eigendecomposition(n_above, n_below, alpha):
    """`jacobian_eigenvalues` (Schur complement through W B or B W) against LAPACK on the full block matrix."""
    from scipy.optimize import linear_sum_assignment

    from arsim.rules.dinv import jacobian_eigenvalues

    rng = np.random.default_rng(100 * n_above + n_below)
    for B_kind in ("neg_transpose", "random"):
        W = rng.normal(0.0, 1.0, size=(n_above, n_below))
        B = -W.T if B_kind == "neg_transpose" else rng.normal(0.0, 1.0, size=(n_below, n_above))
        direct = _jacobian_eigenvalues(W, B, alpha)
        derived = jacobian_eigenvalues(W, B, alpha)
        assert derived.shape == direct.shape
        # pair every eigenvalue with one of the other set (a multiset comparison, not nearest neighbours)
        rows, cols = linear_sum_assignment(np.abs(derived[:, None] - direct[None, :]))
        assert np.max(np.abs(derived[rows] - direct[cols])) < 1e-7, (B_kind, derived, direct)


@pytest.mark.parametrize("case", ["counterexample"] + [f"random{seed}" for seed in range(6)])
def test_repair_makes_the_jacobian_hurwitz_and_the_euler_map_contracting(case):
    from arsim.rules.dinv import repair_feedback

    eta = 0.1
    if case == "counterexample":
        W, B, alpha = np.array([[0.0, 5.0], [-5.0, 0.0]]), np.eye(2), 0.1
    else:
        rng = np.random.default_rng(int(case[6:]))
        W, B, alpha = rng.normal(0, 0.5, size=(20, 30)), rng.normal(0, 0.5, size=(30, 20)), 0.5
    lam = _jacobian_eigenvalues(W, B, alpha)
    assert np.max(lam.real) > 0  # unstable before
    repaired, steps = repair_feedback(W, B, alpha, eta)
    lam = _jacobian_eigenvalues(W, repaired, alpha)
    assert steps > 0 and np.max(lam.real) < -0.01
    assert np.max(np.abs(1 + eta * lam)) < 1.0
    assert stability(W, repaired, alpha, eta) == (None, None)


def test_a_stable_B_is_left_untouched():
    from arsim.rules.dinv import repair_feedback

    rng = np.random.default_rng(3)
    W = rng.normal(0, 0.5, size=(4, 6))
    repaired, steps = repair_feedback(W, -W.T, 0.1, 0.1)
    assert steps == 0 and np.array_equal(repaired, -W.T)
    rule = E(_config(10, **{"dinv.repair": True})).rule
    B = [None, -W.T]
    out, repairs = rule.stabilise([None, W], B, 0.1, "here")
    assert repairs == 0 and out[1] is B[1]


def test_arsim_relax_repairs_an_unstable_draw_and_relaxes_through_it(tmp_path, capfd, di_runner):
    """The unstable random draw of the exit-3 test, repaired: the simulation equals the numpy loop through the repaired B."""
    config = _config(3000, **{"dinv.feedback": "random", "feedback_std": 0.5, "dinv.repair": True, "initial_state": "forward"})
    experiment = E(config)
    drawn = draw_problem(experiment)
    assert any(any(stability(drawn.W[l], drawn.B[l], ALPHA, experiment.network.eta)) for l in range(1, len(SIZES) - 1))
    result = run_relaxation(config, runner=di_runner(config))
    assert result.repairs >= 1
    for l in range(1, len(SIZES) - 1):
        assert stability(result.problem.W[l], result.problem.B[l], ALPHA, experiment.network.eta) == (None, None)
        assert np.allclose(result.B_used[l], result.problem.B[l], rtol=0, atol=1e-15)
    _, _, trace = experiment.rule.reference_errors(experiment.network, result.problem.W, result.problem.b, result.problem.B,
                                                   result.problem.x_in[None], result.problem.target[None], record=True)
    for l in range(1, len(SIZES)):
        assert np.max(np.abs(result.xtrace[l] - trace[l][:, 0])) < 1e-10 * np.max(np.abs(trace[l]))
    model = tmp_path / "di.toml"
    model.write_text('sizes = [5, 7, 6, 4, 3]\nrule = "dinv"\ninit_std = 0.5\nfeedback_std = 0.5\nbias = true\n'
                     '[dinv]\nfeedback = "random"\nalpha = 0.1\nrepair = true\n')
    capfd.readouterr()
    assert main(["relax", str(model), "--json"]) == 0
    captured = capfd.readouterr()
    assert "arsim: repaired B of " in captured.err and '"b_repairs"' in captured.out


DI_TINY = """
name = "tiny_di"
sizes = [64, 6, 10]
activation = "tanh"
output_activation = "linear"
bias = true
init_std = 0.3
feedback_std = 0.5
seed = 3
rule = "dinv"
tau = 10.0
dt = 1.0
duration = 20.0
[dinv]
feedback = "random"
alpha = 0.5
[train]
data = "digits"
epochs = 2
batch_size = 16
lr = 0.01
max_samples = 96
"""


def test_training_with_an_unstable_random_B_exits_3_or_repairs_and_counts(tmp_path, capfd):
    import json

    from arsim.training import Params

    model = tmp_path / "di.toml"
    model.write_text(DI_TINY)
    assert main(["train", str(model), "--out", str(tmp_path / "stops"), "--quiet"]) == 3
    assert "dynamic inversion of hidden layer 1 is unstable before the run of epoch 1" in capfd.readouterr().err
    out = tmp_path / "repairs"
    assert main(["train", str(model), "--out", str(out), "--quiet", "--set", "dinv.repair=true"]) == 0
    rows = json.loads((out / "metrics.json").read_text())
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert rows[1]["b_repairs"] >= 1 and all(r["b_repairs"] >= 0 for r in rows)
    with np.load(out / "weights.npz") as data:
        params = Params.from_arrays({k: data[k] for k in data.files}, n_layers=2)
    assert stability(params.W[1], params.B[1], 0.5, 0.1) == (None, None)
