"""The Brian2 relaxation against closed forms and an independent numpy integrator."""

import numpy as np
import pytest

from arsim.reference import oracle
from arsim.activations import get_activation
from arsim.reference.euler import relax_euler

VARIANTS = [
    {},
    {"projection": "synapses"},
    {"projection": "synapses", "loss": "ce", "bias": True, "activation": "relu", "output_activation": "linear", "ordering": "sequential"},
    {"ordering": "sequential"},
    {"feedback": "random", "feedback_std": 0.5},
    {"feedback": "learned", "feedback_std": 0.5, "derivative": False},
    {"loss": "ce", "bias": True, "activation": "relu", "output_activation": "linear"},
]


@pytest.mark.parametrize("keys", VARIANTS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "exact")
def test_brian2_trajectory_equals_numpy_euler(relax, keys):
    res = relax(duration=60.0, dt=1.5, tau=10.0, **keys)
    cfg = res.experiment.config
    hidden = get_activation(cfg["activation"])
    output = get_activation(cfg["output_activation"])
    fwd = oracle.forward(res.problem.W, res.problem.b, res.problem.x_in, hidden, output, cfg["loss"])
    for layer in range(len(fwd.xbar)):
        np.testing.assert_allclose(res.xbar[layer], fwd.xbar[layer], rtol=0, atol=1e-12)
    e = oracle.output_error(fwd.xbar[-1], res.problem.target, cfg["loss"])
    _, trace = relax_euler(res.problem.B, fwd.xbar, fwd.fp, e, 0.15, 40, cfg["derivative"], cfg["ordering"])
    assert len(res.t) == 41
    np.testing.assert_allclose(res.t, 0.15 * np.arange(41), rtol=1e-12)
    for layer in range(1, len(trace)):
        np.testing.assert_allclose(res.xtrace[layer], trace[layer], rtol=0, atol=1e-10)


def test_unit_step_reproduces_backprop_in_L_minus_1_steps(relax):
    """eta = 1: each step copies the exact adjoint one layer further down (a sweep)."""
    res = relax(dt=10.0, tau=10.0, duration=30.0, bias=True)
    for layer in range(1, len(res.x)):
        np.testing.assert_allclose(res.x[layer], res.bp.dxbar[layer], rtol=0, atol=1e-10)
    for layer in range(len(res.dW)):
        np.testing.assert_allclose(res.dW[layer], res.bp.dW[layer], rtol=0, atol=1e-10)
        np.testing.assert_allclose(res.db[layer], res.bp.db[layer], rtol=0, atol=1e-10)


@pytest.mark.parametrize("activation", ["linear", "relu", "tanh", "sigmoid", "leaky_relu"])
@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_long_relaxation_reaches_backprop_adjoint(relax, activation, loss):
    output = "linear" if loss == "ce" else activation
    res = relax(activation=activation, output_activation=output, loss=loss, bias=True, duration=300.0)
    for layer in range(1, len(res.x) - 1):
        err = np.linalg.norm(res.x[layer] - res.bp.dxbar[layer]) / np.linalg.norm(res.bp.dxbar[layer])
        assert err < 1e-8, (layer, err)


@pytest.mark.parametrize("eta", [0.1, 0.37, 1.6])
def test_top_two_hidden_layers_follow_the_euler_closed_form(relax, eta):
    """Top layer: e(n) = (1-eta)^n e(0). Next: (1-eta)^n e'(0) + n eta (1-eta)^(n-1) A e(0)."""
    res = relax(dt=eta * 10.0, tau=10.0, duration=eta * 10.0 * 40)
    top = len(res.x) - 2
    g_top, g_next = res.bp.dxbar[top], res.bp.dxbar[top - 1]
    e0 = res.xbar[top] - g_top
    e0_next = res.xbar[top - 1] - g_next
    A = res.problem.W[top - 1].T * res.fp[top][None, :]
    for n in range(41):
        expected = (1 - eta) ** n * e0
        np.testing.assert_allclose(res.xtrace[top][n] - g_top, expected, rtol=1e-9, atol=1e-13)
        expected_next = (1 - eta) ** n * e0_next + n * eta * (1 - eta) ** max(n - 1, 0) * (A @ e0)
        np.testing.assert_allclose(res.xtrace[top - 1][n] - g_next, expected_next, rtol=1e-8, atol=1e-12)


def _solve_fixed_point(B, fp, e, derivative):
    """Solve the stacked linear system x^l - B^l D^{l+1} x^{l+1} = 0, x^L = e, directly."""
    sizes = [len(f) for f in fp]
    hidden = list(range(1, len(sizes) - 1))
    offsets = np.cumsum([0] + [sizes[l] for l in hidden])
    n = offsets[-1]
    M, rhs = np.eye(n), np.zeros(n)
    for k, l in enumerate(hidden):
        D = fp[l + 1] if derivative else np.ones(sizes[l + 1])
        coupling = B[l] * D[None, :]
        rows = slice(offsets[k], offsets[k + 1])
        if l + 1 == len(sizes) - 1:
            rhs[rows] = coupling @ e
        else:
            M[rows, offsets[k + 1]:offsets[k + 2]] = -coupling
    solution = np.linalg.solve(M, rhs)
    return {l: solution[offsets[k]:offsets[k + 1]] for k, l in enumerate(hidden)}


@pytest.mark.parametrize(
    "keys",
    [{"derivative": False}, {"feedback": "random", "feedback_std": 0.5}, {"feedback": "random", "feedback_std": 0.5, "derivative": False}],
    ids=["no-derivative", "random", "random-no-derivative"],
)
def test_simplifications_converge_to_their_own_fixed_point(relax, keys):
    res = relax(duration=300.0, bias=True, **keys)
    expected = _solve_fixed_point(res.B_used, res.fp, res.x[-1], res.experiment.config["derivative"])
    for layer, value in expected.items():
        np.testing.assert_allclose(res.x[layer], value, rtol=1e-8, atol=1e-12)
    # ... which is not the backprop adjoint below the top hidden layer (whose
    # feedback, from a linear output with f' = 1, is exact without the derivative)
    assert np.linalg.norm(expected[1] - res.bp.dxbar[1]) > 1e-3 * np.linalg.norm(res.bp.dxbar[1])


def test_sequential_ordering_converges_faster_than_synchronous(relax):
    sync = relax(duration=100.0)
    seq = relax(duration=100.0, ordering="sequential")
    for layer in range(1, len(sync.x) - 2):
        assert seq.layers[layer - 1]["x_rel_error"] < sync.layers[layer - 1]["x_rel_error"]


def test_runtime_device_equals_standalone(relax):
    cpp = relax(duration=20.0, bias=True, loss="ce", output_activation="linear")
    runtime = relax(device="runtime", duration=20.0, bias=True, loss="ce", output_activation="linear")
    for layer in range(1, len(cpp.x)):
        np.testing.assert_allclose(runtime.xtrace[layer], cpp.xtrace[layer], rtol=0, atol=1e-12)


@pytest.mark.parametrize("eta", [0.1, 0.5])
def test_cold_start_error_is_the_binomial_tail(relax, eta):
    """From x(0) = 0 the layer k below the top has relative error P(Bin(n, eta) <= k) after n steps.

    Error recursion e_l(n+1) = (1-eta) e_l(n) + eta A_l e_{l+1}(n) with e_l(0) = -g_l and
    A_l g_{l+1} = g_l gives e_l(n) = -g_l sum_{j<=k} C(n,j) eta^j (1-eta)^(n-j) exactly.
    """
    from scipy.stats import binom

    res = relax(initial_state="zero", dt=eta * 10.0, tau=10.0, duration=eta * 10.0 * 60, bias=True)
    top = len(res.x) - 2
    n = np.arange(61)
    for k, layer in enumerate(range(top, 0, -1)):
        g = res.bp.dxbar[layer]
        err = np.linalg.norm(res.xtrace[layer] - g, axis=1) / np.linalg.norm(g)
        np.testing.assert_allclose(err, binom.cdf(k, n, eta), rtol=1e-9, atol=1e-14)
