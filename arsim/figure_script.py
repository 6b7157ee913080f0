"""Plumbing shared by the figure scripts in ``analysis/``.

Every figure script has the same two stages and command line: ``simulate``
(stores its numbers with provenance in an ``.npz`` + ``.json`` pair) and
``plot`` (draws from that file only), run as
``python analysis/NAME.py [--plot-only] [--quick] [--data FILE] [--out-dir DIR]``.
This module holds what does not depend on the figure: argument checks,
atomic figure and data files, the common matplotlib style, and the main
function with its exit codes (2: bad input, 3: a diverged simulation).
"""

from __future__ import annotations

import argparse
import io
import sys
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from .config import ConfigError
from .io import atomic_write_bytes, save_npz, write_json

__all__ = ["UsageError", "STYLE", "save_figure", "store_data", "load_data", "check_arguments", "script_main"]

#: resolution of the PNG files
DPI = 250

#: matplotlib rc settings of every figure (compact, paper-sized, editable SVG text)
STYLE = {
    "font.size": 8,
    "axes.titlesize": 8.5,
    "legend.fontsize": 7,
    "legend.framealpha": 0.9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.4,
    "svg.fonttype": "none",
}


class UsageError(ValueError):
    """A bad command line or data file (reported in one line, exit status 2)."""


def save_figure(fig, out_dir: Path, stem: str, dpi: int = DPI) -> list:
    """Save ``fig`` as ``out_dir/stem.png`` and ``.svg``, each atomically."""
    paths = []
    for ext in ("png", "svg"):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=ext, dpi=dpi, metadata={"Date": None} if ext == "svg" else None)
        path = Path(out_dir) / f"{stem}.{ext}"
        atomic_write_bytes(path, buffer.getvalue())
        paths.append(path)
    return paths


def store_data(data: Path, arrays: dict, meta: dict) -> None:
    """Write ``data`` (.npz) and its provenance (same stem, .json), atomically."""
    save_npz(data, arrays)
    write_json(Path(data).with_suffix(".json"), meta)


def load_data(data: Path, name: str) -> dict:
    """Read a data file stored by the script ``name``, checking that it is one."""
    try:
        with np.load(data) as stored:
            arrays = {key: stored[key] for key in stored.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise UsageError(f"{data}: not a readable .npz data file ({err})") from None
    if str(arrays.get("script", "")) != name:
        raise UsageError(f"{data}: not a {name} data file (its 'script' entry is {str(arrays.get('script', 'missing'))!r})")
    return arrays


def check_arguments(args, name: str, root: Path) -> Path:
    """Validate the command line; return the data file path."""
    data = args.data or Path(root) / "analysis" / "data" / (name + ("_quick" if args.quick else "") + ".npz")
    if data.suffix != ".npz":
        raise UsageError(f"--data {data}: expected a file name ending in .npz")
    if args.plot_only and args.quick:
        raise UsageError("--quick selects what to simulate; it has no meaning with --plot-only")
    if args.plot_only and not data.is_file():
        raise UsageError(f"--data {data}: no such data file; run without --plot-only first to simulate")
    for path, what in ((data.parent, "--data directory"), (args.out_dir, "--out-dir")):
        if path.exists() and not path.is_dir():
            raise UsageError(f"{what} {path}: exists and is not a directory")
    return data


def script_main(name: str, description: str, root: Path, simulate: Callable, store: Callable, plot: Callable,
                quick_help: str, argv: list | None = None) -> int:
    """Command line of a figure script: ``[--plot-only] [--quick] [--data FILE] [--out-dir DIR]``."""
    parser = argparse.ArgumentParser(prog=name, description=description)
    parser.add_argument("--plot-only", action="store_true", help="redraw from the stored data file without simulating")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--data", type=Path, help=f"data file (default analysis/data/{name}.npz)")
    parser.add_argument("--out-dir", type=Path, default=Path(root) / "figures", help="figure directory (default figures/)")
    args = parser.parse_args(argv)
    try:
        data = check_arguments(args, name, root)
        if not args.plot_only:
            arrays, meta = simulate(quick=args.quick)
            store(data, arrays, meta)
            print(f"{name}: simulated in {meta['simulate_seconds']:.1f} s -> {data}")
        for path in plot(data, args.out_dir):
            print(f"{name}: wrote {path}")
    except (UsageError, ConfigError) as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        return 2
    except FloatingPointError as err:  # as `arsim relax`: a diverged run is exit status 3
        print(f"{name}: error: {err}", file=sys.stderr)
        return 3
    return 0
