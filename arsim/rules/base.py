"""The credit-assignment rule interface: declarations the builder, trainer and CLI ask.

A rule is one class in its own module of `arsim.rules`, registered with
`register`. It declares

* its parameters (`Param`), read from a model-file table named after the
  rule (``[kp] decay = 1e-3``), validated by `arsim.config` and printed as
  the rule's doc card (`Rule.card`) from the same declaration;
* what it adds to the shared topology: a separate backward matrix ``B^l``
  (synaptic variable ``wb``), where the feedback into hidden layer ``l``
  comes from (the layer above, or the output for direct feedback), the
  mirror-noise arrays of a mirror phase;
* its plasticity, as coefficients over the backward-weight primitives of
  `arsim.rules.primitives` (Kunin et al. 2020: tied gradient, decay, amp,
  null) plus a decay of the forward weights and, for sign symmetry, a
  backward matrix recomputed from ``W``;
* its batched numpy reference (`Rule.reference_epoch`), composed from the
  same declarations with numpy code that shares nothing with the C++ of
  `arsim.brian.cpp_projection`; tests hold the two to 1e-10.

Every rule runs on the one neuron type (`arsim.brian.neuron`): the relaxation
``tau dx^l/dt = -x^l + fb^l`` with ``fb^l = B^l (x^s [* f'^s])`` for the
rule's source layer ``s``. Adding a rule means adding a module here; the
builder (`arsim.brian.network`), the trainer, the references and the CLI only
call the methods below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import numpy as np

__all__ = ["Param", "Rule", "RULES", "register", "PLASTICITY_SCALARS", "FORWARD_VARIANTS", "positive", "non_negative"]

RULES: dict[str, type["Rule"]] = {}


def register(cls):
    """Class decorator adding a rule to `RULES` under ``cls.name``."""
    RULES[cls.name] = cls
    return cls


def positive(value):
    return None if value > 0 and math.isfinite(value) else "a finite number > 0"


def non_negative(value):
    return None if value >= 0 and math.isfinite(value) else "a finite number >= 0"


def at_least_one(value):
    return None if value >= 1 else "an integer >= 1"


@dataclass(frozen=True)
class Param:
    """Declaration of one rule parameter (one row of the rule's doc card).

    Attributes
    ----------
    kind : type
        ``float``, ``int``, ``bool`` or ``str`` (after TOML parsing).
    default : object
        Default value.
    math : str
        Symbol in the rule's equations.
    doc : str
        One-line meaning.
    check : callable, optional
        Returns what is accepted, or None if the value is fine.
    unit : str
        Physical unit (``--`` if dimensionless).
    build : bool
        Whether the value changes the compiled code (array sizes, code
        paths): part of the build key. Other parameters are run-time
        arguments of the one compiled binary.
    """

    kind: Any
    default: Any
    math: str
    doc: str
    check: Callable[[Any], str | None] | None = None
    unit: str = "--"
    build: bool = False


#: run-time scalars of a trained projection (shared variables of its Synapses): the SGD
#: step is w <- w - lr (dw + wdecay w), and the backward matrix moves by
#: wb <- wb - eta_b (c_tied dw + 2 c_decay wb - c_amp <r x^T> + 2 c_null <r (B r)^T>),
#: then (sign) wb = b_scale sign(w), then per mirror step
#: wb <- wb - m_eta (2 m_decay wb - m_amp <r x^T>_noise); with `Rule.orthogonality_penalty` the
#: forward step also adds c_orth dR/dW of R = sum_{i != j} ((W^T W)_ij)^2 (GAIT-prop's soft orthogonality)
PLASTICITY_SCALARS = ("wdecay", "eta_b", "c_tied", "c_decay", "c_amp", "c_null", "b_scale", "m_eta", "m_decay", "m_amp",
                      "c_orth")

#: ``forward``'s values (SPEC 2, "relaxing the frozen forward pass"): whether the relaxation's ``f'``, the
#: update's ``f'`` and the update's pre-synaptic activity come from the current (relaxing) state instead of
#: the stored forward sweep. The four variants the follow-up paper ran, one at a time, carry the names of
#: its code's flags (Millidge et al., arXiv 2010.06219, main.py); ``all_current`` combines them, which the
#: authors never ran (it does not learn: chance level on digits)
FORWARD_VARIANTS = {
    "frozen": (False, False, False),
    "fderiv_x_update": (True, False, False),
    "fderiv_weight_update": (False, True, False),
    "fderiv_both": (True, True, False),
    "current_x_weights": (False, False, True),
    "all_current": (True, True, True),
}

#: the primitives a rule may use on the training activity (SPEC 3.5)
TRAIN_PRIMITIVES = ("decay", "amp", "null")


class Rule:
    """Base class of every credit-assignment rule.

    Parameters
    ----------
    settings : dict
        The rule's table, ``{param: value}`` (missing entries take the
        declared defaults).
    derivative : bool
        Carry ``f'`` of the source layer in the feedback (SPEC 2,
        simplification 3 when False).
    ordering : {"synchronous", "sequential"}
        Layer update order within an Euler step.
    forward : str
        ``frozen`` (stored ``xbar``, ``f'(a)``) or one of the relaxed forward
        passes of `FORWARD_VARIANTS` (AR only).
    feedback : str
        AR's backward weights: ``transpose``, ``learned``, ``random``.
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    #: card text: what the rule computes and how it maps onto the relaxation
    summary: ClassVar[str] = ""
    params: ClassVar[dict] = {}
    #: False: the rule is the numpy oracle itself (bp), no Brian2 network
    simulated: ClassVar[bool] = True
    #: feedback into hidden layer l comes from the output layer (DFA) instead of l+1
    direct: ClassVar[bool] = False
    #: the rule keeps a backward matrix of its own (B^l in ``wb``)
    separate_backward: ClassVar[bool] = True
    #: dB = (dW)^T term (Kolen-Pollack, AR learned)
    tied: ClassVar[bool] = False
    #: primitives on the training activity (information alignment)
    train_primitives: ClassVar[tuple] = ()
    #: a mirror phase per batch (weight mirror)
    mirror: ClassVar[bool] = False
    #: B = scale * sign(W)^T, recomputed after every update (sign symmetry)
    sign: ClassVar[bool] = False
    #: B^l (l >= 1) = the inverse of W^l's square block ``S^l`` (its first n_{l+1} columns), recomputed after every
    #: update inside the run; the run records the first update after which the 1-norm condition number of
    #: ``S^l`` reached `MAX_CONDITION` (``singular_update``, ``singular_condition``; `check_run`). GAIT-prop
    inverse_feedback: ClassVar[bool] = False
    #: with `inverse_feedback`: the 1-norm condition number of ``S^l`` at which a run stops
    MAX_CONDITION: ClassVar[float] = 1e12
    #: the forward step adds ``c_orth`` times the gradient of the soft orthogonality penalty (`PLASTICITY_SCALARS`)
    orthogonality_penalty: ClassVar[bool] = False
    #: the run counts, per projection l >= 1, the units of layer l+1 whose carried argument
    #: ``xbar - gain f'^2 x`` lies across a leaky ReLU's kink from ``xbar`` (``kinks``, GAIT-prop)
    counts_kinks: ClassVar[bool] = False
    #: projection backends the rule supports
    projections: ClassVar[tuple] = ("dense",)
    #: None: the relaxing state is the learning signal (AR and the FA family); "fixed" or
    #: "strict": ``x`` is a value node relaxing down the prediction error (predictive coding)
    error_units: ClassVar[str | None] = None
    #: a controller population per hidden layer (``ctrl{l+1}``, dynamic inversion) drives its feedback
    controllers: ClassVar[bool] = False
    #: the rule's own trainable state (`initial_state`) learns during training
    learns_state: ClassVar[bool] = False
    #: model keys `arsim bench --rule` sets for this rule (the benchmark net is ReLU otherwise)
    bench_keys: ClassVar[dict] = {}
    #: the rule runs on convolutional and pooling projections (`arsim.layers`), not only dense ones
    convolutional: ClassVar[bool] = False

    def __init__(self, settings: dict | None = None, derivative: bool = True, ordering: str = "synchronous",
                 forward: str = "frozen", feedback: str = "transpose", conv_feedback: str = "same",
                 conv_derivative: str = "same", conv_layers=(), sizes=None):
        #: AR's switches of the convolutional projections (``same``: as ``feedback`` / ``derivative``) and their indices
        self.conv_feedback, self.conv_derivative, self.conv_layers = conv_feedback, conv_derivative, frozenset(conv_layers)
        #: the layers' unit counts where the weights do not tell them (a convolution's kernel; convolutional rules only)
        self.sizes = tuple(sizes) if sizes is not None else None
        self.settings = {key: spec.default for key, spec in self.params.items()}
        self.settings.update(settings or {})
        self.derivative = derivative
        self.ordering = ordering
        self.forward = forward
        #: f' of the relaxation, f' of the update, the update's pre-synaptic activity: from the current state
        self.current_relaxation_derivative, self.current_update_derivative, self.current_presynaptic = FORWARD_VARIANTS[forward]
        self.feedback = feedback

    def for_layer(self, layer: int) -> "Rule":
        """The rule as projection ``layer`` runs it: itself, or (AR's conv switches) a view with that layer's feedback."""
        return self

    @property
    def frozen_forward(self) -> bool:
        """Whether the relaxation and the update use only the stored forward sweep (``xbar``, ``f'(a)``)."""
        return not (self.current_relaxation_derivative or self.current_update_derivative or self.current_presynaptic)

    @property
    def needs_current_drive(self) -> bool:
        """Whether some ``f'`` is taken at the current drive ``W x + b`` (``anow``, computed every step)."""
        return self.current_relaxation_derivative or self.current_update_derivative

    # ------------------------------------------------------------------ declarations

    @classmethod
    def build_settings(cls, settings: dict) -> tuple:
        """The parameters that change the compiled code, as a hashable tuple."""
        return tuple(sorted((k, settings.get(k, spec.default)) for k, spec in cls.params.items() if spec.build))

    @classmethod
    def required_keys(cls, settings: dict) -> dict:
        """Top-level model-file keys this rule (with its table ``settings``) fixes: ``{key: (value, why)}``.

        `arsim.config` refuses another value with one line naming the key and ``why``.
        """
        return {}

    @classmethod
    def card(cls) -> str:
        """The rule's doc card (markdown): summary and a Parameter | Unit | Math | Default | Description table."""
        lines = [f"### `rule = \"{cls.name}\"`: {cls.title}", "", cls.summary.strip(), ""]
        if cls.params:
            lines += [f"Table `[{cls.name}]`:", "", "| Parameter | Unit | Math | Default | Description |", "|---|---|---|---|---|"]
            for key, spec in cls.params.items():
                default = repr(spec.default) if isinstance(spec.default, str) else str(spec.default).lower() if isinstance(spec.default, bool) else f"{spec.default:g}"
                lines.append(f"| `{key}` | {spec.unit} | {spec.math} | {default} | {spec.doc}{' (compiled)' if spec.build else ''} |")
        else:
            lines.append("No parameters of its own.")
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------ topology

    @property
    def backward_variable(self) -> str:
        """Synaptic variable holding ``B^l[pre, post]``: ``wb`` (own matrix) or ``w`` (``B = W^T``)."""
        return "wb" if self.separate_backward else "w"

    @property
    def learns_backward(self) -> bool:
        """Whether ``B`` changes during training."""
        return self.tied or bool(self.train_primitives) or self.mirror or self.sign

    def feedback_source(self, layer: int, n_layers: int) -> int:
        """Layer whose activity drives the feedback into hidden ``layer``."""
        return n_layers if self.direct else layer + 1

    def backward_holder(self, layer: int, n_layers: int) -> str | None:
        """Name of the Synapses holding ``B^layer`` in ``wb`` (None: not simulated, or ``B = W^T``)."""
        if not self.for_layer(layer).separate_backward:
            return None
        if self.direct:
            return f"direct{layer}" if layer >= 1 else None
        return f"proj{layer}"

    def backward_arrays(self, B: list) -> dict:
        """Run-time arrays of the backward matrices: ``{"<holder>.wb": B^l[pre, post] by synapse}``.

        A convolution's backward kernel (4-D, `arsim.layers`) goes in as it is, in the layout of ``w``.
        """
        n_layers = len(B)
        out = {}
        for l in range(n_layers):
            holder = self.backward_holder(l, n_layers)
            if holder is not None:
                # synapse k = (post, pre) holds B[pre, post]
                out[f"{holder}.wb"] = B[l].ravel() if B[l].ndim == 4 else B[l].T.ravel()
        return out

    def backward_from_results(self, raw: dict, W: list, previous: list) -> list:
        """The backward matrices after a run: from the holders' ``wb``, else ``W^T`` (or unchanged)."""
        n_layers = len(W)
        out = []
        for l in range(n_layers):
            holder = self.backward_holder(l, n_layers)
            if holder is not None and W[l].ndim == 4 and not self.direct:
                out.append(raw[f"{holder}.wb"].reshape(W[l].shape).copy())  # a convolution's kernel
            elif holder is not None and not self.direct:
                out.append(raw[f"{holder}.wb"].reshape(W[l].shape).T.copy())  # W^T's shape (a pooled input: fewer units)
            elif holder is not None:
                n_source = W[self.feedback_source(l, n_layers) - 1].shape[0]
                out.append(raw[f"{holder}.wb"].reshape(n_source, self._units(W, l)).T.copy())
            elif self.for_layer(l).separate_backward:
                out.append(previous[l].copy())
            else:
                out.append(W[l].copy() if W[l].ndim == 4 else W[l].T.copy())
        return out

    def initial_backward(self, W: list, rng: np.random.Generator, std: float) -> list:
        """Initial ``B^l`` of shape ``(n_l, n_source)``, ``l = 0..L-1`` (a convolution's: its kernel's, `arsim.layers`)."""
        if not any(self.for_layer(l).separate_backward for l in range(len(W))):
            return [w.copy() if w.ndim == 4 else w.T.copy() for w in W]
        if not self.direct:
            # W^T's shape (a pooled dense projection reads fewer units than its layer has); a layer with B = W^T
            # (AR's conv switches) gets its copy
            return [rng.normal(0.0, std, size=w.shape if w.ndim == 4 else w.T.shape) if self.for_layer(l).separate_backward
                    else (w.copy() if w.ndim == 4 else w.T.copy()) for l, w in enumerate(W)]
        n_layers = len(W)
        sizes = [self._units(W, l) for l in range(n_layers + 1)]
        return [rng.normal(0.0, std, size=(sizes[l], sizes[self.feedback_source(l, n_layers)])) for l in range(n_layers)]

    def _units(self, W: list, layer: int) -> int:
        """Units of layer ``layer``: from the dense weights, or `sizes` (a convolution's kernel does not tell them)."""
        if self.sizes is not None:
            return self.sizes[layer]
        return W[0].shape[1] if layer == 0 else W[layer - 1].shape[0]

    def initial_state(self, sizes, rng: np.random.Generator) -> dict:
        """The rule's own arrays beside ``W``, ``b``, ``B`` (npz keys, e.g. PC's ``Phi{l}``), drawn after ``B``."""
        return {}

    def state_keys(self, sizes) -> list:
        """The keys of `initial_state` (npz keys of checkpoints and weight files)."""
        return []

    def state_arguments(self, state: dict) -> dict:
        """Run-time arrays of the rule's own state (``{"err1.w": ...}``)."""
        return {}

    def state_from_results(self, raw: dict, state: dict) -> dict:
        """The rule's own state after a Brian2 run (unchanged by default)."""
        return {key: value.copy() for key, value in state.items()}

    def reference_state_update(self, network, W, b, B, state: dict, x_in, targets, lr: float) -> dict:
        """The rule's own state after one minibatch of the numpy reference (computed with the old weights)."""
        return state

    def forward_decay(self) -> float:
        """Decay ``lambda`` of the forward weights per update (``w <- w - lr (dw + lambda w)``)."""
        return 0.0

    def plasticity_scalars(self, lr: float, sizes) -> list:
        """Per projection ``l``, the values of `PLASTICITY_SCALARS` (run-time)."""
        return [dict.fromkeys(PLASTICITY_SCALARS, 0.0) | {"wdecay": self.forward_decay()} for _ in range(len(sizes) - 1)]

    def x_start(self, initial_state: str, training: bool) -> float:
        """``x(0) / xbar`` of the hidden layers: ``initial_state`` in a relaxation, the forward state in training."""
        return 1.0 if training or initial_state == "forward" else 0.0

    def check_stability(self, W: list, B: list, eta: float, when: str) -> None:
        """Raise `FloatingPointError` (one line) if the rule's dynamics cannot converge with these weights."""

    # ------------------------------------------------------------------ the rule's own terms of the neuron type

    @property
    def stochastic(self) -> bool:
        """Whether the rule's equations draw Brian2 noise (``xi``).

        Every build of such a rule seeds its generator at the first step from
        the run-time integer ``noise_seed`` of ``layer0``, so each run is
        reproducible bit for bit. A rule whose noise can be off (PAL at
        ``sigma = 0``) decides from its build settings.
        """
        return False

    #: variables of `neuron_terms` that ``record.variables`` may name beside ``x`` and ``fb``
    recordable: ClassVar[tuple] = ()

    def neuron_terms(self) -> str:
        """Equation lines this rule adds to the one neuron type (every layer of its builds), '' for none.

        Shared scalars among them that `neuron_parameters` names are run-time
        arguments of the compiled binary, like ``tau``.
        """
        return ""

    def neuron_parameters(self, network, layer: int, n_layers: int) -> dict:
        """Run-time values ``{name: value}`` of the shared scalars of `neuron_terms` for ``layer``.

        ``network`` is the `arsim.spec.NetworkSpec`; a time constant (unit
        second) is given in units of the model's ``dt`` (`arsim.brian.network`
        turns it into the clock's seconds).
        """
        return {}

    def extend_network(self, parts) -> None:
        """Add the rule's own per-step operations to a network being built.

        ``parts`` is an `arsim.brian.network.NetworkParts`: the layers and
        projections by index, the schedule's orders, and methods that add an
        operation written in C++ (numpy on the runtime device) without the
        rule touching Brian2's generated names (`arsim.brian.cpp_projection`).
        """

    # ------------------------------------------------------------------ what the projections carry

    @property
    def carries_expression(self) -> bool:
        """Whether the carried activity is an expression (`carried_cpp`) rather than ``x`` itself."""
        return False

    def carried_cpp(self, names: dict, index: str, real: str, update: bool) -> tuple[list, str]:
        """Declarations and the C++ expression of what a projection carries from its post-synaptic unit ``index``.

        ``update`` False: the feedback's ``c`` (before the derivative factor); True: the local update's
        learning signal. ``names`` maps ``<variable>_post`` to the post-synaptic group's arrays
        (`arsim.brian.cpp_projection`); ``gain``, ``kind``, ``slope`` are in scope. AR and the
        feedback-alignment family carry ``x``.
        """
        return [], f"x[{index}]"

    def carried_numpy(self, post, functions: dict, kind, slope, gain, update: bool) -> np.ndarray:
        """The numpy twin of `carried_cpp` over every unit of the Brian2 group ``post`` (runtime device)."""
        return post.variables["x"].get_value().copy()

    @property
    def value_nodes(self) -> bool:
        """Whether the output is clamped to ``xbar^L - e`` (a value node) instead of ``e``."""
        return self.error_units is not None

    @property
    def counts_repairs(self) -> bool:
        """Whether `stabilise` may change ``B`` (the metrics then count the repairs per epoch, ``b_repairs``)."""
        return False

    def stabilise(self, W: list, B: list, eta: float, when: str) -> tuple[list, int]:
        """Check the rule's dynamics with these weights and, where the rule can, repair ``B``.

        Returns ``(B, repairs)``: the backward matrices to run with (``B``
        itself if nothing changed) and how many layers were repaired. Raises
        like `check_stability` where the rule does not repair.
        """
        self.check_stability(W, B, eta, when)
        return B, 0

    @property
    def updates_between_runs(self) -> bool:
        """Whether the rule changes its weights between Brian2 runs after every update (`stabilise`).

        Training then runs one batch per standalone run, as the rule's numpy reference updates.
        (GAIT-prop's inverses and penalty need not: the run's apply step computes them, `inverse_feedback`.)
        """
        return self.counts_repairs

    def check_run(self, raw: dict, n_layers: int, epoch: int, first_batch: int) -> None:
        """Raise `FloatingPointError` (one line) if a run's results say the rule broke down inside it.

        ``first_batch`` batches of epoch ``epoch`` came before the run. GAIT-prop reads the
        first update after which a block ``S^l`` was singular (`inverse_feedback`).
        """

    def input_columns(self, sizes) -> list | None:
        """Per layer, how many of its inputs ``W^l`` reads (the rest of its columns stay 0); None: all.

        GAIT-prop's tower form reads the first ``n_{l+1}`` units of a narrowing layer.
        """
        return None

    def constrain_weights(self, W: list) -> list:
        """``W`` with the columns beyond `input_columns` set to 0 (after every update and at initialisation)."""
        used = self.input_columns([W[0].shape[1]] + [w.shape[0] for w in W])
        if used is None:
            return W
        out = [w.copy() for w in W]
        for l, n in enumerate(used):
            out[l][:, n:] = 0.0
        return out

    @classmethod
    def check_network(cls, sizes, activation: str, output_activation: str, leaky_slope: float) -> str | None:
        """A one-line reason why this rule cannot run a network of these keys (None: it can); `arsim.config` refuses it."""
        return None

    @classmethod
    def check_timing(cls, settings: dict, dt: float) -> str | None:
        """A one-line reason why the rule's table cannot run with the Euler step ``dt`` (ms); None: it can."""
        return None

    def config_warnings(self, network) -> list:
        """Lines the CLI prints before a run whose settings are legal but numerically doubtful."""
        return []

    def diagnostic_keys(self, n_layers: int) -> list:
        """Names of the per-run counters `diagnostics` returns (metrics columns, summed over an epoch)."""
        return []

    def diagnostics(self, raw: dict, network) -> dict:
        """Counters of one run (keys: `diagnostic_keys`), from its results ``raw`` (`arsim.brian.devices.Runner.run`)."""
        return {}

    def layer_gains(self, layer: int, n_layers: int) -> tuple[float, float]:
        """``(err_gain, signal_gain)`` of layer ``layer``: the precision of its error, and its learning signal per ``mu - x``.

        Read only with error units (`arsim.brian.neuron`); 1, 1 otherwise.
        """
        return 1.0, 1.0

    def local_factors(self, x: list, W: list, b: list, xbar: list, fp: list, network, raw: dict | None = None
                      ) -> tuple[list, list, list]:
        """The factors of the local update from the relaxed states of one sample.

        ``raw`` holds every array the run returned (e.g. PC's simulated predictions ``layer{l}.mu``).

        Returns ``(signal, slope, pre)``, per layer ``0..L`` (entry 0 of the
        first two unused), with ``dW^l = (signal^{l+1} * slope^{l+1}) pre^l^T``:
        the frozen pass uses ``(x, fp, xbar)``; a relaxed forward pass takes
        ``f'`` at the current drive ``W x + b`` and / or the relaxed ``x`` as
        pre-synaptic activity (`FORWARD_VARIANTS`).
        """
        if self.frozen_forward:
            return x, fp, xbar
        n_layers = len(W)
        current = [xbar[0]] + list(x[1:])
        slope = fp
        if self.current_update_derivative:
            slope = [None] + [
                (network.output if l == n_layers else network.hidden).fprime(W[l - 1] @ current[l - 1] + b[l - 1])
                for l in range(1, n_layers + 1)
            ]
        return x, slope, current if self.current_presynaptic else xbar

    def signal_traces(self, xtrace: list, W: list, b: list, xbar: list, x_in, network, raw: dict | None = None) -> list:
        """The learning signal of layers ``1..L`` over time from the recorded ``x`` (rows are records)."""
        return xtrace

    def mirror_shape(self) -> tuple:
        """``(steps, samples)`` of the mirror phase per batch (weight mirror only)."""
        return (0, 0)

    def mirror_noise(self, rng: np.random.Generator, n_batches: int, sizes) -> dict:
        """Noise of the mirror phases of ``n_batches`` batches, ``{l: (n_batches, steps, samples, n_l)}``."""
        return {}

    # ------------------------------------------------------------------ relaxation code (Brian2)

    @property
    def derivative_variable(self) -> str:
        """The neuron variable holding ``f'`` in the relaxation: stored (``fp``) or at the current drive (``fpnow``)."""
        return "fpnow" if self.current_relaxation_derivative else "fp"

    @property
    def update_derivative_variable(self) -> str:
        """The neuron variable holding ``f'`` in the update."""
        return "fpnow" if self.current_update_derivative else "fp"

    @property
    def presynaptic_activity(self) -> str:
        """The neuron variable of the pre-synaptic activity in the update."""
        return "x" if self.current_presynaptic else "xbar"

    @property
    def synapse_equations(self) -> str:
        return "wb : 1" if self.separate_backward else ""

    def feedback_expression(self) -> str:
        """Right-hand side summed into ``fb_pre`` (``projection = "synapses"``)."""
        carried = f"x_post * {self.derivative_variable}_post" if self.derivative else "x_post"
        return f"{self.backward_variable} * {carried}"

    def projection_equations(self) -> str:
        """Synaptic equations of a summed projection: the rule's own plus, when relaxed, the current drive."""
        lines = [self.synapse_equations]
        if self.needs_current_drive:
            lines.append("anow_post = w * x_pre : 1 (summed)")
        return "\n".join(line for line in lines if line)

    def accumulate_code(self) -> str:
        """Synaptic code adding one sample's update to ``dw_acc`` (``projection = "synapses"``)."""
        return f"dw_acc += x_post * {self.update_derivative_variable}_post * {self.presynaptic_activity}_pre"

    def bias_accumulate_code(self) -> str:
        """Neuron code adding one sample's bias update to ``db_acc`` (``projection = "synapses"``)."""
        return f"db_acc += learn_bias * x * {self.update_derivative_variable}"

    def apply_code(self) -> str:
        """Synaptic code applying the accumulated update at a batch boundary (``projection = "synapses"``).

        ``apply_update_post`` is 1 at the first step after a batch and 0
        otherwise; multiplying by it (instead of branching) keeps every value
        exact: ``w - 0 * u == w`` and ``acc * 0 == 0`` for finite numbers.
        """
        lines = ["w = w - apply_update_post * lr_post * dw_acc"]
        if self.tied:
            lines.append("wb = wb - apply_update_post * lr_post * dw_acc")
        lines.append("dw_acc = dw_acc * (1 - apply_update_post)")
        return "\n".join(lines)

    # ------------------------------------------------------------------ numpy reference

    def reference_relax(self, B, xbar, fp, e, eta: float, n_steps: int, current_fp=None, feedback=None) -> list:
        """Relax the hidden layers of a batch (rows are samples) for ``n_steps`` Euler steps.

        ``current_fp(l, x_below)`` gives ``f'(W^{l-1} x^{l-1} + b^{l-1})`` for the
        relaxed forward pass (None: the stored ``fp``); ``feedback(l, carried)``
        is ``B^l``'s feedback of the carried activity of the layer above (None:
        the dense ``carried B^l^T``; a convolution's: its transposed convolution,
        `arsim.layers`).
        """
        from ..reference.euler import initial_state

        n_layers = len(xbar) - 1
        x = initial_state(xbar, e, 1.0)
        feedback = feedback or (lambda layer, carried: carried @ B[layer].T)

        def drive(layer):
            source = self.feedback_source(layer, n_layers)
            if not self.for_layer(layer).derivative:
                return feedback(layer, x[source])
            slope = fp[source] if current_fp is None else current_fp(source, x[source - 1])
            return feedback(layer, x[source] * slope)

        for _ in range(n_steps):
            if self.ordering == "synchronous":
                fb = [drive(l) for l in range(1, n_layers)]
                for l in range(1, n_layers):
                    x[l] = x[l] + eta * (fb[l - 1] - x[l])
            else:
                for l in range(n_layers - 1, 0, -1):
                    x[l] = x[l] + eta * (drive(l) - x[l])
        return x

    def reference_update(self, network, W, b, B, x_in, targets):
        """The rule's summed local update of one minibatch and what the backward step needs.

        ``network`` is the `arsim.spec.NetworkSpec` (activations, loss, dt/tau, steps).

        Returns
        -------
        dW, db : list of ndarray
            ``sum_s delta^{l+1}_s pre^l_s^T`` and ``sum_s delta^{l+1}_s`` (no learning rate, no sign).
        xbar : list of ndarray
            The batch's forward activity (the amp/null primitives use it).
        """
        from ..reference import oracle

        from ..layers import feedback_matrix

        hidden, output = network.hidden, network.output
        ops = network.ops if network.convolutional else None
        fwd = oracle.forward(W, b, x_in, hidden, output, network.loss, ops=ops)
        e = oracle.output_error(fwd.xbar[-1], targets, network.loss)
        n_layers = len(W)

        def current_fp(layer, x_below):
            act = output if layer == n_layers else hidden
            return act.fprime(x_below @ W[layer - 1].T + b[layer - 1])

        feedback = None
        if ops is not None and not self.direct:  # direct feedback is dense, from the output to every unit
            def feedback(layer, carried):
                return ops[layer].adjoint(feedback_matrix(ops[layer], B[layer]), carried, fwd.cache[layer])

        x = self.reference_relax(B, fwd.xbar, fwd.fp, e, network.eta, network.n_relax_steps,
                                 current_fp=current_fp if self.current_relaxation_derivative else None, feedback=feedback)
        if self.current_update_derivative:
            delta = [x[l + 1] * current_fp(l + 1, x[l]) for l in range(n_layers)]
        else:
            delta = [x[l + 1] * fwd.fp[l + 1] for l in range(n_layers)]
        pre = x if self.current_presynaptic else fwd.xbar
        if ops is not None:
            dW = [ops[l].gradient(d, pre[l], fwd.cache[l]) for l, d in enumerate(delta)]
        else:
            dW = [d.T @ pre[l] for l, d in enumerate(delta)]
        return dW, [d.sum(axis=0) for d in delta], fwd.xbar

    def reference_step(self, network, W, b, B, state: dict, x_in, targets, lr: float) -> tuple:
        """``(dW, db, xbar, next_state)`` of one batch: `reference_update` and, with state, `reference_state_update`.

        A rule whose update and state step share one relaxation overrides this to relax once.
        """
        if not state:
            return (*self.reference_update(network, W, b, B, x_in, targets), state)
        dW, db, xbar = self.reference_update(network, W, b, B, x_in, targets, state=state)
        return dW, db, xbar, self.reference_state_update(network, W, b, B, state, x_in, targets, lr)

    def reference_epoch(self, experiment, params, x_in: np.ndarray, targets: np.ndarray, noise: dict | None = None,
                        after_batch=None):
        """One epoch of the rule's minibatch SGD on the rows of ``x_in`` (numpy, float64).

        Parameters
        ----------
        experiment : arsim.spec.Experiment
            Its network and training settings (this rule's values are the rule's own).
        params : arsim.training.Params
            Weights at the start (not modified).
        noise : dict, optional
            Mirror noise ``{l: (n_batches, steps, samples, n_l)}`` of these batches.
        after_batch : callable, optional
            ``after_batch(batch_index, params)`` after every update.
        """
        from ..reference.gait import orthogonality_gradient
        from . import primitives

        network = experiment.network
        batch, lr = experiment.training.batch_size, experiment.training.lr
        scalars = self.plasticity_scalars(lr, network.sizes)
        new = params.copy()
        for index, start in enumerate(range(0, len(x_in) - batch + 1, batch)):
            stop = start + batch
            dW, db, xbar, next_state = self.reference_step(network, new.W, new.b, new.B, new.state, x_in[start:stop],
                                                           targets[start:stop], lr)
            for l in range(len(new.W)):
                s = scalars[l]
                rule = self.for_layer(l)
                W_old = new.W[l]
                # the penalty's gradient at the weights the batch was computed with, as the run's apply step
                penalty = s["c_orth"] * orthogonality_gradient(W_old) if s["c_orth"] else 0.0
                new.W[l] = W_old - lr * (dW[l] + s["wdecay"] * W_old + penalty)
                if network.learns_bias(l):
                    new.b[l] = new.b[l] - lr * db[l]
                if not rule.separate_backward:
                    new.B[l] = new.W[l].copy() if new.W[l].ndim == 4 else new.W[l].T.copy()
                    continue
                if self.direct and l == 0:
                    continue  # D^0 would feed the input, which does not relax
                B = new.B[l]
                if rule.tied or self.train_primitives:
                    grad = primitives.backward_gradient(
                        B, W_old, xbar[l], dW[l], tied=s["c_tied"] if rule.tied else 0.0,
                        decay=s["c_decay"], amp=s["c_amp"], null=s["c_null"],
                    )
                    B = B - s["eta_b"] * grad
                if self.sign:
                    B = s["b_scale"] * np.sign(new.W[l]).T
                if self.mirror and l >= 1:
                    for x_noise in noise[l][index]:
                        grad = primitives.backward_gradient(B, new.W[l], x_noise, None, decay=s["m_decay"], amp=s["m_amp"])
                        B = B - s["m_eta"] * grad
                new.B[l] = B
            if new.state:
                new.state = next_state
            new.W = self.constrain_weights(new.W)
            if after_batch is not None:
                after_batch(index, new)
        return new
