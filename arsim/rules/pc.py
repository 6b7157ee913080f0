"""Predictive coding (Whittington & Bogacz 2017; Millidge, Tschantz & Buckley 2020), SPEC 3.7."""

from __future__ import annotations

import numpy as np

from .base import Param, Rule, positive, register

__all__ = ["PredictiveCoding", "PREDICTIONS", "BACKWARD", "ERROR_CONNECTIONS"]

PREDICTIONS = ("fixed", "strict")
BACKWARD = ("transpose", "learned", "random")
ERROR_CONNECTIONS = ("identity", "learned", "random")


def _one_of(choices):
    def check(value):
        return None if value in choices else "one of " + ", ".join(repr(c) for c in choices)

    return check


@register
class PredictiveCoding(Rule):
    """PC in the ``f(W x + b)`` convention, with value nodes on the one neuron type.

    The neuron's ``x`` is the value node; its prediction error
    ``eps = (x - mu) pi`` is a subexpression of the same neuron
    (`arsim.brian.neuron`), with ``mu`` the stored forward activity (fixed
    prediction) or ``f(W x_below + b)`` of the current state (strict). The
    output value node is clamped to ``xbar^L - e`` so that its error starts
    at ``-e`` (``e = dL/dxbar^L`` of arsim's loss), whatever the loss's
    scale. Precisions: hidden ``pi = 1``, output ``pi_L = variance_ratio =
    sigma_hidden / sigma_L``; the learning signal is ``-sigma_L eps^l``,
    which equals ``dL/dxbar^l`` at the fixed-prediction equilibrium.
    """

    name = "pc"
    title = "Predictive coding"
    summary = """
SPEC 3.7, the `f(W x + b)` convention of Millidge et al. Value nodes `x^l` relax down the energy
`E = sum_l pi_l |x^l - mu^l|^2 / 2`: `tau dx^l/dt = -eps^l + B^l (f'^{l+1} * eps^{l+1})` with the
error `eps^l = pi_l (x^l - mu^l)`, a subexpression of the one neuron type (no second model), the
input clamped and the output value node clamped to `xbar^L - e`. After the relaxation
`dW^l = -lr (s^{l+1} * f'^{l+1}) pre^l^T` with the learning signal `s^l = -sigma_L eps^l`.
`prediction = "fixed"` (fixed-prediction assumption): `mu^l = xbar^l` and `f'` frozen at the forward
sweep, `pre = xbar`; `-eps^l` then follows AR's relaxation from a cold start,
`s^l_n = (1 - P[Bin(n, dt/tau) <= k]) dL/dxbar^l` for the hidden layer `k` below the top one, and
equals BP at equilibrium. `prediction = "strict"`: `mu^l = f(W^{l-1} x^{l-1} + b)` and `f'` from the
current state every step, `pre = x` (relaxed); not BP on a nonlinear net, it approaches BP as
`variance_ratio = sigma_hidden / sigma_L` shrinks. The relaxed constraints of Millidge et al. 2020
(arXiv 2010.01047): `backward = "learned"` (`dB = dW^T`, no decay, so `B - W^T` stays constant),
`"random"` (fixed), and `derivative = false` (`B^l eps^{l+1}` in the inference; the update keeps
`f'`), and `error_connections = "learned"` or `"random"` (fixed prediction only): hidden errors
`eps^l = x^l - Phi^l xbar^l` through a dense matrix (a projection `err{l}` of the layer onto
itself sums `mu = Phi xbar` once per sample), `Phi = |N(0, error_std^2)|` as in the authors' code,
learned with their sign `dPhi^l = -lr sum eps^l xbar^l^T` (an ascent on `|eps|^2 / 2`,
research/pc.md (c)) at batch boundaries; `Phi` only moves `eps(0)`, so the equilibrium is still BP.
Value nodes start at the forward activity (`initial_state = "forward"`).
"""
    params = {
        "prediction": Param(str, "fixed", "--", "fixed: mu and f' frozen at the forward sweep (FPA); strict: recomputed from the current x",
                            _one_of(PREDICTIONS), build=True),
        "backward": Param(str, "transpose", "B^l", "the inference's backward weights: transpose (W^T), learned (dB = dW^T), random (fixed)",
                          _one_of(BACKWARD), build=True),
        "derivative": Param(bool, True, "f'", "multiply the errors carried down by f' of the layer above (the update always does)",
                            build=True),
        "error_connections": Param(str, "identity", "Phi^l", "hidden errors x - Phi xbar: identity (one to one), learned (dPhi = -lr eps xbar^T), random (fixed)",
                                   _one_of(ERROR_CONNECTIONS), build=True),
        "error_std": Param(float, 0.05, "--", "Phi = |N(0, error_std^2)| of learned and random error connections", positive),
        "variance_ratio": Param(float, 1.0, "sigma_h / sigma_L", "hidden over output variance of the energy (pi_L = this, pi_hidden = 1)",
                                positive),
    }

    def __init__(self, settings=None, derivative=True, ordering="synchronous", forward="frozen", feedback="transpose"):
        super().__init__(settings, derivative, ordering, forward, feedback)
        settings = self.settings
        self.error_units = settings["prediction"]
        self.feedback = settings["backward"]
        self.derivative = bool(settings["derivative"])
        self.separate_backward = self.feedback != "transpose"
        self.tied = self.feedback == "learned"
        # strict PC recomputes mu and f' from the current state: the relaxed-forward code paths, all of them
        strict = self.error_units == "strict"
        self.current_relaxation_derivative = self.current_update_derivative = self.current_presynaptic = strict
        self.connections = settings["error_connections"]
        if self.connections != "identity" and self.error_units == "fixed":
            self.error_units = "connected"
        self.learns_state = self.connections == "learned"

    @classmethod
    def required_keys(cls, settings):
        required = {
            "derivative": (True, "PC's backward derivative is the [pc] table's derivative"),
            "initial_state": ("forward", "value nodes start at the forward activity (fixed prediction's first condition)"),
            "ordering": ("synchronous", "PC's inference is integrated synchronously (Jacobi, continuous time)"),
        }
        if settings.get("error_connections", "identity") != "identity":
            required["pc.prediction"] = ("fixed", "error connections Phi act on the fixed prediction mu = Phi xbar")
        if settings.get("prediction") == "strict":
            required["loss"] = ("mse", "strict PC predicts the output through f, and the softmax's Jacobian is not diagonal")
        return required

    @property
    def ratio(self) -> float:
        return float(self.settings["variance_ratio"])

    def plasticity_scalars(self, lr, sizes):
        rows = super().plasticity_scalars(lr, sizes)
        if self.tied:
            for row in rows:
                row.update(eta_b=lr, c_tied=1.0)
        return rows

    # ------------------------------------------------------------------ error connections (the rule's own state)

    def _phi_layers(self, sizes) -> range:
        return range(1, len(sizes) - 1) if self.error_units == "connected" else range(0)

    def state_keys(self, sizes):
        return [f"Phi{l}" for l in self._phi_layers(sizes)]

    def initial_state(self, sizes, rng):
        std = float(self.settings["error_std"])
        return {f"Phi{l}": np.abs(rng.normal(0.0, std, size=(sizes[l], sizes[l]))) for l in self._phi_layers(sizes)}

    def state_arguments(self, state):
        return {f"err{key[3:]}.w": value.ravel() for key, value in state.items()}

    def state_from_results(self, raw, state):
        if not self.learns_state:
            return super().state_from_results(raw, state)
        return {key: raw[f"err{key[3:]}.w"].reshape(value.shape).copy() for key, value in state.items()}

    def phi_list(self, state, n_layers):
        """``Phi^l`` of layers ``0..L`` (None where the layer predicts itself)."""
        return [state.get(f"Phi{l}") for l in range(n_layers + 1)]

    def reference_state_update(self, network, W, b, B, state, x_in, targets, lr):
        return self.reference_step(network, W, b, B, state, x_in, targets, lr)[3]

    def _phi_step(self, state, values, fwd, lr):
        """The authors' ``Phi <- Phi - lr sum eps xbar^T`` from the relaxed value nodes (unchanged unless learned)."""
        if not self.learns_state:
            return state
        out = {}
        for key, phi in state.items():
            l = int(key[3:])
            eps = values[l] - fwd.xbar[l] @ phi.T
            out[key] = phi - lr * (eps.T @ fwd.xbar[l])
        return out

    def reference_step(self, network, W, b, B, state, x_in, targets, lr):
        """One relaxation of the batch gives both the weight update and the ``Phi`` step."""
        phi = self.phi_list(state, len(W)) if state else None
        values, signal, slope, pre, fwd, _ = self.reference_values(network, W, b, B, x_in, targets, phi=phi)
        delta = [signal[l + 1] * slope[l + 1] for l in range(len(W))]
        dW, db = [d.T @ pre[l] for l, d in enumerate(delta)], [d.sum(axis=0) for d in delta]
        return dW, db, fwd.xbar, self._phi_step(state, values, fwd, lr)

    # ------------------------------------------------------------------ what the projections carry

    @property
    def carries_expression(self):
        return True

    def carried_cpp(self, names, index, real, update):
        """The prediction error ``(x - mu) gain`` (feedback) or the learning signal ``(mu - x) gain`` (update)."""
        if self.error_units in ("fixed", "connected"):
            decl = [f"const {real}* __restrict mu = {names['xbar_post' if self.error_units == 'fixed' else 'mu_post']};"]
            prediction = f"mu[{index}]"
        else:
            decl = [f"const {real}* __restrict anow = {names['anow_post']};", f"const {real}* __restrict bias = {names['b_post']};"]
            prediction = f"arsim_activation(anow[{index}] + bias[{index}], kind, slope)"
        return decl, (f"({prediction} - x[{index}]) * gain" if update else f"(x[{index}] - {prediction}) * gain")

    def carried_numpy(self, post, functions, kind, slope, gain, update):
        x = post.variables["x"].get_value()
        if self.error_units in ("fixed", "connected"):
            prediction = post.variables["xbar" if self.error_units == "fixed" else "mu"].get_value()
        else:
            current = post.variables["anow"].get_value() + post.variables["b"].get_value()
            prediction = functions["act_f"].pyfunc(current, kind, slope)
        return ((prediction - x) if update else (x - prediction)) * gain

    def layer_gains(self, layer, n_layers):
        if layer == n_layers:
            return self.ratio, 1.0
        return 1.0, 1.0 / self.ratio

    # ------------------------------------------------------------------ from the simulated value nodes

    def _predictions(self, values: list, W: list, b: list, xbar: list, network, predictions=None) -> tuple[list, list]:
        """``mu^l`` and ``f'^l`` of layers ``1..L`` (index 0 unused) for value nodes ``values``.

        ``predictions``: the simulated ``mu`` of every layer (error connections).
        """
        n_layers = len(W)
        if self.error_units == "connected":
            if predictions is None:
                raise ValueError("error connections: the simulated predictions mu are needed")
            return predictions, None
        if self.error_units == "fixed":
            return xbar, None
        mu, slope = [None], [None]
        for l in range(1, n_layers + 1):
            act = network.output if l == n_layers else network.hidden
            u = values[l - 1] @ W[l - 1].T + b[l - 1]
            mu.append(act.f(u))
            slope.append(act.fprime(u))
        return mu, slope

    def _simulated_predictions(self, raw, n_layers):
        """The simulated ``mu = Phi xbar`` of every layer (error connections), else None."""
        if self.error_units != "connected" or raw is None:
            return None
        return [raw[f"layer{l}.mu"] for l in range(n_layers + 1)]

    def local_factors(self, x, W, b, xbar, fp, network, raw=None):
        n_layers = len(W)
        values = [xbar[0]] + list(x[1:])
        mu, slope = self._predictions(values, W, b, xbar, network, self._simulated_predictions(raw, n_layers))
        signal = [None] + [(mu[l] - values[l]) * self.layer_gains(l, n_layers)[1] for l in range(1, n_layers + 1)]
        if self.frozen_forward:
            return signal, fp, xbar
        return signal, slope, values

    def signal_traces(self, xtrace, W, b, xbar, x_in, network, raw=None):
        n_layers = len(W)
        records = len(xtrace[1])
        values = [np.broadcast_to(x_in, (records, len(x_in)))] + list(xtrace[1:])
        mu, _ = self._predictions(values, W, b, xbar, network, self._simulated_predictions(raw, n_layers))
        return [None] + [(mu[l] - values[l]) * self.layer_gains(l, n_layers)[1] for l in range(1, n_layers + 1)]

    # ------------------------------------------------------------------ numpy reference

    def reference_values(self, network, W, b, B, x_in, targets, n_steps: int | None = None, record: bool = False, phi=None):
        """Relax the value nodes of a batch (rows are samples): an Euler loop written from SPEC 3.7.

        ``phi``: the error connections ``Phi^l`` of layers ``0..L`` (None entries: one to one).

        Returns
        -------
        values : list of ndarray
            The value nodes of layers ``0..L`` after ``n_steps`` synchronous steps.
        signal : list of ndarray
            The learning signal ``-sigma_L eps^l`` of layers ``1..L`` (index 0 None).
        slope, pre : list of ndarray
            ``f'`` of layers ``1..L`` and the pre-synaptic activity of layers ``0..L-1`` of the update.
        fwd : arsim.reference.oracle.Forward
            The forward sweep.
        trace : list
            With ``record``, ``trace[l]`` holds the signal of layer ``l`` after every step (step 0 first).
        """
        from ..reference import oracle

        hidden, output = network.hidden, network.output
        fwd = oracle.forward(W, b, x_in, hidden, output, network.loss)
        e = oracle.output_error(fwd.xbar[-1], targets, network.loss)
        n_layers = len(W)
        precision = [1.0] * n_layers + [self.ratio]
        n_steps = network.n_relax_steps if n_steps is None else n_steps
        values = [v.copy() for v in fwd.xbar]
        values[n_layers] = fwd.xbar[n_layers] - e

        def predict(layer):
            if phi is not None and phi[layer] is not None:
                return fwd.xbar[layer] @ phi[layer].T, fwd.fp[layer]
            if self.frozen_forward:
                return fwd.xbar[layer], fwd.fp[layer]
            act = output if layer == n_layers else hidden
            u = values[layer - 1] @ W[layer - 1].T + b[layer - 1]
            return act.f(u), act.fprime(u)

        def errors():
            predicted = [None] + [predict(l) for l in range(1, n_layers + 1)]
            eps = [None] + [(values[l] - predicted[l][0]) * precision[l] for l in range(1, n_layers + 1)]
            return eps, [None] + [p[1] for p in predicted[1:]]

        trace = [None] + [[] for _ in range(n_layers)]
        for step in range(n_steps + 1):
            eps, slope = errors()
            if record:
                for l in range(1, n_layers + 1):
                    trace[l].append(-eps[l] / self.ratio)
            if step == n_steps:
                break
            # synchronous: every layer's step reads the state the step started from
            drive = [None] + [(eps[l + 1] * slope[l + 1] if self.derivative else eps[l + 1]) @ B[l].T for l in range(1, n_layers)]
            for l in range(1, n_layers):
                values[l] = values[l] + network.eta * (drive[l] - eps[l])
        signal = [None] + [-eps[l] / self.ratio for l in range(1, n_layers + 1)]
        pre = fwd.xbar if self.frozen_forward else values
        return values, signal, slope, pre, fwd, [None] + [np.array(t) for t in trace[1:]] if record else None

    def reference_update(self, network, W, b, B, x_in, targets, state=None):
        return self.reference_step(network, W, b, B, state or {}, x_in, targets, 0.0)[:3]
