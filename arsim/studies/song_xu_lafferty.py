"""Song, Xu & Lafferty (2021): convergence and alignment of feedback alignment in a two-layer net.

Song, Xu & Lafferty, "Convergence and Alignment of Gradient Descent with
Random Backpropagation Weights", NeurIPS 2021, arXiv 2106.06044. The
mathematics is in ``shared/SPEC.md`` section 3.6 and the research note
``shared/research/fa_family.md`` section 3 (model, the authors' code and
protocol, their numbers).

Model and data
    ``f(x) = p^-1/2 sum_r beta_r psi(w_r^T x)`` with ``W = [w_1 .. w_p]``
    (``d x p``), ``beta`` (``p``) and the fixed random backward weights
    ``b`` (``p``) all drawn i.i.d. N(0, 1); no biases. ``n`` samples
    ``x_i ~ N(0, I_d)``; ``linear`` data ``y = X theta`` with
    ``theta ~ N(0, I_d)`` (the authors pair it with ``psi`` = identity),
    ``teacher`` data ``y`` from a two-layer net of the same form, width and
    ``psi`` with its own N(0, 1) weights.

Training
    Full-batch gradient descent on ``L = 1/2 sum_i (y_i - f_i)^2``. With
    ``e = f - y``, ``H = psi(X W)``, ``M = psi'(X W)``, one step is ::

        beta <- (1 - eta lambda) beta - eta p^-1/2 H^T e
        W    <- W - eta p^-1/2 X^T [M * (e c^T)]

    with ``c = b`` for feedback alignment (``sxl.mode = "fa"``) and
    ``c = beta`` for backprop (``"bp"``), both from the same current state.
    The decay acts on ``beta`` only.

Conventions against the authors' code
    Their final ("v6", autograd) runs minimise the *mean* squared error
    ``(1/n) sum_i (y_i - f_i)^2`` (``nn.MSELoss``) and add ``lambda_mse beta``
    to beta's gradient. That gradient is ``2/n`` times ours, so their step
    ``eta_mse`` is ``eta = 2 eta_mse / n`` here and their ``lambda_mse`` is
    ``lambda = n lambda_mse / 2``: the per-step decay ``eta lambda`` and the
    whole trajectory are the same (`from_mse`). For n = 50 the authors'
    linear case (``eta_mse = 1e-3``) is ``eta = 4e-5``, and their
    ``lambda_mse = 0.5`` is ``lambda = 12.5``. The MSE (``2 L / n``) is what
    their stopping rule and loss plots use.

Solvers
    ``dense`` (any psi, either mode) never forms ``X W``: every update of
    ``W`` is ``X^T`` times an ``n x p`` matrix, so ``W(t) = W(0) + X^T A(t)``
    and ``X W(t) = X W(0) + (X X^T) A(t)``, an ``n x n`` by ``n x p`` product
    per step instead of two ``n x d`` by ``d x p`` ones (6x fewer flops for
    the authors' n = 50, d = 150). For linear psi under FA the dynamics
    close on ``O(n)`` numbers (``auto`` uses this): ``W(t) = W(0) + u(t)
    b^T`` (rank one, fa_family.md 3.2 (a)) with ``u`` in the row space of
    ``X``, and ``beta(t) = c(t) beta(0) + gamma(t) b + Z0^T v(t) / sqrt(p)``
    with ``Z0 = X W(0)``, so after an ``O(n d p + n^2 p)`` start a step costs
    ``O(n^2)`` whatever the width: the authors' widths up to 12,800 and run
    lengths (up to ~10^5 steps) take seconds. Both are exact rewritings of
    the update above (tests compare them to round-off).

Seeds
    ``numpy.random.default_rng([seed, k])`` with one stream per part: ``k =
    0`` the data (``X``, then ``theta`` or the teacher), ``k = 1`` the
    student's ``W(0)``, ``beta(0)``, ``k = 2`` the backward weights ``b``. FA
    and BP runs of one seed therefore share data and initial weights, and
    runs of one seed at different widths share ``X`` and ``theta``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from ..activations import ACTIVATIONS
from ..config import SCHEMA, ConfigError

__all__ = [
    "SXL_KEYS",
    "PSI",
    "AUTHORS",
    "AUTHORS_WIDTHS",
    "authors_min_steps",
    "from_mse",
    "to_mse",
    "Problem",
    "TrainResult",
    "StudySpec",
    "check_config",
    "make_problem",
    "forward",
    "loss",
    "gradients",
    "train",
    "fit_decay",
    "limit_decay_rate",
    "summarize",
    "run_config",
]

#: the study's model-file keys (declared once, in `arsim.config.SCHEMA`)
SXL_KEYS = {key: spec for key, spec in SCHEMA.items() if key.startswith("sxl.")}

#: activations psi of the study
PSI = ("linear", "relu", "tanh", "sigmoid")

#: the authors' settings per psi (fa_family.md 3.3), in their MSE convention
AUTHORS = {
    "linear": {"data": "linear", "eta_mse": 1e-3, "lambdas_mse": (0.0, 0.2, 0.3, 0.5)},
    "relu": {"data": "teacher", "eta_mse": 1e-2, "lambdas_mse": (0.0, 0.02, 0.05, 0.2)},
    "sigmoid": {"data": "teacher", "eta_mse": 0.1, "lambdas_mse": (0.0, 0.001, 0.003, 0.01)},
    "tanh": {"data": "teacher", "eta_mse": 0.1, "lambdas_mse": (0.0, 0.001, 0.002, 0.005)},
}

#: the authors' hidden widths p
AUTHORS_WIDTHS = (200, 400, 800, 1600, 3200, 6400, 12800)

# random streams of one seed
_DATA, _STUDENT, _FEEDBACK = 0, 1, 2

# psi'(z) from z and h = psi(z), with the arithmetic of arsim.activations (so
# values are identical) but without recomputing tanh or the sigmoid
_DERIVATIVE = {
    "relu": lambda z, h: (z > 0) + 0.0 * z,
    "tanh": lambda z, h: 1.0 - h * h,
    "sigmoid": lambda z, h: h * (1.0 - h),
}


def authors_min_steps(p: int) -> int:
    """The authors' minimum number of steps at width ``p``: ``floor(5000 sqrt(p) / 14)``.

    Their ``np.rint(n_step * np.sqrt(p) // np.rint(np.sqrt(200)))`` with
    ``n_step = 5000``: 5050 steps at p = 200, growing like ``sqrt(p)``.
    """
    return int(5000 * math.sqrt(p) // 14)


def from_mse(eta_mse: float, lambda_mse: float, n: int) -> tuple:
    """``(eta, lambda)`` of this module for the authors' MSE-mean ``(eta_mse, lambda_mse)``."""
    return 2.0 * eta_mse / n, n * lambda_mse / 2.0


def to_mse(eta: float, lam: float, n: int) -> tuple:
    """The authors' ``(eta_mse, lambda_mse)`` of this module's ``(eta, lambda)`` (inverse of `from_mse`)."""
    return n * eta / 2.0, 2.0 * lam / n


# ---------------------------------------------------------------------------
# config and problem


@dataclass(frozen=True)
class StudySpec:
    """One point of the study, typed once from a resolved config (the ``sxl.*`` keys, ``sizes``, ``activation``, ``seed``)."""

    d: int
    p: int
    activation: str
    seed: int
    n: int
    data: str
    mode: str
    eta: float
    lam: float
    steps: int
    mse_tol: float
    check_every: int
    max_steps: int
    record_every: int
    solver: str
    sizes: tuple = ()

    @classmethod
    def from_config(cls, config) -> "StudySpec":
        """Type a resolved config; `check_config` validates the relations."""
        if isinstance(config, StudySpec):
            return config
        sizes = tuple(config["sizes"])
        return cls(
            d=sizes[0], p=sizes[1] if len(sizes) > 1 else 0, activation=config["activation"], seed=config["seed"],
            n=config["sxl.n"], data=config["sxl.data"], mode=config["sxl.mode"], eta=config["sxl.eta"], lam=config["sxl.lambda"],
            steps=config["sxl.steps"], mse_tol=config["sxl.mse_tol"], check_every=config["sxl.check_every"],
            max_steps=config["sxl.max_steps"], record_every=config["sxl.record_every"], solver=config["sxl.solver"], sizes=sizes,
        )


def check_config(config, source: str = "config") -> StudySpec:
    """Check what `arsim.config.resolve` cannot (the net's shape and the key relations); return the typed point.

    Raises
    ------
    ConfigError
        One line naming the key, its value and what is accepted.
    """
    spec = StudySpec.from_config(config)
    sizes = list(spec.sizes)
    if len(sizes) != 3 or sizes[-1] != 1:
        raise ConfigError(f"{source}: sizes = {sizes!r} with the sxl study; expected [d, p, 1] (inputs, hidden width, one output)")
    if spec.activation not in PSI:
        raise ConfigError(
            f"{source}: activation = {spec.activation!r} with the sxl study; expected one of {', '.join(map(repr, PSI))}"
        )
    decay = spec.eta * spec.lam
    if not decay < 1.0:
        raise ConfigError(
            f"{source}: sxl.eta * sxl.lambda = {decay!r} is out of range; expected < 1 (beta's decay factor 1 - eta lambda > 0)"
        )
    if spec.max_steps < spec.steps:
        raise ConfigError(
            f"{source}: sxl.max_steps = {spec.max_steps!r} is out of range; expected >= sxl.steps = {spec.steps}"
        )
    return spec


@dataclass
class Problem:
    """Data, initial weights and backward weights of one run.

    Attributes
    ----------
    X : ndarray, shape (n, d)
    y : ndarray, shape (n,)
    W0 : ndarray, shape (d, p)
        Initial input weights, column ``r`` is ``w_r``.
    beta0 : ndarray, shape (p,)
        Initial output weights.
    b : ndarray, shape (p,)
        Fixed random backward weights of FA.
    activation : str
        psi, one of `PSI`.
    """

    X: np.ndarray
    y: np.ndarray
    W0: np.ndarray
    beta0: np.ndarray
    b: np.ndarray
    activation: str

    @property
    def n(self) -> int:
        return self.X.shape[0]

    @property
    def d(self) -> int:
        return self.X.shape[1]

    @property
    def p(self) -> int:
        return self.W0.shape[1]


def make_problem(config) -> Problem:
    """Draw the data and weights of a point (a `StudySpec` or a resolved config: ``sizes = [d, p, 1]``, ``sxl.*``, ``seed``)."""
    spec = check_config(config)
    d, p = spec.d, spec.p
    n, psi, seed = spec.n, spec.activation, spec.seed
    data = np.random.default_rng([seed, _DATA])
    X = data.standard_normal((n, d))
    if spec.data == "linear":
        y = X @ data.standard_normal(d)
    else:
        teacher_W = data.standard_normal((d, p))
        teacher_beta = data.standard_normal(p)
        y = ACTIVATIONS[psi].f(X @ teacher_W) @ teacher_beta / math.sqrt(p)
    student = np.random.default_rng([seed, _STUDENT])
    W0 = student.standard_normal((d, p))
    beta0 = student.standard_normal(p)
    b = np.random.default_rng([seed, _FEEDBACK]).standard_normal(p)
    return Problem(X=X, y=y, W0=W0, beta0=beta0, b=b, activation=psi)


# ---------------------------------------------------------------------------
# the model, its loss and its gradients


def forward(problem: Problem, W: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """``f(x_i) = p^-1/2 sum_r beta_r psi(w_r^T x_i)`` for every sample (shape ``(n,)``)."""
    return ACTIVATIONS[problem.activation].f(problem.X @ W) @ beta / math.sqrt(W.shape[1])


def loss(problem: Problem, W: np.ndarray, beta: np.ndarray) -> float:
    """The training loss ``1/2 sum_i (y_i - f_i)^2`` (no decay term)."""
    e = forward(problem, W, beta) - problem.y
    return 0.5 * float(e @ e)


def _signals(psi: str, Z: np.ndarray, beta: np.ndarray, y: np.ndarray, scale: float):
    """``H = psi(Z)``, the error ``e = f - y`` and the loss, from the pre-activations ``Z = X W``."""
    H = Z if psi == "linear" else ACTIVATIONS[psi].f(Z)
    e = H @ beta * scale - y
    return H, e, 0.5 * float(e @ e)


def _z_step(psi: str, Z: np.ndarray, H: np.ndarray, e: np.ndarray, c: np.ndarray, scale: float) -> np.ndarray:
    """``dL/dZ`` with ``c`` in place of beta: ``p^-1/2 M * (e c^T)`` (``X^T`` of it is the W step)."""
    D = np.outer(e * scale, c)
    if psi != "linear":
        D *= _DERIVATIVE[psi](Z, H)
    return D


def gradients(problem: Problem, W: np.ndarray, beta: np.ndarray, mode: str = "bp") -> tuple:
    """``(dW, dbeta)`` at ``(W, beta)``, the quantities a step subtracts (times eta).

    ``dbeta = dL/dbeta = p^-1/2 H^T e`` (the true gradient; the decay
    ``lambda beta`` is not included). ``dW`` is ``dL/dW`` for ``mode = "bp"``
    and FA's ``p^-1/2 X^T [M * (e b^T)]`` for ``mode = "fa"``.
    """
    scale = 1.0 / math.sqrt(W.shape[1])
    Z = problem.X @ W
    H, e, _ = _signals(problem.activation, Z, beta, problem.y, scale)
    c = problem.b if mode == "fa" else beta
    return problem.X.T @ _z_step(problem.activation, Z, H, e, c, scale), H.T @ e * scale


# ---------------------------------------------------------------------------
# training


@dataclass
class TrainResult:
    """Outcome of `train`.

    Attributes
    ----------
    W, beta : ndarray
        Final weights.
    step : ndarray of int
        Recorded steps: every ``record_every``-th and the last.
    loss : ndarray
        ``1/2 sum_i (y_i - f_i)^2`` after ``step`` updates.
    alignment : ndarray
        ``cos(beta, b)`` after ``step`` updates.
    n_steps : int
        Updates made.
    solver : str
        ``"dense"`` or ``"reduced"`` (linear FA).
    seconds : float
        Wall time of the loop.
    """

    W: np.ndarray
    beta: np.ndarray
    step: np.ndarray
    loss: np.ndarray
    alignment: np.ndarray
    n_steps: int
    solver: str
    seconds: float


class _Stop:
    """When to stop: at ``steps``, or later by the authors' rule.

    The authors' loop (``simulation_align.py``) runs ``while t < T_p or
    flag``; every ``check_every`` steps (at ``t = k check_every - 1``, on the
    loss before that step's update) it clears ``flag`` for good once the MSE
    changed by less than ``tol`` since the previous check (the first check
    compares with 0). ``tol = 0`` clears it at once: exactly ``steps``.
    """

    def __init__(self, steps: int, tol: float, check_every: int, max_steps: int, n: int):
        self.steps, self.tol, self.check_every, self.max_steps, self.n = steps, tol, check_every, max_steps, n
        self.going = tol > 0
        self.last_mse = 0.0

    def done(self, t: int) -> bool:
        return t >= self.max_steps or (t >= self.steps and not self.going)

    def observe(self, t: int, loss_value: float) -> None:
        if self.going and t % self.check_every == self.check_every - 1:
            mse = 2.0 * loss_value / self.n
            if abs(mse - self.last_mse) < self.tol:
                self.going = False
            self.last_mse = mse


def _check_finite(value: float, t: int, eta: float) -> None:
    if not math.isfinite(value):
        raise FloatingPointError(f"NaN/Inf in the training loss after {t} steps; expected a smaller sxl.eta than {eta!r}")


def train(problem: Problem, steps: int, eta: float, lam: float = 0.0, mode: str = "fa", record_every: int = 10,
          mse_tol: float = 0.0, check_every: int = 1000, max_steps: int | None = None, solver: str = "auto") -> TrainResult:
    """Full-batch gradient descent from ``problem``'s initial weights.

    Parameters
    ----------
    problem : Problem
    steps : int
        Updates to make (the minimum when ``mse_tol > 0``).
    eta : float
        Step size on ``1/2 sum (y - f)^2`` (`from_mse` converts the authors').
    lam : float
        Decay of beta: ``beta <- (1 - eta lam) beta - eta dL/dbeta``.
    mode : {"fa", "bp"}
        Backward weights of the ``W`` update: the fixed ``b`` or ``beta``.
    record_every : int
        Record the loss and ``cos(beta, b)`` every this many steps (and after the last).
    mse_tol, check_every, max_steps
        The authors' stopping rule (`_Stop`); ``max_steps`` (default
        ``steps``) bounds the run.
    solver : {"auto", "dense"}
        ``auto`` uses the exact reduction for linear psi under FA.

    Raises
    ------
    FloatingPointError
        NaN/Inf in the loss (a step size beyond stability).
    """
    stop = _Stop(steps, mse_tol, check_every, steps if max_steps is None else max_steps, problem.n)
    reduced = solver == "auto" and mode == "fa" and problem.activation == "linear"
    started = time.perf_counter()
    with np.errstate(over="ignore", invalid="ignore"):
        run = _train_reduced if reduced else _train_dense
        W, beta, records, t = run(problem, stop, eta, lam, mode, record_every)
    seconds = time.perf_counter() - started
    step, values, cosines = (np.array(column) for column in zip(*records))
    return TrainResult(W=W, beta=beta, step=step.astype(np.int64), loss=values, alignment=cosines, n_steps=t,
                       solver="reduced" if reduced else "dense", seconds=seconds)


def _cosine(u: np.ndarray, v: np.ndarray) -> float:
    return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))


def _train_dense(problem: Problem, stop: _Stop, eta: float, lam: float, mode: str, record_every: int):
    """The update of the module docstring on ``W = W0 + X^T A`` (``Z = X W0 + G A``, ``G = X X^T``)."""
    X, y, b, psi = problem.X, problem.y, problem.b, problem.activation
    scale = 1.0 / math.sqrt(problem.p)
    G = X @ X.T
    Z0 = X @ problem.W0
    A = np.zeros_like(Z0)
    beta = problem.beta0.copy()
    keep = 1.0 - eta * lam
    records = []
    t = 0
    while True:
        Z = Z0 + G @ A if t else Z0
        H, e, value = _signals(psi, Z, beta, y, scale)
        _check_finite(value, t, eta)
        # as the authors' loop: the condition uses the checks before t; a check at t still updates
        finished = stop.done(t)
        if not finished:
            stop.observe(t, value)
        if t % record_every == 0 or finished:
            records.append((t, value, _cosine(beta, b)))
        if finished:
            break
        # both updates from the current state; BP's backward weights are beta before its update
        D = _z_step(psi, Z, H, e, b if mode == "fa" else beta, scale)
        A -= eta * D
        beta = keep * beta - (eta * scale) * (H.T @ e)
        t += 1
    return problem.W0 + X.T @ A, beta, records, t


def _train_reduced(problem: Problem, stop: _Stop, eta: float, lam: float, mode: str, record_every: int):
    """Linear psi, FA: the same trajectory on ``n``-vectors and two scalars.

    ``W = W0 + u b^T`` with ``u = -eta p^-1/2 X^T a`` (``a`` the sum of the
    errors so far), so ``s = X u`` moves by ``-eta p^-1/2 G e``
    (``G = X X^T``); ``beta = c beta0 + gamma b + Z0^T v / sqrt(p)`` with
    ``Z0 = X W0``: beta's gradient ``p^-1/2 W^T X^T e = p^-1/2 (Z0^T e +
    b (s . e))`` never leaves that span, and every product with a p-vector
    reduces to the precomputed ``K = Z0 Z0^T``, ``Z0 beta0``, ``Z0 b`` and the
    inner products of ``beta0`` and ``b``. Each step is two n x n mat-vecs
    and a few n-vector operations, whatever p and d.
    """
    X, y, b, beta0 = problem.X, problem.y, problem.b, problem.beta0
    scale = 1.0 / math.sqrt(problem.p)
    G = X @ X.T
    Z0 = X @ problem.W0
    K = Z0 @ Z0.T
    z_beta0, z_b = Z0 @ beta0, Z0 @ b
    bb, b_beta0, beta0_beta0 = float(b @ b), float(b @ beta0), float(beta0 @ beta0)
    keep = 1.0 - eta * lam
    s = np.zeros(problem.n)  # X u
    a = np.zeros(problem.n)  # sum of the errors
    v = np.zeros(problem.n)
    c, gamma = 1.0, 0.0
    records = []
    t = 0
    while True:
        Kv = K @ v
        z_b_v = float(z_b @ v)
        b_beta = c * b_beta0 + gamma * bb + scale * z_b_v  # b . beta
        # f = p^-1/2 X W beta = p^-1/2 (Z0 beta + s (b . beta)), Z0 beta = c Z0 beta0 + gamma Z0 b + K v / sqrt(p)
        e = scale * (c * z_beta0 + gamma * z_b + scale * Kv + b_beta * s) - y
        value = 0.5 * float(e @ e)
        _check_finite(value, t, eta)
        # as the authors' loop: the condition uses the checks before t; a check at t still updates
        finished = stop.done(t)
        if not finished:
            stop.observe(t, value)
        if t % record_every == 0 or finished:
            norm2 = (c * c * beta0_beta0 + gamma * gamma * bb + scale * scale * float(v @ Kv) + 2 * c * gamma * b_beta0
                     + 2 * scale * (c * float(z_beta0 @ v) + gamma * z_b_v))
            records.append((t, value, b_beta / math.sqrt(max(norm2, 0.0) * bb)))
        if finished:
            break
        gamma = keep * gamma - eta * scale * float(s @ e)  # s before its update: both from the current state
        s -= (eta * scale) * (G @ e)
        a += e
        v *= keep
        v -= eta * e
        c *= keep
        t += 1
    W = problem.W0 + np.outer(-eta * scale * (X.T @ a), b)
    beta = c * beta0 + gamma * b + scale * (Z0.T @ v)
    return W, beta, records, t


# ---------------------------------------------------------------------------
# summaries


def fit_decay(step: np.ndarray, values: np.ndarray, upper: float = 1e-6, lower: float = 1e-13) -> dict:
    """Exponential decay rate of a loss curve, from its log-linear part.

    Fits ``ln L(t) = a - rate t`` by least squares on the records with
    ``lower <= L(t) / L(0) <= upper``. A loss that decays to zero is a sum of
    exponentials, one per eigen-direction of the kernel; once it has fallen
    by ``1 / upper`` (six decades) the fast ones are gone and ``ln L`` is a
    straight line, which ``lower`` keeps well above the float64 round-off
    floor (``~1e-30 L(0)``). With ``lambda > 0`` the loss settles at a
    positive level and never enters the window: the rate is NaN, as it is
    for runs too short to reach it.

    Returns
    -------
    dict
        ``loss_decay_rate`` (per step), ``decay_fit_first_step``,
        ``decay_fit_last_step`` and ``decay_fit_rms`` (rms residual of
        ``ln L``: 0 for a perfect exponential); NaN when fewer than 3
        records lie in the window.
    """
    values = np.asarray(values, dtype=float)
    step = np.asarray(step, dtype=float)
    ratio = values / values[0]
    inside = (ratio <= upper) & (ratio >= lower) & (values > 0)
    if inside.sum() < 3:
        return {"loss_decay_rate": math.nan, "decay_fit_first_step": math.nan, "decay_fit_last_step": math.nan,
                "decay_fit_rms": math.nan}
    t, logs = step[inside], np.log(values[inside])
    slope, intercept = np.polyfit(t, logs, 1)
    residual = logs - (slope * t + intercept)
    return {
        "loss_decay_rate": float(-slope),
        "decay_fit_first_step": float(t[0]),
        "decay_fit_last_step": float(t[-1]),
        "decay_fit_rms": float(np.sqrt(np.mean(residual**2))),
    }


def limit_decay_rate(problem: Problem, eta: float, lam: float, mode: str) -> float:
    """The loss decay rate per step of the infinitely wide linear net (lambda = 0), or NaN.

    Linear psi: ``f`` moves by ``-eta (K_beta + K_W) e`` per step, with the
    beta part ``K_beta = X (W W^T / p) X^T -> G = X X^T`` as ``p -> inf``
    (``W`` has N(0, 1) entries and moves by O(1/sqrt(p))). The ``W`` part is
    ``(c . beta / p) G`` with ``c`` the backward weights: ``|beta|^2 / p -> 1``
    for BP, but ``b . beta / p -> 0`` for FA (b is independent of beta(0)
    and beta's growth along b is O(1/p)). The slowest error direction decays
    like ``(1 - eta k lambda_min(G))^t``, the loss like its square: rate
    ``2 eta k lambda_min(G)`` with ``k = 1`` (FA) or ``2`` (BP), so FA
    converges at half BP's rate in this limit. NaN for other psi or
    ``lambda > 0`` (the loss does not go to zero).
    """
    if problem.activation != "linear" or lam > 0:
        return math.nan
    smallest = float(np.linalg.eigvalsh(problem.X @ problem.X.T)[0])
    return 2.0 * eta * (1.0 if mode == "fa" else 2.0) * smallest


def summarize(problem: Problem, result: TrainResult, eta: float, lam: float, mode: str) -> dict:
    """Summary metrics of a run (numbers only, for the results store)."""
    return {
        "n_steps": result.n_steps,
        "initial_mse": 2.0 * float(result.loss[0]) / problem.n,
        "final_loss": float(result.loss[-1]),
        "final_mse": 2.0 * float(result.loss[-1]) / problem.n,
        "alignment": float(result.alignment[-1]),
        **fit_decay(result.step, result.loss),
        "limit_decay_rate": limit_decay_rate(problem, eta, lam, mode),
    }


def run_config(config, source: str = "config") -> tuple:
    """Run the study of a resolved config (or a `StudySpec`): ``(problem, result, summary)``."""
    spec = check_config(config, source)
    problem = make_problem(spec)
    result = train(
        problem, steps=spec.steps, eta=spec.eta, lam=spec.lam, mode=spec.mode, record_every=spec.record_every,
        mse_tol=spec.mse_tol, check_every=spec.check_every, max_steps=spec.max_steps, solver=spec.solver,
    )
    return problem, result, summarize(problem, result, spec.eta, spec.lam, spec.mode)
