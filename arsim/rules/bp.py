"""Backprop (SPEC 3.1): the exact gradient, the oracle every rule is measured against."""

from __future__ import annotations

from .base import Rule, register

__all__ = ["Backprop"]


@register
class Backprop(Rule):
    """Minibatch SGD with the exact backprop gradient, in float64 numpy (`arsim.reference.oracle`).

    Not simulated in Brian2: it is the oracle. It trains with the same
    initial weights, sample order and batches as every other rule, so
    learning curves differ only by the credit assignment.
    """

    name = "bp"
    title = "Backprop"
    summary = """
The exact gradient `dL/dW^l = delta^{l+1} xbar^l^T` from the numpy oracle (`arsim/reference/oracle.py`,
float64), with the same initial weights, sample order and batches as every rule. No Brian2
network: `arsim relax` prints the oracle's own table (zero error by construction).
"""
    simulated = False
    convolutional = True
    separate_backward = False
    projections = ("dense", "synapses")

    def reference_epoch(self, experiment, params, x_in, targets, noise=None, after_batch=None):
        from ..training import bp_epoch

        return bp_epoch(experiment, params, x_in, targets, after_batch=after_batch)
