"""Batched dense numpy implementation of AR training (float64; float32 inputs stay float32).

The same algorithm as the Brian2 training network (forward sweep, ``N``
Euler steps of the relaxation of SPEC section 2, the local update summed
over a minibatch), written the way a user of an array library would write
it: every sample of a batch relaxes in parallel as one row of a matrix.
It shares no code with the Brian2 path (only the oracle's forward pass and
`arsim.reference.initial_state` with the other numpy references), so it is (a) the cross-check of the Brian2 training in tests and in
``arsim bench``, and (b) the replay that locates the first batch and layer
where a diverging Brian2 epoch produced NaN/Inf.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from . import oracle
from .activations import get_activation
from .config import n_relax_steps
from .reference import initial_state

__all__ = ["relax_batch", "ar_batch_update", "ar_epoch"]


def relax_batch(B, xbar, fp, e, eta: float, n_steps: int, derivative: bool = True,
                ordering: str = "synchronous", x_start: float = 1.0, current_fp=None) -> list:
    """Relax the hidden layers of a batch (rows are samples).

    Parameters
    ----------
    B : list of ndarray
        Backward matrices ``B^l`` of shape ``(n_l, n_{l+1})``.
    xbar, fp : list of ndarray
        Forward activity and derivatives, shape ``(batch, n_l)`` per layer.
    e : ndarray
        Output clamp, shape ``(batch, n_L)``.
    eta, n_steps, derivative, ordering, x_start
        As in `arsim.reference.relax_euler`.
    current_fp : callable, optional
        ``current_fp(l, x_below)`` returns ``f'(W^{l-1} x^{l-1} + b^{l-1})``
        for layer ``l``: the relaxed frozen forward pass, where the feedback
        carries the derivative at the current state (of the step's start).
        None: the stored ``fp`` (AR).

    Returns
    -------
    list of ndarray
        Final state ``x^l`` of layers ``0..L`` (``x^0`` is the input).
    """
    n_layers = len(xbar) - 1
    x = initial_state(xbar, e, x_start)

    def drive(layer):
        if not derivative:
            return x[layer + 1] @ B[layer].T
        slope = fp[layer + 1] if current_fp is None else current_fp(layer + 1, x[layer])
        return (x[layer + 1] * slope) @ B[layer].T

    for _ in range(n_steps):
        if ordering == "synchronous":
            fb = [drive(l) for l in range(1, n_layers)]
            for l in range(1, n_layers):
                x[l] = x[l] + eta * (fb[l - 1] - x[l])
        else:
            for l in range(n_layers - 1, 0, -1):
                x[l] = x[l] + eta * (drive(l) - x[l])
    return x


def ar_batch_update(config: dict, W, b, B, x_in, targets):
    """AR's summed local update of one minibatch, without the learning rate or sign.

    Returns
    -------
    dW, db : list of ndarray
        ``sum_s (x^{l+1}_s * fp^{l+1}_s) xbar^l_s^T`` and ``sum_s x^{l+1}_s * fp^{l+1}_s``.
    """
    hidden = get_activation(config["activation"], config["leaky_slope"])
    output = get_activation(config["output_activation"], config["leaky_slope"])
    fwd = oracle.forward(W, b, x_in, hidden, output, config["loss"])
    e = oracle.output_error(fwd.xbar[-1], targets, config["loss"])
    n_layers = len(W)

    def current_fp(layer, x_below):
        act = output if layer == n_layers else hidden
        return act.fprime(x_below @ W[layer - 1].T + b[layer - 1])

    relaxed = config["forward"] == "relaxed"
    x = relax_batch(
        B, fwd.xbar, fwd.fp, e, config["dt"] / config["tau"], n_relax_steps(config),
        derivative=config["derivative"], ordering=config["ordering"], current_fp=current_fp if relaxed else None,
    )
    if relaxed:
        # ce folds the softmax into the loss: its output derivative is 1 (linear output)
        delta = [x[l + 1] * current_fp(l + 1, x[l]) for l in range(n_layers)]
        pre = x
    else:
        delta = [x[l + 1] * fwd.fp[l + 1] for l in range(n_layers)]
        pre = fwd.xbar
    return [d.T @ pre[l] for l, d in enumerate(delta)], [d.sum(axis=0) for d in delta]


def ar_epoch(config: dict, params, x_in: np.ndarray, targets: np.ndarray,
             after_batch: Callable[[int, object], None] | None = None):
    """One epoch of AR minibatch SGD on the rows of ``x_in`` (already in sample order).

    Parameters
    ----------
    config : dict
        Resolved config (``feedback``, ``derivative``, ``ordering``, ``train.*``).
    params : arsim.training.Params
        Weights at the start of the epoch (not modified).
    after_batch : callable, optional
        Called as ``after_batch(batch_index, params)`` after every update.

    Returns
    -------
    arsim.training.Params
        Weights after the epoch.
    """
    batch, lr = config["train.batch_size"], config["train.lr"]
    learns_backward = config["feedback"] == "learned"
    new = params.copy()
    for index, start in enumerate(range(0, len(x_in) - batch + 1, batch)):
        stop = start + batch
        dW, db = ar_batch_update(config, new.W, new.b, new.B, x_in[start:stop], targets[start:stop])
        for l in range(len(new.W)):
            new.W[l] = new.W[l] - lr * dW[l]
            if config["bias"]:
                new.b[l] = new.b[l] - lr * db[l]
            if learns_backward:
                new.B[l] = new.B[l] - lr * dW[l].T
            elif config["feedback"] == "transpose":
                new.B[l] = new.W[l].T.copy()
        if after_batch is not None:
            after_batch(index, new)
    return new
