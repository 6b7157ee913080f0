"""GAIT-prop's mathematics (research/gait_pal_di.md A.3 and D): closed forms against the BP oracle, numpy only."""

import numpy as np
import pytest
from scipy.stats import ortho_group

from arsim.activations import get_activation
from arsim.reference import oracle
from arsim.reference.gait import gait_pass, orthogonality_gradient, orthogonality_penalty


def _net(n, n_layers, activation, seed, scale=1.0, slope=0.1, orthogonal=True):
    rng = np.random.default_rng(seed)
    W = [rng.normal(0, 1 / np.sqrt(n), size=(n, n))]  # W^0 need not be orthogonal
    W += [scale * ortho_group.rvs(n, random_state=seed + l) if orthogonal else rng.normal(0, 1 / np.sqrt(n), size=(n, n))
          for l in range(1, n_layers)]
    b = [0.1 * rng.normal(size=n) for _ in range(n_layers)]
    act = get_activation(activation, slope)
    x = rng.uniform(0, 1, size=(4, n))
    targets = np.eye(n)[rng.integers(n, size=4)]
    fwd = oracle.forward(W, b, x, act, act, "mse")
    e = oracle.output_error(fwd.xbar[-1], targets, "mse")
    return W, b, fwd, e, oracle.backward(W, fwd, targets, "mse")


def _cosine(u, v):
    return float(np.sum(u * v) / (np.linalg.norm(u) * np.linalg.norm(v)))


@pytest.mark.parametrize("gamma", [1e-2, 1e-3, 1e-4])
@pytest.mark.parametrize("n_layers", [2, 3])
def test_orthogonal_leaky_relu_without_crossings_is_bp_for_any_gamma(gamma, n_layers):
    checked = 0
    for seed in range(6):
        W, b, fwd, e, bp = _net(30, n_layers, "leaky_relu", seed)
        result = gait_pass(W, b, fwd, e, gamma, "leaky_relu")
        if any(result.crossings):
            continue  # the equivalence needs no unit to cross the kink
        checked += 1
        for l in range(n_layers):
            assert 1 - _cosine(result.dW[l], bp.dW[l]) < 1e-12, (seed, l)
            assert np.linalg.norm(result.dW[l] - bp.dW[l]) < 1e-6 * np.linalg.norm(bp.dW[l]), (seed, l)
    assert checked >= 3


def test_a_kink_crossing_is_counted_and_breaks_the_equivalence():
    W, b, fwd, e, bp = _net(30, 3, "leaky_relu", 0)
    result = gait_pass(W, b, fwd, 1e3 * e, 1e-3, "leaky_relu")  # large steps push units over the kink
    assert result.crossings[2] > 0
    assert 1 - _cosine(result.dW[0], bp.dW[0]) > 1e-6


def test_scaled_orthogonal_gives_cosine_one_and_ratio_s_to_the_minus_2k():
    s, gamma = 0.8, 1e-3
    W, b, fwd, e, bp = _net(30, 3, "linear", 1, scale=s)
    result = gait_pass(W, b, fwd, e, gamma, "linear")
    for l in range(3):
        k = 2 - l  # W^l is updated from eps^{l+1}, which went through k = L - (l+1) inverses
        assert abs(_cosine(result.dW[l], bp.dW[l]) - 1) < 1e-12
        ratio = np.linalg.norm(result.dW[l]) / np.linalg.norm(bp.dW[l])
        assert abs(ratio - s ** (-2 * k)) < 1e-9 * s ** (-2 * k), l


def test_tanh_is_exact_only_to_first_order_in_gamma():
    W, b, fwd, e, bp = _net(30, 3, "tanh", 2)
    W_small = [0.5 * w for w in W]  # keep tanh off saturation for atanh
    act = get_activation("tanh")
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 1, size=(4, 30))
    targets = np.eye(30)[rng.integers(30, size=4)]
    fwd = oracle.forward(W_small, b, x, act, act, "mse")
    e = oracle.output_error(fwd.xbar[-1], targets, "mse")
    # BP with W^-1 in place of W^T is the gamma -> 0 limit: compare GAIT against it
    misses = []
    for gamma in (1e-2, 1e-3):
        result = gait_pass(W_small, b, fwd, e, gamma, "tanh")
        delta = fwd.fp[3] * e
        limit = [None, None, None]
        for l in (2, 1):
            delta = fwd.fp[l] * np.linalg.solve(W_small[l], delta.T).T
            limit[l - 1] = delta.T @ fwd.xbar[l - 1]
        misses.append(1 - _cosine(result.dW[0], limit[0]))
    assert misses[1] > 0 and 50 < misses[0] / misses[1] < 200  # 1 - cos = O(gamma^2): ~100 per decade


def test_the_cancellation_floor_is_reported():
    W, b, fwd, e, bp = _net(30, 5, "linear", 3)
    fine = gait_pass(W, b, fwd, e, 1e-3, "linear")
    coarse = gait_pass(W, b, fwd, e, 1e-5, "linear")
    assert fine.cancellation[1] < 1e-3 < coarse.cancellation[1]  # (1e-5)^4 leaves no digits at the bottom
    assert 1 - _cosine(coarse.dW[0], bp.dW[0]) > 1e-3 > 1 - _cosine(fine.dW[0], bp.dW[0])


def test_regulariser_gradient_against_finite_differences_and_its_blind_spot():
    rng = np.random.default_rng(4)
    W = rng.normal(size=(5, 5))
    gradient, h = orthogonality_gradient(W), 1e-6
    for i, j in [(0, 0), (1, 3), (4, 2)]:
        step = np.zeros_like(W)
        step[i, j] = h
        finite = (orthogonality_penalty(W + step) - orthogonality_penalty(W - step)) / (2 * h)
        assert abs(finite - gradient[i, j]) < 1e-6 * max(1.0, abs(finite))
    # W = Q D has orthogonal columns (R = 0) and yet W^-1 != W^T: GAIT is not BP there
    Q = ortho_group.rvs(5, random_state=0)
    QD = Q @ np.diag([0.5, 1.0, 1.5, 2.0, 3.0])
    assert orthogonality_penalty(QD) < 1e-20
    assert np.max(np.abs(np.linalg.inv(QD) - QD.T)) > 0.1


def test_a_widening_layer_or_a_tower_reading_auxiliary_units_is_refused_in_one_line():
    W = [np.ones((4, 3)), np.ones((5, 4)), np.ones((2, 5))]
    b = [np.zeros(4), np.zeros(5), np.zeros(2)]
    linear = get_activation("linear")
    fwd = oracle.forward(W, b, np.ones(3), linear, linear, "mse")
    with pytest.raises(ValueError, match=r"^layer 1: W\^1 is 5 x 4; GAIT-prop needs square or narrowing invertible layers$"):
        gait_pass(W, b, fwd, np.ones(2), 1e-3, "linear")
    W = [np.ones((4, 3)), np.ones((3, 4)), np.ones((3, 3))]
    b = [np.zeros(4), np.zeros(3), np.zeros(3)]
    fwd = oracle.forward(W, b, np.ones(3), linear, linear, "mse")
    with pytest.raises(ValueError, match=r"^layer 1: W\^1 is 3 x 4 and reads units beyond the first 3"):
        gait_pass(W, b, fwd, np.ones(3), 1e-3, "linear")


@pytest.mark.parametrize("seed", range(4))
def test_the_tower_form_with_orthogonal_blocks_is_bp(seed):
    """W^l = [Q^l, 0] on the first n_{l+1} units: the auxiliary units keep their forward activity and BP's delta is 0 there."""
    rng = np.random.default_rng(seed)
    sizes = [12, 16, 9, 5]
    W = [rng.normal(0, 0.3, size=(16, 12))]
    for l in (1, 2):
        W.append(np.concatenate([ortho_group.rvs(sizes[l + 1], random_state=seed + l), np.zeros((sizes[l + 1], sizes[l] - sizes[l + 1]))], axis=1))
    b = [0.1 * rng.normal(size=n) for n in sizes[1:]]
    act = get_activation("leaky_relu", 0.1)
    x = rng.uniform(0, 1, size=(3, 12))
    targets = np.eye(5)[rng.integers(5, size=3)]
    fwd = oracle.forward(W, b, x, act, act, "mse")
    e = oracle.output_error(fwd.xbar[-1], targets, "mse")
    bp = oracle.backward(W, fwd, targets, "mse")
    result = gait_pass(W, b, fwd, e, 1e-4, "leaky_relu")
    assert not any(result.crossings)
    np.testing.assert_array_equal(result.targets[1][:, 9:], fwd.xbar[1][:, 9:])  # auxiliary units: target = activity
    for l in range(3):
        assert 1 - _cosine(result.dW[l], bp.dW[l]) < 1e-12, l
        assert np.linalg.norm(result.dW[l] - bp.dW[l]) < 1e-6 * np.linalg.norm(bp.dW[l]), l
