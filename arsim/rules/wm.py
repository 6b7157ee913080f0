"""Weight mirror (Akrout et al. 2019), SPEC 3.5."""

from __future__ import annotations

from .base import Param, Rule, at_least_one, non_negative, positive, register

__all__ = ["WeightMirror"]


@register
class WeightMirror(Rule):
    """WM: a mirror phase per batch in which ``B`` learns from injected noise (decay + amp)."""

    name = "wm"
    title = "Weight mirror"
    summary = """
Akrout et al. 2019 in Kunin et al.'s form (SPEC 3.5): after every SGD step a mirror phase of
`mirror_steps` updates: white noise `x ~ N(0, sigma^2)` (`mirror_samples` samples) is injected
into each relaxing layer `l >= 1`, read one layer up as `r = W^l x`, and `B^l` learns
`B^l <- B^l + eta (beta <x r^T> - 2 alpha B^l)` (amp + decay), fixed point
`B* = (beta sigma^2 / 2 alpha) W^T`. The mirror phase runs inside the same standalone run, at
the batch boundary after the SGD step; the noise is drawn by numpy from
`(seed, epoch, first batch of the run)` and passed to the binary as a run-time array, so a run
is reproducible and its reference takes the same noise. `B^0` carries nothing (the input does
not relax) and is not mirrored.
"""
    params = {
        "sigma": Param(float, 1.0, "sigma", "standard deviation of the injected noise", positive),
        "alpha": Param(float, 0.5, "alpha", "decay coefficient", non_negative),
        "beta": Param(float, 1.0, "beta", "amp (Hebbian) coefficient", non_negative),
        "eta": Param(float, 0.1, "eta", "learning rate of B in the mirror phase", positive),
        "mirror_samples": Param(int, 64, "M", "noise samples per mirror update", at_least_one, build=True),
        "mirror_steps": Param(int, 1, "K", "mirror updates per batch", at_least_one, build=True),
    }

    mirror = True

    def plasticity_scalars(self, lr, sizes):
        rows = super().plasticity_scalars(lr, sizes)
        s = self.settings
        for row in rows:
            row.update(m_eta=s["eta"], m_decay=s["alpha"], m_amp=s["beta"])
        return rows

    def mirror_shape(self):
        return (self.settings["mirror_steps"], self.settings["mirror_samples"])

    def mirror_noise(self, rng, n_batches, sizes):
        steps, samples = self.mirror_shape()
        return {
            l: rng.normal(0.0, self.settings["sigma"], size=(n_batches, steps, samples, sizes[l]))
            for l in range(1, len(sizes) - 1)
        }
