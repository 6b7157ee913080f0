"""The backprop oracle: a plain float64 numpy forward and backward pass.

Independent of Brian2. Every comparison in arsim (relaxation convergence,
training updates, peer rules) measures against the numbers computed here.
Conventions follow SPEC section 1: ``W[l]`` has shape ``(n_{l+1}, n_l)``,
``a^{l+1} = W^l xbar^l + b^l``, ``xbar^{l+1} = f(a^{l+1})``, summed losses.
Inputs may be a single sample (1-D) or a batch with samples in rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..activations import Activation

__all__ = ["ForwardPass", "Gradients", "working_dtype", "forward", "loss", "output_error", "backward", "softmax"]


def softmax(a: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, stabilised by the maximum."""
    z = np.exp(a - a.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


@dataclass
class ForwardPass:
    """Stored forward activity of every layer.

    Attributes
    ----------
    xbar : list of ndarray
        ``xbar[l]`` for ``l = 0..L`` (``xbar[0]`` is the input).
    fp : list of ndarray
        ``fp[l] = f'(a^l)`` for ``l = 1..L`` (``fp[0]`` is ones). With the
        ``ce`` loss the output derivative is 1 (SPEC section 1).
    a : list of ndarray
        Pre-activations, ``a[0]`` equal to the input.
    """

    xbar: list
    fp: list
    a: list
    #: per projection, the max pool's argmax of its input (`arsim.layers`; None without a pool or for an MLP)
    cache: list | None = None


@dataclass
class Gradients:
    """Exact gradients of the summed loss.

    Attributes
    ----------
    dxbar : list of ndarray
        ``dL/dxbar^l`` for ``l = 0..L`` (``dxbar[L]`` is the output error ``e``).
    dW, db : list of ndarray
        ``dL/dW^l`` and ``dL/db^l`` for ``l = 0..L-1``, summed over the batch.
    """

    dxbar: list
    dW: list
    db: list


def working_dtype(arrays) -> type:
    """float32 if every array is float32 (``precision = "float32"`` references), else float64."""
    return np.float32 if all(np.asarray(a).dtype == np.float32 for a in arrays) else np.float64


def forward(W, b, x0, hidden: Activation, output: Activation, loss_name: str, ops=None) -> ForwardPass:
    """Run the forward sweep.

    Parameters
    ----------
    W, b : sequence of ndarray
        Weights ``(n_{l+1}, n_l)`` (a convolution's: its kernel) and biases ``(n_{l+1},)``.
    x0 : ndarray
        Input, shape ``(n_0,)`` or ``(batch, n_0)``.
    hidden, output : Activation
        Activations of hidden and output layers. With ``loss_name == "ce"``
        the output is the softmax of the pre-activation and ``output`` is
        ignored.
    loss_name : {"mse", "ce"}
    ops : sequence, optional
        The projections' operators (`arsim.spec.NetworkSpec.ops`); None: dense.
    """
    x0 = np.asarray(x0, dtype=working_dtype(W))
    xbar, fp, pre = [x0], [np.ones_like(x0)], [x0]
    cache = [None] * len(W)
    n_layers = len(W)
    for layer in range(n_layers):
        if ops is None:
            a = xbar[-1] @ W[layer].T + b[layer]
        else:
            batch = np.atleast_2d(xbar[-1])
            drive, cache[layer] = ops[layer].forward(W[layer], batch)
            a = (drive if xbar[-1].ndim == 2 else drive[0]) + b[layer]
        top = layer == n_layers - 1
        if top and loss_name == "ce":
            xbar.append(softmax(a))
            fp.append(np.ones_like(a))
        else:
            act = output if top else hidden
            xbar.append(act.f(a))
            fp.append(act.fprime(a))
        pre.append(a)
    return ForwardPass(xbar=xbar, fp=fp, a=pre, cache=cache)


def loss(out: np.ndarray, target: np.ndarray, loss_name: str) -> float:
    """Summed loss of SPEC section 1 (over units and samples)."""
    if loss_name == "mse":
        return float(np.sum((out - target) ** 2))
    if loss_name == "ce":
        return float(-np.sum(target * np.log(np.clip(out, 1e-300, None))))
    raise ValueError(f"unknown loss {loss_name!r}")


def output_error(out: np.ndarray, target: np.ndarray, loss_name: str) -> np.ndarray:
    """The clamp ``e = dL/dxbar^L`` (for ``ce``: ``p - T``, see SPEC section 1)."""
    if loss_name == "mse":
        return 2.0 * (out - target)
    if loss_name == "ce":
        return out - target
    raise ValueError(f"unknown loss {loss_name!r}")


def backward(W, fwd: ForwardPass, target: np.ndarray, loss_name: str, ops=None) -> Gradients:
    """Exact backprop adjoints and parameter gradients (``ops``: the projections' operators, None: dense).

    Returns ``dL/dxbar^l`` for every layer, and ``dL/dW^l``, ``dL/db^l``
    summed over the batch. For ``ce`` the returned ``dxbar[L]`` is the
    clamp ``p - T`` (the gradient with respect to the pre-activation), as
    used by the relaxation.
    """
    n_layers = len(W)
    dxbar = [None] * (n_layers + 1)
    dW, db = [None] * n_layers, [None] * n_layers
    dxbar[n_layers] = output_error(fwd.xbar[-1], target, loss_name)
    for layer in range(n_layers - 1, -1, -1):
        delta = dxbar[layer + 1] * fwd.fp[layer + 1]
        pre = fwd.xbar[layer]
        if ops is not None:
            single = delta.ndim == 1
            d, p = np.atleast_2d(delta), np.atleast_2d(pre)
            dW[layer] = ops[layer].gradient(d, p, fwd.cache[layer])
            db[layer] = d.sum(axis=0) if not single else delta.copy()
            adjoint = ops[layer].adjoint(W[layer], d, fwd.cache[layer])
            dxbar[layer] = adjoint[0] if single else adjoint
            continue
        if delta.ndim == 1:
            dW[layer] = np.outer(delta, pre)
            db[layer] = delta.copy()
        else:
            dW[layer] = delta.T @ pre
            db[layer] = delta.sum(axis=0)
        dxbar[layer] = delta @ W[layer]
    return Gradients(dxbar=dxbar, dW=dW, db=db)
