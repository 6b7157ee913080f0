"""Convergence time of activation relaxation against depth, with its closed form.

Millidge, Tschantz, Seth & Buckley (2020), "Activation Relaxation: A Local
Dynamical Approximation to Backpropagation in the Brain", arXiv:2009.05359,
argue that the relaxation reaches the backprop gradient in a few time
constants. How many depends on depth: the dynamics are linear and
lower-triangular in the layer index with every eigenvalue ``-1/tau``, so the
layer ``k`` steps below the output (``k = 1``: the top hidden layer) needs
``k`` "hops" of the error and converges like ``(t/tau)^(k-1) e^{-t/tau}``.

For a cold start (``initial_state = "zero"``, ``x^l(0) = 0``) this is exact:
the relative error of the layer ``k`` below the output is, independently of
the weights,

* in continuous time, the Poisson tail ``e^{-t} sum_{j<k} t^j / j! = Q(k, t)``
  (regularised upper incomplete gamma, ``t`` in units of tau);
* in forward-Euler steps of ``eta = dt/tau``, exactly the binomial tail
  ``P(Binomial(n, eta) < k)`` after ``n`` steps,

so its convergence time (relative error below 1e-3 for good) is where that
tail crosses 1e-3. The AR start (``initial_state = "forward"``, ``x^l(0) =
xbar^l``) has the same dynamics but a network-dependent initial error
``xbar^l - dL/dxbar^l``: roughly, it is faster than the cold start (whose
initial relative error is exactly 1) where that error is smaller than
``|dL/dxbar^l|``, and slower where it is larger, as in every layer of the nets
here (panel (a) states the measured range).

For nets of 2..8 weight layers (64 inputs, hidden width 64, 10 tanh
outputs, weights N(0, 1/64), summed squared error, ``dt/tau = 0.1``, 60 tau)
arsim's Brian2 model is relaxed from both starts; one compiled build per
depth serves both.

(a) Convergence time of every hidden layer against its distance ``k`` from
    the output: measured cold starts (all depths) on the binomial-tail
    prediction, the continuous-time Poisson tail, and the measured AR starts.
(b) Relative error of the bottom hidden layer of each net over time.

Two stages: ``simulate`` stores the error traces with provenance in
``analysis/data/convergence_vs_depth.npz`` (+ ``.json``); ``plot`` draws only
from that file. Run from the repository root::

    python analysis/convergence_vs_depth.py               # simulate and plot
    python analysis/convergence_vs_depth.py --plot-only   # redraw from the data file
    python analysis/convergence_vs_depth.py --quick       # two tiny nets (tests; *_quick files)

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
from matplotlib.lines import Line2D  # noqa: E402
from scipy.special import gammainccinv  # noqa: E402
from scipy.stats import binom  # noqa: E402

from arsim import metrics  # noqa: E402
from arsim.config import n_relax_steps, resolve  # noqa: E402
from arsim.brian.devices import get_runner  # noqa: E402
from arsim import figure_script  # noqa: E402
from arsim.figure_script import store_data  # noqa: E402
from arsim.io import provenance  # noqa: E402
from arsim.brian.network import topology_for  # noqa: E402
from arsim.relax import run_relaxation  # noqa: E402
from arsim.spec import Experiment  # noqa: E402

E = Experiment.from_config

NAME = "convergence_vs_depth"
ROOT = Path(__file__).resolve().parents[1]
DPI = 250

TAU = 10.0  # ms; only dt/tau matters
ETA = 0.1  # the paper's step size
DURATION_TAU = 60.0  # far beyond the slowest closed-form time (k = 7: 17.5 tau)

#: full run: weight layers L, layer sizes n_in, hidden width, n_out
FULL = {"depths": list(range(2, 9)), "n_in": 64, "width": 64, "n_out": 10}
#: --quick: two tiny nets; the 4-layer one is the build of the other scripts' quick modes
QUICK = {"depths": [3, 4], "n_in": 6, "width": 5, "n_out": 2}



def net_config(depth: int, shape: dict, initial_state: str) -> dict:
    """Resolved config of the ``depth``-layer net of ``shape`` from ``initial_state``.

    Weights ``N(0, 1/width)`` keep activities and gradients of order one at
    every depth, so that depth changes the dynamics and not the scale.
    """
    sizes = [shape["n_in"]] + [shape["width"]] * (depth - 1) + [shape["n_out"]]
    return resolve(
        {
            "name": f"{NAME}_L{depth}",
            "sizes": sizes,
            "activation": "tanh",
            "output_activation": "tanh",
            "loss": "mse",
            "init_std": float(1.0 / np.sqrt(shape["width"])),
            "seed": 0,
            "tau": TAU,
            "dt": ETA * TAU,
            "duration": DURATION_TAU * TAU,
            "initial_state": initial_state,
        },
        source=f"{NAME} (L = {depth})",
    )


def simulate(quick: bool = False) -> tuple[dict, dict]:
    """Relax every depth from both starts; measure each hidden layer's convergence.

    Returns
    -------
    arrays : dict
        ``depths``; ``t`` (tau); for each start ``s`` in ``zero``, ``forward``:
        ``err_s[depth, k-1, record]`` and ``tconv_s[depth, k-1]`` of the layer
        ``k`` below the output (NaN where the net has no such layer).
    meta : dict
        Provenance (the deepest net's config) and the per-depth times.
    """
    started = time.perf_counter()
    shape = QUICK if quick else FULL
    depths = shape["depths"]
    k_max = max(depths) - 1
    n_records = n_relax_steps(net_config(depths[0], shape, "zero")) + 1
    arrays = {"t": None}
    for start in ("zero", "forward"):
        arrays[f"err_{start}"] = np.full((len(depths), k_max, n_records), np.nan)
        arrays[f"tconv_{start}"] = np.full((len(depths), k_max), np.nan)
    runs, compile_seconds = [], 0.0
    for d, depth in enumerate(depths):
        configs = {start: net_config(depth, shape, start) for start in ("zero", "forward")}
        # the initial state is a run-time parameter: one build per depth
        runner = get_runner(topology_for(E(configs["zero"])))
        compile_seconds += runner.compile_seconds
        for start, config in configs.items():
            res = run_relaxation(config, runner=runner)
            arrays["t"] = res.t
            for layer in range(1, depth):
                k = depth - layer
                err = metrics.relative_error_trace(res.xtrace[layer], res.bp.dxbar[layer])
                arrays[f"err_{start}"][d, k - 1] = err
                arrays[f"tconv_{start}"][d, k - 1] = metrics.convergence_time(res.t, err, config["threshold"])
            runs.append(
                {
                    "depth": depth,
                    "sizes": config["sizes"],
                    "initial_state": start,
                    "t_conv_tau_by_k": [float(arrays[f"tconv_{start}"][d, k - 1]) for k in range(1, depth)],
                }
            )
    arrays.update(
        {
            "script": np.array(NAME),
            "quick": np.array(quick),
            "depths": np.array(depths),
            "n_in": np.array(shape["n_in"]),
            "width": np.array(shape["width"]),
            "n_out": np.array(shape["n_out"]),
            "activation": np.array(configs["zero"]["activation"]),
            "eta": np.array(ETA),
            "threshold": np.array(configs["zero"]["threshold"]),
        }
    )
    meta = {
        **provenance(E(configs["forward"])),
        "script": NAME,
        "quick": quick,
        "scan": {"depths": depths, "initial_state": ["zero", "forward"], "other keys": "as config, sizes per depth"},
        "runs": runs,
        "compile_seconds": compile_seconds,
        "simulate_seconds": time.perf_counter() - started,
    }
    return arrays, meta


def euler_convergence_steps(k, eta: float, threshold: float, n_max: int = 100_000) -> np.ndarray:
    """Closed form: first step ``n`` with ``P(Binomial(n, eta) < k) < threshold``.

    The tail decreases in ``n``, so the error stays below the threshold after
    that step: the cold-start convergence time is ``n * eta`` tau.
    """
    n = np.arange(n_max)
    return np.array([int(np.argmax(binom.cdf(kk - 1, n, eta) < threshold)) for kk in np.atleast_1d(k)])


def continuous_convergence_time(k, threshold: float) -> np.ndarray:
    """Closed form in continuous time: ``Q(k, t) = threshold`` solved for ``t`` (tau)."""
    return gammainccinv(np.asarray(k, dtype=float), threshold)


def store(data: Path, arrays: dict, meta: dict) -> None:
    """Write ``data`` (.npz) and its provenance (same stem, .json), atomically."""
    store_data(data, arrays, meta)

def load_data(data: Path) -> dict:
    """Read a stored data file of this script, checking that it is one."""
    return figure_script.load_data(data, NAME)

def plot(data: Path, out_dir: Path) -> list:
    """Draw the figure from the stored ``data`` file only; return the written paths."""
    d = load_data(data)
    depths, eta, thr = d["depths"], float(d["eta"]), float(d["threshold"])
    k_all = np.arange(1, int(depths.max()))
    k_fine = np.linspace(1, k_all[-1], 200)
    colors = plt.cm.plasma(np.linspace(0.0, 0.85, len(depths)))
    with plt.rc_context(STYLE):
        fig, (ax_t, ax_e) = plt.subplots(1, 2, figsize=(7.4, 3.4), constrained_layout=True)

        ax_t.plot(k_fine, continuous_convergence_time(k_fine, thr), color="0.55", ls="--", lw=1,
                  label=r"continuous time: $Q(k, t/\tau) = $" + f"{thr:g}")
        ax_t.plot(k_all, euler_convergence_steps(k_all, eta, thr) * eta, color="k", lw=1, marker="_", ms=10,
                  label=rf"Euler $\eta={eta:g}$: $P(\mathrm{{Bin}}(n,\eta) < k) = ${thr:g}")
        offsets = (np.arange(len(depths)) - (len(depths) - 1) / 2) * 0.07  # keep the depths apart
        for i, depth in enumerate(depths):
            k = np.arange(1, depth)
            ax_t.plot(k, d["tconv_zero"][i, : depth - 1], ls="none", marker="o", ms=6, mfc="none", mec="k", mew=0.8,
                      label="measured, cold start $x(0)=0$ (all nets)" if i == 0 else None)
            ax_t.plot(k + offsets[i], d["tconv_forward"][i, : depth - 1], ls="none", marker="s", ms=3.2,
                      color=colors[i])
        ax_t.plot([], [], ls="none", marker="s", ms=3.2, color=colors[len(depths) // 2],
                  label=r"measured, AR start $x(0)=\bar{x}$ (colour: depth, as in b)")
        # the AR start beats the cold start (whose initial relative error is 1) only where it starts closer
        r0 = d["err_forward"][:, :, 0]
        ax_t.text(
            0.98, 0.03,
            f"AR start: initial relative error {np.nanmin(r0):.2g}..{np.nanmax(r0):.2g}\n(cold start: 1)",
            transform=ax_t.transAxes, ha="right", va="bottom", fontsize=6.5, color="0.3",
        )
        ax_t.set_xlabel("layer's distance $k$ from the output")
        ax_t.set_ylabel(rf"convergence time $t_{{conv}}\,/\,\tau$ (rel. error < {thr:g})")
        ax_t.set_xticks(k_all)
        ax_t.set_title("(a) convergence time of every hidden layer", loc="left")
        ax_t.legend(loc="upper left")

        t = d["t"]
        for i, depth in enumerate(depths):
            k = depth - 1  # the bottom hidden layer
            ax_e.plot(t, d["err_zero"][i, k - 1], color=colors[i], lw=1.3)
            ax_e.plot(t, d["err_forward"][i, k - 1], color=colors[i], lw=1.1, ls="--")
        n = np.rint(t / eta).astype(int)
        for i, depth in enumerate(depths):
            ax_e.plot(t, binom.cdf(depth - 2, n, eta), color="k", lw=0.6, ls=":")
        ax_e.axhline(thr, color="0.4", lw=0.8, ls="-.")
        ax_e.set_yscale("log")
        ax_e.set_ylim(1e-16, None)  # the relaxation ends at round-off
        ax_e.set_xlim(0, t[-1])
        ax_e.set_xlabel(r"time $t\,/\,\tau$")
        ax_e.set_ylabel(r"relative error of layer 1 (bottom hidden)")
        ax_e.set_title("(b) bottom hidden layer of each net", loc="left")
        handles = [Line2D([], [], color=colors[i], lw=1.5, label=f"L = {depth} (k = {depth - 1})") for i, depth in enumerate(depths)]
        handles += [
            Line2D([], [], color="0.3", lw=1.3, label="cold start"),
            Line2D([], [], color="0.3", lw=1.1, ls="--", label="AR start"),
            Line2D([], [], color="k", lw=0.6, ls=":", label="binomial tail"),
            Line2D([], [], color="0.4", lw=0.8, ls="-.", label=f"threshold {thr:g}"),
        ]
        ax_e.legend(handles=handles, loc="upper right", ncol=2)
        sizes = f"{int(d['n_in'])}-{int(d['width'])}$\\times$(L$-$1)-{int(d['n_out'])}"
        fig.suptitle(
            f"AR convergence vs depth: {sizes} {d['activation']}, L = {depths.min()}..{depths.max()} weight layers,"
            f" $dt/\\tau = {eta:g}$ (Brian2){'  [quick]' if d['quick'] else ''}"
        )
        paths = figure_script.save_figure(fig, out_dir, data.stem, DPI)
        plt.close(fig)
    return paths


STYLE = {**figure_script.STYLE, "legend.fontsize": 6.5}




def main(argv: list | None = None) -> int:
    """Command line: ``[--plot-only] [--quick] [--data FILE] [--out-dir DIR]``."""
    return figure_script.script_main(
        NAME, __doc__.splitlines()[0], ROOT, simulate, store, plot, "two tiny nets, seconds (tests); default data file *_quick.npz", argv
    )


if __name__ == "__main__":
    sys.exit(main())
