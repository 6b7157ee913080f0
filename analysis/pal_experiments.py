"""Phaseless alignment learning (PAL) in Brian2: backward weights that learn from noise, and a sign PAL must learn.

Max et al. (arXiv 2212.10249; research/gait_pal_di.md B) train the backward
weights ``B`` of every layer continuously from each hidden unit's
Ornstein-Uhlenbeck noise and the high-passed rates of the layer above
(`arsim rules`, ``rule = "pal"``). Three experiments, each in arsim's
Brian2 network with the noise drawn by Brian2 (seeded per run):

(a) Backward-only learning (the authors' Fig. 3 set-up, ``W`` fixed by
    ``train.lr = 0``): a 5-20-10-20-5 logistic net, ``W`` and the initial
    ``B`` from U[-1, 1], inputs from U[0, 1] held for 100 steps each, one
    sample at a time. The angle between ``B^l`` and ``W^l^T`` over time (in
    units of ``1 / (eta_B alpha)``, the decay time of ``B``), and between
    ``B^l`` and the nonlinear target ``M^l = <D^l W^l^T D^{l+1}>`` (``D`` the
    diagonal of ``f'`` at the forward pass, averaged over the inputs) that
    ``B`` approaches, ``B -> (c / alpha) M``; dashed, the angle of the mean
    trajectory ``M (c/alpha)(1 - e^{-t}) + B_0 e^{-t}`` to ``W^T``.
(b) The residual angle: on a linear 5-4-3-2 chain one run never reaches
    ``B ∝ W^T``; the fluctuation of the Hebbian term leaves an angle that
    scales like ``sqrt(eta_B)`` at fixed ``alpha`` (research note B.4).
    Final angle of ``B^1`` to ``W^1^T`` after 6 decay times, per ``eta_B``.
(c) The 1-1-1 teacher-student task (the authors' Fig. 4a,b): a student
    ``1-1-1`` logistic net with ``W`` and ``B`` from U[-1, 0] learns the
    teacher ``y = s(2 s(2 x))``. The output weight must change sign; feedback
    alignment keeps its negative ``B`` and so pushes the hidden weight the
    wrong way, while PAL's ``B`` follows the sign of ``W^1``. ``W^0``,
    ``W^1``, ``B^1`` and the loss over training, PAL against FA, per seed.

arsim's own parameters where the authors' (a dendritic microcircuit with
``dt = 0.01 ms``) do not transfer: ``dt/tau = 0.1``, ``a = dt/tau_xi = b =
dt/tau_HP = 0.1`` as in their code, and the noise and rates listed in
`SETUPS`.

Two stages: ``simulate`` stores the traces with provenance in
``analysis/data/pal_experiments.npz`` (+ ``.json``); ``plot`` draws only from
that file. Run from the repository root::

    python analysis/pal_experiments.py               # simulate and plot
    python analysis/pal_experiments.py --plot-only   # redraw from the data file
    python analysis/pal_experiments.py --quick       # short runs (tests; *_quick files)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from arsim import figure_script, metrics  # noqa: E402
from arsim.config import resolve  # noqa: E402
from arsim.io import provenance  # noqa: E402
from arsim.reference.pal import hebbian_constant  # noqa: E402
from arsim.spec import Experiment  # noqa: E402
from arsim.training import BrianTrainer, Params  # noqa: E402

E = Experiment.from_config

NAME = "pal_experiments"
ROOT = Path(__file__).resolve().parents[1]

#: (a) the authors' Fig. 3 net, W fixed; (b) a linear chain; (c) the 1-1-1 teacher-student task
SETUPS = {
    "alignment": {"sizes": [5, 20, 10, 20, 5], "sigma": 5e-2, "eta_b": 0.5, "alpha": 1e-5, "decay_times": 5.0,
                  "seeds": 5, "points": 40},
    "residual": {"sizes": [5, 4, 3, 2], "sigma": 1e-2, "alpha": 1e-4, "eta_b": [0.32, 0.08, 0.02], "decay_times": 6.0,
                 "seeds": 8},
    "teacher": {"sigma": 0.1, "eta_b": 0.5, "alpha": 1.6e-4, "lr": 0.5, "batch": 10, "samples": 100, "epochs": 300,
                "seeds": 10, "points": 60},
}
#: tiny runs sharing one build for (a) and (b) (same sizes and run length; activations and rates are run-time),
#: and PAL only in (c): two compiles in all
QUICK = {
    "alignment": {**SETUPS["alignment"], "sizes": [3, 4, 3, 2], "chunk": 4, "seeds": 1, "points": 2},
    "residual": {**SETUPS["residual"], "sizes": [3, 4, 3, 2], "chunk": 4, "eta_b": [0.32], "seeds": 1},
    "teacher": {**SETUPS["teacher"], "epochs": 3, "seeds": 1, "points": 3, "rules": ("pal",)},
}
STEPS_PER_SAMPLE = 101  # the forward step and 100 relaxation steps of dt/tau = 0.1


def _config(sizes, rule: str, sigma: float, eta_b: float, alpha: float, lr: float, batch: int, seed: int,
            activation: str = "sigmoid", parallel: str = "sample") -> dict:
    keys = {"name": NAME, "sizes": sizes, "activation": activation, "output_activation": activation, "loss": "mse",
            "seed": seed, "tau": 10.0, "dt": 1.0, "duration": 100.0, "rule": rule, "train.lr": lr,
            "train.batch_size": batch, "train.parallel": parallel, "train.align_every": 0}
    if rule == "pal":
        keys.update({"pal.sigma": sigma, "pal.eta_b": eta_b, "pal.alpha": alpha, "pal.tau_xi": 10.0, "pal.tau_hp": 10.0})
    return resolve(keys, source=f"{NAME} ({rule})")


def _uniform_params(rng, sizes, low: float, high: float) -> Params:
    """``W`` and ``B`` from U[low, high], zero biases (the authors' initialisation)."""
    n_layers = len(sizes) - 1
    W = [rng.uniform(low, high, size=(sizes[l + 1], sizes[l])) for l in range(n_layers)]
    B = [rng.uniform(low, high, size=(sizes[l], sizes[l + 1])) for l in range(n_layers)]
    return Params(W, [np.zeros(sizes[l + 1]) for l in range(n_layers)], B)


def _nonlinear_target(W, b, x, f_prime) -> list:
    """``M^l = <D^l W^l^T D^{l+1}>`` over the inputs ``x`` (rows), ``D`` the derivative at the forward pass."""
    xbar, slopes = [x], [None]
    for w, bias in zip(W, b):
        u = xbar[-1] @ w.T + bias
        slopes.append(f_prime(u))
        xbar.append(1.0 / (1.0 + np.exp(-u)))
    return [None] + [np.einsum("si,ji,sj->ij", slopes[l], W[l], slopes[l + 1]) / len(x) for l in range(1, len(W))]


def _steps_per_run(chunk: int, copies: int) -> int:
    return (chunk // copies) * STEPS_PER_SAMPLE + 1


def alignment(setup: dict) -> dict:
    """(a): angles of ``B^l`` to ``W^l^T`` and to ``M^l`` after every run, per seed."""
    sizes, points = setup["sizes"], setup["points"]
    rate = setup["eta_b"] * setup["alpha"]  # per ms; dt = 1 ms
    total_steps = setup["decay_times"] / rate
    chunk = setup.get("chunk") or max(1, int(round(total_steps / points / STEPS_PER_SAMPLE)))
    n_layers = len(sizes) - 1
    hidden = range(1, n_layers)
    angle_w = np.full((setup["seeds"], points + 1, n_layers - 1), np.nan)
    angle_m = np.full_like(angle_w, np.nan)
    mean_w = np.full_like(angle_w, np.nan)
    times = np.arange(points + 1) * _steps_per_run(chunk, 1) * rate
    c = hebbian_constant(setup["sigma"], 0.1, 0.1, 1)
    for seed in range(setup["seeds"]):
        config = _config(sizes, "pal", setup["sigma"], setup["eta_b"], setup["alpha"], 0.0, 1, seed)
        rng = np.random.default_rng([seed, 31])
        params = _uniform_params(rng, sizes, -1.0, 1.0)
        x = rng.uniform(0.0, 1.0, size=(chunk * points, sizes[0]))
        targets = np.zeros((len(x), sizes[-1]))
        sigmoid_prime = E(config).network.hidden.fprime
        M = _nonlinear_target(params.W, params.b, x, sigmoid_prime)
        B0 = [m.copy() for m in params.B]
        trainer = BrianTrainer(E(config), chunk)
        for p in range(points + 1):
            for i, l in enumerate(hidden):
                angle_w[seed, p, i] = metrics.angle_deg(params.B[l], params.W[l].T)
                angle_m[seed, p, i] = metrics.angle_deg(params.B[l], M[l])
                decay = np.exp(-times[p])
                mean_w[seed, p, i] = metrics.angle_deg((c / setup["alpha"]) * (1 - decay) * M[l] + decay * B0[l], params.W[l].T)
            if p < points:
                rows = slice(p * chunk, (p + 1) * chunk)
                params = trainer.run_chunk(params, x[rows], targets[rows], first_batch=p, epoch=1).params
    return {"a_time": times, "a_angle_w": angle_w, "a_angle_m": angle_m, "a_mean_w": mean_w}


def residual(setup: dict) -> dict:
    """(b): the final angle of ``B^1`` to ``W^1^T`` on a linear chain, per ``eta_B`` and seed."""
    sizes = setup["sizes"]
    rates = setup["eta_b"]
    final = np.full((len(rates), setup["seeds"]), np.nan)
    for r, eta_b in enumerate(rates):
        steps = setup["decay_times"] / (eta_b * setup["alpha"])
        chunk = setup.get("chunk") or max(1, int(round(steps / STEPS_PER_SAMPLE)))
        for seed in range(setup["seeds"]):
            config = _config(sizes, "pal", setup["sigma"], eta_b, setup["alpha"], 0.0, 1, seed, activation="linear")
            rng = np.random.default_rng([seed, 37])
            params = _uniform_params(rng, sizes, -1.0, 1.0)
            x = rng.uniform(0.0, 1.0, size=(chunk, sizes[0]))
            trained = BrianTrainer(E(config), chunk).run_chunk(params, x, np.zeros((chunk, sizes[-1])), epoch=r + 1).params
            final[r, seed] = metrics.angle_deg(trained.B[1], trained.W[1].T)
    return {"b_eta": np.array(rates, dtype=float), "b_angle": final}


def teacher(setup: dict) -> dict:
    """(c): the 1-1-1 teacher-student task, PAL against FA from the same student, per seed."""
    epochs, points, batch, n = setup["epochs"], setup["points"], setup["batch"], setup["samples"]
    every = max(1, epochs // points)
    records = epochs // every + 1
    out = {f"c_{rule}_{what}": np.full((setup["seeds"], records), np.nan)
           for rule in ("pal", "fa") for what in ("w0", "w1", "b1", "loss")}
    out["c_epoch"] = np.arange(records) * every
    for seed in range(setup["seeds"]):
        rng = np.random.default_rng([seed, 41])
        x = rng.uniform(0.0, 1.0, size=(n, 1))
        y = 1.0 / (1.0 + np.exp(-2.0 / (1.0 + np.exp(-2.0 * x))))
        start = _uniform_params(rng, [1, 1, 1], -1.0, 0.0)
        for rule in setup.get("rules", ("pal", "fa")):
            config = _config([1, 1, 1], rule, setup["sigma"], setup["eta_b"], setup["alpha"], setup["lr"], batch, seed,
                             parallel="batch")
            trainer = BrianTrainer(E(config), n)
            params = start.copy()
            for epoch in range(epochs + 1):
                if epoch % every == 0:
                    k = epoch // every
                    hidden = 1.0 / (1.0 + np.exp(-(x @ params.W[0].T)))
                    out_now = 1.0 / (1.0 + np.exp(-(hidden @ params.W[1].T)))
                    out[f"c_{rule}_w0"][seed, k] = params.W[0][0, 0]
                    out[f"c_{rule}_w1"][seed, k] = params.W[1][0, 0]
                    out[f"c_{rule}_b1"][seed, k] = params.B[1][0, 0]
                    out[f"c_{rule}_loss"][seed, k] = float(np.mean((out_now - y) ** 2))
                if epoch < epochs:
                    order = np.random.default_rng([seed, 43, epoch]).permutation(n)
                    params = trainer.run_chunk(params, x[order], y[order], epoch=epoch + 1).params
    return out


def simulate(quick: bool = False) -> tuple[dict, dict]:
    """Run the three experiments; return the arrays and the provenance."""
    started = time.perf_counter()
    setups = QUICK if quick else SETUPS
    arrays = {**alignment(setups["alignment"]), **residual(setups["residual"]), **teacher(setups["teacher"])}
    arrays.update(script=np.array(NAME), quick=np.array(quick))
    config = _config(setups["alignment"]["sizes"], "pal", setups["alignment"]["sigma"], setups["alignment"]["eta_b"],
                     setups["alignment"]["alpha"], 0.0, 1, 0)
    meta = {**provenance(E(config)), "script": NAME, "quick": quick, "setups": setups,
            "simulate_seconds": time.perf_counter() - started}
    return arrays, meta


def plot(data: Path, out_dir: Path) -> list:
    """Draw the three panels from the stored data."""
    d = figure_script.load_data(data, NAME)
    with plt.rc_context(figure_script.STYLE):
        fig, axes = plt.subplots(1, 4, figsize=(13.5, 3.2), constrained_layout=True)
        ax = axes[0]
        t = d["a_time"]
        for i in range(d["a_angle_w"].shape[2]):
            color = f"C{i}"
            ax.plot(t, np.nanmean(d["a_angle_w"][:, :, i], axis=0), color=color, label=f"∠(B$^{i + 1}$, W$^{i + 1}$ᵀ)")
            ax.plot(t, np.nanmean(d["a_angle_m"][:, :, i], axis=0), color=color, ls=":", label=f"∠(B$^{i + 1}$, M$^{i + 1}$)")
            ax.plot(t, np.nanmean(d["a_mean_w"][:, :, i], axis=0), color=color, ls="--", lw=0.8)
        ax.set(xlabel="time × η_B α", ylabel="angle (deg)", ylim=(0, 100),
               title=f"(a) backward-only learning, W fixed ({d['a_angle_w'].shape[0]} seeds)")
        ax.legend(ncol=1, fontsize=6)
        ax = axes[1]
        eta, angle = d["b_eta"], d["b_angle"]
        ax.errorbar(eta, np.nanmean(angle, axis=1), yerr=np.nanstd(angle, axis=1), fmt="o", capsize=3, label="simulated")
        if len(eta) > 1:
            reference = np.nanmean(angle[0]) * np.sqrt(eta / eta[0])
            ax.plot(eta, reference, "k--", lw=0.8, label="∝ √η_B")
        ax.set(xscale="log", yscale="log", xlabel="η_B (1/ms)", ylabel="final ∠(B¹, W¹ᵀ) (deg)",
               title="(b) residual angle, linear 5-4-3-2")
        ax.set_xticks(eta, [f"{value:g}" for value in eta])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_yticks([5, 10, 20, 40], ["5", "10", "20", "40"])
        ax.legend()
        epochs = d["c_epoch"]
        for ax, what, label in ((axes[2], "w0", "hidden weight W⁰"), (axes[3], "b1", "backward weight B¹")):
            for rule, color in (("pal", "C0"), ("fa", "C3")):
                values = d[f"c_{rule}_{what}"]
                ax.plot(epochs, values.T, color=color, lw=0.6, alpha=0.6)
                ax.plot([], [], color=color, label=rule.upper())
            ax.axhline(2.0 if what == "w0" else 0.0, color="k", lw=0.6, ls="--")
            ax.set(xlabel="epoch", ylabel=label, title=f"(c) 1-1-1 teacher-student: {label}")
            ax.legend()
        paths = figure_script.save_figure(fig, out_dir, NAME)
        plt.close(fig)
    return paths


def main(argv=None) -> int:
    description = (__doc__ or "").splitlines()[0]
    return figure_script.script_main(NAME, description, ROOT, simulate, figure_script.store_data, plot,
                                     "short runs of every experiment (tests)", argv)


if __name__ == "__main__":
    sys.exit(main())
