"""Feedback alignment (Lillicrap et al. 2016), SPEC 3.2."""

from __future__ import annotations

from .base import Rule, register

__all__ = ["FeedbackAlignment"]


@register
class FeedbackAlignment(Rule):
    """FA: AR's relaxation with a random fixed ``B``, whose fixed point is FA's backward pass."""

    name = "fa"
    title = "Feedback alignment"
    summary = """
Lillicrap et al. 2016 (SPEC 3.2): `delta^l = f'^l * (B^l delta^{l+1})` with `B^l` random
(`N(0, feedback_std^2)`) and fixed. One dynamics, two names: it is AR's relaxation with
`feedback = "random"`, `tau dx^l/dt = -x^l + B^l (x^{l+1} * f'^{l+1})`, whose fixed point is
exactly FA's backward signal (`dt/tau = 1` with `L-1` steps computes it exactly); the update is
AR's local `dW^l = -lr (x^{l+1} f'^{l+1}) xbar^l^T`.
"""
    projections = ("dense", "synapses")
