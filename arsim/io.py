"""Atomic result files and provenance (config, seed, versions, git revision)."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from . import __version__

__all__ = ["atomic_write_bytes", "save_npz", "write_json", "provenance"]


@contextlib.contextmanager
def _atomic_path(path: Path, suffix: str):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp creates the file private (0600); results are meant to be shared like any other file
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename."""
    with _atomic_path(path, ".tmp") as tmp:
        tmp.write_bytes(data)


def save_npz(path, arrays: dict) -> None:
    """Save ``arrays`` as one .npz file, atomically (no partial file on failure)."""
    with _atomic_path(path, ".npz") as tmp:
        np.savez(tmp, **arrays)


def write_json(path, obj) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=1, default=_json_default) + "\n").encode())


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} as JSON")


def _git_revision() -> str:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(experiment) -> dict:
    """What is needed to reproduce a result: config, seed, versions, git revision.

    ``experiment`` is an `arsim.spec.Experiment` (its resolved config is
    stored verbatim) or None (the versions and revision only).
    """
    import brian2
    import scipy

    return {
        "config": None if experiment is None else dict(experiment.config),
        "seed": None if experiment is None else experiment.seed,
        "versions": {
            "arsim": __version__,
            "brian2": brian2.__version__,
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "python": platform.python_version(),
        },
        "git_revision": _git_revision(),
        "machine": {"cores": os.cpu_count(), "platform": platform.platform()},
    }
