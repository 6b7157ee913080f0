"""The model files bundled with arsim, found by name.

The files live in the package (``arsim/model_files/*.toml``, package
data, so they are in the wheel); in a git checkout the top-level
``models`` directory is a relative symlink to them. Each file's first
comment line is its one-line description. A MODEL argument of the command
line is a path, or the name of a bundled model (``arsim train digits_ar``):
`resolve_model` decides which, `list_models` is ``arsim models``.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from .config import ConfigError

__all__ = ["MODELS_DIR", "resolve_model", "list_models"]

#: directory of the bundled model files
MODELS_DIR = Path(__file__).resolve().parent / "model_files"


def _bundled() -> dict:
    """Bundled model files by name (the file name without ``.toml``), sorted."""
    if not MODELS_DIR.is_dir():
        return {}
    return {path.stem: path for path in sorted(MODELS_DIR.glob("*.toml"))}


def resolve_model(name_or_path: str | os.PathLike) -> Path:
    """The model file meant by a MODEL argument.

    An existing path, or any name ending in ``.toml`` (a missing file is then
    reported by `arsim.config.load`), is a path; anything else is the name
    of a bundled model.

    Raises
    ------
    ConfigError
        A directory, or a name that is neither a file nor a bundled model
        (one line listing the bundled names).
    """
    path = Path(name_or_path)
    if path.is_dir():
        raise ConfigError(f"model {str(name_or_path)!r} is a directory; expected a model file (.toml) or a bundled model name")
    if path.exists() or path.suffix == ".toml":
        return path
    bundled = _bundled()
    if str(name_or_path) in bundled:
        return bundled[str(name_or_path)]
    raise ConfigError(
        f"model {str(name_or_path)!r}: no such file and no bundled model of that name;"
        f" bundled: {', '.join(bundled) or '(none)'}, or give the path of a .toml file"
    )


def _description(text: str) -> str:
    """The first comment line of a model file (its one-line summary), or ''."""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") and stripped.lstrip("#").strip():
            return stripped.lstrip("#").strip()
    return ""


def list_models() -> list:
    """``(name, description, path)`` of every bundled model, sorted by name.

    ``name`` is the file's ``name`` key (the file name where it has none)
    and ``description`` its first comment line.
    """
    models = []
    for stem, path in _bundled().items():
        text = path.read_text()
        try:
            name = tomllib.loads(text).get("name", stem)
        except tomllib.TOMLDecodeError:
            name = stem
        models.append((str(name), _description(text), path))
    return models
