"""Selecting stored points: flat values of a record and ``--where`` filters."""

from __future__ import annotations

import math
import re

from ..config import SCHEMA, ConfigError, parse_override
from .derived import DERIVED_KEYS, derived_values

__all__ = ["record_values", "parse_where", "select"]


_WHERE = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(<=|>=|!=|==|=|<|>)\s*(.*?)\s*$")
_BOOKKEEPING = ("hash", "command", "status", "sweep_id", "seed", "worker", "arsim_version", "git_revision")


def record_values(record: dict) -> dict:
    """Flat values of a stored point: config keys, derived keys, bookkeeping, summary metrics."""
    values = dict(record["config"])
    values.update(derived_values(record["config"]))
    values.update({key: record.get(key) for key in _BOOKKEEPING})
    values.update(record.get("summary") or {})
    return values


def parse_where(text: str) -> tuple:
    """Parse ``KEY OP VALUE`` (OP one of = == != < <= > >=) into ``(key, op, value)``."""
    match = _WHERE.match(text)
    if not match or not match.group(3):
        raise ConfigError(f"--where {text!r}: expected KEY=VALUE or KEY<VALUE (operators = != < <= > >=)")
    key, op, value_text = match.groups()
    return key, "=" if op == "==" else op, parse_override(f"{key}={value_text}")[1]


def _compare(left, op: str, right) -> bool:
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (left, right))
    if op in ("=", "!="):
        equal = math.isclose(left, right, rel_tol=1e-9, abs_tol=1e-12) if numeric else left == right
        return equal if op == "=" else not equal
    if not numeric:
        raise TypeError
    return {"<": left < right, "<=": left <= right, ">": left > right, ">=": left >= right}[op]


def select(records: list, where=()) -> list:
    """The records matching every ``KEY OP VALUE`` condition in ``where``."""
    conditions = [parse_where(text) for text in where]
    if not records or not conditions:
        return list(records)
    known = set(SCHEMA) | set(DERIVED_KEYS) | set(_BOOKKEEPING)
    for record in records:
        known |= set(record.get("summary") or {})
    for key, _, _ in conditions:
        if key not in known:
            raise ConfigError(f"--where {key}: unknown key; accepted: {', '.join(sorted(known))}")
    selected = []
    for record in records:
        values = record_values(record)
        keep = True
        for key, op, value in conditions:
            try:
                keep = values.get(key) is not None and _compare(values[key], op, value)
            except TypeError:
                raise ConfigError(f"--where: cannot compare {key} = {values.get(key)!r} with {op} {value!r}") from None
            if not keep:
                break
        if keep:
            selected.append(record)
    return selected
