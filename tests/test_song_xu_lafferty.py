"""The Song-Xu-Lafferty study (arsim.studies.song_xu_lafferty) against closed forms.

fa_family.md 3.2 and 6-H5: with linear psi, FA moves W only along b (rank
one); a unit with b_r = 0 keeps its input weights; beta is its discounted
gradient sum; the beta gradient is the derivative of the loss. Every
expected value is computed here from the definitions (the model, the loss,
the authors' loop), independently of the module's code paths.
"""

import math
import sqlite3

import numpy as np
import pytest

from arsim.cli import main
from arsim.config import SCHEMA, ConfigError, Key, resolve
from arsim.sweeps.store import Store
from arsim.studies import song_xu_lafferty as sxl
from arsim.sweeps import plan_sweep

PSI = {
    "linear": (lambda z: z, lambda z: np.ones_like(z)),
    "relu": (lambda z: np.maximum(z, 0.0), lambda z: (z > 0).astype(float)),
    "tanh": (np.tanh, lambda z: 1.0 / np.cosh(z) ** 2),
    "sigmoid": (lambda z: 1.0 / (1.0 + np.exp(-z)), lambda z: np.exp(-z) / (1.0 + np.exp(-z)) ** 2),
}

SMALL = {"sizes": [12, 9, 1], "sxl": {"n": 5, "eta": 0.002}}


def small_config(**keys) -> dict:
    raw = {"sizes": SMALL["sizes"], "activation": keys.pop("activation", "linear"), "seed": keys.pop("seed", 4)}
    raw["sxl"] = {**SMALL["sxl"], **keys}
    return resolve(raw)


def my_loss(problem, W, beta) -> float:
    """1/2 sum_i (y_i - f_i)^2 with f = p^-1/2 psi(X W) beta, written out here."""
    f = PSI[problem.activation][0](problem.X @ W) @ beta / math.sqrt(W.shape[1])
    return 0.5 * float(np.sum((problem.y - f) ** 2))


def my_beta_gradient(problem, W, beta) -> np.ndarray:
    """d/dbeta of my_loss: -p^-1/2 psi(X W)^T (y - f)."""
    H = PSI[problem.activation][0](problem.X @ W)
    residual = problem.y - H @ beta / math.sqrt(W.shape[1])
    return -H.T @ residual / math.sqrt(W.shape[1])


# -- structure of the FA dynamics ---------------------------------------------


@pytest.mark.parametrize("solver", ["dense", "auto"])
@pytest.mark.parametrize("lam", [0.0, 3.0])
def test_linear_fa_moves_the_input_weights_along_b_only(solver, lam):
    config = small_config(**{"lambda": lam})
    problem = sxl.make_problem(config)
    result = sxl.train(problem, steps=300, eta=config["sxl.eta"], lam=lam, mode="fa", solver=solver)
    change = result.W - problem.W0
    s = np.linalg.svd(change, compute_uv=False)
    assert s[0] > 1e-3 * np.linalg.norm(problem.W0)  # it did move
    assert s[1] / s[0] < 1e-12
    # the rows of W(t) - W(0) are multiples of b: W(t) - W(0) = u b^T
    _, _, vt = np.linalg.svd(change)
    assert abs(abs(vt[0] @ problem.b) / np.linalg.norm(problem.b) - 1.0) < 1e-12


def test_bp_moves_the_input_weights_off_rank_one():
    # the rank-one law is FA's: with beta (which changes) in place of b it fails
    config = small_config(mode="bp")
    problem = sxl.make_problem(config)
    result = sxl.train(problem, steps=300, eta=config["sxl.eta"], mode="bp")
    s = np.linalg.svd(result.W - problem.W0, compute_uv=False)
    assert s[1] / s[0] > 1e-6


@pytest.mark.parametrize("activation", ["linear", "relu", "tanh", "sigmoid"])
def test_a_unit_with_zero_backward_weight_never_changes_its_input_weights(activation):
    config = small_config(activation=activation, data="teacher")
    problem = sxl.make_problem(config)
    problem.b[3] = 0.0
    result = sxl.train(problem, steps=200, eta=config["sxl.eta"], lam=2.0, mode="fa")
    assert np.array_equal(result.W[:, 3], problem.W0[:, 3])
    moved = np.linalg.norm(result.W - problem.W0, axis=0)
    assert np.all(np.delete(moved, 3) > 0)
    assert result.beta[3] != problem.beta0[3]  # its output weight still learns


@pytest.mark.parametrize("activation,solver", [("linear", "auto"), ("linear", "dense"), ("tanh", "dense"), ("relu", "dense")])
def test_beta_is_the_discounted_sum_of_its_gradients(activation, solver):
    # beta(T) = (1 - eta lam)^T beta(0) - eta sum_{s<T} (1 - eta lam)^(T-1-s) g(s),
    # g(s) = dL/dbeta at the state after s steps, recomputed here from W(s), beta(s)
    eta, lam, T = 0.002, 4.0, 25
    config = small_config(activation=activation, data="teacher")
    problem = sxl.make_problem(config)
    states = [sxl.train(problem, steps=s, eta=eta, lam=lam, mode="fa", solver=solver) for s in range(T + 1)]
    keep = 1.0 - eta * lam
    expected = keep**T * problem.beta0
    for s in range(T):
        expected = expected - eta * keep ** (T - 1 - s) * my_beta_gradient(problem, states[s].W, states[s].beta)
    np.testing.assert_allclose(states[T].beta, expected, rtol=1e-10, atol=1e-12 * np.abs(expected).max())
    assert not np.allclose(states[T].beta, keep**T * problem.beta0)  # the gradient sum matters


@pytest.mark.parametrize("activation", ["linear", "relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("mode", ["fa", "bp"])
def test_beta_gradient_matches_central_differences_of_the_loss(activation, mode):
    config = small_config(activation=activation, data="teacher")
    problem = sxl.make_problem(config)
    rng = np.random.default_rng(11)
    W = problem.W0 + 0.1 * rng.standard_normal(problem.W0.shape)
    beta = problem.beta0 + 0.1 * rng.standard_normal(problem.p)
    _, dbeta = sxl.gradients(problem, W, beta, mode=mode)
    h = 1e-5
    numeric = np.array([
        (my_loss(problem, W, beta + h * unit) - my_loss(problem, W, beta - h * unit)) / (2 * h) for unit in np.eye(problem.p)
    ])
    np.testing.assert_allclose(dbeta, numeric, rtol=1e-7, atol=1e-7 * np.abs(numeric).max())
    assert sxl.loss(problem, W, beta) == pytest.approx(my_loss(problem, W, beta), rel=1e-13)


@pytest.mark.parametrize("activation", ["linear", "tanh", "sigmoid"])
def test_bp_weight_gradient_matches_central_differences_and_fa_uses_b(activation):
    config = small_config(activation=activation, data="teacher")
    problem = sxl.make_problem(config)
    W, beta = problem.W0, problem.beta0
    dW_bp, _ = sxl.gradients(problem, W, beta, mode="bp")
    h = 1e-5
    for i, r in [(0, 0), (3, 5), (11, 8), (7, 2)]:
        step = np.zeros_like(W)
        step[i, r] = h
        numeric = (my_loss(problem, W + step, beta) - my_loss(problem, W - step, beta)) / (2 * h)
        assert dW_bp[i, r] == pytest.approx(numeric, rel=1e-6, abs=1e-8 * np.abs(dW_bp).max())
    # FA: column r is BP's with b_r in place of beta_r
    dW_fa, _ = sxl.gradients(problem, W, beta, mode="fa")
    np.testing.assert_allclose(dW_fa * beta, dW_bp * problem.b, rtol=1e-12, atol=1e-14 * np.abs(dW_bp).max())


@pytest.mark.parametrize("activation", ["linear", "tanh"])
def test_bp_mode_decreases_the_loss(activation):
    config = small_config(activation=activation, data="teacher", mode="bp")
    problem = sxl.make_problem(config)
    result = sxl.train(problem, steps=2000, eta=config["sxl.eta"], mode="bp", record_every=1)
    assert np.all(np.diff(result.loss) <= 0)
    assert result.loss[-1] < 1e-3 * result.loss[0]


def test_reduced_linear_solver_equals_the_dense_update():
    config = small_config(**{"lambda": 3.0, "mse_tol": 1e-4, "check_every": 50, "steps": 100, "max_steps": 5000})
    problem = sxl.make_problem(config)
    kwargs = dict(steps=100, eta=config["sxl.eta"], lam=3.0, mode="fa", record_every=7, mse_tol=1e-4, check_every=50, max_steps=5000)
    fast = sxl.train(problem, solver="auto", **kwargs)
    dense = sxl.train(problem, solver="dense", **kwargs)
    assert (fast.solver, dense.solver) == ("reduced", "dense")
    assert fast.n_steps == dense.n_steps > 100
    np.testing.assert_array_equal(fast.step, dense.step)
    np.testing.assert_allclose(fast.loss, dense.loss, rtol=1e-9)
    np.testing.assert_allclose(fast.alignment, dense.alignment, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fast.beta, dense.beta, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fast.W, dense.W, rtol=1e-9, atol=1e-12)
    # and the recorded alignment is cos(beta, b) of the final state
    assert fast.alignment[-1] == pytest.approx(problem.b @ fast.beta / np.linalg.norm(problem.b) / np.linalg.norm(fast.beta), rel=1e-9)


def test_stopping_rule_is_the_authors_loop():
    # simulation_align.py: while t < T or flag: loss at t; at t % C == C - 1 clear flag for good once
    # |mse - previous check's mse| < tol (the first check compares with 0); update; t += 1
    eta, lam, T, C, tol = 0.002, 3.0, 120, 40, 2e-3
    config = small_config()
    problem = sxl.make_problem(config)
    full = sxl.train(problem, steps=3000, eta=eta, lam=lam, mode="fa", record_every=1)
    mse = 2 * full.loss / problem.n
    t, flag, last = 0, True, 0.0
    while t < T or flag:
        if t % C == C - 1:
            if abs(mse[t] - last) < tol:
                flag = False
            last = mse[t]
        t += 1
    assert T < t < 3000
    run = sxl.train(problem, steps=T, eta=eta, lam=lam, mode="fa", record_every=1, mse_tol=tol, check_every=C, max_steps=10**5)
    assert run.n_steps == t
    np.testing.assert_allclose(run.loss, full.loss[: t + 1], rtol=1e-12)
    capped = sxl.train(problem, steps=T, eta=eta, lam=lam, mode="fa", mse_tol=tol, check_every=C, max_steps=T + 5)
    assert capped.n_steps == T + 5


def test_authors_conventions():
    # fa_family.md 3.3: T_p = floor(5000 sqrt(p) / 14)
    assert [sxl.authors_min_steps(p) for p in sxl.AUTHORS_WIDTHS] == [5050, 7142, 10101, 14285, 20203, 28571, 40406]
    # the MSE-mean gradient is 2/n times the 1/2-sum gradient: same per-step decay eta * lambda
    eta, lam = sxl.from_mse(1e-3, 0.5, 50)
    assert (eta, lam) == pytest.approx((4e-5, 12.5))
    assert eta * lam == pytest.approx(1e-3 * 0.5)
    assert sxl.to_mse(eta, lam, 50) == pytest.approx((1e-3, 0.5))
    assert set(sxl.SXL_KEYS) == {k for k in SCHEMA if k.startswith("sxl.")} and len(sxl.SXL_KEYS) >= 7
    assert all(isinstance(spec, Key) for spec in sxl.SXL_KEYS.values())


def test_runs_are_reproducible_and_fa_bp_share_data_and_weights():
    one = sxl.make_problem(small_config(activation="tanh", data="teacher"))
    two = sxl.make_problem(small_config(activation="tanh", data="teacher", mode="bp"))
    for name in ("X", "y", "W0", "beta0", "b"):
        np.testing.assert_array_equal(getattr(one, name), getattr(two, name))
    other = sxl.make_problem(small_config(activation="tanh", data="teacher", seed=5))
    assert not np.array_equal(one.W0, other.W0) and not np.array_equal(one.X, other.X)
    a = sxl.run_config(small_config(**{"lambda": 1.0}))[2]
    b = sxl.run_config(small_config(**{"lambda": 1.0}))[2]
    assert a == b


def test_diverging_step_raises_floating_point_error():
    config = small_config(eta=5.0)
    with pytest.raises(FloatingPointError, match="sxl.eta"):
        sxl.run_config(config)


# -- keys and errors ---------------------------------------------------------------


@pytest.mark.parametrize(
    "raw,fragment",
    [
        ({"sxl": {"n": 0}}, "sxl.n = 0 is out of range; expected an integer >= 1"),
        ({"sxl": {"eta": -1.0}}, "sxl.eta = -1.0 is out of range; expected a finite number > 0"),
        ({"sxl": {"lambda": -0.5}}, "sxl.lambda = -0.5 is out of range; expected a finite number >= 0"),
        ({"sxl": {"data": "quadratic"}}, "sxl.data = 'quadratic' is out of range; expected one of 'linear', 'teacher'"),
        ({"sxl": {"mode": "dfa"}}, "sxl.mode = 'dfa' is out of range; expected one of 'fa', 'bp'"),
        ({"sxl": {"steps": 2.5}}, "sxl.steps = 2.5 has the wrong type; expected an integer"),
        ({"sxl": {"solver": "fast"}}, "sxl.solver = 'fast' is out of range"),
        ({"sxl": {"bogus": 1}}, "unknown key 'sxl.bogus'"),
        ({"sizes": [12, 9, 2]}, "sizes = [12, 9, 2] with the sxl study; expected [d, p, 1]"),
        ({"sizes": [12, 9, 9, 1]}, "sizes = [12, 9, 9, 1] with the sxl study; expected [d, p, 1]"),
        ({"activation": "leaky_relu"}, "activation = 'leaky_relu' with the sxl study; expected one of 'linear', 'relu', 'tanh', 'sigmoid'"),
        ({"sxl": {"eta": 0.5, "lambda": 4.0}}, "sxl.eta * sxl.lambda = 2.0 is out of range; expected < 1"),
        ({"sxl": {"steps": 100, "max_steps": 50}}, "sxl.max_steps = 50 is out of range; expected >= sxl.steps = 100"),
    ],
)
def test_bad_keys_fail_in_one_line_at_plan_time(raw, fragment, tmp_path, capsys):
    model = tmp_path / "bad.toml"
    lines = [f"sizes = {raw.get('sizes', [12, 9, 1])}", f"activation = \"{raw.get('activation', 'linear')}\""]
    table = raw.get("sxl", {})
    if table:
        lines.append("[sxl]")
        lines += [f"{k} = {v!r}".replace("'", '"') for k, v in table.items()]
    model.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as caught:
        plan_sweep(model, command="sxl")
    assert fragment in str(caught.value) and "\n" not in str(caught.value)
    code = main(["sweep", str(model), "--command", "sxl", "--store", str(tmp_path / "s.sqlite"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and err.count("\n") == 1
    assert not (tmp_path / "s.sqlite").exists()


# -- the sweep command ---------------------------------------------------------------------

MODEL = """
name = "sxl_test"
sizes = [12, 9, 1]
activation = "linear"
seed = 2
[sxl]
n = 5
eta = 0.002
lambda = 2.0
steps = 150
record_every = 10
"""


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_sxl_sweep_runs_points_into_a_store_and_a_rerun_skips_them(jobs, tmp_path, capsys):
    model = tmp_path / "sxl_test.toml"
    model.write_text(MODEL)
    store_path = tmp_path / "sxl.sqlite"
    argv = ["sweep", str(model), "--command", "sxl", "--grid", "width=8,12", "--store", str(store_path), "--jobs", jobs, "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2 points: 2 run, 0 already in the store, 0 failed" in out
    assert "builds: 0 network shapes, 0 compiled" in out
    with Store(store_path, create=False) as store:
        records = store.records()
        assert [r["status"] for r in records] == ["ok", "ok"]
        assert sorted(r["config"]["sizes"][1] for r in records) == [8, 12]
        for record in records:
            assert record["command"] == "sxl" and record["topology"] is None and record["layers"] == []
            _, result, summary = sxl.run_config(record["config"])
            assert record["summary"]["alignment"] == summary["alignment"]
            assert record["summary"]["final_loss"] == summary["final_loss"]
            arrays = store.load_arrays(record)
            np.testing.assert_array_equal(arrays["loss"], result.loss)
            np.testing.assert_array_equal(arrays["alignment"], result.alignment)
            np.testing.assert_array_equal(arrays["step"], np.r_[0:151:10])
    assert main(argv) == 0
    assert "2 points: 0 run, 2 already in the store" in capsys.readouterr().out
    assert sqlite3.connect(store_path).execute("SELECT COUNT(*) FROM points").fetchone()[0] == 2
    assert main(argv + ["--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert "0 builds" in dry and "no build: 2 points" in dry and dry.count("done") == 2
    assert main(["results", str(store_path)]) == 0
    table = capsys.readouterr().out
    assert "alignment" in table and "final_mse" in table and "2 points" in table
