"""GAIT-prop (Ahmad, van Gerven & Ambrogioni 2020, arXiv 2006.06438), SPEC 3.8 and research/gait_pal_di.md A."""

from __future__ import annotations

import numpy as np

from .base import Param, Rule, non_negative, positive, register

__all__ = ["GaitProp"]


@register
class GaitProp(Rule):
    """GAIT-prop: the relaxing state of every hidden layer is its target, propagated through exact inverses."""

    name = "gait"
    title = "GAIT-prop"
    summary = """
Ahmad, van Gerven & Ambrogioni 2020 (research/gait_pal_di.md A). The target `t^l` of every layer is a
small perturbation of its forward activity; each hidden layer relaxes its displacement `x^l = xbar^l - t^l`
from 0, with the output clamped to `x^L = e` (so `t^L = xbar^L - e`):
`tau dx^l/dt = -x^l + (W^l)^-1 (f^-1(xbar^{l+1}) - f^-1(xbar^{l+1} - gamma f'^{l+1}^2 x^{l+1}))`,
a cascade whose fixed point (reached exactly in `L-1` steps at `dt/tau = 1`) is the authors' targets
`t^l = (W^l)^-1 (f^-1(xbar^{l+1} + gamma f'^2 (t^{l+1} - xbar^{l+1})) - b^l)`. The backward matrix
`B^l = (W^l)^-1` is exact. The local error `eps^l = gamma^-(L-l) x^l f'^l` gives `dW^{l-1} = -lr eps^l xbar^{l-1}^T`;
with orthogonal `W^1..W^{L-1}` and no unit crossing the leaky-ReLU kink it is backprop's for any gamma.
Layers above the input are square or, in the authors' tower form, narrowing: `W^l = [S^l, 0]` reads the
first `n_{l+1}` units of its layer and the others keep their forward activity as target (`x = 0`).
The activations must be invertible (leaky_relu, tanh, sigmoid, linear); the loss mse.
Training adds the authors' soft orthogonality penalty `lambda sum_{i != j} ((W^l^T W^l)_ij)^2` of
`W^1..W^{L-1}` to the data gradient (plain SGD; the authors use Adam) and recomputes `(S^l)^-1` after
every update, both inside the standalone run (LAPACK `getrf`/`getri` at each batch boundary), so a run
holds many batches. A block whose 1-norm condition number reaches 1e12 stops training in one line naming
the layer and the update. The metrics count, per epoch and hidden layer, the units whose perturbed
argument crosses the leaky-ReLU kink (`kink_crossings_l`, counted by the run from the relaxed state the
update uses), where the equivalence with BP breaks; a warning is printed when `gamma^(L-1)` nears the
floating-point cancellation floor.
"""
    params = {
        "gamma": Param(float, 1e-3, "gamma", "size of the target perturbation (float64 cancellation grows like gamma^-(L-1))", positive),
        "orthogonal_reg": Param(float, 0.1, "lambda", "soft orthogonality penalty sum_{i != j} ((W^T W)_ij)^2 of the update", non_negative),
    }

    inverse_feedback = True
    orthogonality_penalty = True
    counts_kinks = True

    def __init__(self, settings=None, derivative=True, ordering="synchronous", forward="frozen", feedback="transpose"):
        super().__init__(settings, derivative, ordering, forward, feedback)
        # the feedback carries the inverse map, not x f': no derivative factor on top of it
        self.derivative = False

    #: the benchmark net (784-300-300-100-10) is a tower; it needs an invertible activation. gamma only scales
    #: the arithmetic's rounding error (u gamma^-(L-1)), not its cost. Brian2 against numpy after the bench's
    #: 16 batches: 2.3e-8 at gamma 0.1 (above the 1e-9 cross-check), 9.9e-12 at 0.3; at 1.0 W^1 went singular
    bench_keys = {"activation": "leaky_relu", "leaky_slope": 0.1, "init": "orthogonal", "gait.gamma": 0.3}

    #: the 1-norm condition number of a square block ``S^l`` at which the run stops: its inverse's relative
    #: error is about ``u * condition``, 1e-4 in float64
    MAX_CONDITION = 1e12

    #: the relative rounding error ``u / gamma^(L-1)`` of the bottom layer's error above which a run is warned
    CANCELLATION_WARNING = 1e-6

    @classmethod
    def check_network(cls, sizes, activation, output_activation, leaky_slope):
        from ..activations import INVERTIBLE

        for key, value in (("activation", activation), ("output_activation", output_activation)):
            if value not in INVERTIBLE:
                return (f"{key} = {value!r} with rule = 'gait'; expected an invertible activation:"
                        f" {', '.join(repr(a) for a in INVERTIBLE)} (targets pass through f^-1)")
        if "leaky_relu" in (activation, output_activation) and leaky_slope <= 0:
            return "leaky_slope = 0 with rule = 'gait'; expected 0 < leaky_slope < 1 (the leaky ReLU must be invertible)"
        for l in range(1, len(sizes) - 1):
            if sizes[l + 1] > sizes[l]:
                return (f"sizes = {list(sizes)}: layer {l} (W^{l}) is {sizes[l + 1]} x {sizes[l]} with rule = 'gait';"
                        f" expected n_{l + 1} <= n_{l} (square layers, or the tower form for narrowing ones:"
                        f" targets pass through (W^l)^-1)")
        return None

    def config_warnings(self, network):
        n_layers = network.n_layers
        unit = np.finfo(np.float32 if network.precision == "float32" else np.float64).eps / 2
        floor = unit / self.gamma ** (n_layers - 1)
        if n_layers >= 2 and floor > self.CANCELLATION_WARNING:
            return [f"gait.gamma = {self.gamma:g} with {n_layers} layers in {network.precision}: the bottom layer's error"
                    f" xbar - t is O(gamma^{n_layers - 1}) = {self.gamma ** (n_layers - 1):.3g}, read with relative rounding"
                    f" error about {floor:.2g}; raise gamma or use fewer layers"]
        return []

    def check_run(self, raw, n_layers, epoch, first_batch):
        """Stop at the first update after which the run found a block ``S^l`` singular (`MAX_CONDITION`)."""
        for l in range(1, n_layers):
            update = int(raw[f"proj{l}.singular_update"][0])
            if update > 0:
                condition = float(raw[f"proj{l}.singular_condition"][0])
                raise FloatingPointError(
                    f"GAIT-prop: W^{l} is singular after update {first_batch + update} of epoch {epoch} (1-norm condition"
                    f" number {condition:.3g}, limit {self.MAX_CONDITION:.0e}); raise gait.orthogonal_reg or lower train.lr")

    def plasticity_scalars(self, lr, sizes):
        rows = super().plasticity_scalars(lr, sizes)
        # W^0 feeds no inverse: only the layers targets pass through are pushed towards orthogonality
        for row in rows[1:]:
            row["c_orth"] = float(self.settings["orthogonal_reg"])
        return rows

    def diagnostic_keys(self, n_layers):
        return [f"kink_crossings_{l}" for l in range(1, n_layers)]

    def diagnostics(self, raw, network):
        """Units whose target step crosses the leaky-ReLU kink, from the relaxed state the update uses.

        A training run counts them itself (``proj{l}.kinks``, summed over its samples); for a
        relaxation they are counted here from its final state: layer ``l+1``'s argument
        ``xbar - gamma f'^2 x`` of ``(W^l)^-1 f^-1`` against ``xbar``.
        """
        n_layers = network.n_layers
        out = {}
        for l in range(1, n_layers):
            if f"proj{l}.kinks" in raw:
                out[f"kink_crossings_{l}"] = int(round(float(raw[f"proj{l}.kinks"][0])))
                continue
            kind = network.output_activation if l + 1 == n_layers else network.activation
            above, fp, x = (raw[f"layer{l + 1}.{v}"] for v in ("xbar", "fp", "x"))
            argument = above - self.gamma * fp * fp * x
            out[f"kink_crossings_{l}"] = int(np.count_nonzero((argument >= 0) != (above >= 0))) if kind == "leaky_relu" else 0
        return out

    @classmethod
    def required_keys(cls, settings):
        return {
            "derivative": (True, "GAIT-prop's error always carries f'"),
            "initial_state": ("forward", "targets start at the forward activity"),
            "ordering": ("synchronous", "the target cascade is integrated synchronously"),
            "loss": ("mse", "the target t^L = xbar^L - e of a linear or invertible output"),
        }

    @property
    def gamma(self) -> float:
        return float(self.settings["gamma"])

    def input_columns(self, sizes):
        # the tower form: W^l (l >= 1) reads the first n_{l+1} units of its layer
        return [sizes[0]] + [sizes[l + 1] for l in range(1, len(sizes) - 1)]

    def x_start(self, initial_state, training):
        return 0.0  # the targets start at the forward activity: displacement 0

    def _inverses(self, W, B, when):
        out = [np.zeros(W[0].T.shape) if B is None else B[0]]
        for l in range(1, len(W)):
            n_out, n_in = W[l].shape
            if n_out > n_in:
                raise ValueError(f"layer {l}: W^{l} is {n_out} x {n_in}; GAIT-prop needs square or narrowing layers")
            if not np.all(np.isfinite(W[l])):
                if B is None:
                    raise FloatingPointError(f"GAIT-prop: W^{l} holds NaN or Inf {when}; no inverse to keep")
                out.append(B[l])  # diverged weights are reported as NaN/Inf where the weights are checked
                continue
            square = W[l][:, :n_out]
            try:
                inverse_square = np.linalg.inv(square)
                # the 1-norm condition number from the inverse the run needs anyway: np.linalg.cond's SVD
                # cost 4 times the inverse (12 of GAIT-prop's ~150 ms per batch on the bench net)
                condition = np.linalg.norm(square, 1) * np.linalg.norm(inverse_square, 1)
            except np.linalg.LinAlgError:
                condition = np.inf  # an exactly singular block (LAPACK found a zero pivot)
            if not condition < self.MAX_CONDITION:
                raise FloatingPointError(f"GAIT-prop: W^{l} is singular {when} (1-norm condition number {condition:.3g},"
                                         f" limit {self.MAX_CONDITION:.0e}); raise gait.orthogonal_reg or lower train.lr")
            inverse = np.zeros((n_in, n_out))
            inverse[:n_out] = inverse_square  # auxiliary units get no feedback: their displacement stays 0
            out.append(inverse)
        return out

    def initial_backward(self, W, rng, std):
        """``B^l = (S^l)^-1`` (zero rows for auxiliary units) of the hidden layers; ``B^0`` feeds the input: zeros."""
        return self._inverses(W, None, "at initialisation")

    def stabilise(self, W, B, eta, when):
        """Recompute the exact inverses ``B^l = (S^l)^-1`` of the hidden layers (the run's backward matrices)."""
        return self._inverses(W, B, when), 0

    @property
    def carries_expression(self):
        return True

    def carried_cpp(self, names, index, real, update):
        """The pre-activation displacement ``f^-1(xbar) - f^-1(xbar - gain fp^2 x)`` (feedback, gain = gamma)
        or the local error ``gain x`` (update, gain = gamma^-k)."""
        if update:
            return [], f"x[{index}] * gain"
        decl = [f"const {real}* __restrict xb = {names['xbar_post']};", f"const {real}* __restrict fpv = {names['fp_post']};"]
        i = index
        return decl, (f"(arsim_activation_inverse(xb[{i}], kind, slope)"
                      f" - arsim_activation_inverse(xb[{i}] - gain * fpv[{i}] * fpv[{i}] * x[{i}], kind, slope))")

    def carried_numpy(self, post, functions, kind, slope, gain, update):
        x = post.variables["x"].get_value()
        if update:
            return x * gain
        xbar, fp = (post.variables[v].get_value() for v in ("xbar", "fp"))
        f_inv = functions["act_finv"].pyfunc
        return f_inv(xbar, kind, slope) - f_inv(xbar - gain * fp * fp * x, kind, slope)

    def layer_gains(self, layer, n_layers):
        if layer == 0:
            return 1.0, 1.0
        return self.gamma, self.gamma ** -(n_layers - layer)

    def local_factors(self, x, W, b, xbar, fp, network, raw=None):
        n_layers = len(W)
        signal = [None] + [x[l] * self.layer_gains(l, n_layers)[1] for l in range(1, n_layers + 1)]
        return signal, fp, xbar

    def signal_traces(self, xtrace, W, b, xbar, x_in, network, raw=None):
        n_layers = len(W)
        return [None] + [xtrace[l] * self.layer_gains(l, n_layers)[1] for l in range(1, n_layers + 1)]

    # ------------------------------------------------------------------ numpy reference

    def reference_displacements(self, network, W, b, B, x_in, targets, n_steps: int | None = None, record: bool = False):
        """Relax the displacements of a batch (rows are samples): a synchronous Euler loop written from the card.

        Returns ``(x, fwd, trace)``: the displacements ``xbar^l - t^l`` of layers ``0..L`` (``x[L] = e``),
        the forward sweep and, with ``record``, ``trace[l]`` of layer ``l``'s after every step (step 0 first).
        """
        from ..activations import ACTIVATION_CODES, inverse
        from ..reference import oracle

        fwd = oracle.forward(W, b, x_in, network.hidden, network.output, network.loss)
        e = oracle.output_error(fwd.xbar[-1], targets, network.loss)
        n_layers = len(W)
        n_steps = network.n_relax_steps if n_steps is None else n_steps
        xbar, fp, gamma = fwd.xbar, fwd.fp, self.gamma
        x = [np.zeros_like(v) for v in xbar]
        x[n_layers] = e

        def f_inv(layer, y):
            kind = network.output_activation if layer == n_layers else network.activation
            return inverse(y, ACTIVATION_CODES[kind], network.leaky_slope)

        trace = [None] + [[x[l].copy()] for l in range(1, n_layers + 1)]
        for _ in range(n_steps):
            carried = [None] + [f_inv(l + 1, xbar[l + 1]) - f_inv(l + 1, xbar[l + 1] - gamma * fp[l + 1] ** 2 * x[l + 1])
                                for l in range(1, n_layers)]
            for l in range(1, n_layers):
                x[l] = x[l] + network.eta * (carried[l] @ B[l].T - x[l])
            if record:
                for l in range(1, n_layers + 1):
                    trace[l].append(x[l].copy())
        return x, fwd, ([None] + [np.array(v) for v in trace[1:]]) if record else None

    def reference_update(self, network, W, b, B, x_in, targets):
        x, fwd, _ = self.reference_displacements(network, W, b, B, x_in, targets)
        n_layers = len(W)
        delta = [x[l + 1] * self.layer_gains(l + 1, n_layers)[1] * fwd.fp[l + 1] for l in range(n_layers)]
        return [d.T @ fwd.xbar[l] for l, d in enumerate(delta)], [d.sum(axis=0) for d in delta], fwd.xbar

    def reference_epoch(self, experiment, params, x_in, targets, noise=None, after_batch=None):
        def inverted(index, new):
            new.B, _ = self.stabilise(new.W, new.B, experiment.network.eta, f"after update {index + 1}")
            if after_batch is not None:
                after_batch(index, new)

        params = params.copy()
        params.B, _ = self.stabilise(params.W, params.B, experiment.network.eta, "before the epoch")
        return super().reference_epoch(experiment, params, x_in, targets, noise=noise, after_batch=inverted)
