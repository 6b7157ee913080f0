"""Dynamic inversion (Podlaski & Machens 2020, arXiv 2007.05112), SPEC 3.10."""

from __future__ import annotations

import numpy as np

from .base import Param, Rule, non_negative, register

__all__ = ["DynamicInversion", "UnstableInversion", "stability", "fixed_point", "jacobian", "jacobian_eigenvalues",
           "product_eigenvalues", "ssa_gradient", "ssr_gradient", "repair_feedback"]

FEEDBACK = ("neg_transpose", "random")


class UnstableInversion(FloatingPointError):
    """A layer's inversion dynamics are unstable (reported in one line; the CLI exits with status 3)."""


def _one_of(choices):
    def check(value):
        return None if value in choices else "one of " + ", ".join(repr(c) for c in choices)

    return check


def fixed_point(W: np.ndarray, B: np.ndarray, alpha: float, delta: np.ndarray) -> np.ndarray:
    """``x* = B (W B - alpha I)^-1 delta``, the equilibrium of one layer's inversion (``delta`` in rows)."""
    n_above = W.shape[0]
    return np.linalg.solve(W @ B - alpha * np.eye(n_above), delta.T).T @ B.T


def jacobian(W: np.ndarray, B: np.ndarray, alpha: float) -> np.ndarray:
    """The Jacobian ``[[-I, B], [W, -alpha I]]`` of one layer's inversion (error units first, ``tau = 1``)."""
    n_above, n_below = W.shape
    return np.block([[-np.eye(n_below), B], [W, -alpha * np.eye(n_above)]])


def ssa_gradient(M: np.ndarray, s: float) -> np.ndarray:
    """Gradient of the smoothed spectral abscissa of ``M`` at the level through ``s``.

    The smoothed spectral abscissa (Vanbiervliet et al. 2009; Hennequin et al.
    2014) is the ``s~(M)`` solving ``f(M, s~) = c`` with
    ``f(M, s) = int_0^inf |exp((M - s I) t)|_F^2 dt = tr Q`` and ``c`` fixed
    at ``f(M, s)`` of the given ``s`` (which must lie right of the spectral
    abscissa). With ``(M - s I) Q + Q (M - s I)^T = -I`` and
    ``(M - s I)^T P + P (M - s I) = -I``, implicit differentiation gives
    ``d s~ / dM = P Q / tr(P Q)``.
    """
    from scipy.linalg import solve_continuous_lyapunov

    shifted = M - s * np.eye(len(M))
    identity = np.eye(len(M))
    Q = solve_continuous_lyapunov(shifted, -identity)
    P = solve_continuous_lyapunov(shifted.T, -identity)
    PQ = P @ Q
    return PQ / np.trace(PQ)


def ssr_gradient(G: np.ndarray, r: float) -> np.ndarray:
    """Gradient of the smoothed spectral radius of ``G`` at the level through ``r`` (discrete-time analogue).

    The ``r~(G)`` solving ``g(G, r~) = c`` with ``g(G, r) = sum_k |(G / r)^k|_F^2 = tr Q`` and
    ``c = g(G, r)`` of the given ``r`` (right of the spectral radius). With ``A = G / r``,
    ``A Q A^T - Q = -I`` and ``A^T P A - P = -I``, implicit differentiation gives
    ``d r~ / dG = P A Q / <P A Q, A>`` (Frobenius inner product).
    """
    from scipy.linalg import solve_discrete_lyapunov

    A = G / r
    identity = np.eye(len(G))
    Q = solve_discrete_lyapunov(A, identity)
    P = solve_discrete_lyapunov(A.T, identity)
    PAQ = P @ A @ Q
    return PAQ / np.sum(PAQ * A)


def _small_eigvals(M: np.ndarray) -> np.ndarray:
    """``eigvals(M)`` on one BLAS thread.

    LAPACK's nonsymmetric eigensolver on a few hundred rows gains nothing from
    threads, and beside another busy process on two cores OpenBLAS's spinning
    threads made a 600 x 600 ``eigvals`` 9.5x slower (2.28 s against 0.24 s,
    measured 2026-12-06).
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return np.linalg.eigvals(M)


def product_eigenvalues(W: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Eigenvalues ``mu`` of ``W B`` (``B W`` if the layer above is wider: the smaller product)."""
    n_above, n_below = W.shape
    return _small_eigvals(W @ B if n_above <= n_below else B @ W)


def jacobian_eigenvalues(W: np.ndarray, B: np.ndarray, alpha: float, mu: np.ndarray | None = None) -> np.ndarray:
    """Every eigenvalue of `jacobian` ``[[-I, B], [W, -alpha I]]`` from those of the smaller product.

    By the Schur complement, ``det(lambda I - J) = (lambda + 1)^(n_below - n_above)
    prod_i ((lambda + 1)(lambda + alpha) - mu_i)`` with ``mu`` the eigenvalues of
    ``W B`` (if ``n_above > n_below``: ``(lambda + alpha)^(n_above - n_below)`` and the
    eigenvalues of ``B W``). Each ``mu`` gives the two roots
    ``lambda = (-(1 + alpha) +- sqrt((1 - alpha)^2 + 4 mu)) / 2``; the remaining
    ``|n_below - n_above|`` eigenvalues are ``-1`` (or ``-alpha``). One eigenproblem of
    ``min(n_below, n_above)`` rows replaces one of ``n_below + n_above``.
    """
    n_above, n_below = W.shape
    mu = product_eigenvalues(W, B) if mu is None else np.asarray(mu)
    root = np.sqrt((1.0 - alpha) ** 2 + 4.0 * mu.astype(complex))
    pairs = np.concatenate([(-(1.0 + alpha) + root) / 2.0, (-(1.0 + alpha) - root) / 2.0])
    rest = np.full(abs(n_below - n_above), -1.0 if n_below > n_above else -alpha)
    return np.concatenate([pairs, rest])


def _margins(W, B, alpha, eta):
    lam = jacobian_eigenvalues(W, B, alpha)
    return float(np.max(lam.real)), float(np.max(np.abs(1.0 + eta * lam)))


def repair_feedback(W: np.ndarray, B: np.ndarray, alpha: float, eta: float, target: float = -0.01,
                    smoothing: float = 0.1, radius_target: float = 0.999, max_steps: int = 5000) -> tuple[np.ndarray, int]:
    """Descend ``B`` down the smoothed spectral abscissa of the layer's Jacobian until it is stable.

    The authors' ``SSA_opt`` (research/gait_pal_di.md C.4): gradient steps on
    the ``B`` block of ``P Q / tr(P Q)`` (`ssa_gradient`), evaluated
    ``smoothing`` (in ``1/tau``) right of the current spectral abscissa,
    until the abscissa is below ``target``. The authors stop there, which
    leaves random draws Euler-unstable at ``dt/tau = 0.1`` and, in training,
    layers whose large eigenvalues lie beyond the Euler disk: while the
    forward-Euler map ``G = I + eta M`` has spectral radius ``>= radius_target``
    the steps descend its smoothed spectral radius instead (`ssr_gradient`,
    ``smoothing * eta`` right of the radius) as long as the abscissa stays
    below ``target``. Each of the two step lengths adapts: it grows by 1.2
    after a step that lowered its measure and halves (the step undone) after
    one that did not.

    Returns
    -------
    B : ndarray
        The repaired matrix (a new array).
    steps : int
        Gradient steps taken (0 if ``B`` was stable already).

    Raises
    ------
    UnstableInversion
        If ``max_steps`` steps did not reach both conditions.
    """
    n_below = W.shape[1]
    B = np.array(B, dtype=float)
    abscissa, radius = _margins(W, B, alpha, eta)
    if abscissa < target and radius < 1.0:
        return B, 0
    lr = {"abscissa": 0.05, "radius": 0.05}
    steps = 0
    while not (abscissa < target and radius < radius_target):
        if steps >= max_steps or min(lr.values()) < 1e-12:
            raise UnstableInversion(f"the repair of B did not converge in {steps} steps (spectral abscissa {abscissa:.4g},"
                                    f" Euler radius {radius:.6g} at dt/tau = {eta:g})")
        M = jacobian(W, B, alpha)
        if abscissa >= target:
            measure, gradient = "abscissa", ssa_gradient(M, abscissa + smoothing)[:n_below, n_below:]
        else:
            G = np.eye(len(M)) + eta * M
            measure, gradient = "radius", eta * ssr_gradient(G, radius + smoothing * eta)[:n_below, n_below:]
        candidate = B - lr[measure] * gradient
        new_abscissa, new_radius = _margins(W, candidate, alpha, eta)
        steps += 1
        improved = new_abscissa < abscissa if measure == "abscissa" else (new_radius < radius and new_abscissa < target)
        if improved:
            B, abscissa, radius = candidate, new_abscissa, new_radius
            lr[measure] *= 1.2
        else:
            lr[measure] *= 0.5
    return B, steps


def stability(W: np.ndarray, B: np.ndarray, alpha: float, eta: float) -> tuple[str | None, str | None]:
    """The exact stability conditions of one layer's inversion (SPEC 3.10, research/gait_pal_di.md C.3).

    With ``tau_u = tau_x``: for every eigenvalue ``mu`` of ``W B`` (``B W`` if the layer above is
    wider), ``Re mu + (Im mu)^2 / (1 + alpha)^2 < alpha``, and ``alpha > 0`` if the layer above is
    wider; the forward-Euler map of step ``eta`` converges iff every eigenvalue ``lambda`` of the
    Jacobian ``[[-I, B], [W, -alpha I]]`` has ``|1 + eta lambda| < 1``.

    Returns
    -------
    continuous, discrete : str or None
        None where the condition holds, else what fails (the offending eigenvalue and the condition).
    """
    n_above, n_below = W.shape
    mu = product_eigenvalues(W, B)
    continuous = None
    if n_above > n_below and not alpha > 0:
        continuous = f"alpha = {alpha:g} with a wider layer above ({n_above} > {n_below} units); expected alpha > 0"
    else:
        margin = alpha - mu.real - mu.imag**2 / (1.0 + alpha) ** 2
        worst = int(np.argmin(margin))
        if margin[worst] <= 0:
            continuous = (f"eigenvalue mu = {mu[worst].real:.4g}{mu[worst].imag:+.4g}j of W B violates"
                          f" Re mu + (Im mu)^2 / (1 + alpha)^2 < alpha = {alpha:g}")
    lam = jacobian_eigenvalues(W, B, alpha, mu)
    radius = np.abs(1.0 + eta * lam)
    worst = int(np.argmax(radius))
    discrete = None
    if radius[worst] >= 1.0:
        discrete = (f"Jacobian eigenvalue {lam[worst].real:.4g}{lam[worst].imag:+.4g}j gives |1 + (dt/tau) lambda| ="
                    f" {radius[worst]:.6g} >= 1 at dt/tau = {eta:g} (forward Euler diverges)")
    return continuous, discrete


@register
class DynamicInversion(Rule):
    """DI: per hidden layer, error units ``x^l`` and controllers ``u^{l+1}``, both on the one neuron type."""

    name = "dinv"
    title = "Dynamic inversion"
    summary = """
Podlaski & Machens 2020 (SPEC 3.10). Each hidden layer `l` is inverted by a controller population
`u^{l+1}` (the layer above's size, a role of the one neuron type with leak `alpha`) and the layer's
error units `x^l` (its relaxing units): `tau du/dt = -alpha u + W^l x^l - delta^{l+1}`,
`tau dx^l/dt = -x^l + B^l u`, with `delta^{l+1} = x^{l+1} * f'^{l+1}` (`x^L = e`), all layers at
once; fixed point `x^l* = B (W B - alpha I)^-1 delta^{l+1}`, with `B = -W^T` the damped
pseudo-inverse `W^T (W W^T + alpha I)^-1 delta`, not BP. `B` is fixed: `-W^T` of the initial
weights (`neg_transpose`) or random `N(0, feedback_std^2)`. Update: AR's local
`dW^l = -lr (x^{l+1} f'^{l+1}) xbar^l^T`. Stability is checked, never assumed: before and after
every Brian2 run (a relaxation, or a training run of many batches) and after every update of the
numpy reference, the exact condition `Re mu + (Im mu)^2 / (1 + alpha)^2 < alpha` for the eigenvalues
`mu` of `W B` and the Euler limit `|1 + (dt/tau) lambda| < 1` of the Jacobian; an unstable layer
stops the run with one line naming the layer and the eigenvalue (exit status 3). Error units and
controllers start at 0 with `initial_state = "zero"` (the authors' choice), at `xbar` and 0 with
`"forward"`. With `repair = true` an unstable layer is repaired instead: gradient steps on `B` down
the smoothed spectral abscissa of the layer's Jacobian (`P Q / tr(P Q)` from two Lyapunov solves,
0.1/tau right of the abscissa; the authors' `SSA_opt`) until the abscissa is below -0.01 and the
Euler map contracts; repairs are counted per epoch (`b_repairs`), between Brian2 runs and after
every update of the numpy reference.
"""
    params = {
        "alpha": Param(float, 0.01, "alpha", "leak of the controllers (damping of the inversion)", non_negative),
        "repair": Param(bool, False, "--", "repair an unstable layer's B by descending the smoothed spectral abscissa (counted in b_repairs) instead of stopping"),
        "feedback": Param(str, "neg_transpose", "B^l", "neg_transpose: B = -W^T of the initial weights, fixed; random: N(0, feedback_std^2), fixed",
                          _one_of(FEEDBACK)),
    }
    controllers = True

    def __init__(self, settings=None, derivative=True, ordering="synchronous", forward="frozen", feedback="transpose"):
        super().__init__(settings, derivative, ordering, forward, feedback)
        # the feedback from the controllers carries u itself; f' enters through delta
        self.derivative = False

    @classmethod
    def required_keys(cls, settings):
        return {
            "derivative": (True, "DI's error delta = x f' always carries the derivative"),
            "ordering": ("synchronous", "DI's error units and controllers are integrated synchronously"),
        }

    @property
    def alpha(self) -> float:
        return float(self.settings["alpha"])

    def backward_holder(self, layer, n_layers):
        return f"inv{layer}" if 1 <= layer < n_layers else None

    def initial_backward(self, W, rng, std):
        if self.settings["feedback"] == "neg_transpose":
            return [-w.T.copy() for w in W]
        return super().initial_backward(W, rng, std)

    def x_start(self, initial_state: str, training: bool) -> float:
        return 1.0 if initial_state == "forward" else 0.0

    def check_stability(self, W, B, eta, when):
        """Raise `UnstableInversion` naming the first unstable layer (continuous condition first, then Euler's)."""
        for l in range(1, len(W)):
            if not (np.all(np.isfinite(W[l])) and np.all(np.isfinite(B[l]))):
                return  # diverged weights are reported as NaN/Inf where the weights are checked
            for problem in stability(W[l], B[l], self.alpha, eta):
                if problem:
                    raise UnstableInversion(f"dynamic inversion of hidden layer {l} is unstable {when}: {problem}")

    @property
    def counts_repairs(self) -> bool:
        return bool(self.settings["repair"])

    def stabilise(self, W, B, eta, when):
        """Check every hidden layer; with ``repair = true`` repair the unstable ones (`repair_feedback`)."""
        if not self.counts_repairs:
            self.check_stability(W, B, eta, when)
            return B, 0
        out, repairs = list(B), 0
        for l in range(1, len(W)):
            if not (np.all(np.isfinite(W[l])) and np.all(np.isfinite(B[l]))):
                continue  # diverged weights are reported as NaN/Inf where the weights are checked
            if any(stability(W[l], B[l], self.alpha, eta)):
                try:
                    out[l], _ = repair_feedback(W[l], B[l], self.alpha, eta)
                except UnstableInversion as err:
                    raise UnstableInversion(f"dynamic inversion of hidden layer {l} is unstable {when}: {err}") from None
                repairs += 1
        return out, repairs

    # ------------------------------------------------------------------ numpy reference

    def reference_errors(self, network, W, b, B, x_in, targets, n_steps: int | None = None, x_start: float | None = None,
                         record: bool = False):
        """Integrate the error units and controllers of a batch (rows are samples), synchronous Euler.

        Returns ``(x, fwd, trace)``: the error units of layers ``0..L`` (``x[L] = e``), the forward
        sweep and, with ``record``, ``trace[l]`` of layer ``l``'s error units after every step.
        """
        from ..reference import oracle

        fwd = oracle.forward(W, b, x_in, network.hidden, network.output, network.loss)
        e = oracle.output_error(fwd.xbar[-1], targets, network.loss)
        n_layers = len(W)
        n_steps = network.n_relax_steps if n_steps is None else n_steps
        start = self.x_start(network.initial_state, False) if x_start is None else x_start
        x = [fwd.xbar[0]] + [start * fwd.xbar[l] for l in range(1, n_layers)] + [e]
        u = [None, None] + [np.zeros_like(fwd.xbar[l]) for l in range(2, n_layers + 1)]  # u[l+1] inverts layer l
        eta, alpha = network.eta, self.alpha
        trace = [None] + [[x[l].copy()] for l in range(1, n_layers + 1)]
        for _ in range(n_steps):
            drive_u = [None, None] + [x[l - 1] @ W[l - 1].T - x[l] * fwd.fp[l] for l in range(2, n_layers + 1)]
            drive_x = [None] + [u[l + 1] @ B[l].T for l in range(1, n_layers)]
            for l in range(2, n_layers + 1):
                u[l] = u[l] + eta * (drive_u[l] - alpha * u[l])
            for l in range(1, n_layers):
                x[l] = x[l] + eta * (drive_x[l] - x[l])
            if record:
                for l in range(1, n_layers + 1):
                    trace[l].append(x[l].copy())
        return x, fwd, ([None] + [np.array(t) for t in trace[1:]]) if record else None

    def reference_update(self, network, W, b, B, x_in, targets):
        x, fwd, _ = self.reference_errors(network, W, b, B, x_in, targets, x_start=self.x_start(network.initial_state, True))
        delta = [x[l + 1] * fwd.fp[l + 1] for l in range(len(W))]
        return [d.T @ fwd.xbar[l] for l, d in enumerate(delta)], [d.sum(axis=0) for d in delta], fwd.xbar

    def reference_epoch(self, experiment, params, x_in, targets, noise=None, after_batch=None):
        eta = experiment.network.eta

        def checked(index, new):
            # the numpy reference repairs after every update; Brian2 training between runs
            new.B, _ = self.stabilise(new.W, new.B, eta, f"after update {index + 1}")
            if after_batch is not None:
                after_batch(index, new)

        params = params.copy()
        params.B, _ = self.stabilise(params.W, params.B, eta, "before the epoch")
        return super().reference_epoch(experiment, params, x_in, targets, noise=noise, after_batch=checked)
