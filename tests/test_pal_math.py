"""PAL's noise and backward rule (research/gait_pal_di.md B): closed forms against simulation, numpy only."""

import numpy as np

from arsim.reference.pal import hebbian_constant, learn_backward_linear, ou_covariance, ou_variance, simulate_ou


def test_ou_variance_and_autocovariance_match_the_discrete_closed_form():
    rng = np.random.default_rng(0)
    sigma, a = 1e-2, 0.1
    xi = simulate_ou(rng, 200_000, 8, sigma, a)
    v = ou_variance(sigma, a)
    assert abs(xi.var() / v - 1) < 0.02  # 1.6e6 correlated samples, ~10 steps per independent one
    for lag in (1, 5, 20):
        cov = np.mean(xi[lag:] * xi[:-lag])
        assert abs(cov - ou_covariance(sigma, a, lag)) < 0.03 * v, lag
    assert abs(v - sigma**2 / 2) > 0.04 * v  # the discrete variance is not the continuous one at a = 0.1


def test_without_noise_B_decays_exactly_geometrically():
    rng = np.random.default_rng(1)
    W, B0 = rng.normal(size=(3, 4)), rng.normal(size=(4, 3))
    dt, eta_b, alpha, n = 0.1, 20.0, 1e-2, 500
    B, _ = learn_backward_linear(rng, W, B0, n, sigma=0.0, dt=dt, tau_xi=1.0, tau_hp=1.0, eta_b=eta_b, alpha=alpha)
    np.testing.assert_allclose(B, (1 - dt * eta_b * alpha) ** n * B0, rtol=1e-12)


def test_the_mean_hebbian_term_is_c_W_transpose():
    rng = np.random.default_rng(2)
    W = rng.normal(size=(3, 5))
    sigma, dt, tau = 1.0, 0.1, 1.0
    for delay in (0, 1, 2):
        _, hebbian = learn_backward_linear(rng, W, np.zeros((5, 3)), 400_000, sigma, dt, tau, tau, eta_b=0.0, alpha=0.0,
                                           delay=delay)
        c = hebbian_constant(sigma, dt / tau, dt / tau, delay)
        assert np.max(np.abs(hebbian - c * W.T)) < 0.02 * np.max(np.abs(c * W.T)), delay
    assert abs(hebbian_constant(1.0, 0.1, 0.1, 1) - 0.2493) < 1e-4  # research/gait_pal_di.md B.4
