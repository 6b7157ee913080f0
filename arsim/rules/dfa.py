"""Direct feedback alignment (Nøkland 2016), SPEC 3.3."""

from __future__ import annotations

from .base import Rule, register

__all__ = ["DirectFeedbackAlignment"]


@register
class DirectFeedbackAlignment(Rule):
    """DFA: every hidden layer relaxes towards a fixed random projection of the output error."""

    name = "dfa"
    title = "Direct feedback alignment"
    summary = """
Nøkland 2016 (SPEC 3.3): each hidden layer `l` receives the output error directly through a
fixed random `D^l` (`n_l x n_L`, `N(0, feedback_std^2)`): `tau dx^l/dt = -x^l + D^l (x^L * f'^L)`
with `x^L = e` (for a linear or softmax output `f'^L = 1`: `D^l e`), fixed point `x^l* = D^l e`,
no chain through the layers above. A topology change: one projection from the output to every
hidden layer (Synapses `direct{l}`, holding `D^l` in `wb`), not a new neuron. Update:
`dW^{l-1} = -lr (x^l* f'^l) xbar^{l-1}^T`. `B{l}` in the saved arrays is `D^l` (`B0` is unused).
On a CNN (Han et al. 2019, "Extension of direct feedback alignment to convolutional and recurrent
neural network") `D^l` projects the error onto every unit of a convolutional layer (a fixed random
tensor, channels x positions x outputs) and the kernel learns from the sum over its positions.
"""
    direct = True
    #: Han et al.'s DFA for CNNs: a random fixed D^l into a convolution's units (every position its own column)
    convolutional = True
