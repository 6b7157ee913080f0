"""Sweep planning: the grid syntax, expansion and validation of every point.

The whole grid is expanded and resolved before anything is built, so an
unknown key or a bad value stops a sweep with one line and no compilation.
Points are grouped by build (`SweepPlan.groups`) for compile-once scheduling.
"""

from __future__ import annotations

import collections
import itertools
from dataclasses import dataclass
from pathlib import Path

from ..config import SCHEMA, ConfigError, _flatten, parse_override, resolve
from ..spec import Experiment
from .commands import COMMANDS
from .derived import DERIVED_KEYS, _apply_derived
from .store import point_hash

__all__ = ["SweepPoint", "SweepPlan", "split_values", "parse_axis", "plan_sweep"]


def split_values(text: str) -> list:
    """Split ``text`` at the commas outside brackets and quotes.

    ``"1,2"`` -> ``["1", "2"]``; ``"[4,3,2],[8,2]"`` -> ``["[4,3,2]", "[8,2]"]``.
    """
    items, current, depth, quote = [], [], 0, None
    escaped = False
    for ch in text:
        if quote:
            current.append(ch)
            if escaped:
                escaped = False
            elif ch == "\\" and quote == '"':
                escaped = True
            elif ch == quote:
                quote = None
            continue
        if ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    items.append("".join(current).strip())
    return items


def parse_axis(text: str, option: str = "--grid") -> tuple:
    """Parse ``key=v1,v2,...`` into ``(key, [values])`` (values as TOML literals or bare words)."""
    if "=" not in text:
        raise ConfigError(f"{option} {text!r}: expected key=value1,value2,...")
    key, values_text = (part.strip() for part in text.split("=", 1))
    _check_key(key, option)
    items = split_values(values_text)
    if any(item == "" for item in items):
        raise ConfigError(f"{option} {text!r}: empty value; expected key=value1,value2,... (lists as [a, b])")
    return key, [parse_override(f"{key}={item}")[1] for item in items]


def _check_key(key: str, option: str) -> None:
    if key not in SCHEMA and key not in DERIVED_KEYS:
        raise ConfigError(
            f"{option} {key}: unknown key; accepted keys: {', '.join(SCHEMA)}; derived keys: {', '.join(DERIVED_KEYS)}"
        )


@dataclass
class SweepPoint:
    """One point: its swept values, resolved config and content hash."""

    values: dict
    config: dict
    hash: str

    @property
    def experiment(self) -> Experiment:
        """The point typed (what the command's callables take)."""
        return Experiment.from_config(self.config)


@dataclass
class SweepPlan:
    """The validated points of a sweep (duplicates merged)."""

    command: str
    model: str
    points: list
    duplicates: int = 0

    def groups(self, points=None) -> dict:
        """Map each build `Topology` to its points (all points by default); None holds those without a build."""
        command = COMMANDS[self.command]
        by_shape = collections.defaultdict(list)
        for point in self.points if points is None else points:
            by_shape[command.shape(point.experiment)].append(point)
        return {
            (None if shape is None else command.topology(shape, max(command.budget(p.experiment) for p in group))): group
            for shape, group in by_shape.items()
        }


def _read_model(path) -> dict:
    import tomllib

    path = Path(path)
    try:
        return _flatten(tomllib.loads(path.read_text()))
    except FileNotFoundError:
        raise ConfigError(f"{path}: model file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory; expected a model file") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None


def plan_sweep(
    model,
    grid=(),
    zipped=(),
    sets=(),
    repeat: int = 1,
    command: str = "relax",
) -> SweepPlan:
    """Expand and validate a sweep; nothing is built.

    Parameters
    ----------
    model : path
        Model file (TOML).
    grid : list of str
        ``key=v1,v2,...``: axes of a cartesian product, in the given order.
    zipped : list of str
        ``key=v1,v2,...`` of equal lengths, iterated together as one more
        axis (after the grid axes).
    sets : list of str
        ``key=value`` overrides of every point (model or derived keys).
    repeat : int
        Run every point with seeds ``seed, seed + 1, ..., seed + repeat - 1``.
    command : str
        A key of `COMMANDS`.

    Returns
    -------
    SweepPlan

    Raises
    ------
    ConfigError
        On an unknown key or command, a key given twice, conflicting keys,
        zipped axes of unequal length, or any point that does not resolve.
    """
    if command not in COMMANDS:
        raise ConfigError(f"--command {command}: unknown; expected one of {', '.join(COMMANDS)}")
    if not isinstance(repeat, int) or repeat < 1:
        raise ConfigError(f"--repeat {repeat!r}: expected an integer >= 1")
    base = _read_model(model)
    fixed = {}
    for text in sets:
        key, value = parse_override(text)
        _check_key(key, "--set")
        fixed[key] = value
    axes = [parse_axis(text, "--grid") for text in grid]
    zip_axes = [parse_axis(text, "--zip") for text in zipped]
    given = [("--set", k) for k in fixed] + [("--grid", k) for k, _ in axes] + [("--zip", k) for k, _ in zip_axes]
    seen = {}
    for option, key in given:
        if key in seen:
            raise ConfigError(f"{option} {key}: {key} is already given by {seen[key]}; give each key once")
        seen[key] = option
    if repeat > 1 and seen.get("seed", "--set") != "--set":
        raise ConfigError(f"--repeat {repeat} and {seen['seed']} seed: both set the seed; use one of them")
    for name, spec in DERIVED_KEYS.items():
        for target in spec.sets:
            if name not in seen or target not in seen:
                continue
            if target == "sizes" and seen[target] == "--set":
                continue  # --set sizes is the template: depth and width keep its first and last sizes
            raise ConfigError(f"{seen[name]} {name} and {seen[target]} {target}: {name} sets {target}; give one of them")
    if zip_axes and len({len(values) for _, values in zip_axes}) != 1:
        lengths = ", ".join(f"{k}: {len(v)}" for k, v in zip_axes)
        raise ConfigError(f"--zip: the zipped keys need equal numbers of values ({lengths})")

    for key, value in fixed.items():
        if key in DERIVED_KEYS:
            fixed[key] = DERIVED_KEYS[key].check(key, value, "--set")
    for option, axis_list in (("--grid", axes), ("--zip", zip_axes)):
        for key, values in axis_list:
            if key in DERIVED_KEYS:
                values[:] = [DERIVED_KEYS[key].check(key, v, option) for v in values]

    product_axes = [[{key: v} for v in values] for key, values in axes]
    if zip_axes:
        product_axes.append([dict(zip((k for k, _ in zip_axes), combo)) for combo in zip(*(v for _, v in zip_axes))])
    points, hashes, duplicates = [], set(), 0
    for combo in itertools.product(*product_axes):
        values = {k: v for part in combo for k, v in part.items()}
        assignment = {**fixed, **values}
        plain = {k: v for k, v in assignment.items() if k not in DERIVED_KEYS}
        derived = {k: v for k, v in assignment.items() if k in DERIVED_KEYS}
        described = ", ".join(f"{k}={v!r}" for k, v in values.items()) or "no swept keys"
        source = f"{model} with {described}"
        raw = _apply_derived({**base, **plain}, derived, source)
        config = resolve(raw, source=source)
        if COMMANDS[command].check is not None:
            COMMANDS[command].check(Experiment.from_config(config), source)
        for r in range(repeat):
            point_config = dict(config, seed=config["seed"] + r) if repeat > 1 else config
            point_values = dict(values, seed=point_config["seed"]) if repeat > 1 else dict(values)
            digest = point_hash(command, point_config)
            if digest in hashes:
                duplicates += 1
                continue
            hashes.add(digest)
            points.append(SweepPoint(point_values, point_config, digest))
    return SweepPlan(command=command, model=str(model), points=points, duplicates=duplicates)
