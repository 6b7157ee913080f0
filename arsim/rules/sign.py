"""Sign symmetry (Liao, Leibo & Poggio 2016; biotorch's uSF)."""

from __future__ import annotations

import math

import numpy as np

from .base import Param, Rule, register

__all__ = ["SignSymmetry"]


def _one_of(*choices):
    def check(value):
        return None if value in choices else "one of " + ", ".join(repr(c) for c in choices)

    return check


@register
class SignSymmetry(Rule):
    """Sign symmetry: ``B^l = s sign(W^l)^T``, following ``W`` as it learns."""

    name = "sign"
    title = "Sign symmetry"
    summary = """
Liao, Leibo & Poggio 2016 (biotorch's uSF): the feedback shares only the signs of the forward
weights, `B^l = s_l sign(W^l)^T`, recomputed after every update (so it follows `W`), with
`s_l = sqrt(2 / (n_l + n_{l+1}))` (`magnitude = "xavier"`, biotorch's scaling factor) or
`s_l = 1` (`"unit"`). The relaxation is AR's with this `B`.
"""
    params = {
        "magnitude": Param(str, "xavier", "s_l", "feedback magnitude: 'xavier' sqrt(2/(n_l + n_{l+1})) or 'unit' 1",
                           _one_of("xavier", "unit")),
    }
    sign = True

    def scale(self, n_in: int, n_out: int) -> float:
        return math.sqrt(2.0 / (n_in + n_out)) if self.settings["magnitude"] == "xavier" else 1.0

    def initial_backward(self, W, rng, std):
        return [self.scale(w.shape[1], w.shape[0]) * np.sign(w).T for w in W]

    def plasticity_scalars(self, lr, sizes):
        rows = super().plasticity_scalars(lr, sizes)
        for l, row in enumerate(rows):
            row["b_scale"] = self.scale(sizes[l], sizes[l + 1])
        return rows
