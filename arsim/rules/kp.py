"""Kolen-Pollack (Kolen & Pollack 1994; Akrout et al. 2019), SPEC 3.4."""

from __future__ import annotations

from .base import Param, Rule, non_negative, register

__all__ = ["KolenPollack"]


@register
class KolenPollack(Rule):
    """KP: the transposed forward update for ``B`` and a matched decay on ``W`` and ``B``."""

    name = "kp"
    title = "Kolen-Pollack"
    summary = """
SPEC 3.4: `B^l` (random at the start) learns with the transposed forward update and both
decay, `W^l <- W^l - lr (dW^l + lambda W^l)`, `B^l <- B^l - lr ((dW^l)^T + lambda B^l)`, so
`B^l - W^l^T` shrinks by exactly `(1 - lr lambda)` per update. In primitives: tied gradient +
`lambda/2` decay, on the training step. AR's `feedback = "learned"` is KP with `lambda = 0`.
"""
    params = {"decay": Param(float, 1e-3, "lambda", "weight decay of W and B per update (multiplies train.lr)", non_negative)}
    tied = True
    projections = ("dense",)

    def forward_decay(self):
        return self.settings["decay"]

    def plasticity_scalars(self, lr, sizes):
        rows = super().plasticity_scalars(lr, sizes)
        for row in rows:
            row.update(eta_b=lr, c_tied=1.0, c_decay=self.settings["decay"] / 2.0)
        return rows
