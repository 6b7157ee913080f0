"""Activation Relaxation (Millidge, Tschantz, Seth & Buckley 2020), SPEC section 2."""

from __future__ import annotations

import copy

from .base import Rule, register

__all__ = ["ActivationRelaxation"]


@register
class ActivationRelaxation(Rule):
    """AR and its simplifications, chosen by the top-level switches.

    ``feedback = "transpose"`` is exact AR (``B = W^T``; the fixed point is
    the BP adjoint), ``learned`` gives ``B`` the transposed forward update
    (``dB = dW^T``, so ``B - W^T`` stays constant), ``random`` keeps ``B``
    fixed (the same dynamics as `rule = "fa"`); ``derivative = false``
    drops ``f'`` from the relaxation; ``forward`` relaxes the frozen forward
    pass in one of the follow-up paper's four ways (or all at once,
    ``all_current``); ``ordering`` picks the Jacobi (continuous time) or
    top-down Gauss-Seidel step.
    """

    name = "ar"
    title = "Activation Relaxation"
    summary = """
AR (Millidge et al. 2020, SPEC 2): after the forward sweep each hidden layer relaxes,
`tau dx^l/dt = -x^l + B^l (x^{l+1} * f'^{l+1})`, `x^L = e`; at equilibrium `x^l = dL/dxbar^l`
and the local update `dW^l = -lr (x^{l+1} f'^{l+1}) xbar^l^T` is backprop's. Its switches are
top-level keys: `feedback` (`transpose`: B = W^T; `learned`: dB = dW^T; `random`: B fixed, i.e.
FA), `derivative`, `ordering` (`synchronous` | `sequential`), and `forward`, the frozen forward pass or
one of the follow-up paper's relaxed ones (Millidge et al., arXiv 2010.06219; its code's flags, run one at
a time): `fderiv_x_update` (the relaxation takes `f'(W^l x^l(t) + b^l)` of the current state instead of
the stored `f'^{l+1}`), `fderiv_weight_update` (the update takes `f'(W^l x^l* + b^l)`), `fderiv_both`,
`current_x_weights` (the update's pre-synaptic factor is the relaxed `x^l*` instead of `xbar^l`).
`all_current` combines all of them: the authors never ran it, and it does not learn (chance level on
digits). arsim's `f'` includes the bias; the authors' code omits it (equal with `bias = false`).
"""
    projections = ("dense", "synapses")
    convolutional = True

    def __init__(self, settings=None, derivative=True, ordering="synchronous", forward="frozen", feedback="transpose", **conv):
        super().__init__(settings, derivative, ordering, forward, feedback, **conv)
        self.separate_backward = feedback != "transpose"
        self.tied = feedback == "learned"

    def for_layer(self, layer):
        """A convolutional projection's own feedback and derivative (``conv_feedback``, ``conv_derivative``)."""
        if layer not in self.conv_layers:
            return self
        feedback = self.feedback if self.conv_feedback == "same" else self.conv_feedback
        derivative = self.derivative if self.conv_derivative == "same" else self.conv_derivative == "on"
        if (feedback, derivative) == (self.feedback, self.derivative):
            return self
        view = copy.copy(self)
        view.feedback, view.derivative, view.conv_layers = feedback, derivative, frozenset()
        view.separate_backward, view.tied = feedback != "transpose", feedback == "learned"
        return view

    def plasticity_scalars(self, lr, sizes):
        rows = super().plasticity_scalars(lr, sizes)
        for l, row in enumerate(rows):
            if self.for_layer(l).tied:
                row.update(eta_b=lr, c_tied=1.0)
        return rows
