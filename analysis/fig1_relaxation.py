"""Millidge et al. 2020, Fig. 1: every layer relaxes to the backprop gradient.

Reproduces the numerical check of Millidge, Tschantz, Seth & Buckley (2020),
"Activation Relaxation: A Local Dynamical Approximation to Backpropagation in
the Brain", arXiv:2009.05359, Fig. 1: a 784-300-100-100-10 tanh network
(``models/fig1.toml``) is swept forward once, then its hidden layers relax
under ``tau dx^l/dt = -x^l + W^lT (x^{l+1} * f'^{l+1})`` from ``x^l(0) =
xbar^l`` (the AR start) with the output clamped to ``e = dL/dxbar^L``,
integrated by arsim's Brian2 model (cpp_standalone, forward Euler at
``dt/tau = 0.1``).

(a) Relative error ``|x^l(t) - dL/dxbar^l| / |dL/dxbar^l|`` of every hidden
    layer against ``t / tau`` (log scale) for 30 tau, with the convergence
    threshold 1e-3 and the paper's 100 steps (10 tau) marked: the deeper a
    layer sits below the output, the later it converges, and at 10 tau the
    bottom layer has not yet reached 1e-3.
(b) Angle between AR's weight gradient computed from the state at time t,
    ``dW^{l-1}(t) = (x^l(t) * f'^l) xbar^{l-1}T``, and backprop's
    ``dL/dW^{l-1}``.

Two stages: ``simulate`` runs Brian2 and stores the traces with provenance in
``analysis/data/fig1_relaxation.npz`` (+ ``.json``); ``plot`` draws only from
that file, so the figure can be redrawn without re-simulating. Run from the
repository root::

    python analysis/fig1_relaxation.py               # simulate and plot
    python analysis/fig1_relaxation.py --plot-only   # redraw from the data file
    python analysis/fig1_relaxation.py --quick       # tiny net (tests; *_quick files)

Figures go to ``figures/<data file stem>.{png,svg}`` (``--out-dir`` to change).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from arsim import metrics  # noqa: E402
from arsim.config import load, n_relax_steps, resolve  # noqa: E402
from arsim.brian.devices import get_runner  # noqa: E402
from arsim import figure_script  # noqa: E402
from arsim.figure_script import store_data  # noqa: E402
from arsim.io import provenance  # noqa: E402
from arsim.brian.network import topology_for  # noqa: E402
from arsim.relax import run_relaxation  # noqa: E402
from arsim.spec import Experiment  # noqa: E402

E = Experiment.from_config

NAME = "fig1_relaxation"
ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "fig1.toml"
DPI = 250

#: metrics.angle_deg takes arccos of a float64 cosine, which cannot resolve
#: angles below sqrt(2 eps) rad ~ 1e-6 degrees: the plot stops above that
ANGLE_RESOLUTION_DEG = float(np.degrees(np.sqrt(2 * np.finfo(float).eps)))

SHOWN_TAU = 30.0  # long enough for the bottom layer to pass 1e-3 with margin
PAPER_TAU = 10.0  # the paper's 100 steps at dt/tau = 0.1

#: --quick: a tiny net with the same keys otherwise; its build (sizes, 600
#: steps) is the one the other analysis scripts' quick modes use as well
QUICK_KEYS = {"sizes": [6, 5, 5, 5, 2], "init_std": 0.5}
QUICK_MAX_RELAX = 600



def simulate(quick: bool = False) -> tuple[dict, dict]:
    """Relax the Fig.-1 network in Brian2 for 30 tau and measure it against BP.

    Parameters
    ----------
    quick : bool
        Use the tiny ``QUICK_KEYS`` network instead of 784-300-100-100-10.

    Returns
    -------
    arrays : dict
        Everything `plot` needs (see the keys in the code), for the .npz file.
    meta : dict
        Provenance and a per-layer summary, for the .json file.
    """
    started = time.perf_counter()
    config = load(MODEL)
    keys = {**config, "duration": SHOWN_TAU * config["tau"], **(QUICK_KEYS if quick else {})}
    config = resolve(keys, source=f"{MODEL.name} ({NAME})")
    steps = n_relax_steps(config)
    runner = get_runner(topology_for(E(config), max_relax=QUICK_MAX_RELAX if quick else steps))
    res = run_relaxation(config, runner=runner)

    n_layers = len(res.problem.W)
    hidden = list(range(1, n_layers))
    err = np.array([metrics.relative_error_trace(res.xtrace[l], res.bp.dxbar[l]) for l in hidden])
    angle = np.array([gradient_angle_trace(res.xtrace[l] * res.fp[l], res.xbar[l - 1], res.bp.dW[l - 1]) for l in hidden])
    t_conv = np.array([metrics.convergence_time(res.t, e, config["threshold"]) for e in err])
    at_paper = np.argmin(np.abs(res.t - PAPER_TAU))
    arrays = {
        "script": np.array(NAME),
        "quick": np.array(quick),
        "sizes": np.array(config["sizes"]),
        "activation": np.array(config["activation"]),
        "eta": np.array(config["dt"] / config["tau"]),
        "threshold": np.array(config["threshold"]),
        "paper_tau": np.array(PAPER_TAU),
        "t": res.t,
        "layers": np.array(hidden),
        "err": err,
        "angle_deg": angle,
        "t_conv": t_conv,
        "err_at_paper": err[:, at_paper],
    }
    summary = [
        {
            "layer": l,
            "units": config["sizes"][l],
            "below_output": n_layers - l,
            "t_conv_tau": float(t_conv[i]),
            "err_at_10tau": float(err[i, at_paper]),
            "final_err": float(err[i, -1]),
            "final_dW_angle_deg": float(angle[i, -1]),
        }
        for i, l in enumerate(hidden)
    ]
    meta = {
        **provenance(E(config)),
        "script": NAME,
        "quick": quick,
        "layers": summary,
        "compile_seconds": res.compile_seconds,
        "simulate_seconds": time.perf_counter() - started,
    }
    return arrays, meta


def gradient_angle_trace(u: np.ndarray, xbar_below: np.ndarray, g_star: np.ndarray) -> np.ndarray:
    """Angle (degrees) between ``dW(t) = outer(u(t), xbar_below)`` and ``g_star`` for every row ``u(t)``.

    ``dW(t)`` is the weight update a synapse would read off at time t. The
    cosine of SPEC section 4 (as `arsim.metrics.cosine`: flattened, clipped
    to [-1, 1]) is evaluated with the Frobenius identities
    ``<u b^T, G> = u^T G b`` and ``|u b^T| = |u| |b|``, which avoids forming
    one 784 x 300 matrix per record.
    """
    norms = np.linalg.norm(u, axis=1) * np.linalg.norm(xbar_below) * np.linalg.norm(g_star)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.clip(u @ (g_star @ xbar_below) / norms, -1.0, 1.0)
    return np.degrees(np.arccos(cos))


def store(data: Path, arrays: dict, meta: dict) -> None:
    """Write ``data`` (.npz) and its provenance (same stem, .json), atomically."""
    store_data(data, arrays, meta)

def load_data(data: Path) -> dict:
    """Read a stored data file of this script, checking that it is one."""
    return figure_script.load_data(data, NAME)

def plot(data: Path, out_dir: Path) -> list:
    """Draw the figure from the stored ``data`` file only; return the written paths."""
    d = load_data(data)
    sizes = "-".join(str(n) for n in d["sizes"])
    n_layers = len(d["sizes"]) - 1
    colors = plt.cm.viridis(np.linspace(0.0, 0.8, len(d["layers"])))
    with plt.rc_context(STYLE):
        fig, (ax_x, ax_w) = plt.subplots(1, 2, figsize=(7.4, 3.3), constrained_layout=True)
        for i, l in enumerate(d["layers"]):
            label = f"layer {l} ({d['sizes'][l]} units, {n_layers - l} below output)"
            ax_x.plot(d["t"], d["err"][i], color=colors[i], label=label)
            if np.isfinite(d["t_conv"][i]):
                ax_x.plot(d["t_conv"][i], d["threshold"], "o", color=colors[i], ms=4, zorder=3)
            ax_w.plot(d["t"], d["angle_deg"][i], color=colors[i], label=f"$\\Delta W^{{{l - 1}}}$ (from $x^{{{l}}}$)")
        for ax in (ax_x, ax_w):
            ax.set_yscale("log")
            ax.set_xlim(0, d["t"][-1])
            ax.set_xlabel(r"time $t\,/\,\tau$")
            ax.axvline(d["paper_tau"], color="0.4", ls=":", lw=1, label=f"paper: {d['paper_tau'] / d['eta']:.0f} steps")
        ax_x.axhline(d["threshold"], color="0.4", ls="--", lw=1, label=f"threshold {d['threshold']:g} (dots: $t_{{conv}}$)")
        ax_w.set_ylim(bottom=3 * ANGLE_RESOLUTION_DEG)
        ax_w.text(
            0.98, 0.98, f"float64 arccos resolves angles > {ANGLE_RESOLUTION_DEG:.0e}°", transform=ax_w.transAxes,
            ha="right", va="top", fontsize=6.5, color="0.4",
        )
        ax_x.set_ylabel(r"relative error $|x^l(t) - \partial L/\partial \bar{x}^l|\,/\,|\partial L/\partial \bar{x}^l|$")
        ax_w.set_ylabel(r"angle to backprop $dL/dW^{l-1}$ (degrees)")
        ax_x.set_title("(a) relaxed state vs backprop adjoint", loc="left")
        ax_w.set_title(r"(b) AR weight gradient from $x(t)$ vs backprop", loc="left")
        ax_x.set_ylim(bottom=min(1e-16, np.nanmin(d["err"]) / 10))  # room for the legend below the lines
        ax_x.legend(loc="lower left")
        ax_w.legend(loc="lower left")
        fig.suptitle(
            f"Activation relaxation, {sizes} {d['activation']}, $dt/\\tau = {float(d['eta']):g}$"
            f" (Brian2 cpp_standalone){'  [quick]' if d['quick'] else ''}"
        )
        paths = figure_script.save_figure(fig, out_dir, data.stem, DPI)
        plt.close(fig)
    return paths


STYLE = {**figure_script.STYLE, "legend.fontsize": 7}




def main(argv: list | None = None) -> int:
    """Command line: ``[--plot-only] [--quick] [--data FILE] [--out-dir DIR]``."""
    return figure_script.script_main(
        NAME, __doc__.splitlines()[0], ROOT, simulate, store, plot, "tiny network, seconds (tests); default data file *_quick.npz", argv
    )


if __name__ == "__main__":
    sys.exit(main())
