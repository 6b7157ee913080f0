"""Forward-Euler accuracy and stability of activation relaxation against dt/tau.

Millidge, Tschantz, Seth & Buckley (2020), "Activation Relaxation: A Local
Dynamical Approximation to Backpropagation in the Brain", arXiv:2009.05359,
integrate the relaxation ``tau dx^l/dt = -x^l + W^lT (x^{l+1} * f'^{l+1})``
with forward-Euler steps of ``eta = dt/tau = 0.1``. This figure scans the step
size: every eigenvalue of the (lower-triangular) dynamics is ``-1/tau``, so
the Euler map multiplies errors by ``1 - eta`` per step and is stable for
``0 < eta < 2`` only.

The top hidden layer sees the fixed output clamp, so its error evolves
exactly as ``(1 - eta)^n`` times its initial error; after a fixed simulated
time ``T = n eta`` its relative error is ``|1 - eta|^(T/eta) r_0`` (drawn as
the closed-form curve, which interpolates between the whole numbers of steps
that are simulated). It vanishes at ``eta = 1`` (one step copies the exact
adjoint one layer down: backprop in L-1 steps) and grows without bound for
``eta > 2``. Deeper layers add factors polynomial in ``n``.

A 50-40-30-20-10 tanh net (weights N(0, 0.2^2), summed squared error, AR
start ``x(0) = xbar``) is relaxed by arsim's Brian2 model for the same
simulated time ``T = 20 tau`` at every ``eta = T/n`` (``n`` a whole number of
steps, ``eta`` from 0.05 to 2.5; ``allow_unstable`` beyond 2). ``eta`` is a
run-time parameter of the compiled network: one build serves the scan.

(a) Relative error of every hidden layer after ``T`` against ``dt/tau``,
    with the top layer's closed form and the stability boundary.
(b) Relative error of the bottom hidden layer over time for a few steps.

Two stages: ``simulate`` stores the errors with provenance in
``analysis/data/euler_stability.npz`` (+ ``.json``); ``plot`` draws only from
that file. Run from the repository root::

    python analysis/euler_stability.py               # simulate and plot
    python analysis/euler_stability.py --plot-only   # redraw from the data file
    python analysis/euler_stability.py --quick       # tiny net, 7 step sizes (tests; *_quick files)

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
from arsim.config import resolve  # noqa: E402
from arsim.brian.devices import get_runner  # noqa: E402
from arsim import figure_script  # noqa: E402
from arsim.figure_script import store_data  # noqa: E402
from arsim.io import provenance  # noqa: E402
from arsim.brian.network import topology_for  # noqa: E402
from arsim.relax import run_relaxation  # noqa: E402
from arsim.spec import Experiment  # noqa: E402

E = Experiment.from_config

NAME = "euler_stability"
ROOT = Path(__file__).resolve().parents[1]
DPI = 250
TAU = 10.0  # ms; only dt/tau matters

#: full scan: every n from 8 to 20 steps (eta 2.5 .. 1, where the map changes
#: character) and a geometric grid of n from 20 to 400 (eta 1 .. 0.05)
FULL = {
    "sizes": [50, 40, 30, 20, 10],
    "T_tau": 20.0,
    "steps": sorted({*range(8, 21), *np.rint(np.geomspace(20, 400, 14)).astype(int).tolist()}, reverse=True),
    "max_relax": 400,
}
#: --quick: the tiny net (and build) of the other scripts' quick modes. T is
#: short enough that every error stays far above round-off, so the closed
#: form can be checked to 1e-9 relative
QUICK = {"sizes": [6, 5, 5, 5, 2], "T_tau": 10.0, "steps": [100, 20, 10, 8, 6, 5, 4], "max_relax": 600}
#: trajectories drawn in panel (b), by step size
SHOWN_ETAS = (0.1, 1.0, 1.818, 2.0, 2.222, 2.5)
#: relative errors below this are float64 round-off of the Brian2 sums (shaded)
ROUNDOFF = 1e-15



def scan_config(shape: dict, n_steps: int) -> dict:
    """Resolved config relaxing for ``shape["T_tau"]`` in ``n_steps`` Euler steps."""
    eta = shape["T_tau"] / n_steps
    return resolve(
        {
            "name": f"{NAME}_n{n_steps}",
            "sizes": shape["sizes"],
            "activation": "tanh",
            "output_activation": "tanh",
            "loss": "mse",
            "init_std": 0.2,
            "seed": 0,
            "tau": TAU,
            "dt": eta * TAU,
            "duration": shape["T_tau"] * TAU,
            "initial_state": "forward",
            # forward Euler is unstable from eta = 2 on: that is what is studied
            "allow_unstable": eta >= 2.0,
        },
        source=f"{NAME} (n = {n_steps})",
    )


def simulate(quick: bool = False) -> tuple[dict, dict]:
    """Relax one net for the same simulated time at every step size.

    Returns
    -------
    arrays : dict
        ``eta``, ``n_steps``; ``err[eta, layer, step]`` (NaN after the last
        step), ``err_initial`` and ``err_final`` ``[eta, layer]`` of the
        hidden layers ``layers``.
    meta : dict
        Provenance (config of the smallest step) and the scan.
    """
    started = time.perf_counter()
    shape = QUICK if quick else FULL
    configs = [scan_config(shape, n) for n in shape["steps"]]
    runner = get_runner(topology_for(E(configs[0]), max_relax=shape["max_relax"]))
    hidden = list(range(1, len(shape["sizes"]) - 1))
    err = np.full((len(configs), len(hidden), max(shape["steps"]) + 1), np.nan)
    for i, config in enumerate(configs):
        res = run_relaxation(config, runner=runner)
        for j, layer in enumerate(hidden):
            trace = metrics.relative_error_trace(res.xtrace[layer], res.bp.dxbar[layer])
            err[i, j, : trace.size] = trace
    n_steps = np.array(shape["steps"])
    arrays = {
        "script": np.array(NAME),
        "quick": np.array(quick),
        "sizes": np.array(shape["sizes"]),
        "activation": np.array(configs[0]["activation"]),
        "T_tau": np.array(shape["T_tau"]),
        "n_steps": n_steps,
        "eta": shape["T_tau"] / n_steps,
        "layers": np.array(hidden),
        "err": err,
        "err_initial": err[:, :, 0],
        "err_final": err[np.arange(len(configs)), :, n_steps],
    }
    meta = {
        **provenance(E(configs[0])),
        "script": NAME,
        "quick": quick,
        "scan": {"T_tau": shape["T_tau"], "n_steps": shape["steps"], "eta": arrays["eta"].tolist(), "dt": "eta * tau"},
        "err_final_by_eta": {f"{e:.6g}": row.tolist() for e, row in zip(arrays["eta"], arrays["err_final"])},
        "compile_seconds": runner.compile_seconds,
        "simulate_seconds": time.perf_counter() - started,
    }
    return arrays, meta


def store(data: Path, arrays: dict, meta: dict) -> None:
    """Write ``data`` (.npz) and its provenance (same stem, .json), atomically."""
    store_data(data, arrays, meta)

def load_data(data: Path) -> dict:
    """Read a stored data file of this script, checking that it is one."""
    return figure_script.load_data(data, NAME)

def plot(data: Path, out_dir: Path) -> list:
    """Draw the figure from the stored ``data`` file only; return the written paths."""
    d = load_data(data)
    eta, T = d["eta"], float(d["T_tau"])
    n_layers = len(d["sizes"]) - 1
    colors = plt.cm.viridis(np.linspace(0.0, 0.8, len(d["layers"])))
    # exact zeros (eta = 1 reaches the adjoint exactly) cannot sit on a log axis:
    # they are drawn at the floor, inside the round-off band
    floor = 1e-17
    with plt.rc_context(STYLE):
        fig, (ax_s, ax_t) = plt.subplots(1, 2, figsize=(7.4, 4.0), constrained_layout=True)
        ax_s.axvspan(2.0, eta.max() * 1.04, color="#f4d6d6", lw=0, label=r"unstable: $|1-\eta| > 1$")
        ax_s.axvline(2.0, color="#b03030", lw=1, label=r"$\eta = 2$: stability boundary")
        ax_s.axvline(1.0, color="0.6", lw=0.8, ls=":", label=r"$\eta = 1$: exact after L$-$1 steps")
        top = len(d["layers"]) - 1
        fine = np.linspace(eta.min(), eta.max(), 2000)
        closed = np.abs(1 - fine) ** (T / fine) * d["err_initial"][0, top]
        ax_s.plot(fine, np.where(closed > 0, closed, np.nan), color="k", lw=0.9,
                  label=rf"closed form, top layer: $|1-\eta|^{{T/\eta}}\, r_0$")
        for j, l in enumerate(d["layers"]):
            ax_s.plot(eta, np.maximum(d["err_final"][:, j], floor), ls="none", marker="o", ms=3.3, color=colors[j],
                      label=f"layer {l} ({n_layers - l} below output)")
        for ax in (ax_s, ax_t):
            ax.axhspan(floor / 3, ROUNDOFF, color="0.9", lw=0, label="float64 round-off")
        ax_s.set_yscale("log")
        ax_s.set_xlim(0, eta.max() * 1.04)
        ax_s.set_xlabel(r"Euler step $\eta = dt\,/\,\tau$")
        ax_s.set_ylabel(rf"relative error of $x^l$ after $T = {T:g}\,\tau$")
        ax_s.set_title(rf"(a) error after a fixed time $T$ ($n = T/\eta$ steps)", loc="left")
        ax_s.set_ylim(floor / 3, 30 * np.nanmax(d["err_final"]))
        # below the axes: the data fill the panel from corner to corner
        ax_s.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)

        bottom = 0
        shown = [int(np.argmin(np.abs(eta - e))) for e in SHOWN_ETAS if np.min(np.abs(eta - e)) < 0.01]
        shades = plt.cm.coolwarm(np.linspace(0.0, 1.0, len(shown)))
        for c, i in enumerate(shown):
            n = int(d["n_steps"][i])
            t = eta[i] * np.arange(n + 1)
            ax_t.plot(t, np.maximum(d["err"][i, bottom, : n + 1], floor), color=shades[c], marker="." if n <= 40 else "", ms=2.5,
                      lw=1.0, label=rf"$\eta = {eta[i]:.3g}$ ({n} steps)")
        ax_t.set_yscale("log")
        ax_t.set_ylim(floor / 3, None)
        ax_t.set_xlim(0, T)
        ax_t.set_xlabel(r"time $t\,/\,\tau$")
        ax_t.set_ylabel(f"relative error of layer {d['layers'][bottom]} (bottom hidden)")
        ax_t.set_title("(b) bottom hidden layer over time", loc="left")
        ax_t.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
        sizes = "-".join(str(n) for n in d["sizes"])
        fig.suptitle(
            f"Forward-Euler relaxation vs step size: {sizes} {d['activation']}, AR start, Brian2"
            f"{'  [quick]' if d['quick'] else ''}"
        )
        paths = figure_script.save_figure(fig, out_dir, data.stem, DPI)
        plt.close(fig)
    return paths


STYLE = {**figure_script.STYLE, "legend.fontsize": 6.5}




def main(argv: list | None = None) -> int:
    """Command line: ``[--plot-only] [--quick] [--data FILE] [--out-dir DIR]``."""
    return figure_script.script_main(
        NAME, __doc__.splitlines()[0], ROOT, simulate, store, plot, "tiny net, 7 step sizes (tests); default data file *_quick.npz", argv
    )


if __name__ == "__main__":
    sys.exit(main())
