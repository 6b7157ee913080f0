"""Phaseless alignment learning (Max et al., arXiv 2212.10249) in plain numpy: the noise, the high-pass and B's rule.

research/gait_pal_di.md B.2-B.4 in SPEC orientation (``B^l`` of shape
``(n_l, n_{l+1})`` maps layer ``l+1``'s error down to layer ``l``). Discrete
time with step ``dt``, ``a = dt / tau_xi``, ``b = dt / tau_hp``:

    xi_{n+1}  = (1 - a) xi_n + sigma sqrt(a) z_n          (the authors' OU update; Brian2's euler
                                                            on tau_xi dxi/dt = -xi + sigma sqrt(tau_xi) xi(t))
    lp_{n+1}  = lp_n + b (r_n - lp_n),  rhat_n = r_n - lp_n  (the high-pass as rate minus low-pass)
    B_{n+1}   = B_n + dt eta_b (xi^l_n rhat^{l+1}_n^T - alpha B_n)

Independent of Brian2 and of the rule code; tests hold the Brian2 rule against it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ou_variance", "ou_covariance", "hebbian_constant", "simulate_ou", "learn_backward_linear"]


def ou_variance(sigma: float, a: float) -> float:
    """Stationary variance ``sigma^2 / (2 - a)`` of the discrete OU update (``sigma^2 / 2`` as ``a -> 0``)."""
    return sigma**2 / (2.0 - a)


def ou_covariance(sigma: float, a: float, lag: int) -> float:
    """Stationary lag-``lag`` autocovariance ``v (1 - a)^lag``."""
    return ou_variance(sigma, a) * (1.0 - a) ** lag


def hebbian_constant(sigma: float, a: float, b: float, delay: int) -> float:
    """``c`` in ``E[xi^l rhat^{l+1}^T] = c W^T`` for a linear layer ``r^{l+1}_n = W xi^l_{n - delay}``.

    ``c = v a (1 - a)^d / (a + b - a b)``: the raw correlation ``v (1-a)^d`` minus
    what the low-pass ``lp_n = sum_k b (1-b)^(k-1) r_{n-k}`` keeps of it.
    """
    return ou_variance(sigma, a) * a * (1.0 - a) ** delay / (a + b - a * b)


def simulate_ou(rng: np.random.Generator, n_steps: int, n_units: int, sigma: float, a: float, start=None) -> np.ndarray:
    """``(n_steps + 1, n_units)`` OU samples from ``start`` (default: a stationary draw), the recursion as a linear filter."""
    from scipy.signal import lfilter

    first = rng.normal(0.0, np.sqrt(ou_variance(sigma, a)), n_units) if start is None else np.asarray(start, dtype=float)
    z = rng.normal(size=(n_steps, n_units))
    # xi_{n+1} = (1 - a) xi_n + sigma sqrt(a) z_n, started from xi_0 = first
    rest, _ = lfilter([sigma * np.sqrt(a)], [1.0, -(1.0 - a)], z, axis=0, zi=((1.0 - a) * first)[None, :])
    return np.vstack([first, rest])


def learn_backward_linear(rng, W: np.ndarray, B0: np.ndarray, n_steps: int, sigma: float, dt: float, tau_xi: float,
                          tau_hp: float, eta_b: float, alpha: float, delay: int = 1):
    """B's rule on one linear layer driven by noise only: ``r^{l+1}_n = W xi^l_{n-delay}``, ``W`` fixed.

    Returns ``(B, hebbian)``: ``B`` after ``n_steps`` (the Euler recursion, step by step) and the time
    average of ``xi^l rhat^{l+1}^T``.
    """
    from scipy.signal import lfilter

    a, b = dt / tau_xi, dt / tau_hp
    xi = simulate_ou(rng, n_steps + delay, W.shape[1], sigma, a)
    r = xi[:n_steps] @ W.T  # the rate at step n + delay, caused by the noise delay steps earlier
    # lp_{n+1} = lp_n + b (r_n - lp_n), lp_0 = 0
    lp = np.vstack([np.zeros(W.shape[0]), lfilter([b], [1.0, -(1.0 - b)], r, axis=0)[:-1]])
    rhat = r - lp
    noise = xi[delay:delay + n_steps]
    hebbian = noise.T @ rhat / n_steps
    B = B0.copy()
    if eta_b == 0:
        return B, hebbian
    decay = 1.0 - dt * eta_b * alpha
    for n in range(n_steps):
        B = decay * B + dt * eta_b * np.outer(noise[n], rhat[n])
    return B, hebbian
