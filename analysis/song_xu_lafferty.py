"""Feedback alignment in a wide two-layer net: exponential convergence, and alignment only with decay.

Song, Xu & Lafferty (2021), "Convergence and Alignment of Gradient Descent
with Random Backpropagation Weights", NeurIPS 2021, arXiv 2106.06044, train
``f(x) = p^-1/2 sum_r beta_r psi(w_r^T x)`` by feedback alignment: ``W``
learns with a fixed random vector ``b`` in place of ``beta``, and ``beta``
by its true gradient plus a decay ``lambda beta``. Their claims: with
enough width the training loss goes to zero exponentially fast, and
``cos(beta, b)`` becomes large only with ``lambda > 0`` (without it the
random ``beta(0)`` is never forgotten, so the alignment falls like
``p^-1/2``). The study is `arsim.studies.song_xu_lafferty` (numpy float64);
SPEC.md 3.6 and research/fa_family.md section 3 give the mathematics, the
authors' code and their numbers (fa_family.md 3.4, drawn as open markers).

The authors' setting: n = 50 samples ``x ~ N(0, I_150)``; linear psi with
``y = X theta`` (step ``eta_mse = 1e-3`` on their mean squared error, which
is ``eta = 4e-5`` on arsim's ``1/2 sum`` loss; their ``lambda_mse`` is ``25
lambda_mse`` here), or ReLU with a random two-layer teacher (``eta_mse =
1e-2``); widths 200 .. 12,800; at least ``floor(5000 sqrt(p) / 14)`` steps,
then on until the MSE changes by less than 1e-3 between checks every 1000
steps; 50 runs per cell.

Protocol here (reduced for 2 cores: 9.5 minutes wall with ``--jobs 2`` on
the shared development machine at load ~8, 6.3 CPU-minutes; the linear part
alone ~4.5 minutes):

linear, alignment
    the authors' protocol exactly (widths 200 .. 12,800, their step, their
    lambda grid 0, 0.2, 0.3, 0.5, their stopping rule) but **5 seeds**
    instead of 50 runs. This is affordable because linear FA closes on
    O(n) numbers per step (the exact reduction of the study module): a
    p = 12,800 run of 120,000 steps takes a few seconds.
linear, loss curves
    lambda = 0, the same widths, a fixed 12,000 steps (the authors' loss
    figure: one width, 5000 steps), 5 seeds; BP at p = 800 for comparison.
ReLU, alignment
    the dense solver (every step is p-wide), so **widths 200 .. 1600 only, 3
    seeds** and lambda_mse 0, 0.05, 0.2, with the authors' step and stopping
    rule.

Panels: (a) loss ``L(t) / L(0)`` against the step on a log axis (geometric
mean over seeds, band: min..max) for growing width: straight lines are
exponential decay; dotted: the slope of the infinite-width rate. (b) The
fitted decay rate of the log-linear part (``L / L(0)`` from 1e-6 to 1e-13)
against width, with the infinite-width rate ``2 eta lambda_min(X X^T)``
(FA; BP twice that: at p -> inf BP's W update adds a second copy of the
kernel ``X X^T``, FA's adds ``(b . beta / p) X X^T -> 0``). (c) Final
``cos(beta, b)`` against width for each lambda, linear; (d) the same for
ReLU. Error bars: 1 s.d. over seeds; open markers: the authors' means and
s.d. over 50 runs.

What it shows (measured, 2026-12-01): the loss decays exponentially at
every width from 200 to 12,800, at a rate that does not depend on the width
and equals the infinite-width rate (fitted / predicted 0.94..1.08 per width,
mean over seeds; BP at p = 800 decays twice as fast, 1.005). Without decay
the alignment falls with width, 0.26 (p = 200) to 0.006 (12,800); with
decay it stays large (lambda_mse = 0.5: 0.92 to 0.87), every linear cell
within one of the authors' s.d. of their mean. ReLU agrees as well except
p = 800 (0.62 and 0.81 against 0.69 and 0.86): its 3 seeds are a low
draw (a separate check, not in the store: seeds 3..8 give 0.69 +- 0.02 at
lambda_mse = 0.05).

Everything runs through the sweep machinery (`arsim.sweeps.plan_sweep`,
`run_sweep`: the ``arsim sweep --command sxl`` code) into the results store
``analysis/data/song_xu_lafferty.sqlite``, one row per point, resumable (a
rerun skips the stored points); the figure is drawn from the store only.
Run from the repository root::

    python analysis/song_xu_lafferty.py               # simulate what is missing, then plot
    python analysis/song_xu_lafferty.py --plot-only   # redraw from the store
    python analysis/song_xu_lafferty.py --quick       # 2 widths, 2 seeds (seconds; *_quick files)
    python analysis/song_xu_lafferty.py --quick --plot-only

Figures go to ``figures/song_xu_lafferty.{png,svg}`` (``--out-dir`` to change).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

# one BLAS thread per worker process: the sweep runs one process per core
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import matplotlib  # noqa: E402
import matplotlib.ticker  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from arsim import figure_script  # noqa: E402
from arsim.config import ConfigError  # noqa: E402
from arsim.figure_script import UsageError  # noqa: E402
from arsim.sweeps.store import Store  # noqa: E402
from arsim.studies.song_xu_lafferty import AUTHORS, authors_min_steps, from_mse  # noqa: E402
from arsim.sweeps import make_engine, plan_sweep, run_sweep  # noqa: E402

NAME = "song_xu_lafferty"
ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "song_xu_lafferty.toml"
N = 50  # samples (the model's sxl.n)
DPI = 250

#: the authors' alignment table (fa_family.md 3.4): mean, s.d. over 50 runs, by (psi, lambda_mse) and width
AUTHORS_TABLE = {
    ("linear", 0.0): {200: (0.206, 0.067), 800: (0.059, 0.032), 3200: (0.012, 0.018), 12800: (0.004, 0.009)},
    ("linear", 0.2): {200: (0.790, 0.026), 800: (0.757, 0.031), 3200: (0.713, 0.039), 12800: (0.551, 0.132)},
    ("linear", 0.5): {200: (0.920, 0.014), 800: (0.913, 0.008), 3200: (0.895, 0.011), 12800: (0.866, 0.017)},
    ("relu", 0.0): {200: (0.220, 0.051), 800: (0.073, 0.027), 3200: (0.022, 0.019), 12800: (0.006, 0.008)},
    ("relu", 0.05): {200: (0.682, 0.047), 800: (0.687, 0.034), 3200: (0.719, 0.026), 12800: (0.721, 0.028)},
    ("relu", 0.2): {200: (0.858, 0.061), 800: (0.860, 0.044), 3200: (0.846, 0.040), 12800: (0.846, 0.042)},
}


def protocol(quick: bool) -> dict:
    """The sweeps of the figure: name -> (plan_sweep keyword arguments, store arrays?)."""
    widths = (200, 800) if quick else (200, 400, 800, 1600, 3200, 6400, 12800)
    relu_widths = (200, 400) if quick else (200, 400, 800, 1600)
    seeds = 2 if quick else 5
    lambdas = (0.0, 0.5) if quick else AUTHORS["linear"]["lambdas_mse"]
    relu_lambdas = (0.0, 0.2) if quick else (0.0, 0.05, 0.2)
    loss_steps = 9000 if quick else 12000
    linear_eta = from_mse(AUTHORS["linear"]["eta_mse"], 0.0, N)[0]
    relu_eta = from_mse(AUTHORS["relu"]["eta_mse"], 0.0, N)[0]

    def zip_steps(ws):
        return [f"width={','.join(map(str, ws))}", f"sxl.steps={','.join(str(authors_min_steps(p)) for p in ws)}"]

    def lambda_grid(values):
        return f"sxl.lambda={','.join(repr(from_mse(1.0, lam, N)[1]) for lam in values)}"

    return {
        "loss": (dict(grid=[f"width={','.join(map(str, widths))}"], repeat=seeds,
                      sets=[f"sxl.eta={linear_eta!r}", "sxl.lambda=0.0", f"sxl.steps={loss_steps}", "sxl.mse_tol=0.0", "sxl.record_every=50"]),
                 True),
        "loss_bp": (dict(grid=["width=800" if not quick else "width=200"], repeat=seeds,
                         sets=[f"sxl.eta={linear_eta!r}", "sxl.lambda=0.0", f"sxl.steps={loss_steps}", "sxl.mse_tol=0.0",
                               "sxl.record_every=50", "sxl.mode=bp"]),
                    True),
        "linear": (dict(grid=[lambda_grid(lambdas)], zipped=zip_steps(widths), repeat=seeds,
                        sets=[f"sxl.eta={linear_eta!r}", "sxl.mse_tol=1e-3", "sxl.record_every=1000"]),
                   False),
        "relu": (dict(grid=[lambda_grid(relu_lambdas)], zipped=zip_steps(relu_widths), repeat=3 if not quick else 2,
                      sets=["activation=relu", "sxl.data=teacher", f"sxl.eta={relu_eta!r}", "sxl.mse_tol=1e-3", "sxl.record_every=1000"]),
                 False),
    }


def simulate(store_path: Path, quick: bool, jobs: int) -> None:
    """Run the protocol's points that the store does not hold yet (resumable)."""
    plans = {name: (plan_sweep(MODEL, command="sxl", **kwargs), arrays) for name, (kwargs, arrays) in protocol(quick).items()}
    engine = make_engine("local", jobs)
    try:
        with Store(store_path) as store:
            for name, (plan, arrays) in plans.items():
                started = time.perf_counter()
                report = run_sweep(plan, store, engine, want_arrays=arrays, progress=sys.stderr.isatty(),
                                   argv=f"analysis/{NAME}.py {name}{' --quick' if quick else ''}")
                print(f"{NAME}: {name}: {report.points_run} run, {report.points_skipped} stored, {report.points_failed} failed"
                      f" ({time.perf_counter() - started:.1f} s)")
                if report.points_failed:
                    raise UsageError(f"{report.points_failed} points of {name} failed: {report.failures[:1]}")
    finally:
        engine.close()


# ---------------------------------------------------------------------------
# reading the store


def _records(store_path: Path, quick: bool) -> dict:
    """The stored points of each sweep of the protocol (matched by their resolved configs)."""
    with Store(store_path, create=False) as store:
        stored = {r["hash"]: r for r in store.records() if r["command"] == "sxl" and r["status"] == "ok"}
        out = {}
        for name, (kwargs, arrays) in protocol(quick).items():
            plan = plan_sweep(MODEL, command="sxl", **kwargs)
            missing = [p.values for p in plan.points if p.hash not in stored]
            if missing:
                raise UsageError(f"{store_path}: {len(missing)} points of '{name}' are not stored (e.g. {missing[0]});"
                                 " run without --plot-only first")
            out[name] = [stored[p.hash] for p in plan.points]
            if arrays:
                for record in out[name]:
                    record["arrays_loaded"] = store.load_arrays(record)
    return out


def _by(records, key) -> dict:
    groups = defaultdict(list)
    for record in records:
        groups[key(record)].append(record)
    return dict(sorted(groups.items()))


def _width(record) -> int:
    return record["config"]["sizes"][1]


def _lambda_mse(record) -> float:
    return round(2.0 * record["config"]["sxl.lambda"] / record["config"]["sxl.n"], 6)


# ---------------------------------------------------------------------------
# the figure

STYLE = {**figure_script.STYLE, "legend.fontsize": 6.5}


def _loss_panel(ax, loss_records, bp_records):
    widths = _by(loss_records, _width)
    colors = plt.cm.viridis(np.linspace(0.0, 0.88, len(widths)))
    for color, (p, group) in zip(colors, widths.items()):
        step = group[0]["arrays_loaded"]["step"]
        curves = np.array([r["arrays_loaded"]["loss"] / r["arrays_loaded"]["loss"][0] for r in group])
        ax.fill_between(step, curves.min(axis=0), curves.max(axis=0), color=color, alpha=0.18, lw=0)
        ax.plot(step, np.exp(np.log(curves).mean(axis=0)), color=color, lw=1.1, label=f"FA, p = {p}")
    for p, group in _by(bp_records, _width).items():
        step = group[0]["arrays_loaded"]["step"]
        curves = np.array([r["arrays_loaded"]["loss"] / r["arrays_loaded"]["loss"][0] for r in group])
        ax.plot(step, np.exp(np.log(curves).mean(axis=0)), color="#c0392b", lw=1.1, ls="--", label=f"BP, p = {p}")
    # the infinite-width rate (mean over seeds; it depends on X only), drawn from the widest curve where
    # its log-linear window starts (L / L(0) = 1e-6)
    fa_rate = np.mean([r["summary"]["limit_decay_rate"] for r in loss_records])
    widest = widths[max(widths)]
    step = widest[0]["arrays_loaded"]["step"]
    mean = np.exp(np.mean([np.log(r["arrays_loaded"]["loss"] / r["arrays_loaded"]["loss"][0]) for r in widest], axis=0))
    start = int(np.argmax(mean <= 1e-6))
    t = step[start:]
    ax.plot(t, 0.1 * mean[start] * np.exp(-fa_rate * (t - t[0])), color="k", ls=":", lw=1.1,
            label=r"slope of FA at $p\to\infty$: $e^{-2\eta\lambda_{min}(XX^T)\,t}$")
    ax.set_yscale("log")
    ax.set_ylim(1e-22, 3)
    ax.set_xlim(0, step[-1])
    ax.set_xlabel("gradient step t")
    ax.set_ylabel(r"training loss $L(t)\,/\,L(0)$")
    ax.set_title(r"(a) loss, linear $\psi$, $\lambda = 0$ (band: min..max of seeds)", loc="left")
    ax.legend(loc="lower left", ncol=2)


def _rate_panel(ax, loss_records, bp_records):
    factors = {"FA": "", "BP": r"2 \cdot "}
    for records, label, color, marker in ((loss_records, "FA", "#1f77b4", "o"), (bp_records, "BP", "#c0392b", "s")):
        groups = _by(records, _width)
        ps = list(groups)
        rates = [np.array([r["summary"]["loss_decay_rate"] for r in groups[p]]) * 1e3 for p in ps]
        limits = [np.array([r["summary"]["limit_decay_rate"] for r in groups[p]]) * 1e3 for p in ps]
        ax.errorbar(ps, [v.mean() for v in rates], yerr=[v.std() for v in rates], color=color, marker=marker, ms=3.5,
                    capsize=2, lw=1.0, label=f"{label}: fitted rate of the log-linear part")
        ax.errorbar(ps, [v.mean() for v in limits], yerr=[v.std() for v in limits], color=color, marker=marker, ms=6,
                    mfc="none", ls="none" if len(ps) == 1 else ":", capsize=2, lw=0.9,
                    label=fr"{label}: $p\to\infty$ rate ${factors[label]}2\eta\lambda_{{min}}(XX^T)$")
    _width_axis(ax, [_width(r) for r in loss_records])
    ax.set_ylabel(r"loss decay rate [$10^{-3}$ / step]")
    ax.set_ylim(0, None)
    ax.set_title(r"(b) exponential rate, $L/L(0)$ from $10^{-6}$ to $10^{-13}$", loc="left")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 0.02))


def _width_axis(ax, widths):
    ax.set_xscale("log")
    ticks = sorted(set(widths))
    ax.set_xticks(ticks, [str(p) for p in ticks])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("hidden width p")


def _alignment_panel(ax, records, psi, title, legend_anchor=(0.0, 0.6)):
    groups = _by(records, _lambda_mse)
    colors = plt.cm.plasma(np.linspace(0.0, 0.8, len(groups)))
    for color, (lam, group) in zip(colors, groups.items()):
        by_width = _by(group, _width)
        ps = list(by_width)
        values = [np.array([r["summary"]["alignment"] for r in by_width[p]]) for p in ps]
        ax.errorbar(ps, [v.mean() for v in values], yerr=[v.std() for v in values], color=color, marker="o", ms=3.5,
                    capsize=2, lw=1.2, label=fr"$\lambda_{{mse}} = {lam:g}$ ($\lambda = {lam * N / 2:g}$), {len(by_width[ps[0]])} seeds")
        reference = AUTHORS_TABLE.get((psi, lam))
        if reference:
            rp = sorted(reference)
            ax.errorbar([p * 1.08 for p in rp], [reference[p][0] for p in rp], yerr=[reference[p][1] for p in rp], color=color,
                        marker="D", mfc="none", ms=4.5, ls="none", capsize=1.5, lw=0.8)
    ax.errorbar([], [], color="0.4", marker="D", mfc="none", ls="none", label="authors, 50 runs (fa_family.md 3.4)")
    ax.axhline(0, color="0.7", lw=0.6)
    _width_axis(ax, [_width(r) for r in records] + [p for (name, _), ref in AUTHORS_TABLE.items() if name == psi for p in ref])
    ax.set_ylim(-0.05, 1.0)
    ax.set_ylabel(r"final alignment $\cos(\beta, b)$")
    ax.set_title(title, loc="left")
    ax.legend(loc="center left", bbox_to_anchor=legend_anchor)


def plot(store_path: Path, out_dir: Path, quick: bool) -> list:
    """Draw the figure from the store only; return the written paths."""
    records = _records(store_path, quick)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(2, 2, figsize=(9.2, 7.2), constrained_layout=True)
        _loss_panel(axes[0, 0], records["loss"], records["loss_bp"])
        _rate_panel(axes[0, 1], records["loss"], records["loss_bp"])
        _alignment_panel(axes[1, 0], records["linear"], "linear",
                         r"(c) alignment, linear $\psi$, $y = X\theta$ (authors' steps and stopping rule)")
        _alignment_panel(axes[1, 1], records["relu"], "relu", r"(d) alignment, ReLU, teacher data (widths $\leq$ 1600)",
                         legend_anchor=(0.3, 0.4))
        fig.suptitle(
            "Feedback alignment in a two-layer net (Song, Xu & Lafferty 2021): n = 50, d = 150, W, beta, b ~ N(0, 1); "
            f"numpy float64{'  [quick]' if quick else ''}"
        )
        paths = figure_script.save_figure(fig, out_dir, NAME + ("_quick" if quick else ""), DPI)
        plt.close(fig)
    return paths


def summary_table(store_path: Path, quick: bool) -> str:
    """The numbers of the figure as text (mean +- s.d. over seeds)."""
    records = _records(store_path, quick)
    lines = ["decay rate [1e-3/step] (fitted | p->inf), lambda = 0:"]
    for name in ("loss", "loss_bp"):
        for p, group in _by(records[name], _width).items():
            rate = np.array([r["summary"]["loss_decay_rate"] for r in group]) * 1e3
            limit = np.array([r["summary"]["limit_decay_rate"] for r in group]) * 1e3
            rms = np.array([r["summary"]["decay_fit_rms"] for r in group])
            lines.append(f"  {'FA' if name == 'loss' else 'BP'} p={p:6d}: {rate.mean():.3f} +- {rate.std():.3f} | {limit.mean():.3f}"
                         f"  (fit rms of ln L {rms.mean():.3f})")
    for name in ("linear", "relu"):
        lines.append(f"alignment cos(beta, b), {name} (mean +- s.d.; authors):")
        for lam, group in _by(records[name], _lambda_mse).items():
            cells = []
            for p, cell in _by(group, _width).items():
                values = np.array([r["summary"]["alignment"] for r in cell])
                ref = AUTHORS_TABLE.get((name, lam), {}).get(p)
                cells.append(f"p={p}: {values.mean():.3f}+-{values.std():.3f}" + (f" ({ref[0]:.3f}+-{ref[1]:.3f})" if ref else ""))
            lines.append(f"  lambda_mse={lam:g}: " + "; ".join(cells))
    return "\n".join(lines)


def main(argv: list | None = None) -> int:
    """Command line: ``[--plot-only] [--quick] [--store FILE] [--out-dir DIR] [--jobs N]``."""
    parser = argparse.ArgumentParser(prog=NAME, description=__doc__.splitlines()[0])
    parser.add_argument("--plot-only", action="store_true", help="redraw from the store without simulating")
    parser.add_argument("--quick", action="store_true", help="2 widths, 2 seeds, short loss runs (seconds; *_quick store and figure)")
    parser.add_argument("--store", type=Path, help=f"results store (default analysis/data/{NAME}.sqlite)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "figures", help="figure directory (default figures/)")
    parser.add_argument("--jobs", type=int, default=None, help="worker processes (default: the number of cores)")
    args = parser.parse_args(argv)
    store_path = args.store or ROOT / "analysis" / "data" / (NAME + ("_quick" if args.quick else "") + ".sqlite")
    try:
        if store_path.suffix != ".sqlite":
            raise UsageError(f"--store {store_path}: expected a file name ending in .sqlite")
        if args.plot_only and not store_path.is_file():
            raise UsageError(f"--store {store_path}: no such store; run without --plot-only first to simulate")
        if not args.plot_only:
            started = time.perf_counter()
            store_path.parent.mkdir(parents=True, exist_ok=True)
            simulate(store_path, args.quick, args.jobs)
            print(f"{NAME}: simulated in {time.perf_counter() - started:.1f} s -> {store_path}")
        args.out_dir.mkdir(parents=True, exist_ok=True)
        for path in plot(store_path, args.out_dir, args.quick):
            print(f"{NAME}: wrote {path}")
        print(summary_table(store_path, args.quick))
    except (UsageError, ConfigError) as err:
        print(f"{NAME}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
