"""The backprop oracle against central finite differences, and the metrics."""

import numpy as np
import pytest

from arsim import metrics

from arsim.reference import oracle
from arsim.activations import get_activation

SIZES = [5, 4, 3, 3]


def _problem(seed, batch):
    rng = np.random.default_rng(seed)
    W = [rng.normal(0, 0.6, (SIZES[l + 1], SIZES[l])) for l in range(len(SIZES) - 1)]
    b = [rng.normal(0, 0.3, SIZES[l + 1]) for l in range(len(SIZES) - 1)]
    shape = (batch, SIZES[0]) if batch else (SIZES[0],)
    x0 = rng.normal(0, 1, shape)
    classes = rng.integers(SIZES[-1], size=batch or 1)
    target = np.eye(SIZES[-1])[classes]
    return W, b, x0, target if batch else target[0]


def _loss(W, b, x0, target, hidden, output, loss_name):
    fwd = oracle.forward(W, b, x0, hidden, output, loss_name)
    return oracle.loss(fwd.xbar[-1], target, loss_name)


@pytest.mark.parametrize("activation", ["linear", "relu", "tanh", "sigmoid", "leaky_relu"])
@pytest.mark.parametrize("loss_name", ["mse", "ce"])
@pytest.mark.parametrize("batch", [0, 3])
def test_gradients_match_central_differences(activation, loss_name, batch):
    hidden = get_activation(activation, 0.1)
    output = get_activation("sigmoid" if loss_name == "mse" else "linear")
    W, b, x0, target = _problem(7, batch)
    fwd = oracle.forward(W, b, x0, hidden, output, loss_name)
    grads = oracle.backward(W, fwd, target, loss_name)
    h = 1e-6
    for layer in range(len(W)):
        for params, analytic in ((W, grads.dW[layer]), (b, grads.db[layer])):
            numeric = np.zeros_like(params[layer])
            for idx in np.ndindex(params[layer].shape):
                saved = params[layer][idx]
                params[layer][idx] = saved + h
                up = _loss(W, b, x0, target, hidden, output, loss_name)
                params[layer][idx] = saved - h
                down = _loss(W, b, x0, target, hidden, output, loss_name)
                params[layer][idx] = saved
                numeric[idx] = (up - down) / (2 * h)
            np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "linear"])
def test_activity_adjoints_match_central_differences(activation):
    """dL/dxbar^l: perturb the stored activity of layer l and re-run the layers above."""
    hidden = get_activation(activation)
    output = get_activation("tanh")
    W, b, x0, target = _problem(3, 0)
    fwd = oracle.forward(W, b, x0, hidden, output, "mse")
    grads = oracle.backward(W, fwd, target, "mse")
    h = 1e-6
    for layer in range(len(W)):
        numeric = np.zeros(SIZES[layer])
        for k in range(SIZES[layer]):
            values = []
            for sign in (1, -1):
                xl = fwd.xbar[layer].copy()
                xl[k] += sign * h
                top = oracle.forward(W[layer:], b[layer:], xl, hidden, output, "mse")
                values.append(oracle.loss(top.xbar[-1], target, "mse"))
            numeric[k] = (values[0] - values[1]) / (2 * h)
        np.testing.assert_allclose(grads.dxbar[layer], numeric, rtol=1e-6, atol=1e-9)


def test_softmax_is_stable_for_large_inputs():
    p = oracle.softmax(np.array([1000.0, 1000.0, -1000.0]))
    np.testing.assert_allclose(p, [0.5, 0.5, 0.0])


def test_cosine_is_clipped_and_angle_zero_for_parallel_vectors():
    g = np.array([1e-3, 2.0, 3.0])
    assert metrics.cosine(g, 3 * g) == 1.0 or abs(metrics.cosine(g, 3 * g) - 1.0) < 1e-15
    assert metrics.cosine(g, -g) == pytest.approx(-1.0)
    assert -1.0 <= metrics.cosine(g, g * (1 + 1e-17)) <= 1.0
    assert metrics.angle_deg(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(90.0)


def test_relative_error_definition():
    assert metrics.relative_error(np.array([3.0, 4.0]), np.array([0.0, 5.0])) == pytest.approx(np.hypot(3, 1) / 5)
    assert metrics.relative_error(np.zeros(2), np.zeros(2)) == 0.0


def test_convergence_time_is_first_time_after_which_error_stays_below():
    t = np.arange(6) * 0.5
    errors = np.array([1.0, 1e-4, 2e-3, 5e-4, 1e-4, 1e-5])
    assert metrics.convergence_time(t, errors, 1e-3) == 1.5
    assert metrics.convergence_time(t, np.array([1, 1, 1, 1, 1, 1e-2]), 1e-3) == float("inf")
    assert metrics.convergence_time(t, np.full(6, 1e-9), 1e-3) == 0.0


@pytest.mark.parametrize("theta", [1e-9, 1e-5, 0.3, 2.0, np.pi - 1e-6])
def test_angle_is_accurate_from_tiny_to_obtuse(theta):
    """Closed form: two unit vectors at angle theta in a rotated plane of R^3."""
    rng = np.random.default_rng(7)
    basis, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    u = basis[:, 0]
    v = np.cos(theta) * basis[:, 0] + np.sin(theta) * basis[:, 1]
    assert metrics.angle_deg(4.0 * u, 0.5 * v) == pytest.approx(np.degrees(theta), rel=1e-6)
    assert np.isnan(metrics.angle_deg(np.zeros(3), v))
