"""Convergence time of AR against its dynamical peers: predictive coding (fixed, strict) and dynamic inversion.

AR's claim (Millidge et al. 2020, arXiv:2009.05359) is one fast parallel
backward phase on one unit type. Its continuous-time competitors relax too;
this script measures, on the nets of ``convergence_vs_depth.py`` (2..8
weight layers, 64 inputs, hidden width 64, 10 tanh outputs, weights
N(0, 1/64), summed squared error, ``dt/tau = 0.1``, 60 tau), how long each
hidden layer's learning signal takes to reach relative error 1e-3:

* ``ar``: AR from the forward start ``x(0) = xbar`` (SPEC 2), against BP;
* ``pc_fixed``: predictive coding under the fixed-prediction assumption
  (SPEC 3.7), whose error starts at 0: against BP, on the closed form
  ``P(Bin(n, eta) <= k - 1) = 1e-3`` for the layer ``k`` below the output;
* ``pc_strict``: strict predictive coding (predictions and ``f'`` from the
  current state, equal variances): its fixed point is not BP, so it is
  timed against its own fixed point (the rule's numpy loop run 50 times
  longer) and its gap to BP is reported;
* ``dinv``: dynamic inversion (SPEC 3.10; ``B = -W^T``, ``alpha = 0.01``,
  error units and controllers from 0): timed against its own fixed point,
  the damped pseudo-inverse cascade ``x^l* = B (W B - alpha I)^-1 delta^{l+1}``
  (closed form), with its gap and angle to BP. Its slowest mode decays like
  ``(alpha + s_min^2) / (1 + alpha)`` per tau, ``s_min`` the smallest singular
  value of a square random layer, so it may not converge in 60 tau at all.

(a) Convergence time of every hidden layer against its distance ``k`` from
    the output, per rule (strict PC: to its own fixed point).
(b) Relative error against BP of the bottom hidden layer over time, deepest
    and shallowest nets: strict PC stops at its gap.

Two stages: ``simulate`` stores the traces with provenance in
``analysis/data/convergence_peers.npz`` (+ ``.json``); ``plot`` draws only
from that file. Run from the repository root::

    python analysis/convergence_peers.py               # simulate and plot
    python analysis/convergence_peers.py --plot-only   # redraw from the data file
    python analysis/convergence_peers.py --quick       # two tiny nets (tests; *_quick files)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.stats import binom  # noqa: E402

from arsim import figure_script, metrics  # noqa: E402
from arsim.brian.devices import get_runner  # noqa: E402
from arsim.brian.network import topology_for  # noqa: E402
from arsim.config import n_relax_steps, resolve  # noqa: E402
from arsim.io import provenance  # noqa: E402
from arsim.relax import run_relaxation  # noqa: E402
from arsim.rules.dinv import fixed_point  # noqa: E402
from arsim.spec import Experiment  # noqa: E402

E = Experiment.from_config

NAME = "convergence_peers"
ROOT = Path(__file__).resolve().parents[1]
DPI = 250
TAU = 10.0  # ms; only dt/tau matters
ETA = 0.1
DURATION_TAU = 60.0
FULL = {"depths": list(range(2, 9)), "n_in": 64, "width": 64, "n_out": 10}
QUICK = {"depths": [3, 4], "n_in": 6, "width": 5, "n_out": 2}

#: rule keys of each condition; "own" = timed against its own final state instead of BP
RULES = {
    "ar": {"rule": "ar"},
    "pc_fixed": {"rule": "pc", "pc.prediction": "fixed"},
    "pc_strict": {"rule": "pc", "pc.prediction": "strict"},
    "dinv": {"rule": "dinv", "dinv.alpha": 0.01, "dinv.feedback": "neg_transpose", "initial_state": "zero"},
}
#: timed against their own fixed point: a long numpy integration (strict PC) or the closed form (DI)
AGAINST_OWN = ("pc_strict", "dinv")
LABELS = {"ar": "AR, forward start", "pc_fixed": "PC, fixed prediction", "pc_strict": "strict PC (own fixed point)",
          "dinv": "DI (own fixed point)"}
MARKERS = {"ar": "s", "pc_fixed": "o", "pc_strict": "^", "dinv": "D"}
COLORS = {"ar": "C0", "pc_fixed": "C1", "pc_strict": "C2", "dinv": "C3"}


#: strict PC's own fixed point: the rule's numpy loop run this many times longer than the figure
FIXED_POINT_FACTOR = 50


def own_fixed_points(name: str, res) -> list:
    """The learning signal each layer relaxes to (index 0 unused; NaN where it could not be established).

    DI: the closed-form cascade ``B (W B - alpha I)^-1 delta``. Strict PC has
    no closed form on a nonlinear net: the rule's numpy value-node loop
    (independent of the Brian2 run) integrated `FIXED_POINT_FACTOR` times
    longer, accepted where its last tenth moved by less than 1e-12.
    """
    experiment, problem = res.experiment, res.problem
    if name == "pc_strict":
        steps = FIXED_POINT_FACTOR * experiment.network.n_relax_steps
        _, signal, *_, trace = experiment.rule.reference_values(
            experiment.network, problem.W, problem.b, problem.B, problem.x_in[None], problem.target[None],
            n_steps=steps, record=True)
        out = [None]
        for layer in range(1, len(signal)):
            moved = metrics.relative_error(trace[layer][-steps // 10, 0], signal[layer][0])
            out.append(signal[layer][0] if moved < 1e-12 else np.full_like(signal[layer][0], np.nan))
        return out
    n_layers = len(res.problem.W)
    alpha = res.experiment.rule.alpha
    target = [None] * n_layers + [res.x[n_layers]]
    for l in range(n_layers - 1, 0, -1):
        delta = (target[l + 1] * res.fp[l + 1])[None]
        target[l] = fixed_point(res.problem.W[l], res.B_used[l], alpha, delta)[0]
    return target


def net_config(depth: int, shape: dict, keys: dict) -> dict:
    """Resolved config of the ``depth``-layer net of ``shape`` with the rule ``keys``."""
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
            **keys,
        },
        source=f"{NAME} (L = {depth}, rule {keys['rule']})",
    )


#: nets whose random-feedback DI stability at initialisation is counted over `SEEDS` seeds
STABILITY_NETS = {"digits_ar": "models/digits_ar.toml", "mnist_ar": "models/mnist_ar.toml"}
SEEDS = 20


def random_feedback_instability(config: dict, seeds: int = SEEDS) -> tuple[int, list]:
    """How many of ``seeds`` initialisations of ``config`` with random ``B`` make some DI layer unstable.

    Returns the count and, per seed, the first failing condition (or None).
    """
    from arsim.training import init_params

    reasons = []
    for seed in range(seeds):
        experiment = E(resolve({**config, "rule": "dinv", "dinv.feedback": "random", "seed": seed}))
        params = init_params(experiment)
        try:
            experiment.rule.check_stability(params.W, params.B, experiment.network.eta, "at initialisation")
            reasons.append(None)
        except FloatingPointError as err:
            reasons.append(str(err))
    return sum(r is not None for r in reasons), reasons


def simulate(quick: bool = False) -> tuple[dict, dict]:
    """Relax every depth with every rule; measure each hidden layer's convergence.

    Returns
    -------
    arrays : dict
        ``depths``, ``t`` (tau); per rule ``r``: ``err_r[depth, k-1, record]``
        (relative error against BP), ``tconv_r[depth, k-1]`` (against BP, or
        for `AGAINST_OWN` against the final state) and ``gap_r[depth, k-1]``
        (final relative error against BP), NaN where the net has no layer k.
    meta : dict
        Provenance and the per-run times.
    """
    started = time.perf_counter()
    shape = QUICK if quick else FULL
    depths = shape["depths"]
    k_max = max(depths) - 1
    n_records = n_relax_steps(net_config(depths[0], shape, RULES["ar"])) + 1
    arrays = {"t": None}
    for name in RULES:
        arrays[f"err_{name}"] = np.full((len(depths), k_max, n_records), np.nan)
        arrays[f"tconv_{name}"] = np.full((len(depths), k_max), np.nan)
        arrays[f"gap_{name}"] = np.full((len(depths), k_max), np.nan)
        arrays[f"angle_{name}"] = np.full((len(depths), k_max), np.nan)
    runs, compile_seconds = [], 0.0
    for d, depth in enumerate(depths):
        for name, keys in RULES.items():
            config = net_config(depth, shape, keys)
            runner = get_runner(topology_for(E(config)))
            compile_seconds += runner.compile_seconds
            res = run_relaxation(config, runner=runner)
            arrays["t"] = res.t
            threshold = config["threshold"]
            own = own_fixed_points(name, res) if name in AGAINST_OWN else None
            for layer in range(1, depth):
                k = depth - layer
                err = metrics.relative_error_trace(res.xtrace[layer], res.bp.dxbar[layer])
                arrays[f"err_{name}"][d, k - 1] = err
                arrays[f"gap_{name}"][d, k - 1] = err[-1]
                arrays[f"angle_{name}"][d, k - 1] = metrics.angle_deg(res.xtrace[layer][-1], res.bp.dxbar[layer])
                if name in AGAINST_OWN:
                    to_own = metrics.relative_error_trace(res.xtrace[layer], own[layer])
                    if np.all(np.isfinite(own[layer])):
                        arrays[f"tconv_{name}"][d, k - 1] = metrics.convergence_time(res.t, to_own, threshold)
                else:
                    arrays[f"tconv_{name}"][d, k - 1] = metrics.convergence_time(res.t, err, threshold)
            runs.append({"depth": depth, "rule": name, "sizes": config["sizes"],
                         "t_conv_tau_by_k": [float(arrays[f"tconv_{name}"][d, k - 1]) for k in range(1, depth)],
                         "gap_to_bp_by_k": [float(arrays[f"gap_{name}"][d, k - 1]) for k in range(1, depth)],
                         "angle_to_bp_deg_by_k": [float(arrays[f"angle_{name}"][d, k - 1]) for k in range(1, depth)],
                         "run_seconds": res.run_seconds})
    from arsim.config import load

    unstable = {}
    nets = {"figure": net_config(depths[-1], shape, RULES["ar"])}
    nets.update({name: load(ROOT / path) for name, path in STABILITY_NETS.items()})
    for name, net in nets.items():
        count, reasons = random_feedback_instability({k: v for k, v in net.items() if not k.startswith("ar.")},
                                                     seeds=4 if quick else SEEDS)
        unstable[name] = {"sizes": net["sizes"], "unstable": count, "seeds": len(reasons), "reasons": reasons}
        arrays[f"random_b_unstable_{name}"] = np.array([count, len(reasons)])
    arrays.update({
        "script": np.array(NAME), "quick": np.array(quick), "depths": np.array(depths), "n_in": np.array(shape["n_in"]),
        "width": np.array(shape["width"]), "n_out": np.array(shape["n_out"]), "eta": np.array(ETA),
        "threshold": np.array(config["threshold"]), "rules": np.array(list(RULES)),
    })
    meta = {
        **provenance(E(config)),
        "script": NAME,
        "quick": quick,
        "scan": {"depths": depths, "rules": RULES, "other keys": "as config, sizes per depth"},
        "runs": runs,
        "dinv_random_feedback_unstable_at_init": unstable,
        "compile_seconds": compile_seconds,
        "simulate_seconds": time.perf_counter() - started,
    }
    return arrays, meta


def fixed_prediction_steps(k, eta: float, threshold: float, n_max: int = 100_000) -> np.ndarray:
    """Closed form: first step ``n`` with ``P(Bin(n, eta) <= k - 1) < threshold`` (layer ``k`` below the output)."""
    n = np.arange(n_max)
    return np.array([int(np.argmax(binom.cdf(kk - 1, n, eta) < threshold)) for kk in np.atleast_1d(k)])


def store(data: Path, arrays: dict, meta: dict) -> None:
    figure_script.store_data(data, arrays, meta)


def plot(data: Path, out_dir: Path) -> list:
    """Draw the figure from the stored ``data`` file only; return the written paths."""
    d = figure_script.load_data(data, NAME)
    depths, eta, thr = d["depths"], float(d["eta"]), float(d["threshold"])
    rules = [str(r) for r in d["rules"]]
    k_all = np.arange(1, int(depths.max()))
    with plt.rc_context(figure_script.STYLE):
        fig, (ax_t, ax_e) = plt.subplots(1, 2, figsize=(7.4, 3.4), constrained_layout=True)
        ax_t.plot(k_all, fixed_prediction_steps(k_all, eta, thr) * eta, color="k", lw=0.8, marker="_", ms=10,
                  label=rf"$P(\mathrm{{Bin}}(n,\eta)<k) = ${thr:g}")
        offsets = {name: (i - (len(rules) - 1) / 2) * 0.12 for i, name in enumerate(rules)}
        t_end = float(d["t"][-1])
        never = False
        for name in rules:
            for i, depth in enumerate(depths):
                k = np.arange(1, depth) + offsets[name]
                times = d[f"tconv_{name}"][i, : depth - 1]
                ax_t.plot(k, np.where(np.isfinite(times), times, np.nan), ls="none", marker=MARKERS[name], ms=3.5,
                          color=COLORS[name], mfc="none" if name == "pc_fixed" else COLORS[name],
                          label=LABELS[name] if i == 0 else None)
                # layers that did not converge within the simulated time: at the top edge, hollow
                missing = np.isinf(times)
                never |= bool(missing.any())
                ax_t.plot(k[missing], np.full(missing.sum(), t_end), ls="none", marker=MARKERS[name], ms=3.5,
                          color=COLORS[name], mfc="none", clip_on=False)
        if never:
            ax_t.text(0.98, 0.03, f"hollow at {t_end:g}: not converged within {t_end:g} $\\tau$", transform=ax_t.transAxes,
                      ha="right", va="bottom", fontsize=6, color="0.3")
        ax_t.set_xlabel("layer's distance $k$ from the output")
        ax_t.set_ylabel(rf"$t_{{conv}}\,/\,\tau$ (rel. error < {thr:g})")
        ax_t.set_xticks(k_all)
        ax_t.set_title("(a) convergence time, every hidden layer of every net", loc="left")
        ax_t.set_ylim(0, t_end * 1.02)
        ax_t.legend(loc="center right", fontsize=6)

        t = d["t"]
        for i in sorted({0, len(depths) - 1}):
            depth = int(depths[i])
            for name in rules:
                ax_e.plot(t, d[f"err_{name}"][i, depth - 2], color=COLORS[name], lw=1.2, ls="-" if i else "--",
                          label=f"{LABELS[name].split(' (')[0]}, L = {depth}")
        ax_e.axhline(thr, color="0.4", lw=0.8, ls="-.")
        ax_e.set_yscale("log")
        ax_e.set_ylim(1e-16, 10)
        ax_e.set_xlim(0, t[-1])
        ax_e.set_xlabel(r"time $t\,/\,\tau$")
        ax_e.set_ylabel("relative error of the bottom hidden layer vs BP")
        ax_e.set_title("(b) against backprop's gradient", loc="left")
        ax_e.legend(loc="center right", fontsize=5.5, ncol=2)
        sizes = f"{int(d['n_in'])}-{int(d['width'])}$\\times$(L$-$1)-{int(d['n_out'])}"
        fig.suptitle(f"AR, predictive coding and dynamic inversion: {sizes} tanh, L = {depths.min()}..{depths.max()}, $dt/\\tau = {eta:g}$"
                     f" (Brian2){'  [quick]' if d['quick'] else ''}")
        paths = figure_script.save_figure(fig, out_dir, data.stem, DPI)
        plt.close(fig)
    return paths


def main(argv: list | None = None) -> int:
    """Command line: ``[--plot-only] [--quick] [--data FILE] [--out-dir DIR]``."""
    return figure_script.script_main(
        NAME, __doc__.splitlines()[0], ROOT, simulate, store, plot, "two tiny nets, seconds (tests); default data file *_quick.npz", argv
    )


if __name__ == "__main__":
    sys.exit(main())
