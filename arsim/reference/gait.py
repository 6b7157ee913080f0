"""GAIT-prop (Ahmad, van Gerven & Ambrogioni 2020) in plain numpy: targets, local errors and the regulariser.

The mathematics of research/gait_pal_di.md A.2 in SPEC orientation
(``W[l]`` of shape ``(n_{l+1}, n_l)``, ``a^{l+1} = W^l xbar^l + b^l``):
the output target ``t^L = xbar^L - e`` (so the top error is ``e`` for any
loss), then for ``l = L-1 .. 1``

    t^l = G^l( xbar^{l+1} + gamma fp^{l+1}^2 * (t^{l+1} - xbar^{l+1}) ),
    G^l(z) = (W^l)^-1 ( f^-1(z) - b^l ),

and the local error ``eps^l = gamma^-(L-l) (xbar^l - t^l) * fp^l``, whose
outer product with ``xbar^{l-1}`` is the update of ``W^{l-1}``. With
orthogonal ``W^1 .. W^{L-1}`` and no unit crossing the kink of a leaky
ReLU this equals backprop exactly for any ``gamma`` (A.3). Independent of
Brian2 and of the rule code; the tests hold both against the oracle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["GaitPass", "inverse_activation", "gait_pass", "orthogonality_penalty", "orthogonality_gradient"]


def inverse_activation(name: str, leaky_slope: float = 0.1):
    """``f^-1`` of an invertible activation (``leaky_relu``, ``tanh``, ``sigmoid``, ``linear``)."""
    if name == "leaky_relu":
        return lambda y: np.where(y >= 0, y, y / leaky_slope)
    if name == "tanh":
        return np.arctanh
    if name == "sigmoid":
        return lambda y: np.log(y) - np.log1p(-y)
    if name == "linear":
        return lambda y: y + 0.0
    raise ValueError(f"activation = {name!r} has no inverse; expected 'leaky_relu', 'tanh', 'sigmoid' or 'linear'")


@dataclass
class GaitPass:
    """The targets, local errors and weight updates of one batch.

    Attributes
    ----------
    targets : list of ndarray
        ``t^l`` of layers ``1..L`` (index 0 None).
    errors : list of ndarray
        ``eps^l`` of layers ``1..L`` (index 0 None).
    dW, db : list of ndarray
        ``sum eps^{l+1} xbar^l^T`` and ``sum eps^{l+1}`` (no learning rate, no sign), ``l = 0..L-1``.
    crossings : list of int
        Per hidden layer ``l = 1..L-1`` (index 0 and L unused, 0): units whose
        argument of ``G^l`` lies on the other branch of the kink than ``xbar^{l+1}``
        (summed over the batch). The equivalence with BP holds only where this is 0.
    cancellation : list of float
        Per layer, ``u |xbar^l| / |xbar^l - t^l|``: the relative rounding error of
        the difference the error is read from (float64 ``u``); near 1 the error is noise.
    """

    targets: list
    errors: list
    dW: list
    db: list
    crossings: list
    cancellation: list


def gait_pass(W, b, fwd, e, gamma: float, activation: str, leaky_slope: float = 0.1,
              output_activation: str | None = None) -> GaitPass:
    """GAIT-prop's targets and updates for a forward pass ``fwd`` (`arsim.reference.oracle.forward`) and output error ``e``.

    The hidden layers use ``activation``, the output ``output_activation``
    (default the same). ``W^1 .. W^{L-1}`` must be square or, in the authors'
    tower form, narrowing: ``W^l = [S^l, 0]`` with ``S^l`` square on the
    first ``n_{l+1}`` units of layer ``l``, whose other ("auxiliary") units
    take their forward activity as target. The exact inverses of ``S^l`` are used.
    """
    n_layers = len(W)
    for l in range(1, n_layers):
        n_out, n_in = W[l].shape
        if n_out > n_in:
            raise ValueError(f"layer {l}: W^{l} is {n_out} x {n_in}; GAIT-prop needs square or narrowing invertible layers")
        if n_out < n_in and np.any(W[l][:, n_out:]):
            raise ValueError(f"layer {l}: W^{l} is {n_out} x {n_in} and reads units beyond the first {n_out}; the tower form"
                             f" needs W^{l} = [S, 0]")
    hidden_inv = inverse_activation(activation, leaky_slope)
    output_inv = inverse_activation(output_activation or activation, leaky_slope)
    xbar, fp = fwd.xbar, fwd.fp
    targets = [None] * (n_layers + 1)
    crossings = [0] * (n_layers + 1)
    targets[n_layers] = xbar[n_layers] - e
    for l in range(n_layers - 1, 0, -1):
        above = xbar[l + 1]
        argument = above + gamma * fp[l + 1] ** 2 * (targets[l + 1] - above)
        kind = (output_activation or activation) if l + 1 == n_layers else activation
        if kind == "leaky_relu":
            crossings[l] = int(np.sum((argument >= 0) != (above >= 0)))
        f_inv = output_inv if l + 1 == n_layers else hidden_inv
        # rows are samples: (S^-1 v)^T = v^T S^-T; auxiliary units keep their forward activity
        n = W[l].shape[0]
        targets[l] = xbar[l].copy()
        targets[l][..., :n] = np.linalg.solve(W[l][:, :n], (f_inv(argument) - b[l]).T).T
    errors = [None] + [gamma ** -(n_layers - l) * (xbar[l] - targets[l]) * fp[l] for l in range(1, n_layers + 1)]
    unit = np.finfo(np.float64).eps / 2
    cancellation = [0.0] + [
        unit * np.linalg.norm(xbar[l]) / max(np.linalg.norm(xbar[l] - targets[l]), np.finfo(np.float64).tiny)
        for l in range(1, n_layers + 1)
    ]
    batch = np.ndim(xbar[0]) == 2
    dW = [(errors[l + 1].T @ xbar[l]) if batch else np.outer(errors[l + 1], xbar[l]) for l in range(n_layers)]
    db = [errors[l + 1].sum(axis=0) if batch else errors[l + 1].copy() for l in range(n_layers)]
    return GaitPass(targets, errors, dW, db, crossings, cancellation)


def orthogonality_penalty(W: np.ndarray) -> float:
    """The authors' soft orthogonality ``R = sum_{i != j} ((W^T W)_ij)^2`` (off-diagonal, column Gram matrix)."""
    G = W.T @ W
    return float(np.sum(G**2) - np.sum(np.diag(G) ** 2))


def orthogonality_gradient(W: np.ndarray) -> np.ndarray:
    """``dR/dW = 4 W (G - diag G)`` with ``G = W^T W`` (the authors' ``4 (G - diag G) W_s`` for ``W_s = W^T``)."""
    G = W.T @ W
    return 4.0 * W @ (G - np.diag(np.diag(G)))
