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


def training_run(network, W, b, B, x_in, targets, *, copies: int, batch_size: int, lr: float, sigma: float,
                 tau_xi: float, tau_hp: float, eta_b: float, alpha: float, noise: dict | None = None):
    """One standalone PAL training run, every clock step in the order of arsim's schedule (float64).

    Written from the rule card, sharing no code with `arsim.rules.pal` or
    the C++. Periods of ``copies`` samples (a batch, or one sample) of
    ``S = n_relax + 1`` steps each, plus one last step that learns from the
    last period: ``T = P S + 1`` steps. At every step ``t`` (``s = t % S``,
    period ``p = t // S``):

    1. the stream's drive ``ar^{l+1} = W^l r^l`` from the previous step's rates;
    2. at ``s = 0``, ``t > 0``: the summed update of the period that relaxed,
       ``dW^l += (x^{l+1} f'^{l+1})^T xbar^l``, applied at a batch boundary;
    3. at ``s = 0``: the forward sweep of period ``p`` (the last one again
       at the final step), ``x`` of the hidden layers to ``xbar``, ``x^L = e``;
    4. for ``1 <= s <= n_relax``: ``x^l += eta (B^l (x^{l+1} f'^{l+1}) - x^l)``;
       the noise steps (``noise[l][t]``, or ``(1 - a)`` times the last
       value when no noise is given: exact for ``sigma = 0`` only);
    5. rates ``r^0 = xbar^0``, ``r^l = f(ar^l + b^l + noise^l)``;
    6. ``B^l += dt eta_b (noise^l^T (r^{l+1} - lp^{l+1}) / copies - alpha B^l)``, ``l = 1..L-1``;
    7. ``lp^l += (dt / tau_hp)(r^l - lp^l)`` for ``l = 2..L``.

    Everything the run carries (rates, low-pass, noise, relaxing state)
    starts at 0.

    Returns
    -------
    W, b, B : lists of ndarray
        The weights after the run.
    """
    from . import oracle

    W, b, B = [w.copy() for w in W], [v.copy() for v in b], [m.copy() for m in B]
    n_layers = len(W)
    sizes = [W[0].shape[1]] + [w.shape[0] for w in W]
    hidden, output = network.hidden, network.output
    n_relax = network.n_relax_steps
    steps_per_period = n_relax + 1
    periods = len(x_in) // copies
    a, rate, hp = network.dt / tau_xi, network.dt * eta_b, network.dt / tau_hp
    zeros = [np.zeros((copies, n)) for n in sizes]
    r, lp, xi, x, xbar, fp = ([z.copy() for z in zeros] for _ in range(6))
    dW = [np.zeros_like(w) for w in W]
    db = [np.zeros_like(v) for v in b]
    for t in range(periods * steps_per_period + 1):
        s, p = t % steps_per_period, t // steps_per_period
        ar = [None] + [r[l] @ W[l].T for l in range(n_layers)]
        if s == 0 and t > 0:
            for l in range(n_layers):
                delta = x[l + 1] * fp[l + 1]
                dW[l] += delta.T @ xbar[l]
                db[l] += delta.sum(axis=0)
            if p % (batch_size // copies) == 0:
                for l in range(n_layers):
                    W[l] = W[l] - lr * dW[l]
                    if network.bias:
                        b[l] = b[l] - lr * db[l]
                    dW[l][:], db[l][:] = 0.0, 0.0
        if s == 0:
            rows = slice(min(p, periods - 1) * copies, (min(p, periods - 1) + 1) * copies)
            fwd = oracle.forward(W, b, x_in[rows], hidden, output, network.loss)
            xbar, fp = [v.copy() for v in fwd.xbar], [v.copy() for v in fwd.fp]
            x = [v.copy() for v in xbar]
            x[n_layers] = oracle.output_error(xbar[n_layers], targets[rows], network.loss)
        if 1 <= s <= n_relax:
            feedback = [None] + [(x[l + 1] * fp[l + 1]) @ B[l].T for l in range(1, n_layers)]
            for l in range(1, n_layers):
                x[l] = x[l] + network.eta * (feedback[l] - x[l])
        for l in range(1, n_layers):
            xi[l] = noise[l][t].reshape(copies, sizes[l]) if noise is not None else (1.0 - a) * xi[l]
        r[0] = xbar[0]
        for l in range(1, n_layers + 1):
            act = output if l == n_layers else hidden
            r[l] = act.f(ar[l] + b[l - 1] + xi[l])
        for l in range(1, n_layers):
            B[l] = B[l] + rate * (xi[l].T @ (r[l + 1] - lp[l + 1]) / copies - alpha * B[l])
        for l in range(2, n_layers + 1):
            lp[l] = lp[l] + hp * (r[l] - lp[l])
    return W, b, B
