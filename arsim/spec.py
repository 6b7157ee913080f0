"""An experiment resolved once into typed, immutable settings.

`arsim.config` validates a model file into a flat dict of keys; this module
is the one place that reads that dict. `Experiment.from_config` turns it into
typed parts, each holding what one layer of the code needs:

`NetworkSpec`
    The network and its relaxation: sizes, activations, loss, initial
    weights, time constants, the compiled representation.
`ProbeSpec`
    What ``arsim relax`` draws and measures: the random input, the
    convergence threshold, the report time and the recorded variables.
`TrainingSpec`
    Minibatch SGD: epochs, batch size, learning rate, alignment sampling,
    batch-parallel or sample-by-sample relaxation.
`DataSpec`
    The training data and its split.
the rule
    An `arsim.rules.Rule` with its table's validated values.

Below the experiment layer (`arsim.experiment`, `arsim.relax`'s
`run_relaxation`, `arsim.bench`, the sweep commands) functions take these
objects, never the dict. The resolved dict stays on the `Experiment`
(``config``, read-only) for what stores it verbatim: ``run.json``,
checkpoints and the sweep store's hashes.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

from .activations import Activation, get_activation
from .rules import RULES, Rule, make_rule

__all__ = ["NetworkSpec", "ProbeSpec", "TrainingSpec", "DataSpec", "Experiment", "KEY_FIELDS", "OWN_KEYS"]


@dataclass(frozen=True)
class NetworkSpec:
    """The network, its initial weights and its relaxation dynamics (model-file keys of the same names)."""

    sizes: tuple
    #: ``(channels, height, width)`` of the input, with ``layers``
    input_shape: tuple = ()
    #: the model file's ``[[layers]]`` entries as sorted ``(key, value)`` tuples (hashable); () for an MLP
    layers: tuple = ()
    activation: str = "tanh"
    output_activation: str = "linear"
    leaky_slope: float = 0.01
    loss: str = "mse"
    bias: bool = False
    init: str = "normal"
    init_std: float = 0.05
    feedback_std: float = 0.05
    tau: float = 10.0
    dt: float = 1.0
    duration: float = 100.0
    initial_state: str = "forward"
    projection: str = "dense"
    precision: str = "float64"
    blas: str = "openblas"
    allow_unstable: bool = False

    @property
    def n_layers(self) -> int:
        """Weight layers L (``len(sizes) - 1``)."""
        return len(self.sizes) - 1

    @property
    def ops(self) -> tuple:
        """The projections' geometry and operators (`arsim.layers`): all `Dense` for an MLP."""
        from .layers import dense_ops, from_layer_list

        if not self.layers:
            return dense_ops(self.sizes)
        return from_layer_list(self.input_shape, [dict(entry) for entry in self.layers])[0]

    def learns_bias(self, layer: int) -> bool:
        """Whether projection ``layer`` has a bias: ``bias``, but never a convolution's (as the AR follow-up's)."""
        return self.bias and self.ops[layer].kind != "conv"

    @property
    def convolutional(self) -> bool:
        """Whether some projection is a convolution or pools its input."""
        return any(op.kind == "conv" or op.pool for op in self.ops)

    @property
    def eta(self) -> float:
        """The Euler step in units of tau, ``dt / tau``."""
        return self.dt / self.tau

    @property
    def n_relax_steps(self) -> int:
        """Euler steps of the relaxation phase, ``duration / dt`` (a whole number, checked by the config)."""
        return int(round(self.duration / self.dt))

    @property
    def hidden(self) -> Activation:
        """The hidden layers' activation f."""
        return get_activation(self.activation, self.leaky_slope)

    @property
    def output(self) -> Activation:
        """The output layer's activation."""
        return get_activation(self.output_activation, self.leaky_slope)


@dataclass(frozen=True)
class ProbeSpec:
    """What one ``arsim relax`` experiment draws and measures."""

    input: str = "normal"
    threshold: float = 1e-3
    report_tau: float = 10.0
    record_variables: tuple = ("x",)
    record_every: int = 1


@dataclass(frozen=True)
class TrainingSpec:
    """Minibatch SGD (the ``train.*`` keys but the data's)."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 5e-4
    align_every: int = 10
    parallel: str = "auto"


@dataclass(frozen=True)
class DataSpec:
    """The training data: ``train.data``, its held-out fraction and cap."""

    source: str = "digits"
    test_fraction: float = 0.2
    max_samples: int = 0


@dataclass(frozen=True, eq=False)
class Experiment:
    """A resolved model file, typed.

    Attributes
    ----------
    name : str
        The label stored with the results.
    seed : int
        The one seed of weights, input, target, data split and sample order.
    network, probe, training, data
        The typed parts (module docstring).
    rule : arsim.rules.Rule
        The credit-assignment rule with its validated table.
    config : Mapping
        The resolved dict, read-only: stored verbatim with results, never
        read for settings.
    """

    name: str
    seed: int
    network: NetworkSpec
    probe: ProbeSpec
    training: TrainingSpec
    data: DataSpec
    rule: Rule
    config: Mapping

    @classmethod
    def from_config(cls, config: Mapping) -> "Experiment":
        """Type a config resolved by `arsim.config.resolve` / `arsim.config.load` (an `Experiment` passes through)."""
        if isinstance(config, Experiment):
            return config
        parts = {part: {} for part in _PARTS}
        for key, (part, name, convert) in KEY_FIELDS.items():
            parts[part][name] = convert(config[key])
        return cls(
            name=config["name"], seed=config["seed"], rule=_rule(config), config=MappingProxyType(dict(config)),
            **{part: _PARTS[part](**values) for part, values in parts.items()},
        )

    @classmethod
    def from_raw(cls, raw: dict, source: str = "config") -> "Experiment":
        """Validate ``raw`` (model-file keys, defaults filled in) and type it."""
        from .config import resolve

        return cls.from_config(resolve(raw, source))

    def replace(self, **keys) -> "Experiment":
        """This experiment with some model-file keys changed (``replace(**{"train.lr": 1e-3})``), validated again."""
        config = dict(self.config)
        if keys.get("rule", self.rule.name) != self.rule.name:  # the old rule's table goes with it
            config = {k: v for k, v in config.items() if not k.startswith(self.rule.name + ".")}
        return Experiment.from_raw({**config, **keys}, "replace")

    @property
    def batch_parallel(self) -> bool:
        """Whether training relaxes a whole minibatch at once (``train.parallel``, `arsim.training`)."""
        mode = self.training.parallel
        return mode == "batch" or (mode == "auto" and self.network.projection == "dense")


_PARTS = {"network": NetworkSpec, "probe": ProbeSpec, "training": TrainingSpec, "data": DataSpec}


def _same(value):
    return value


#: model-file key -> (part, field, conversion); with ``name``, ``seed``, ``rule``, AR's switches and the
#: rule tables (the `Rule`) this covers every key but the Song-Xu-Lafferty study's (`StudySpec`);
#: tests/test_spec.py fails when a key of `arsim.config.SCHEMA` is in neither
KEY_FIELDS = {
    "sizes": ("network", "sizes", tuple),
    "input_shape": ("network", "input_shape", tuple),
    "layers": ("network", "layers", lambda entries: tuple(tuple(sorted(entry.items())) for entry in entries)),
    "activation": ("network", "activation", _same),
    "output_activation": ("network", "output_activation", _same),
    "leaky_slope": ("network", "leaky_slope", _same),
    "loss": ("network", "loss", _same),
    "bias": ("network", "bias", bool),
    "init": ("network", "init", _same),
    "init_std": ("network", "init_std", _same),
    "feedback_std": ("network", "feedback_std", _same),
    "tau": ("network", "tau", _same),
    "dt": ("network", "dt", _same),
    "duration": ("network", "duration", _same),
    "initial_state": ("network", "initial_state", _same),
    "projection": ("network", "projection", _same),
    "precision": ("network", "precision", _same),
    "blas": ("network", "blas", _same),
    "allow_unstable": ("network", "allow_unstable", bool),
    "input": ("probe", "input", _same),
    "threshold": ("probe", "threshold", _same),
    "report_tau": ("probe", "report_tau", _same),
    "record.variables": ("probe", "record_variables", tuple),
    "record.every": ("probe", "record_every", int),
    "train.epochs": ("training", "epochs", _same),
    "train.batch_size": ("training", "batch_size", _same),
    "train.lr": ("training", "lr", _same),
    "train.align_every": ("training", "align_every", _same),
    "train.parallel": ("training", "parallel", _same),
    "train.data": ("data", "source", _same),
    "train.test_fraction": ("data", "test_fraction", _same),
    "train.max_samples": ("data", "max_samples", _same),
}

#: keys typed outside `KEY_FIELDS`: the experiment's own and the rule's (`_rule`)
OWN_KEYS = ("name", "seed", "rule", "feedback", "derivative", "ordering", "forward", "conv_feedback", "conv_derivative")


def _rule(config: Mapping) -> Rule:
    """The rule of a resolved config, with its table's values and AR's switches."""
    name = config["rule"]
    settings = {key: config[f"{name}.{key}"] for key in RULES[name].params}
    conv_layers = ()
    if config["layers"]:
        from .layers import from_layer_list

        ops, _ = from_layer_list(config["input_shape"], config["layers"])
        conv_layers = tuple(l for l, op in enumerate(ops) if op.kind == "conv")
    return make_rule(name, settings, derivative=config["derivative"], ordering=config["ordering"],
                     forward=config["forward"], feedback=config["feedback"], conv_feedback=config["conv_feedback"],
                     conv_derivative=config["conv_derivative"], conv_layers=conv_layers, sizes=config["sizes"])
