"""Feedback rules: how the backward drive of the relaxation is formed.

A rule is an object, not a branch in the builder (Nengo style). It declares
the synaptic variables it needs on the shared projection, the expression
summed into the lower layer's ``fb``, how its backward matrices start, and
(for training) how they learn. The network builder asks the rule; adding a
rule means adding one class decorated with `register`.

Every projection ``l`` is one Brian2 `Synapses` object from layer ``l`` to
``l+1`` holding ``w = W^l[post, pre]``; a rule with its own backward weights
adds ``wb = B^l[pre, post]`` on the same synapses (same topology).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

__all__ = ["FeedbackRule", "Transpose", "Learned", "RandomFixed", "FEEDBACK_RULES", "register", "get_rule"]

FEEDBACK_RULES: dict[str, type["FeedbackRule"]] = {}


def register(cls):
    """Class decorator adding a rule to `FEEDBACK_RULES` under ``cls.name``."""
    FEEDBACK_RULES[cls.name] = cls
    return cls


class FeedbackRule:
    """Base class of the backward pathway of AR.

    Parameters
    ----------
    derivative : bool
        If True the feedback carries the derivative of the layer above,
        ``fb^l = B^l (x^{l+1} * fp^{l+1})``; if False, ``fb^l = B^l x^{l+1}``
        (SPEC section 2, simplification 3).
    frozen_forward : bool
        If True (AR) the relaxation and the update use the stored forward
        values ``xbar`` and ``fp = f'(W xbar + b)``. If False (the relaxed
        frozen forward pass, SPEC section 2 follow-up) they use the current
        state: ``fpnow^{l+1} = f'(W^l x^l + b^l)`` recomputed every step from
        the relaxing activity, and ``dW^l = (x^{l+1} * fpnow^{l+1}) x^l^T``.
    """

    name: ClassVar[str] = ""
    #: synaptic variable holding the backward weight B^l[pre, post]
    backward_variable: ClassVar[str] = "w"
    #: extra synaptic equations on the projection
    synapse_equations: ClassVar[str] = ""
    #: whether B learns with the transposed forward update (dB = dW^T)
    learns_backward: ClassVar[bool] = False

    def __init__(self, derivative: bool = True, frozen_forward: bool = True):
        self.derivative = derivative
        self.frozen_forward = frozen_forward

    @property
    def derivative_variable(self) -> str:
        """The neuron variable holding ``f'`` in the relaxation and the update."""
        return "fp" if self.frozen_forward else "fpnow"

    @property
    def presynaptic_activity(self) -> str:
        """The neuron variable of the pre-synaptic activity in the update."""
        return "xbar" if self.frozen_forward else "x"

    def feedback_expression(self) -> str:
        """Right-hand side summed into ``fb_pre`` by every projection ``l >= 1``."""
        carried = f"x_post * {self.derivative_variable}_post" if self.derivative else "x_post"
        return f"{self.backward_variable} * {carried}"

    def projection_equations(self) -> str:
        """Synaptic equations of a projection: the rule's own plus, when relaxed, the current drive."""
        lines = [self.synapse_equations]
        if not self.frozen_forward:
            lines.append("anow_post = w * x_pre : 1 (summed)")
        return "\n".join(line for line in lines if line)

    def initial_backward(self, W: list, rng: np.random.Generator, std: float) -> list:
        """Initial backward matrices ``B^l`` of shape ``(n_l, n_{l+1})``."""
        return [w.T.copy() for w in W]

    def accumulate_code(self) -> str:
        """Synaptic code adding one sample's local update ``dL/dW`` estimate to ``dw_acc``.

        Run at step 0 of the next sample, before its forward sweep, so it
        reads the relaxed state of the sample that just finished.
        """
        return f"dw_acc += x_post * {self.derivative_variable}_post * {self.presynaptic_activity}_pre"

    def bias_accumulate_code(self) -> str:
        """Neuron code adding one sample's bias update to ``db_acc``."""
        return f"db_acc += learn_bias * x * {self.derivative_variable}"

    def apply_code(self) -> str:
        """Synaptic code applying the accumulated update at a batch boundary.

        ``apply_update_post`` is 1 at the first step after a batch and 0
        otherwise; multiplying by it (instead of branching) keeps every value
        exact: ``w - 0 * u == w`` and ``acc * 0 == 0`` for finite numbers.
        """
        lines = ["w = w - apply_update_post * lr_post * dw_acc"]
        if self.learns_backward:
            # synapse (post, pre) holds B[pre, post]: the same element of dW^T
            lines.append("wb = wb - apply_update_post * lr_post * dw_acc")
        lines.append("dw_acc = dw_acc * (1 - apply_update_post)")
        return "\n".join(lines)

    def backward_matrices(self, W: list, wb: list | None) -> list:
        """The matrices the relaxation uses, from the synaptic weights."""
        return [w.T.copy() for w in W] if wb is None else [b.copy() for b in wb]


@register
class Transpose(FeedbackRule):
    """Exact AR: the feedback uses the forward weights, ``B^l = W^l^T``.

    ==========  ====  ===========  =======  ==================================
    Parameter   Unit  Math         Default  Description
    ==========  ====  ===========  =======  ==================================
    derivative  --    f'(a^{l+1})  true     keep the derivative in the feedback
    forward     --    xbar | x     frozen   frozen: stored xbar, f'(W xbar + b)
                                            in the relaxation and update;
                                            relaxed: current x, f'(W x + b)
    lr          --    eta_W        5e-4     SGD step on the summed batch update
                                            (``train.lr``, run time)
    ==========  ====  ===========  =======  ==================================
    """

    name = "transpose"


class _SeparateBackward(FeedbackRule):
    backward_variable = "wb"
    synapse_equations = "wb : 1"

    def initial_backward(self, W, rng, std):
        return [rng.normal(0.0, std, size=w.T.shape) for w in W]


@register
class Learned(_SeparateBackward):
    """AR with learned backward weights (no weight transport, SPEC section 2.1).

    ``B^l`` starts random and receives the transpose of every forward update,
    ``dB^l = (dW^l)^T``, so ``B - W^T`` is constant over training.

    ============  ====  ===========  =======  =======================================
    Parameter     Unit  Math         Default  Description
    ============  ====  ===========  =======  =======================================
    feedback_std  --    sigma_B      0.05     initial B drawn from N(0, sigma_B^2)
    derivative    --    f'(a^{l+1})  true     keep the derivative in the feedback
    forward       --    xbar | x     frozen   frozen: stored xbar, f'(W xbar + b) in the
                                              relaxation and update; relaxed: current x,
                                              f'(W x + b) (``frozen_forward = False``)
    ============  ====  ===========  =======  =======================================
    """

    name = "learned"
    learns_backward = True


@register
class RandomFixed(_SeparateBackward):
    """AR with random fixed backward weights (feedback-alignment style, SPEC 2.2).

    ============  ====  ===========  =======  =======================================
    Parameter     Unit  Math         Default  Description
    ============  ====  ===========  =======  =======================================
    feedback_std  --    sigma_B      0.05     B drawn once from N(0, sigma_B^2)
    derivative    --    f'(a^{l+1})  true     keep the derivative in the feedback
    forward       --    xbar | x     frozen   frozen: stored xbar, f'(W xbar + b) in the
                                              relaxation and update; relaxed: current x,
                                              f'(W x + b) (``frozen_forward = False``)
    ============  ====  ===========  =======  =======================================
    """

    name = "random"


def get_rule(name: str, derivative: bool = True, frozen_forward: bool = True) -> FeedbackRule:
    """Instantiate the feedback rule called ``name``."""
    return FEEDBACK_RULES[name](derivative=derivative, frozen_forward=frozen_forward)
