"""Information alignment (Kunin et al. 2020), SPEC 3.5."""

from __future__ import annotations

from .base import Param, Rule, non_negative, positive, register

__all__ = ["InformationAlignment"]


@register
class InformationAlignment(Rule):
    """IA: amp + null + decay on the training activity, no mirror phase."""

    name = "ia"
    title = "Information alignment"
    summary = """
Kunin et al. 2020 (SPEC 3.5): at every update `B^l` learns from the batch's own forward
activity `x = xbar^l`, `r = W^l x`:
`B^l <- B^l + eta (alpha <x r^T> - 2 beta <(B^l r) r^T> - 2 gamma B^l)` (amp + null + decay,
batch means). For white input its fixed point is the ridge pseudo-inverse
`B* = alpha sigma^2 W^T (2 beta sigma^2 W W^T + 2 gamma I)^-1`, aligned with `W^T` only when
`W W^T` is proportional to `I` or `gamma` dominates. Kunin's code defaults: alpha 2e-3,
beta 1e-3, gamma 1e-3.
"""
    params = {
        "alpha": Param(float, 2e-3, "alpha", "amp coefficient", non_negative),
        "beta": Param(float, 1e-3, "beta", "null coefficient", non_negative),
        "gamma": Param(float, 1e-3, "gamma", "decay coefficient", non_negative),
        "eta": Param(float, 10.0, "eta", "learning rate of B per update", positive),
    }
    train_primitives = ("decay", "amp", "null")

    def plasticity_scalars(self, lr, sizes):
        rows = super().plasticity_scalars(lr, sizes)
        s = self.settings
        for row in rows:
            row.update(eta_b=s["eta"], c_amp=s["alpha"], c_null=s["beta"], c_decay=s["gamma"])
        return rows
