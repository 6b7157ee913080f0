"""Backward-weight primitives of Kunin et al. 2020, written once (numpy, float64).

Kunin et al. ("Two routes to scalable credit assignment without weight
symmetry", ICML 2020) write every local rule for the backward matrix as a
layer-wise regulariser ``R(W, B)`` trained on ``B`` only, a weighted sum of
primitives on a layer ``r = W x`` (``W`` is ``n_{l+1} x n_l``, ``B`` is
``n_l x n_{l+1}``; no 1/2 factors, as in their code; ``<.>`` is the mean
over the samples of a batch, SPEC 3.5, research/fa_family.md 2.2):

=========  ================================  ==========================================
primitive  R                                 dR/dB
=========  ================================  ==========================================
decay      ``|W|^2 + |B|^2``                 ``2 B``
amp        ``-<x^T B W x>``                  ``-<x r^T>`` (Hebbian: pre x, post r)
null       ``<|B W x|^2>``                   ``2 <(B r) r^T>``
tied       (Kolen-Pollack: ``dB := dW^T``)   ``(dL/dW)^T`` (summed over the batch)
=========  ================================  ==========================================

A rule is a set of coefficients over these (`backward_gradient`); the C++
of `arsim.brian.cpp_projection` computes the same sums. Fixed points at fixed
``W`` for white input ``x ~ N(0, sigma^2 I)``:

* weight mirror (``alpha`` decay + ``beta`` amp): ``B* = (beta sigma^2 / 2 alpha) W^T``;
* information alignment (``alpha`` amp + ``beta`` null + ``gamma`` decay):
  ``B* = alpha sigma^2 W^T (2 beta sigma^2 W W^T + 2 gamma I)^-1``, the ridge
  pseudo-inverse, not aligned with ``W^T`` in general.
"""

from __future__ import annotations

import numpy as np

__all__ = ["decay_gradient", "amp_gradient", "null_gradient", "backward_gradient", "mirror_fixed_point", "ia_fixed_point"]


def decay_gradient(B: np.ndarray) -> np.ndarray:
    """``d(|W|^2 + |B|^2)/dB = 2 B``."""
    return 2.0 * B


def amp_gradient(B: np.ndarray, W: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``d(-<x^T B W x>)/dB = -<x r^T>`` for the rows of ``x`` (samples x n_l)."""
    r = x @ W.T
    return -(x.T @ r) / len(x)


def null_gradient(B: np.ndarray, W: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``d<|B W x|^2>/dB = 2 <(B r) r^T>`` for the rows of ``x``."""
    r = x @ W.T
    return 2.0 * ((r @ B.T).T @ r) / len(x)


def backward_gradient(B, W, x, dW, tied: float = 0.0, decay: float = 0.0, amp: float = 0.0, null: float = 0.0):
    """The gradient of ``tied * <task> + decay * R_decay + amp * R_amp + null * R_null`` with respect to ``B``.

    Parameters
    ----------
    B, W : ndarray
        Backward ``(n_l, n_{l+1})`` and forward ``(n_{l+1}, n_l)`` matrices.
    x : ndarray
        The layer's input activity, samples in rows (training activity or mirror noise).
    dW : ndarray or None
        The batch's summed forward update ``dL/dW`` estimate (``tied`` term).
    tied, decay, amp, null : float
        Coefficients.

    Notes
    -----
    The terms are added in the order the C++ adds them (tied, decay, amp,
    null) with the batch means taken last, so both round alike.
    """
    grad = np.zeros_like(B)
    if tied:
        # dB = dW^T; a convolution's backward kernel is in the forward kernel's layout (`arsim.layers`)
        grad = grad + tied * (dW if dW.ndim == 4 else dW.T)
    grad = grad + 2 * decay * B
    if amp or null:
        r = x @ W.T
        n = len(x)
        if amp:
            grad = grad - amp * (x.T @ r) / n
        if null:
            grad = grad + 2 * null * ((r @ B.T).T @ r) / n
    return grad


def mirror_fixed_point(W: np.ndarray, sigma: float, alpha: float, beta: float) -> np.ndarray:
    """Weight mirror's expected fixed point ``(beta sigma^2 / 2 alpha) W^T`` for white noise."""
    return (beta * sigma**2 / (2.0 * alpha)) * W.T


def ia_fixed_point(W: np.ndarray, sigma: float, alpha: float, beta: float, gamma: float) -> np.ndarray:
    """Information alignment's expected fixed point for white input (the ridge pseudo-inverse).

    ``B* = alpha sigma^2 W^T (2 beta sigma^2 W W^T + 2 gamma I)^-1``.
    """
    n_out = W.shape[0]
    return alpha * sigma**2 * W.T @ np.linalg.inv(2.0 * beta * sigma**2 * W @ W.T + 2.0 * gamma * np.eye(n_out))
