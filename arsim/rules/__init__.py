"""Credit-assignment rules, one module each, on the one neuron type (`arsim.rules.base`).

``RULES`` maps the model file's ``rule`` value to its class. Importing this
package registers every rule.
"""

from __future__ import annotations

# registration order is the order of the cards and of `arsim rules`
from . import ar, bp, fa, dfa, kp, wm, ia, sign, pc, dinv, gait, pal  # noqa: F401,I001
from .base import PLASTICITY_SCALARS, RULES, Param, Rule, register

__all__ = ["RULES", "Rule", "Param", "register", "PLASTICITY_SCALARS", "FEEDBACK_CHOICES", "make_rule", "cards"]

#: AR's ``feedback`` switch
FEEDBACK_CHOICES = ("transpose", "learned", "random")


def make_rule(name: str, settings: dict | None = None, derivative: bool = True, ordering: str = "synchronous",
              forward: str = "frozen", feedback: str = "transpose", conv_feedback: str = "same", conv_derivative: str = "same",
              conv_layers=(), sizes=None) -> Rule:
    """Instantiate the rule called ``name`` (``conv_*``: AR's switches of the convolutional projections ``conv_layers``)."""
    conv = {}
    if RULES[name].convolutional:
        conv = {"conv_feedback": conv_feedback, "conv_derivative": conv_derivative, "conv_layers": conv_layers, "sizes": sizes}
    return RULES[name](settings, derivative=derivative, ordering=ordering, forward=forward, feedback=feedback, **conv)


def cards() -> str:
    """Every rule's doc card, in registry order (docs/rules.md is this text)."""
    header = (
        "# Credit-assignment rules\n\n"
        "Generated from the declarations in `arsim/rules/` by `arsim rules --markdown`; "
        "`tests/test_rules.py` fails when this file and the code differ.\n"
        "Choose a rule with the top-level key `rule`; its parameters go in a table named after it.\n\n"
    )
    return header + "\n".join(RULES[name].card() for name in RULES)
