"""Independent numpy integration of the AR relaxation (dense, float64).

This is the cross-check for the Brian2 model: the same equations (SPEC
section 2) written as a plain forward-Euler loop over dense matrices, with
no Brian2 code involved. Tests require the two to agree to round-off; the
benchmark uses it as the dense-BLAS baseline.
"""

from __future__ import annotations

import numpy as np

from .oracle import working_dtype

__all__ = ["relax_euler", "initial_state", "fixed_point"]


def relax_euler(B, xbar, fp, e, eta: float, n_steps: int, derivative: bool = True,
                ordering: str = "synchronous", record_every: int = 1, x_start: float = 1.0):
    """Integrate ``x <- x + eta (-x + B^l (x^{l+1} [* fp^{l+1}]))`` for the hidden layers.

    Parameters
    ----------
    B : list of ndarray
        Backward matrices ``B^l`` of shape ``(n_l, n_{l+1})``, ``l = 0..L-1``
        (``B^0`` is unused: the input does not relax).
    xbar, fp : list of ndarray
        Forward activity and derivatives of layers ``0..L`` (frozen).
    e : ndarray
        Output clamp ``x^L``.
    eta : float
        ``dt / tau``.
    n_steps : int
        Number of Euler steps.
    derivative : bool
        Multiply the feedback by ``fp`` of the layer above.
    ordering : {"synchronous", "sequential"}
        Jacobi update of all layers from the previous step, or top-down
        Gauss-Seidel using the layer above's new value.
    record_every : int
        Keep the state every this many steps (step 0 is the initial state).
    x_start : float
        Hidden layers start at ``x_start * xbar`` (1: AR, 0: cold start).

    Returns
    -------
    x : list of ndarray
        Final state of layers ``0..L`` (``x[0]`` is the input, ``x[L] = e``).
    trace : list of ndarray
        ``trace[l]`` of shape ``(n_records, n_l)`` for ``l = 1..L``
        (``trace[0]`` is None).
    """
    n_layers = len(xbar) - 1
    x = initial_state(xbar, e, x_start)
    trace = [None] + [[x[l].copy()] for l in range(1, n_layers + 1)]

    def drive(layer, state):
        above = state[layer + 1] * fp[layer + 1] if derivative else state[layer + 1]
        return B[layer] @ above

    for step in range(1, n_steps + 1):
        if ordering == "synchronous":
            fb = [drive(l, x) for l in range(1, n_layers)]
            for l in range(1, n_layers):
                x[l] = x[l] + eta * (fb[l - 1] - x[l])
        else:
            for l in range(n_layers - 1, 0, -1):
                x[l] = x[l] + eta * (drive(l, x) - x[l])
        if step % record_every == 0:
            for l in range(1, n_layers + 1):
                trace[l].append(x[l].copy())
    return x, [None] + [np.array(t) for t in trace[1:]]


def initial_state(xbar, e, x_start: float = 1.0) -> list:
    """State at the start of a relaxation: input ``xbar^0``, hidden ``x_start * xbar^l``, output ``e``.

    Copies in the working precision of ``xbar`` (`arsim.reference.oracle.working_dtype`).
    """
    dtype = working_dtype([xbar[-1]])
    x = [np.array(v, dtype=dtype) for v in xbar]
    for l in range(1, len(xbar) - 1):
        x[l] = x_start * x[l]
    x[-1] = np.array(e, dtype=dtype)
    return x


def fixed_point(B, fp, e, derivative: bool = True):
    """Equilibrium of the relaxation, solved top-down: ``x^l = B^l (x^{l+1} [* fp^{l+1}])``.

    The system is lower-triangular in the layer index, so the fixed point is
    obtained exactly by one downward substitution. With ``B = W^T`` and the
    derivative it is the backprop adjoint ``dL/dxbar^l``.
    """
    n_layers = len(fp) - 1
    x = [None] * (n_layers + 1)
    x[n_layers] = np.array(e, dtype=np.float64)
    for l in range(n_layers - 1, 0, -1):
        above = x[l + 1] * fp[l + 1] if derivative else x[l + 1]
        x[l] = B[l] @ above
    return x
