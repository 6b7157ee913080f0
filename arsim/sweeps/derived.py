"""Derived sweep keys: grid coordinates that are not model keys (``depth``, ``width``, ``eta``, ``steps``).

Each sets model keys (``sizes``, ``dt``, ``duration``) of a point before it is
resolved; `derived_values` gives them back for a stored point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import SCHEMA, ConfigError, n_relax_steps

__all__ = ["DerivedKey", "DERIVED_KEYS", "derived_values"]


@dataclass(frozen=True)
class DerivedKey:
    """A sweep coordinate that sets model keys (``depth`` sets ``sizes``, ...).

    Attributes
    ----------
    kind : type
        ``int`` or ``float``.
    minimum : number
        Smallest accepted value (exclusive for floats, inclusive for ints).
    sets : tuple of str
        Model keys it determines (giving both is an error).
    doc : str
        Meaning, for docs and errors.
    """

    kind: type
    minimum: float
    sets: tuple
    doc: str

    def check(self, name: str, value, source: str):
        """Return ``value`` converted, or raise a one-line `ConfigError`."""
        if self.kind is int:
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"{source}: {name} = {value!r} has the wrong type; expected an integer")
            if value < self.minimum:
                raise ConfigError(f"{source}: {name} = {value!r} is out of range; expected an integer >= {self.minimum}")
            return value
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"{source}: {name} = {value!r} has the wrong type; expected a number")
        if not (value > self.minimum and math.isfinite(value)):
            raise ConfigError(f"{source}: {name} = {value!r} is out of range; expected a finite number > {self.minimum}")
        return float(value)


DERIVED_KEYS: dict[str, DerivedKey] = {
    "depth": DerivedKey(int, 1, ("sizes",), "number of weight layers L: sizes = [n_0] + [width] * (L - 1) + [n_L] (n_0, n_L from the model or --set sizes)"),
    "width": DerivedKey(int, 1, ("sizes",), "size of every hidden layer (with depth; default: the model's hidden size)"),
    "eta": DerivedKey(float, 0.0, ("dt",), "dt / tau: sets dt = eta * tau"),
    "steps": DerivedKey(int, 1, ("duration",), "relaxation steps: sets duration = steps * dt"),
}


def _round15(value: float) -> float:
    # eta * tau = 0.3 * 10 gives 3.0000000000000004; stored configs read better
    # (and eta = dt / tau is recovered exactly) at 15 significant digits
    return float(f"{value:.15g}")


def _apply_derived(raw: dict, derived: dict, source: str) -> dict:
    """Set the model keys of the derived coordinates in ``raw`` (a flat dict)."""
    raw = dict(raw)
    if "depth" in derived or "width" in derived:
        sizes = raw.get("sizes")
        if not (isinstance(sizes, list) and len(sizes) >= 2):
            raise ConfigError(f"{source}: depth/width need sizes = [n_0, ..., n_L] in the model for the input and output sizes")
        depth = derived.get("depth", len(sizes) - 1)
        width = derived.get("width")
        if width is None and depth > 1:
            hidden = sizes[1:-1]
            if not hidden or len(set(hidden)) != 1:
                raise ConfigError(
                    f"{source}: depth = {depth} needs width (the model's hidden sizes {hidden} are not one width);"
                    " expected --set width=N or --grid width=..."
                )
            width = hidden[0]
        raw["sizes"] = [sizes[0], *([width] * (depth - 1)), sizes[-1]]
    if "eta" in derived:
        tau = raw.get("tau", SCHEMA["tau"].default)
        if isinstance(tau, (int, float)) and not isinstance(tau, bool):
            raw["dt"] = _round15(derived["eta"] * tau)
    if "steps" in derived:
        dt = raw.get("dt", SCHEMA["dt"].default)
        if isinstance(dt, (int, float)) and not isinstance(dt, bool):
            raw["duration"] = _round15(derived["steps"] * dt)
    return raw


def derived_values(config: dict) -> dict:
    """The derived coordinates of a resolved config (``width`` None if hidden sizes differ)."""
    sizes = config["sizes"]
    hidden = sizes[1:-1]
    return {
        "depth": len(sizes) - 1,
        "width": hidden[0] if hidden and len(set(hidden)) == 1 else None,
        "eta": config["dt"] / config["tau"],
        "steps": n_relax_steps(config),
    }
