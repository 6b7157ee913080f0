"""Activation Relaxation (Millidge, Tschantz, Seth & Buckley 2020), SPEC section 2."""

from __future__ import annotations

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

    def __init__(self, settings=None, derivative=True, ordering="synchronous", forward="frozen", feedback="transpose"):
        super().__init__(settings, derivative, ordering, forward, feedback)
        self.separate_backward = feedback != "transpose"
        self.tied = feedback == "learned"

    def plasticity_scalars(self, lr, sizes):
        rows = super().plasticity_scalars(lr, sizes)
        if self.tied:
            for row in rows:
                row.update(eta_b=lr, c_tied=1.0)
        return rows
