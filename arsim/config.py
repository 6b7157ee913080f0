"""Model files: the complete, validated description of an experiment.

A model file is TOML (read with the standard library). Every key is declared
once in ``SCHEMA`` with its type, default, accepted range and meaning; the
loader rejects unknown keys, wrong types and out-of-range values with a
one-line `ConfigError` naming the key, the value and what is accepted.
``--set key=value`` overrides from the command line go through the same
checks (values are parsed as TOML literals, bare words as strings).
"""

from __future__ import annotations

import copy
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .activations import ACTIVATIONS
from .rules import FEEDBACK_CHOICES, RULES
from .rules.base import FORWARD_VARIANTS
from .brian.blas import BLAS_CHOICES, missing as blas_missing

__all__ = ["ConfigError", "Key", "SCHEMA", "load", "resolve", "parse_override", "n_relax_steps"]


class ConfigError(ValueError):
    """A user error in a model file or an override (reported in one line)."""


@dataclass(frozen=True)
class Key:
    """Declaration of one model-file key.

    Attributes
    ----------
    kind : type or tuple of types
        Accepted Python type after TOML parsing (``float`` also accepts int).
    default : object
        Default value; ``REQUIRED`` if the key must be given.
    check : callable, optional
        Returns an error description (what is accepted) or None.
    doc : str
        One-line meaning, shown in the README table.
    unit : str
        Physical unit, if any.
    """

    kind: Any
    default: Any
    check: Callable[[Any], str | None] | None = None
    doc: str = ""
    unit: str = ""
    shape_key: bool = field(default=False)


REQUIRED = object()


def _one_of(*choices):
    def check(value):
        return None if value in choices else "one of " + ", ".join(repr(c) for c in choices)

    return check


def _positive(value):
    return None if value > 0 and math.isfinite(value) else "a finite number > 0"


def _non_negative_int(value):
    return None if value >= 0 else "an integer >= 0"


def _at_least_one(value):
    return None if value >= 1 else "an integer >= 1"


def _forward(value):
    if value == "relaxed":
        return ("one of " + ", ".join(repr(v) for v in FORWARD_VARIANTS) + " ('relaxed' is now 'all_current', the"
                " combination the follow-up paper never ran; its four variants are the fderiv_* and current_x_weights)")
    return None if value in FORWARD_VARIANTS else "one of " + ", ".join(repr(v) for v in FORWARD_VARIANTS)


def _data_spec(value):
    for prefix in ("idx:", "cifar10:"):
        if value.startswith(prefix) and len(value) > len(prefix):
            return None
    if value in ("digits", "mnist5k"):
        return None
    return "'digits', 'mnist5k', 'idx:DIRECTORY' or 'cifar10:DIRECTORY'"


def _sizes(value):
    if len(value) < 2:
        return "a list of at least 2 layer sizes (input and output)"
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in value):
        return "a list of integers >= 1"
    return None


#: what every rule's monitors can record; a rule may add its own (`arsim.rules.base.Rule.recordable`, checked with the rule)
RECORDABLE = ("x", "fb")


def _input_shape(value):
    if value and (len(value) != 3 or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in value)):
        return "[channels, height, width], integers >= 1 (or [] for an MLP)"
    return None


def _layer_list(value):
    if not all(isinstance(entry, dict) for entry in value):
        return "a list of tables ([[layers]] with kind = 'conv', 'maxpool' or 'dense')"
    return None


def _record_variables(value):
    allowed = RECORDABLE + tuple(dict.fromkeys(v for cls in RULES.values() for v in cls.recordable))
    if "x" not in value or not all(isinstance(v, str) and v in allowed for v in value):
        return "a list containing 'x', drawn from " + ", ".join(repr(a) for a in allowed)
    return None


SCHEMA: dict[str, Key] = {
    "name": Key(str, "model", doc="label stored with the results"),
    "sizes": Key(list, REQUIRED, _sizes, "layer sizes n_0 (input) .. n_L (output); with layers: derived from them", shape_key=True),
    "input_shape": Key(list, [], _input_shape, "shape [channels, height, width] of the input (with layers)", shape_key=True),
    "layers": Key(
        list, [], _layer_list,
        "a network with convolutions: [[layers]] tables, kind = 'conv' (channels, kernel, stride = 1, padding = 0),"
        " 'maxpool' (size) or 'dense' (units), the last dense (arsim/layers.py); sizes = [...] alone is an MLP",
        shape_key=True,
    ),
    "activation": Key(str, "tanh", _one_of(*ACTIVATIONS), "hidden-layer activation f"),
    "output_activation": Key(
        str, "linear", _one_of(*ACTIVATIONS), "output activation (must be linear with loss = ce: softmax is part of the loss)"
    ),
    "leaky_slope": Key(float, 0.01, lambda v: None if 0 <= v < 1 else "a number in [0, 1)", "negative slope of leaky_relu"),
    "loss": Key(str, "mse", _one_of("mse", "ce"), "mse: summed squared error; ce: softmax cross-entropy", shape_key=True),
    "bias": Key(bool, False, None, "use biases b^l"),
    "init": Key(
        str, "normal", _one_of("normal", "orthogonal"),
        "forward weights: normal: N(0, init_std^2); orthogonal: Haar-random (semi-)orthogonal, unit singular values (init_std unused)",
    ),
    "init_std": Key(float, 0.05, _positive, "forward weights drawn from N(0, init_std^2) (init = 'normal')"),
    "feedback_std": Key(float, 0.05, _positive, "B drawn from N(0, feedback_std^2) for feedback = learned | random"),
    "input": Key(str, "normal", _one_of("normal", "uniform"), "random input for relax: N(0,1) or U[0,1)"),
    "seed": Key(int, 0, _non_negative_int, "seed of weights, input and target"),
    "tau": Key(float, 10.0, _positive, "time constant of the relaxation", unit="ms"),
    "dt": Key(float, 1.0, _positive, "integration step (Euler)", unit="ms"),
    "duration": Key(float, 100.0, _positive, "length of the backward relaxation phase", unit="ms"),
    "rule": Key(str, "ar", _one_of(*RULES), "credit-assignment rule (docs/rules.md); its parameters go in a table named after it"),
    "feedback": Key(str, "transpose", _one_of(*FEEDBACK_CHOICES), "AR's backward weights in the relaxation (rule = 'ar')", shape_key=True),
    "derivative": Key(bool, True, None, "multiply the feedback by f'(a) of the layer above", shape_key=True),
    "conv_feedback": Key(
        str, "same", _one_of("same", *FEEDBACK_CHOICES),
        "AR's backward kernels of the convolutions (rule = 'ar'): same (as feedback), transpose, learned, random;"
        " feedback then sets the dense layers' (the AR follow-up's conv / FC conditions)", shape_key=True,
    ),
    "conv_derivative": Key(
        str, "same", _one_of("same", "on", "off"),
        "f' in the convolutions' feedback (rule = 'ar'): same (as derivative), on, off; derivative then sets the dense layers'",
        shape_key=True,
    ),
    "ordering": Key(str, "synchronous", _one_of("synchronous", "sequential"), "layer update order within a step", shape_key=True),
    "forward": Key(
        str, "frozen", _forward,
        "frozen: relaxation and update use the stored xbar, f'(a) (AR); the follow-up paper's relaxed passes, one each:"
        " fderiv_x_update (f'(W x + b) of the current x in the relaxation), fderiv_weight_update (in the update),"
        " fderiv_both, current_x_weights (the relaxed x as the update's pre-synaptic activity); all_current: all"
        " of them together, which the authors never ran (it does not learn)",
        shape_key=True,
    ),
    "projection": Key(
        str, "dense", _one_of("dense", "synapses"),
        "how a projection computes W xbar, the feedback B (x f') and (relaxed) W x: dense: C++ mat-vecs over the"
        " synaptic weights (fast); synapses: plain Brian2 (summed) variables (the reference idiom, equal to round-off)",
        shape_key=True,
    ),
    "precision": Key(
        str, "float64", _one_of("float64", "float32"),
        "floating-point type of the compiled network (Brian2's default_float_dtype; float32: sgemm, about 2x faster"
        " batch training, agreement with float64 to ~1e-6 relative instead of 1e-12)",
        shape_key=True,
    ),
    "blas": Key(
        str, "openblas", _one_of(*BLAS_CHOICES),
        "the CBLAS the batch-parallel C++ links: openblas (the scipy-openblas32 wheel) or mkl (Intel MKL's wheels:"
        " pip install 'arsim[mkl]'); equal numbers, speed by measurement (arsim bench --set blas=mkl)",
        shape_key=True,
    ),
    "initial_state": Key(
        str, "forward", _one_of("forward", "zero"), "hidden x(0): the forward activity xbar (AR) or 0 (cold start, closed-form error law)"
    ),
    "allow_unstable": Key(bool, False, None, "permit dt/tau >= 2 (up to 4) to study the Euler stability boundary"),
    "threshold": Key(float, 1e-3, _positive, "relative-error threshold of the convergence time"),
    "report_tau": Key(float, 10.0, _positive, "also tabulate x^l's relative error at this time (the paper's 100 steps at dt/tau 0.1)", unit="tau"),
    "record.variables": Key(list, ["x"], _record_variables, "variables recorded during relaxation", shape_key=True),
    "record.every": Key(int, 1, _at_least_one, "record every this many steps", shape_key=True),
    "train.data": Key(str, "digits", _data_spec, "training data: digits, mnist5k, idx:DIRECTORY (MNIST/Fashion-MNIST IDX files) or cifar10:DIRECTORY (CIFAR-10's python batches)"),
    "train.epochs": Key(int, 10, _at_least_one, "training epochs"),
    "train.batch_size": Key(int, 64, _at_least_one, "samples per update (updates summed over the batch)"),
    "train.lr": Key(float, 5e-4, lambda v: None if v >= 0 and math.isfinite(v) else "a finite number >= 0",
                    "SGD learning rate (summed loss); 0 freezes W and b (e.g. PAL's backward-only learning)"),
    "train.test_fraction": Key(float, 0.2, lambda v: None if 0 < v < 1 else "a number in (0, 1)", "held-out fraction for digits and mnist5k"),
    "train.max_samples": Key(int, 0, _non_negative_int, "use at most this many training samples (0: all)"),
    "train.align_every": Key(int, 10, _non_negative_int, "measure the update's angle to BP every this many batches (0: never)"),
    "train.parallel": Key(
        str, "auto", _one_of("auto", "batch", "sample"),
        "batch: a minibatch relaxes at once as parallel copies of the layers (projection = 'dense' only);"
        " sample: one sample after another; auto: batch with dense, sample with synapses",
    ),
    # -- the Song, Xu & Lafferty 2021 study (arsim/studies/song_xu_lafferty.py, sweep command "sxl") --------
    # Read by that study only (its SXL_KEYS are these entries). Its two-layer net f(x) = p^-1/2 sum_r beta_r
    # psi(w_r^T x) reuses sizes = [d, p, 1], activation = psi and seed. Loss 1/2 sum_i (y_i - f_i)^2; the
    # authors' code minimises the mean (MSE), so their (eta, lambda) are (2 eta_mse / n, n lambda_mse / 2) here.
    "sxl.n": Key(int, 50, _at_least_one, "SXL study: training samples n, x_i ~ N(0, I_d) with d = sizes[0]"),
    "sxl.data": Key(
        str, "linear", _one_of("linear", "teacher"),
        "SXL study: linear: y = X theta, theta ~ N(0, I_d); teacher: y from a random N(0, 1) two-layer net of the same width and activation",
    ),
    "sxl.mode": Key(str, "fa", _one_of("fa", "bp"), "SXL study: fa: w_r learns with the fixed random b_r in place of beta_r; bp: the true gradient"),
    "sxl.eta": Key(float, 4e-5, _positive, "SXL study: gradient-descent step on 1/2 sum_i (y_i - f_i)^2 (the authors' MSE step eta_mse: eta = 2 eta_mse / n)"),
    "sxl.lambda": Key(
        float, 0.0, lambda v: None if v >= 0 and math.isfinite(v) else "a finite number >= 0",
        "SXL study: decay lambda beta added to beta's gradient, beta only (the authors' lambda_mse = 2 lambda / n)",
    ),
    "sxl.steps": Key(int, 5050, _at_least_one, "SXL study: gradient steps (the minimum when sxl.mse_tol > 0)"),
    "sxl.mse_tol": Key(
        float, 0.0, lambda v: None if v >= 0 and math.isfinite(v) else "a finite number >= 0",
        "SXL study: after sxl.steps, go on until the MSE changed by less than this between checks (the authors: 1e-3); 0: stop at sxl.steps",
    ),
    "sxl.check_every": Key(int, 1000, _at_least_one, "SXL study: steps between the checks of sxl.mse_tol (the authors: 1000)"),
    "sxl.max_steps": Key(int, 400000, _at_least_one, "SXL study: stop after this many steps even if sxl.mse_tol is not met"),
    "sxl.record_every": Key(int, 10, _at_least_one, "SXL study: record the loss and cos(beta, b) every this many steps"),
    "sxl.solver": Key(
        str, "auto", _one_of("auto", "dense"),
        "SXL study: auto: the exact O(n^2)-per-step reduction for linear FA, else dense; dense: the general p-wide update always",
    ),
}

#: keys that only rule = "ar" may change from their defaults
AR_SWITCHES = ("feedback", "forward", "conv_feedback", "conv_derivative")


def _rule_keys() -> dict:
    """``<rule>.<param>`` keys of every rule table, declared by the rules (`arsim.rules.Param`)."""
    keys = {}
    for name, cls in RULES.items():
        for param, spec in cls.params.items():
            keys[f"{name}.{param}"] = Key(spec.kind, spec.default, spec.check, f"[{name}] {spec.doc}", unit=spec.unit)
    return keys


#: the rule tables' keys; a resolved config holds those of its own rule only
RULE_KEYS: dict[str, Key] = _rule_keys()
SCHEMA.update(RULE_KEYS)

#: keys that are gone, with what replaced them
_REMOVED_KEYS = {"train.rule": "the top-level key 'rule' (e.g. rule = \"bp\")"}


def _sizes_from_layers(flat: dict, source: str) -> None:
    """Fill in ``sizes`` from ``layers`` and ``input_shape`` (a given ``sizes`` must match them)."""
    from .layers import LayerError, from_layer_list

    shape = flat.get("input_shape")
    if not shape:
        raise ConfigError(f"{source}: layers need input_shape = [channels, height, width] (e.g. [1, 8, 8] for the digits)")
    try:
        _, sizes = from_layer_list(shape, flat["layers"])
    except LayerError as err:
        raise ConfigError(f"{source}: {err}") from None
    if "sizes" in flat and list(flat["sizes"]) != sizes:
        raise ConfigError(f"{source}: sizes = {flat['sizes']} does not match the layers, which give {sizes};"
                          " expected layers alone (sizes follows from them)")
    flat["sizes"] = sizes


def _flatten(table: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in table.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, full + "."))
        else:
            flat[full] = value
    return flat


def _type_ok(value, kind) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _type_name(kind) -> str:
    return {float: "a number", int: "an integer", bool: "true or false", str: "a string", list: "a list"}[kind]


def resolve(raw: dict, source: str = "config") -> dict:
    """Validate a (possibly nested) dict of keys and fill in defaults.

    Parameters
    ----------
    raw : dict
        Keys as in a model file (tables allowed, flattened to dotted names).
    source : str
        Where the values came from, used in error messages.

    Returns
    -------
    dict
        Flat dict with every key of ``SCHEMA``.

    Raises
    ------
    ConfigError
        On the first unknown key, wrong type or value out of range.
    """
    flat = _flatten(raw)
    config = {}
    for key in flat:
        if key in _REMOVED_KEYS:
            raise ConfigError(f"{source}: {key} = {flat[key]!r} is no longer accepted; use {_REMOVED_KEYS[key]}")
        table = key.split(".", 1)[0]
        if table in RULES and key not in RULE_KEYS:
            accepted = ", ".join(k for k in RULE_KEYS if k.startswith(table + ".")) or "no keys"
            raise ConfigError(f"{source}: unknown key {key!r} in table [{table}]; the [{table}] table accepts {accepted}")
        if key not in SCHEMA:
            raise ConfigError(f"{source}: unknown key {key!r}; accepted keys: {', '.join(k for k in SCHEMA if k not in RULE_KEYS)}"
                              " and the rule tables (docs/rules.md)")
    if flat.get("layers"):
        _sizes_from_layers(flat, source)
    rule = flat.get("rule", SCHEMA["rule"].default)
    for key in flat:
        if key in RULE_KEYS and key.split(".", 1)[0] != rule:
            raise ConfigError(
                f"{source}: {key} = {flat[key]!r} belongs to table [{key.split('.', 1)[0]}] but rule = {rule!r};"
                f" expected rule = {key.split('.', 1)[0]!r} or no [{key.split('.', 1)[0]}] table"
            )
    for key, spec in SCHEMA.items():
        if key in RULE_KEYS and key.split(".", 1)[0] != rule:
            continue
        if key in flat:
            value = flat[key]
        elif spec.default is REQUIRED:
            raise ConfigError(f"{source}: missing required key {key!r} ({spec.doc})")
        else:
            value = copy.deepcopy(spec.default)
        if not _type_ok(value, spec.kind):
            raise ConfigError(f"{source}: {key} = {value!r} has the wrong type; expected {_type_name(spec.kind)}")
        if spec.kind is float:
            value = float(value)
        if spec.check is not None:
            problem = spec.check(value)
            if problem:
                raise ConfigError(f"{source}: {key} = {value!r} is out of range; expected {problem}")
        config[key] = value
    _check_relations(config, source)
    return config


def _check_relations(config: dict, source: str) -> None:
    rule = RULES[config["rule"]]
    if config["rule"] != "ar":
        for key in AR_SWITCHES:
            if config[key] != SCHEMA[key].default:
                raise ConfigError(
                    f"{source}: {key} = {config[key]!r} is a switch of rule = 'ar'; rule = {config['rule']!r} expects"
                    f" {key} = {SCHEMA[key].default!r} (its backward pathway is the rule's own)"
                )
    settings = {key: config[f"{config['rule']}.{key}"] for key in rule.params}
    for variable in config["record.variables"]:
        if variable not in RECORDABLE + rule.recordable:
            raise ConfigError(f"{source}: record.variables names {variable!r} with rule = {config['rule']!r}; expected a list"
                              f" drawn from {', '.join(repr(v) for v in RECORDABLE + rule.recordable)}")
    for key, (value, why) in rule.required_keys(settings).items():
        if config[key] != value:
            raise ConfigError(f"{source}: {key} = {config[key]!r} with rule = {config['rule']!r}; expected {key} = {value!r} ({why})")
    problem = (rule.check_network(config["sizes"], config["activation"], config["output_activation"], config["leaky_slope"])
               or rule.check_timing(settings, config["dt"]))
    if problem:
        raise ConfigError(f"{source}: {problem}")
    if config["projection"] not in rule.projections:
        raise ConfigError(
            f"{source}: projection = {config['projection']!r} with rule = {config['rule']!r};"
            f" expected projection = {' or '.join(repr(p) for p in rule.projections)}"
        )
    eta = config["dt"] / config["tau"]
    if config["allow_unstable"] and not eta <= 4.0:
        raise ConfigError(
            f"{source}: dt = {config['dt']!r} ms with tau = {config['tau']!r} ms gives dt/tau = {eta:.6g};"
            " expected 0 < dt/tau <= 4 even with allow_unstable = true"
        )
    if not config["allow_unstable"] and not eta < 2.0:
        raise ConfigError(
            f"{source}: dt = {config['dt']!r} ms with tau = {config['tau']!r} ms gives dt/tau = {eta:.6g};"
            " expected 0 < dt/tau < 2 (forward Euler is unstable beyond 2; set allow_unstable = true to study that)"
        )
    steps = config["duration"] / config["dt"]
    if abs(steps - round(steps)) > 1e-9 * max(1.0, steps) or round(steps) < 1:
        raise ConfigError(
            f"{source}: duration = {config['duration']!r} ms is not a positive whole number of"
            f" dt = {config['dt']!r} ms steps; expected duration = k * dt with k >= 1"
        )
    if config["input_shape"] and not config["layers"] and math.prod(config["input_shape"]) != config["sizes"][0]:
        raise ConfigError(f"{source}: input_shape = {config['input_shape']} has {math.prod(config['input_shape'])} units"
                          f" but sizes[0] = {config['sizes'][0]}; expected their product to be the input size")
    if config["layers"] and not rule.convolutional and any(e.get("kind") in ("conv", "maxpool") for e in config["layers"]):
        convolutional = ", ".join(repr(name) for name, cls in RULES.items() if cls.convolutional)
        raise ConfigError(f"{source}: rule = {config['rule']!r} with conv / maxpool layers; expected a rule that runs on"
                          f" convolutions: {convolutional} (or dense layers only)")
    convolutions = config["layers"] and any(e.get("kind") == "conv" for e in config["layers"])
    for key in ("conv_feedback", "conv_derivative"):
        if config[key] != "same" and not convolutions:
            raise ConfigError(f"{source}: {key} = {config[key]!r} without conv layers; expected {key} = 'same'"
                              " or a network with [[layers]] of kind = 'conv'")
    if config["layers"] and config["forward"] != "frozen" and any(e.get("kind") in ("conv", "maxpool") for e in config["layers"]):
        raise ConfigError(f"{source}: forward = {config['forward']!r} with conv / maxpool layers; expected forward = 'frozen'"
                          " (the relaxed forward passes run on dense networks, as in the AR follow-up)")
    if config["layers"] and config["projection"] != "dense" and any(e.get("kind") == "maxpool" for e in config["layers"]):
        raise ConfigError(f"{source}: projection = {config['projection']!r} with maxpool layers; expected projection = 'dense'"
                          " (the plain-Synapses cross-check builds convolutions without pools)")
    problem = blas_missing(config["blas"])
    if problem:
        raise ConfigError(f"{source}: {problem}")
    if config["train.parallel"] == "batch" and config["projection"] != "dense":
        raise ConfigError(
            f"{source}: train.parallel = 'batch' with projection = {config['projection']!r};"
            " expected projection = 'dense' (the copies share one weight array) or train.parallel = 'sample' | 'auto'"
        )
    if config["loss"] == "ce" and config["output_activation"] != "linear":
        raise ConfigError(
            f"{source}: output_activation = {config['output_activation']!r} with loss = 'ce';"
            " expected 'linear' (the softmax is part of the ce loss)"
        )


def n_relax_steps(config: dict) -> int:
    """Number of Euler steps in the relaxation phase (``duration / dt``)."""
    return int(round(config["duration"] / config["dt"]))


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one ``key=value`` override; the value is a TOML literal or a bare word."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value")
    key, value_text = (part.strip() for part in text.split("=", 1))
    try:
        value = tomllib.loads(f"v = {value_text}")["v"]
    except tomllib.TOMLDecodeError:
        value = value_text
    return key, value


def load(path: str | Path, overrides: list[str] | None = None) -> dict:
    """Read a model file, apply ``key=value`` overrides and validate.

    Raises
    ------
    ConfigError
        If the file is missing, not valid TOML, or any key is invalid.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: model file not found") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None
    flat = _flatten(raw)
    for text in overrides or []:
        key, value = parse_override(text)
        if key not in SCHEMA and key not in _REMOVED_KEYS:
            raise ConfigError(f"--set {key}: unknown key; accepted keys: {', '.join(k for k in SCHEMA if k not in RULE_KEYS)}"
                              " and the rule tables (docs/rules.md)")
        flat[key] = value
    return resolve(flat, source=str(path))
