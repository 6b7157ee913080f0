"""Phaseless alignment learning (Max et al., arXiv 2212.10249), SPEC 3.9 and research/gait_pal_di.md B."""

from __future__ import annotations

import numpy as np

from .base import Param, Rule, non_negative, positive, register

__all__ = ["PhaselessAlignment"]

# slot "groups" orders of PAL's per-step operations: after the state update (order 0), which has just
# advanced the OU noise and the relaxation, the rates; then B's step, which reads them; then the low-pass
ORDER_RATE, ORDER_BACKWARD, ORDER_LOWPASS = 1, 2, 3

_BACKWARD_CPP = """
    // B^l's step, wb in its n_post x n_pre layout (wb[j, i] = B^l[i, j]):
    // wb <- (1 - rate decay) wb + (rate / copies) H^T Xi, H = r - lp of the layer above (its high-passed rate),
    // Xi = the noise of this layer, both copies x units: the Hebbian term averaged over the copies
    static std::vector<{real}> highpass_buffer((size_t){copies} * {n_post});
    {real}* __restrict H = highpass_buffer.data();
    for (size_t k = 0; k < (size_t){copies} * {n_post}; k++)
        H[k] = r[k] - lp[k];
    {gemm}(CblasRowMajor, CblasTrans, CblasNoTrans, {n_post}, {n_pre}, {copies},
           rate / {copies}, H, {n_post}, noise, {n_pre}, 1.0 - rate * decay, wb, {n_pre});"""


@register
class PhaselessAlignment(Rule):
    """PAL: B learns all the time from the noise of the layer below and the high-passed rates of the layer above."""

    name = "pal"
    title = "Phaseless alignment learning"
    summary = """
Max et al. 2022/2024 (SPEC 3.9, research/gait_pal_di.md B), in the LE/GLE form of the authors' code. Every
hidden unit carries an Ornstein-Uhlenbeck noise `tau_xi dnoise = -noise dt + sigma sqrt(tau_xi) dW_t`, a
term of the one neuron type integrated by Brian2's `euler` (Euler-Maruyama: the authors' update
`noise <- (1 - a) noise + sigma sqrt(a) z`, `a = dt/tau_xi`; stationary variance `sigma^2 / (2 - a)`),
seeded per run from the experiment's seed, epoch and batch, so a run is reproducible bit for bit
(`sigma = 0` compiles a build without the noise term, which draws nothing; every `sigma > 0` shares one). In
training a noisy rate streams up the network every step, one step per layer as in the authors' pipeline:
`r^l = f(W^{l-1} r^{l-1} + b^l + noise^l)` (`r^0` the input, no noise at the output), high-passed as
`rhat = r - lp`, `lp <- lp + (dt/tau_hp)(r - lp)`; and on every step, in the same steps as the errors
relax (no phases), `B^l <- B^l + dt eta_b (<noise^l rhat^{l+1}^T> - alpha B^l)` (mean over the batch's
copies), so `B^l -> (c/alpha) W^l^T` in the linear regime, `c = v a (1-a) / (a + b - ab)`,
`v = sigma^2 / (2 - a)`, `b = dt/tau_hp` (`c = 0.2493 sigma^2` at `a = b = 0.1`). The errors that train
`W` travel down through that `B` by the relaxation `tau dx^l/dt = -x^l + B^l (x^{l+1} f'^{l+1})` from
the frozen forward sweep (FA's dynamics with a learning `B`), and `dW^l = -lr (x^{l+1} f'^{l+1}) xbar^l^T`
at batch boundaries like every rule. The defaults (`alpha = 2.5e-5 ~ c` at `sigma = 1e-2`, so `B` approaches
the scale of `<D W^T D>`; `1/(eta_b alpha)` = 20,000 steps) were chosen on digits, seed 10, 30 epochs:
eta_b 2 / 4 / 8 gave 96.9 / 96.7 / 96.4 % test accuracy, and eta_b 20 diverged. `B^0` (into the input) is not used and does not learn. Each
standalone run (at most 1,024 samples) starts the noise, the rates and the low-pass at 0: a transient
of about `tau_xi + tau_hp`. `arsim relax` relaxes with `B` fixed (it is FA's pass with the drawn `B`).
"""
    params = {
        "sigma": Param(float, 1e-2, "sigma", "OU noise of every hidden unit (stationary std sigma / sqrt(2 - dt/tau_xi))",
                       non_negative),
        "tau_xi": Param(float, 10.0, "tau_xi", "correlation time of the noise (>= dt)", positive, unit="ms"),
        "tau_hp": Param(float, 10.0, "tau_HP", "time constant of the rates' high-pass (>= dt)", positive, unit="ms"),
        "eta_b": Param(float, 2.0, "eta_B", "learning rate of B per unit time", non_negative, unit="1/ms"),
        "alpha": Param(float, 2.5e-5, "alpha", "decay of B relative to the Hebbian term (B* = (c/alpha) W^T)", non_negative),
    }
    recordable = ("noise", "r", "lp")
    #: both sides of `arsim bench --rule pal` compute the same numbers only without noise (the noiseless build)
    bench_keys = {"pal.sigma": 0.0}

    @classmethod
    def build_settings(cls, settings: dict) -> tuple:
        # sigma = 0 compiles without the noise: with `xi` in the equation Brian2 would still draw a normal
        # per hidden unit, copy and step (72 million per 1,024-sample run) only to multiply it by 0. Every
        # sigma > 0 shares one build, where sigma stays a run-time value (the key () gives the default).
        sigma = settings.get("sigma", cls.params["sigma"].default)
        return (("sigma", 0.0),) if sigma == 0 else ()

    @property
    def stochastic(self) -> bool:
        """Whether the build draws noise: ``sigma > 0`` (at ``sigma = 0`` the noise is the constant 0)."""
        return self.settings["sigma"] > 0

    @classmethod
    def check_timing(cls, settings, dt):
        for key in ("tau_xi", "tau_hp"):
            if settings[key] < dt:
                return (f"pal.{key} = {settings[key]!r} ms with dt = {dt!r} ms; expected pal.{key} >= dt"
                        " (the Euler steps of the noise and of the high-pass need dt / time constant <= 1)")
        return None

    @property
    def learns_backward(self) -> bool:
        return True

    def neuron_terms(self) -> str:
        # the noise of a unit whose state updater runs (hidden layers) and the streaming rate of every unit
        noise = "dnoise/dt = -noise / tau_xi + sigma * xi * tau_xi**-0.5 : 1" if self.stochastic else "noise : 1"
        return noise + """
r : 1
lp : 1
ar : 1
sigma : 1 (shared, constant)
tau_xi : second (shared, constant)
hp_rate : 1 (shared, constant)
b_rate : 1 (shared, constant)
b_decay : 1 (shared, constant)
"""

    def neuron_parameters(self, network, layer, n_layers):
        s = self.settings
        return {
            "sigma": float(s["sigma"]) if 0 < layer < n_layers else 0.0,
            "tau_xi": float(s["tau_xi"]) / network.dt,
            "hp_rate": network.dt / float(s["tau_hp"]),
            "b_rate": network.dt * float(s["eta_b"]),
            "b_decay": float(s["alpha"]),
        }

    def extend_network(self, parts) -> None:
        topo = parts.topology
        if not topo.train:
            return  # a relaxation measures the backward pass with the drawn B: nothing learns
        n_layers = topo.n_layers
        copies = parts.copies
        for l in range(n_layers):
            # the previous step's rates: one step of delay per layer
            parts.drive(l, "r", "ar", order=parts.ORDER_CURRENT_DRIVE)
        parts.every_step(0, "r = xbar", order=ORDER_RATE, name="rate")
        for l in range(1, n_layers + 1):
            parts.every_step(l, "r = act_f(ar + b + noise, act_kind, act_slope)", order=ORDER_RATE, name="rate")
        for l in range(1, n_layers):
            n_pre, n_post = topo.sizes[l], topo.sizes[l + 1]

            def numpy_backward(a, rate, decay, n_pre=n_pre, n_post=n_post):
                high = (a["r"] - a["lp"]).reshape(copies, n_post)
                hebbian = high.T @ a["noise"].reshape(copies, n_pre)
                a["wb"][:] = (1.0 - rate * decay) * a["wb"] + (rate / copies) * hebbian.ravel()

            parts.operation(
                l, "pal_backward", {"wb": ("syn", "wb"), "noise": ("pre", "noise"), "r": ("post", "r"), "lp": ("post", "lp")},
                numpy_backward, _BACKWARD_CPP, arguments={"rate": ("b_rate_post", "float"), "decay": ("b_decay_post", "float")},
                order=ORDER_BACKWARD, blas=True,
            )
        for l in range(2, n_layers + 1):  # the layers above a learning B^l
            parts.every_step(l, "lp = lp + hp_rate * (r - lp)", order=ORDER_LOWPASS, name="lowpass")

    # ------------------------------------------------------------------ numpy reference

    def reference_epoch(self, experiment, params, x_in, targets, noise=None, after_batch=None):
        """One standalone training run of the rows of ``x_in``, step by step (`arsim.reference.pal.training_run`).

        ``noise`` is ``{l: (steps, copies * n_l)}``, the OU values every step
        of a Brian2 run drew (recorded by a monitor); without it the noise is
        zero, which is exact only for ``sigma = 0``.
        """
        from ..reference.pal import training_run

        if noise is None or not noise:
            if self.settings["sigma"] != 0:
                raise ValueError("PAL's numpy reference replays the noise of a Brian2 run: pass noise, or set pal.sigma = 0")
            noise = None
        if after_batch is not None:
            raise ValueError("PAL's reference runs the whole run's steps at once; after_batch is not supported")
        net, training = experiment.network, experiment.training
        s = self.settings
        new = params.copy()
        new.W, new.b, new.B = training_run(
            net, new.W, new.b, new.B, x_in, targets, copies=training.batch_size if experiment.batch_parallel else 1,
            batch_size=training.batch_size, lr=training.lr, sigma=s["sigma"], tau_xi=s["tau_xi"], tau_hp=s["tau_hp"],
            eta_b=s["eta_b"], alpha=s["alpha"], noise=noise,
        )
        return new
