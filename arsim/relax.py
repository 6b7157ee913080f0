"""One relaxation experiment: draw a network, relax it in Brian2, compare with BP.

``run_relaxation(experiment)`` draws weights, input and target from the
experiment's seed, runs the forward sweep and the backward relaxation in the compiled
Brian2 network, and measures the relaxed state and AR's weight gradient
against the backprop oracle (SPEC section 4).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import metrics
from .activations import ACTIVATION_CODES
from .brian.devices import Runner, get_runner
from .brian.network import DT_INTERNAL, Topology, topology_for
from .brian.neuron import run_time_terms
from .initialise import forward_weights
from .layers import exact_feedback
from .reference import oracle
from .rules import Rule
from .spec import Experiment, NetworkSpec

__all__ = ["Problem", "draw_problem", "noise_seed", "run_relaxation", "RelaxResult", "network_params", "layer_table"]


@dataclass
class Problem:
    """Parameters, input and target of one relaxation experiment."""

    W: list
    b: list
    B: list
    x_in: np.ndarray
    target: np.ndarray
    #: the rule's own arrays (`arsim.rules.base.Rule.initial_state`)
    state: dict = field(default_factory=dict)
    #: the seed of a stochastic rule's noise in this run (`arsim.rules.base.Rule.stochastic`)
    noise_seed: int = 0


def draw_problem(experiment: Experiment) -> Problem:
    """Draw weights, biases, backward weights, input and target from the experiment's seed.

    Forward weights by ``init`` (`arsim.initialise.forward_weights`); biases ``N(0, init_std^2)`` when ``bias`` is on
    (zeros otherwise); ``B`` by the feedback rule; the input ``N(0, 1)`` or
    ``U[0, 1)``; the target a random one-hot vector.
    """
    rng = np.random.default_rng(experiment.seed)
    net = experiment.network
    sizes = net.sizes
    n_layers = len(sizes) - 1
    W = forward_weights(rng, sizes, net.init, net.init_std, experiment.rule.input_columns(sizes), ops=net.ops)
    if net.bias:
        b = [rng.normal(0.0, net.init_std, size=sizes[l + 1]) for l in range(n_layers)]
        # a convolution has no bias (the AR follow-up's conv layers have none)
        b = [v if net.learns_bias(l) else np.zeros_like(v) for l, v in enumerate(b)]
    else:
        b = [np.zeros(sizes[l + 1]) for l in range(n_layers)]
    B = experiment.rule.initial_backward(W, rng, net.feedback_std)
    # a stream of its own: the input and target do not depend on whether the rule has state
    state = experiment.rule.initial_state(sizes, np.random.default_rng([experiment.seed, 3]))
    if experiment.probe.input == "normal":
        x_in = rng.normal(0.0, 1.0, size=sizes[0])
    else:
        x_in = rng.uniform(0.0, 1.0, size=sizes[0])
    target = np.zeros(sizes[-1])
    target[rng.integers(sizes[-1])] = 1.0
    return Problem(W=W, b=b, B=B, x_in=x_in, target=target, state=state, noise_seed=noise_seed(experiment.seed))


def noise_seed(*keys: int) -> int:
    """A 31-bit seed (Brian2's integer is int32) of a stochastic rule's noise from integer ``keys`` (seed, epoch, batch)."""
    return int(np.random.SeedSequence([7919, *keys]).generate_state(1)[0] & 0x7FFFFFFF)


def network_params(topo: Topology, network: NetworkSpec, problem: Problem, n_relax: int | None = None,
                   rule: Rule | None = None) -> dict:
    """Run-time parameters of the compiled network for one experiment.

    ``network`` is its `NetworkSpec`, ``rule`` its rule with the run-time
    values of the rule's table (default: the topology's, with the defaults).
    """
    rule = topo.make_rule() if rule is None else rule
    eta = network.eta
    n_relax = network.n_relax_steps if n_relax is None else n_relax
    if n_relax > topo.max_relax:
        raise ValueError(f"{n_relax} relaxation steps requested; the build holds at most {topo.max_relax}")
    params = {
        "input_values": problem.x_in,
        "target_values": problem.target,
    }
    for layer in range(topo.n_layers + 1):
        kind = network.output_activation if layer == topo.n_layers else network.activation
        params[f"layer{layer}.act_kind"] = np.array([ACTIVATION_CODES[kind]])
        params[f"layer{layer}.act_slope"] = np.array([network.leaky_slope])
        params[f"layer{layer}.tau"] = np.array([DT_INTERNAL / eta])
        params[f"layer{layer}.x_start"] = np.array([rule.x_start(network.initial_state, training=False)])
        params[f"layer{layer}.n_relax"] = np.array([n_relax])
        err_gain, signal_gain = rule.layer_gains(layer, topo.n_layers)
        params[f"layer{layer}.err_gain"] = np.array([err_gain])
        params[f"layer{layer}.signal_gain"] = np.array([signal_gain])
        if layer >= 1:
            params[f"layer{layer}.b"] = problem.b[layer - 1]
        values = rule.neuron_parameters(network, layer, topo.n_layers)
        for name, kind in run_time_terms(rule.neuron_terms(), rule.stochastic).items():
            if name == "noise_seed":
                params[f"layer{layer}.noise_seed"] = np.array([problem.noise_seed])
            else:
                # a time constant is given in units of dt: the clock's step is DT_INTERNAL seconds
                params[f"layer{layer}.{name}"] = np.array([values[name] * (DT_INTERNAL if kind == "time" else 1.0)])
    if rule.controllers:
        for layer in range(2, topo.n_layers + 1):
            params[f"ctrl{layer}.tau"] = np.array([DT_INTERNAL / eta])
            params[f"ctrl{layer}.n_relax"] = np.array([n_relax])
            params[f"ctrl{layer}.leak"] = np.array([rule.alpha])
    for layer in range(topo.n_layers):
        params[f"proj{layer}.w"] = problem.W[layer].ravel()
    params.update(rule.backward_arrays(problem.B))
    params.update(rule.state_arguments(problem.state))
    return params


@dataclass
class RelaxResult:
    """Everything one relaxation produced, with its BP comparison."""

    experiment: Experiment
    problem: Problem
    xbar: list
    fp: list
    x: list
    t: np.ndarray
    xtrace: list
    dW: list
    db: list
    bp: oracle.Gradients
    B_used: list
    layers: list = field(default_factory=list)
    compile_seconds: float = 0.0
    run_seconds: float = 0.0
    #: hidden layers whose drawn ``B`` the rule repaired before the run (dynamic inversion with repair)
    repairs: int = 0
    #: the rule's counters of the run (`arsim.rules.base.Rule.diagnostics`, e.g. GAIT-prop's kink crossings)
    diagnostics: dict = field(default_factory=dict)

    def arrays(self) -> dict:
        """The arrays of the ``--save`` file (keys documented in the README)."""
        out = {"x_in": self.problem.x_in, "target": self.problem.target, "t": self.t}
        n_layers = len(self.problem.W)
        for l in range(n_layers):
            out[f"W{l}"] = self.problem.W[l]
            out[f"b{l}"] = self.problem.b[l]
            out[f"B{l}"] = self.B_used[l]
            out[f"dW{l}"] = self.dW[l]
            out[f"db{l}"] = self.db[l]
        for l in range(n_layers + 1):
            out[f"xbar{l}"] = self.xbar[l]
        for l in range(1, n_layers + 1):
            out[f"x{l}"] = self.x[l]
            out[f"xtrace{l}"] = self.xtrace[l]
        return {**out, **self.problem.state}  # the rule's own arrays (error connections Phi{l})


def layer_table(result: RelaxResult) -> list:
    """Per-layer comparison with BP: one dict per layer ``l = 1..L``.

    Keys: ``layer``, ``units``, ``x_rel_error`` (final x^l vs dL/dxbar^l),
    ``t_conv_tau`` (convergence time of x^l in tau, inf if not reached),
    ``x_rel_error_at_report`` (relative error at ``report_tau``, NaN if that
    time was not simulated or recorded),
    ``dW_cosine``, ``dW_angle_deg``, ``dW_rel_error`` (for ``W^{l-1}``).
    """
    rows = []
    threshold = result.experiment.probe.threshold
    n_layers = len(result.problem.W)
    for l in range(1, n_layers + 1):
        target = result.bp.dxbar[l]
        errors = metrics.relative_error_trace(result.xtrace[l], target)
        at_report = np.nonzero(np.isclose(result.t, result.experiment.probe.report_tau, rtol=1e-9, atol=1e-12))[0]
        rows.append(
            {
                "layer": l,
                "units": int(result.xbar[l].size),
                "role": "output clamp" if l == n_layers else "hidden",
                "x_rel_error": metrics.relative_error(result.x[l], target),
                "t_conv_tau": metrics.convergence_time(result.t, errors, threshold),
                "x_rel_error_at_report": float(errors[at_report[0]]) if at_report.size else float("nan"),
                "dW_cosine": metrics.cosine(result.dW[l - 1], result.bp.dW[l - 1]),
                "dW_angle_deg": metrics.angle_deg(result.dW[l - 1], result.bp.dW[l - 1]),
                "dW_rel_error": metrics.relative_error(result.dW[l - 1], result.bp.dW[l - 1]),
            }
        )
    result.layers = rows
    return rows


def check_finite(raw: dict, steps: np.ndarray, eta: float) -> None:
    """Raise FloatingPointError naming the step and layer where NaN/Inf first appeared.

    Parameters
    ----------
    raw : dict
        Runner results (``monitor{l}.x`` traces and final ``layer{l}.*`` states).
    steps : ndarray
        Relaxation step of every monitor record.
    eta : float
        ``dt / tau``, to state the time in units of tau.
    """
    n_layers = sum(1 for key in raw if key.startswith("layer") and key.endswith(".xbar")) - 1
    for layer in range(n_layers + 1):
        if not np.all(np.isfinite(raw[f"layer{layer}.xbar"])):
            raise FloatingPointError(f"NaN/Inf in the forward activity xbar of layer {layer} (forward sweep, step 0)")
    first = None
    for key, value in raw.items():
        if not key.startswith("monitor") or key.endswith((".t", ".N")):
            continue
        bad_rows = np.nonzero(~np.all(np.isfinite(value), axis=1))[0]
        if not bad_rows.size:
            continue
        layer, step = int(key.split(".")[0][len("monitor"):]), int(steps[bad_rows[0]])
        # the forward sweep (step 0) carries a bad value upwards and the
        # relaxation carries it downwards: report the layer where it started
        if first is None or step < first[0] or (step == first[0] and (layer < first[1]) == (step == 0)):
            first = (step, layer)
    if first is not None:
        raise FloatingPointError(
            f"NaN/Inf in layer {first[1]} first recorded at relaxation step {first[0]} (t = {first[0] * eta:g} tau)"
        )
    for key, value in raw.items():
        if key.startswith("layer") and not np.all(np.isfinite(value)):
            raise FloatingPointError(f"NaN/Inf in {key} at the end of the relaxation")


def _oracle_relaxation(experiment: Experiment) -> RelaxResult:
    """``rule = "bp"``: the oracle's own backward pass as the "relaxed" state (zero error by construction)."""
    problem = draw_problem(experiment)
    net = experiment.network
    fwd = oracle.forward(problem.W, problem.b, problem.x_in, net.hidden, net.output, net.loss, ops=net.ops)
    bp = oracle.backward(problem.W, fwd, problem.target, net.loss, ops=net.ops)
    x = [fwd.xbar[0]] + bp.dxbar[1:]
    result = RelaxResult(
        experiment=experiment, problem=problem, xbar=fwd.xbar, fp=fwd.fp, x=x, t=np.zeros(1),
        xtrace=[None] + [v[None, :] for v in x[1:]], dW=bp.dW, db=bp.db, bp=bp,
        B_used=[exact_feedback(op, w) for op, w in zip(net.ops, problem.W)],
    )
    layer_table(result)
    return result


def run_relaxation(experiment, device: str = "cpp", runner: Runner | None = None) -> RelaxResult:
    """Relax one network in Brian2 and compare with the oracle.

    Parameters
    ----------
    experiment : arsim.spec.Experiment or dict
        The experiment, or a config resolved by `arsim.config.load` (typed
        here, once).
    device : {"cpp", "runtime"}
        Brian2 device, ignored if ``runner`` is given.
    runner : Runner, optional
        A compiled network to reuse (its topology may allow more steps).
    """
    import time

    experiment = Experiment.from_config(experiment)
    if not experiment.rule.simulated:
        return _oracle_relaxation(experiment)
    net = experiment.network
    problem = draw_problem(experiment)
    eta = net.eta
    rule = experiment.rule
    # before any compilation: an unstable draw is refused in one line
    problem.B, repairs = rule.stabilise(problem.W, problem.B, eta, "with the drawn weights")
    topo = runner.topology if runner is not None else topology_for(experiment)
    runner = runner or get_runner(topo, device)
    n_relax = net.n_relax_steps
    started = time.perf_counter()
    raw = runner.run(network_params(topo, net, problem, n_relax, rule=rule))
    run_seconds = time.perf_counter() - started
    diagnostics = rule.diagnostics(raw, net)

    n_layers = topo.n_layers
    steps_recorded = np.rint(raw[f"monitor{n_layers}.t"] / DT_INTERNAL).astype(int) if topo.record_variables else np.zeros(0, int)
    keep = steps_recorded <= n_relax
    t = steps_recorded[keep] * eta
    states = [None] + [raw[f"monitor{l}.x"][keep] for l in range(1, n_layers + 1)]
    check_finite(raw, steps_recorded, eta)

    xbar = [raw[f"layer{l}.xbar"] for l in range(n_layers + 1)]
    fp = [raw[f"layer{l}.fp"] for l in range(n_layers + 1)]
    values = [raw[f"layer{l}.x"] for l in range(n_layers + 1)]
    hidden, output = net.hidden, net.output
    # the learning signal and the factors of the local update, by the rule (value nodes for PC)
    # error connections: the learning signal is measured against the simulated prediction mu = Phi xbar
    x, slope, pre = rule.local_factors(values, problem.W, problem.b, xbar, fp, net, raw=raw)
    xtrace = rule.signal_traces(states, problem.W, problem.b, xbar, problem.x_in, net, raw=raw) if topo.record_variables else states
    ops = net.ops
    dW = [ops[l].gradient((x[l + 1] * slope[l + 1])[None], pre[l][None], None) for l in range(n_layers)]
    db = [x[l + 1] * slope[l + 1] for l in range(n_layers)]
    fwd = oracle.forward(problem.W, problem.b, problem.x_in, hidden, output, net.loss, ops=ops)
    bp = oracle.backward(problem.W, fwd, problem.target, net.loss, ops=ops)
    W_now = [raw[f"proj{l}.w"].reshape(w.shape) for l, w in enumerate(problem.W)]
    result = RelaxResult(
        experiment=experiment,
        problem=problem,
        xbar=xbar,
        fp=fp,
        x=x,
        t=t,
        xtrace=xtrace,
        dW=dW,
        db=db,
        bp=bp,
        B_used=topo.make_rule().backward_from_results(raw, W_now, problem.B),
        compile_seconds=getattr(runner, "compile_seconds", 0.0),
        run_seconds=run_seconds,
        repairs=repairs,
        diagnostics=diagnostics,
    )
    layer_table(result)
    return result
