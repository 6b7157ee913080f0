"""Convergence time of activation relaxation across a parameter sweep, from a results store.

Millidge, Tschantz, Seth & Buckley (2020), "Activation Relaxation: A Local
Dynamical Approximation to Backpropagation in the Brain", arXiv:2009.05359,
relax every hidden layer with forward-Euler steps of ``eta = dt/tau = 0.1``.
The relaxation is linear and lower-triangular in the layer index, every
eigenvalue ``-1/tau``: the layer ``k`` steps below the output needs ``k``
hops of the error, so deeper nets take longer, and the Euler map multiplies
the error by ``1 - eta`` per step, so ``eta`` near 1 is fastest per step
(``eta = 1`` is backprop's sweep: the layer ``k`` below the output is exact
after ``k`` steps) and ``eta`` near the stability limit 2 is slow again.

This script draws, from an ``arsim sweep`` results store only (no
simulation):

``sweep_tconv_vs_<key>``
    the convergence time (relative error below the threshold for good, in
    units of tau) of every hidden layer, by its distance ``k`` from the
    output, against a swept key; one panel per value of the other swept
    key; mean over seeds with their range as error bars;
``sweep_tconv_heatmap``
    the convergence time of the slowest hidden layer (the whole backward
    phase) over two swept keys, (a) in tau and (b) in Euler steps (the
    computational cost); "n.r." marks cells where it was not reached.

The bundled store ``analysis/data/sweep_depth_eta.sqlite`` holds depth 2..8
x dt/tau 0.1..1.9 (64 inputs, hidden width 64, 10 tanh outputs, weights
N(0, 0.125^2), 1000 Euler steps, seeds 0..2); docs/sweeps.md gives the
command that made it. Run from the repository root::

    python analysis/sweep_figures.py analysis/data/sweep_depth_eta.sqlite --x depth --x eta --heatmap depth,eta

Figures go to ``figures/`` (``--out-dir`` to change) as PNG and SVG.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from arsim.config import ConfigError  # noqa: E402
from arsim.sweeps.store import Store  # noqa: E402
from arsim.sweeps import record_values, select  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DPI = 200
LABELS = {"eta": "dt / tau", "depth": "depth L (weight layers)", "width": "hidden width", "steps": "Euler steps", "tau": "tau [ms]", "dt": "dt [ms]"}


def load(store_path, where=()) -> list:
    """Per-layer rows of the ``ok`` points of a store: swept values, ``k``, ``t_conv_tau``."""
    with Store(store_path, create=False) as store:
        records = select(store.records(), list(where) + ["status=ok"])
    rows = []
    for record in records:
        values = record_values(record)
        n_layers = len(record["layers"])
        for layer in record["layers"]:
            if layer["role"] != "hidden":
                continue
            rows.append({**values, "k": n_layers - layer["layer"], "t_conv_tau": layer["t_conv_tau"], "swept": tuple(record["point"])})
    if not rows:
        raise ConfigError(f"{store_path}: no recorded points with hidden layers" + (f" where {' and '.join(where)}" if where else ""))
    return rows


def swept_keys(rows) -> list:
    """Keys that vary across the rows, in the order they were swept (seed last)."""
    keys = []
    for row in rows:
        keys += [k for k in row["swept"] if k not in keys]
    varying = [k for k in keys if len({_hashable(r.get(k)) for r in rows}) > 1]
    return [k for k in varying if k != "seed"] + (["seed"] if "seed" in varying else [])


def _hashable(value):
    return tuple(value) if isinstance(value, list) else value


def _check_key(rows, key) -> None:
    if key not in rows[0]:
        raise ConfigError(f"--x {key}: not a key of the stored points; swept: {', '.join(swept_keys(rows))}")


def _stats(values):
    """Mean, min and max over seeds; inf if any seed did not converge."""
    values = np.asarray(values, dtype=float)
    if not np.all(np.isfinite(values)):
        return math.inf, math.inf, math.inf
    return float(values.mean()), float(values.min()), float(values.max())


def _others(rows, keys) -> list:
    """Swept keys other than ``keys`` and the seed (averaged over)."""
    return [k for k in swept_keys(rows) if k not in keys and k != "seed"]


def plot_vs(rows, x: str, out_dir: Path) -> Path:
    """Convergence time per layer (by distance k from the output) against ``x``."""
    _check_key(rows, x)
    others = _others(rows, [x])
    if len(others) > 1:
        raise ConfigError(f"--x {x}: {', '.join(others)} vary too; fix all but one with --where")
    panel_key = others[0] if others else None
    panels = sorted({r[panel_key] for r in rows}) if panel_key else [None]
    ks = sorted({r["k"] for r in rows})
    cmap = plt.get_cmap("viridis")
    colors = {k: cmap(i / max(1, len(ks) - 1)) for i, k in enumerate(ks)}
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols + 1.4, 3.0 * nrows + 0.6), squeeze=False, sharey=True, layout="constrained")
    for ax, panel in zip(axes.ravel(), panels):
        subset = [r for r in rows if panel_key is None or r[panel_key] == panel]
        for k in ks:
            groups = defaultdict(list)
            for r in subset:
                if r["k"] == k:
                    groups[r[x]].append(r["t_conv_tau"])
            xs = sorted(groups)
            stats = [_stats(groups[v]) for v in xs]
            finite = [(v, s) for v, s in zip(xs, stats) if math.isfinite(s[0])]
            if finite:
                fx = [v for v, _ in finite]
                mean = np.array([s[0] for _, s in finite])
                err = np.array([[s[0] - s[1] for _, s in finite], [s[2] - s[0] for _, s in finite]])
                ax.errorbar(fx, mean, yerr=err, color=colors[k], marker="o", ms=3.5, lw=1.2, capsize=2, label=f"k = {k}")
            missed = [v for v, s in zip(xs, stats) if not math.isfinite(s[0])]
            if missed:
                ax.plot(missed, [np.nan] * len(missed))  # keeps the x range
                for v in missed:
                    ax.annotate("n.r.", (v, 1), xycoords=("data", "axes fraction"), ha="center", va="top", fontsize=7, color=colors[k])
        ax.set_yscale("log")
        ax.set_xlabel(LABELS.get(x, x))
        if panel_key is not None:
            ax.set_title(f"{LABELS.get(panel_key, panel_key)} = {panel:g}", fontsize=10)
        ax.grid(True, which="both", alpha=0.25)
    for ax in axes[:, 0]:
        ax.set_ylabel("convergence time [tau]")
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    legend = {}
    for ax in axes.ravel():
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    labels = sorted(legend, key=lambda text: int(text.split("=")[1]))
    fig.legend([legend[k] for k in labels], labels, title="layers below\nthe output", loc="outside right center", fontsize=8, title_fontsize=8)
    threshold_note = "relative error below the threshold for good; mean over seeds, bars: min..max"
    fig.suptitle(f"AR convergence time of each hidden layer vs {LABELS.get(x, x)}\n({threshold_note})", fontsize=10)
    return _save(fig, out_dir, f"sweep_tconv_vs_{x}")


def plot_heatmap(rows, x: str, y: str, out_dir: Path) -> Path:
    """Convergence time of the slowest hidden layer over two keys, in tau and in steps."""
    for key in (x, y):
        _check_key(rows, key)
    others = _others(rows, [x, y])
    if others:
        raise ConfigError(f"--heatmap {x},{y}: {', '.join(others)} vary too; fix them with --where")
    slowest = defaultdict(lambda: defaultdict(float))  # (x, y) -> seed -> max over layers
    eta = {}
    for r in rows:
        cell = (r[x], r[y])
        slowest[cell][r.get("seed")] = max(slowest[cell][r.get("seed")], r["t_conv_tau"])
        eta[cell] = r["eta"]
    xs = sorted({c[0] for c in slowest})
    ys = sorted({c[1] for c in slowest})
    tau_grid = np.full((len(ys), len(xs)), np.nan)
    for (cx, cy), seeds in slowest.items():
        tau_grid[ys.index(cy), xs.index(cx)] = _stats(list(seeds.values()))[0]
    eta_grid = np.array([[eta.get((cx, cy), np.nan) for cx in xs] for cy in ys])
    steps_grid = tau_grid / eta_grid
    fig, axes = plt.subplots(1, 2, figsize=(4.0 + 1.1 * len(xs), 1.4 + 0.42 * len(ys)), layout="constrained")
    for ax, grid, title, unit in zip(axes, (tau_grid, steps_grid), ("(a) in units of tau", "(b) in Euler steps"), ("tau", "steps")):
        finite = grid[np.isfinite(grid) & (grid > 0)]
        norm = LogNorm(vmin=finite.min(), vmax=finite.max()) if finite.size else None
        shown = np.where(np.isfinite(grid) & (grid > 0), grid, np.nan)
        image = ax.imshow(shown, origin="lower", aspect="auto", cmap="magma_r", norm=norm)
        for i in range(len(ys)):
            for j in range(len(xs)):
                value = grid[i, j]
                text = "n.r." if np.isinf(value) else ("" if np.isnan(value) else f"{value:.3g}")
                dark = norm is not None and np.isfinite(value) and value > 0 and norm(value) > 0.6
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if dark else "black")
        ax.set_xticks(range(len(xs)), [f"{v:g}" for v in xs])
        ax.set_yticks(range(len(ys)), [f"{v:g}" for v in ys])
        ax.set_xlabel(LABELS.get(x, x))
        ax.set_ylabel(LABELS.get(y, y))
        ax.set_title(title, fontsize=10)
        fig.colorbar(image, ax=ax, label=f"convergence time [{unit}]")
    fig.suptitle(
        "AR: time until the slowest hidden layer stays within the threshold of the BP gradient"
        " (mean over seeds; steps = time / (dt/tau))",
        fontsize=10,
    )
    return _save(fig, out_dir, "sweep_tconv_heatmap")


def _save(fig, out_dir: Path, name: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    for ext in ("png", "svg"):
        fig.savefig(out_dir / f"{name}.{ext}", dpi=DPI)
    plt.close(fig)
    return out_dir / f"{name}.png"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("store", help="results store written by arsim sweep")
    parser.add_argument("--x", action="append", default=[], metavar="KEY", help="draw convergence time per layer against KEY (repeatable; default: every swept key)")
    parser.add_argument("--heatmap", metavar="XKEY,YKEY", help="heatmap over two keys (default: the first two swept keys)")
    parser.add_argument("--where", action="append", default=[], metavar="KEY=VALUE", help="use only these points (as arsim results --where)")
    parser.add_argument("--out-dir", default=str(ROOT / "figures"), help="figure directory (default figures/)")
    args = parser.parse_args(argv)
    try:
        rows = load(args.store, args.where)
        keys = [k for k in swept_keys(rows) if k != "seed"]
        out_dir = Path(args.out_dir)
        for x in args.x or keys:
            print(plot_vs(rows, x, out_dir))
        heat = args.heatmap.split(",") if args.heatmap else keys[:2]
        if len(heat) == 2:
            print(plot_heatmap(rows, heat[0].strip(), heat[1].strip(), out_dir))
        elif args.heatmap:
            raise ConfigError(f"--heatmap {args.heatmap}: expected two keys, XKEY,YKEY")
    except ConfigError as err:
        print(f"sweep_figures: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
