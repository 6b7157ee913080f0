"""Network builder: neurons and projections assembled from a credit-assignment rule.

The builder turns a `Topology` (the build key of an `arsim.spec.Experiment`,
`topology_for`) into Brian2 objects; it does not run them. Schedule within one clock step (slot ``start``, then ``groups``,
then ``end``):

=========  =====================================================  ==========
slot       operation                                               when
=========  =====================================================  ==========
start      layer l stores its forward state (order 3l)             step 0 of a sample
start      projection l-1 sums ``anow`` of layer l (order -40)     every step (f' at the current drive)
start      training: accumulate, align monitors, apply (< 0)      step 0 of a sample
start      projection l-1 sums ``a`` of layer l (order 3l-2)       step 0 of a sample
start      softmax normaliser of the output (order 3L-1, ce)      every step
groups     projection l sums ``fb`` of layer l (order o_l - 1)     every step
groups     layer l integrates ``x`` (order o_l)                    gated by ``relaxing``
end        monitors record ``x`` (every ``record.every`` steps)
=========  =====================================================  ==========

What the rule adds (`arsim.rules.base.Rule`): a backward matrix ``wb`` on
the projection that carries it (``backward_holder``), or, for direct
feedback, one feedback-only Synapses ``direct{l}`` from the output to each
hidden layer whose sum replaces projection l's in ``fb`` (the rule's
``feedback_source``); in training with dense projections the plasticity is
two C++ functions per projection (`arsim.brian.cpp_projection.add_dense_plasticity`)
whose run-time scalars (``PLASTICITY_SCALARS``) carry the rule's
coefficients, and a mirror-noise group ``mirror{l}`` for a mirror phase.

With every layer at order ``o_l = 0`` all feedback sums precede all state
updates: the synchronous (Jacobi) step of continuous time. With
``ordering = "sequential"`` the layer order is ``o_l = 2 (L - l)``, so each
layer's feedback reads the state just updated above it (Gauss-Seidel, as in
the AR authors' code, SPEC section 6).

With ``projection = "dense"`` the three sums (``a``, ``anow``, ``fb``) are
C++ mat-vecs over the projection's weight array at the same slots and
orders (`arsim.brian.cpp_projection`) instead of Brian2 ``(summed)`` variables.

Simulated time runs on one clock of step ``DT_INTERNAL = 2**-10 s``; the
time constant given to Brian2 is ``tau * DT_INTERNAL / dt``, so the Euler map
(which depends only on ``eta = dt / tau``) is the model file's, one compiled
binary serves every ``(tau, dt)`` pair, and every phase boundary is an exact
binary fraction of a second.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from brian2 import Clock, NeuronGroup, Network, StateMonitor, Synapses, TimedArray, prefs, second

from ..activations import ACTIVATION_CODES, brian_functions
from .cpp_projection import (TICK_EQUATION, add_controller_drive, add_dense_plasticity, add_dense_projection, add_drive,
                             add_error_connections, add_noise_seed, add_operation, select_blas)
from .conv_projection import add_spatial_projection, spatial, weight_count
from .conv_synapses import add_conv_synapses
from .neuron import neuron_equations, run_time_terms, store_code
from ..rules import PLASTICITY_SCALARS, Rule, make_rule

__all__ = ["DT_INTERNAL", "Topology", "BuiltNetwork", "NetworkParts", "topology_for", "build_network", "projection_indices"]

DT_INTERNAL = 2.0**-10  # seconds; a binary fraction keeps clock arithmetic exact


@dataclass(frozen=True)
class Topology:
    """Everything that fixes the compiled code (the build key).

    ``copies > 1`` (training with ``projection = "dense"``) holds a whole
    batch as parallel copies of every layer: each of the ``n_samples``
    sample periods then relaxes ``copies`` samples at once and ends with
    one SGD step.

    Parameters that do not appear here (weights, biases, inputs, targets,
    activations, tau, dt, the number of relaxation steps up to
    ``max_relax``) are passed to the compiled binary at run time.
    """

    sizes: tuple
    loss: str
    rule: str
    rule_build: tuple
    feedback: str
    derivative: bool
    ordering: str
    record_variables: tuple
    record_every: int
    max_relax: int
    n_samples: int = 1
    forward: str = "frozen"
    train: bool = False
    align_interval: int = 0
    projection: str = "synapses"
    copies: int = 1
    precision: str = "float64"
    #: batches per training run (sizes the mirror-noise arrays; 0 outside training)
    n_batches: int = 0
    #: the CBLAS the C++ links (`arsim.brian.blas`)
    blas: str = "openblas"
    #: the projections' geometry (`arsim.layers`) of a network with convolutions or pools; () for an MLP
    ops: tuple = ()
    #: AR's switches of the convolutional projections (``same``: as ``feedback`` / ``derivative``)
    conv_feedback: str = "same"
    conv_derivative: str = "same"

    @property
    def n_layers(self) -> int:
        """Number of weight layers ``L``."""
        return len(self.sizes) - 1

    @property
    def n_steps(self) -> int:
        """Clock steps of one run; training adds one step that learns from the last sample."""
        return self.n_samples * self.steps_per_sample + (1 if self.train else 0)

    @property
    def samples_per_run(self) -> int:
        """Samples one run trains on or relaxes: ``copies`` per sample period."""
        return self.n_samples * self.copies

    @property
    def steps_per_sample(self) -> int:
        """Clock steps per sample: the forward sweep plus ``max_relax`` relaxation steps."""
        return self.max_relax + 1

    def make_rule(self) -> Rule:
        """The rule object of this topology (its compiled settings; run-time values take defaults)."""
        return make_rule(self.rule, dict(self.rule_build), derivative=self.derivative, ordering=self.ordering,
                         conv_feedback=self.conv_feedback, conv_derivative=self.conv_derivative,
                         conv_layers=tuple(l for l, op in enumerate(self.ops) if op.kind == "conv"), sizes=self.sizes,
                         forward=self.forward, feedback=self.feedback)


def topology_for(experiment, max_relax: int | None = None, n_samples: int = 1) -> Topology:
    """The build key of an `arsim.spec.Experiment` (``max_relax`` default: its relaxation steps)."""
    net, rule, probe = experiment.network, experiment.rule, experiment.probe
    if not rule.simulated:
        raise ValueError(f"rule = {rule.name!r} is not simulated in Brian2 (it is the numpy oracle)")
    return Topology(
        sizes=tuple(net.sizes),
        loss=net.loss,
        rule=rule.name,
        rule_build=rule.build_settings(rule.settings),
        feedback=rule.feedback,
        derivative=bool(rule.derivative),
        ordering=rule.ordering,
        forward=rule.forward,
        record_variables=tuple(probe.record_variables),
        record_every=int(probe.record_every),
        max_relax=int(max_relax if max_relax is not None else net.n_relax_steps),
        n_samples=n_samples,
        projection=net.projection,
        precision=net.precision,
        blas=net.blas,
        ops=net.ops if net.convolutional else (),
        conv_feedback=rule.conv_feedback,
        conv_derivative=rule.conv_derivative,
    )


def projection_indices(n_pre: int, n_post: int) -> tuple[np.ndarray, np.ndarray]:
    """Pre and post indices of a dense projection, synapse k = post * n_pre + pre.

    With this order ``w`` is ``W.ravel()`` for ``W`` of shape ``(n_post, n_pre)``.
    """
    return np.tile(np.arange(n_pre), n_post), np.repeat(np.arange(n_post), n_pre)


@dataclass
class BuiltNetwork:
    """The Brian2 objects of one network, by role."""

    network: Network
    layers: list
    projections: list
    monitors: dict = field(default_factory=dict)
    align_monitors: dict = field(default_factory=dict)
    noise_groups: list = field(default_factory=list)
    controllers: list = field(default_factory=list)
    input_values: TimedArray | None = None
    target_values: TimedArray | None = None
    duration: float = 0.0
    #: the run-time scalars of the rule's neuron terms, ``{name: kind}`` (`arsim.brian.neuron.run_time_terms`)
    rule_parameters: dict = field(default_factory=dict)


def build_network(topo: Topology) -> BuiltNetwork:
    """Create (but do not run) the Brian2 objects for ``topo``.

    Returns
    -------
    BuiltNetwork
        The layers ``layer0..layerL``, projections ``proj0..proj{L-1}``, the
        input/target `TimedArray` s (one row per sample) and the monitors.
    """
    # every array and the generated C++ of this network take its precision, and its gemm calls its CBLAS
    prefs.core.default_float_dtype = np.dtype(topo.precision).type
    select_blas(topo.blas)
    n_layers = topo.n_layers
    steps = topo.steps_per_sample
    sample_dt = steps * DT_INTERNAL * second
    copies = topo.copies
    if copies > 1 and topo.projection != "dense":
        raise ValueError("parallel copies of the layers need projection = 'dense' (one weight array for all copies)")
    # copy s of layer l is units s*n_l .. s*n_l + n_l - 1: a row of the inputs
    input_values = TimedArray(np.zeros((topo.n_samples, copies * topo.sizes[0])), dt=sample_dt, name="input_values")
    target_values = TimedArray(np.zeros((topo.n_samples, copies * topo.sizes[-1])), dt=sample_dt, name="target_values")
    namespace = {"input_values": input_values, "target_values": target_values, **brian_functions()}
    rule = topo.make_rule()
    clock = Clock(dt=DT_INTERNAL * second, name="arsim_clock")
    sample_clock = Clock(dt=sample_dt, name="arsim_sample_clock")

    layers, extra, noise_groups = [], [], []
    for index, size in enumerate(topo.sizes):
        order = 0 if topo.ordering == "synchronous" else 2 * (n_layers - index)
        group = NeuronGroup(
            copies * size,
            neuron_equations(rule.error_units, rule.neuron_terms(), rule.stochastic),
            method="euler",
            namespace=namespace,
            order=order,
            clock=clock,
            name=f"layer{index}",
        )
        group.hidden = 1.0 if 0 < index < n_layers else 0.0
        group.tau = 10 * DT_INTERNAL * second
        group.n_relax = topo.max_relax
        group.steps_per_sample = steps
        group.act_kind = ACTIVATION_CODES["tanh"]
        group.act_slope = 0.01
        group.x_start = 1.0
        group.batch_size = 1
        group.err_gain = 1.0
        group.signal_gain = 1.0
        group.leak = 1.0
        if topo.train and index >= 1 and topo.projection != "dense":
            _add_bias_plasticity(group, sample_dt, rule)
        role = "input" if index == 0 else ("output" if index == n_layers else "hidden")
        code = store_code(role, loss=topo.loss, value_nodes=rule.value_nodes, connected=rule.error_units == "connected")
        group.run_regularly(code, dt=sample_dt, when="start", order=3 * index, name=f"layer{index}_store")
        if role != "hidden":
            # the input and the clamped output never integrate (relaxing = 0):
            # their per-step Euler update would only cost time (784 of the
            # 1,494 units of the paper's MNIST net)
            group.state_updater.active = False
        layers.append(group)

    # dynamic inversion: the controllers u^{l+1} of every hidden layer l, same neuron type, leak alpha
    controllers = {}
    if rule.controllers:
        for index in range(2, n_layers + 1):
            group = NeuronGroup(copies * topo.sizes[index], neuron_equations(), method="euler", namespace=namespace,
                                order=layers[index].order, clock=clock, name=f"ctrl{index}")
            group.hidden = 1.0
            group.tau = 10 * DT_INTERNAL * second
            group.n_relax = topo.max_relax
            group.steps_per_sample = steps
            group.batch_size = 1
            group.leak = 1.0
            group.run_regularly(store_code("controller"), dt=sample_dt, when="start", order=3 * index, name=f"ctrl{index}_store")
            controllers[index] = group

    projections = []
    dense = topo.projection == "dense"
    for index in range(n_layers):
        pre, post = layers[index], layers[index + 1]
        holds_backward = rule.backward_holder(index, n_layers) == f"proj{index}"
        layer_rule = rule.for_layer(index)  # AR's conv switches give a convolution its own feedback and derivative
        # the input layer does not relax: no feedback into it; direct feedback and controllers bring their own
        feeds_back = index >= 1 and not rule.direct and not rule.controllers
        op = topo.ops[index] if topo.ops else None
        if not dense and op is not None and op.kind == "conv":
            # the plain-Synapses cross-check of a convolution: a kernel group and unrolled connections with linked weights
            kernel, objects = add_conv_synapses(
                index, op, pre, post, layer_rule, clock, sample_clock, sample_dt, namespace, topo.train, feeds_back, holds_backward,
                orders={"forward": 3 * (index + 1) - 2, "sample_sum": ORDER_ACCUMULATE - 1, "accumulate": ORDER_ACCUMULATE,
                        "apply": ORDER_APPLY})
            extra.extend(objects)
            projections.append(kernel)
            continue
        if dense:
            # the sums (a, anow, fb) are C++ mat-vecs over w / wb (arsim/brian/cpp_projection.py)
            model = ["w : 1", "wb : 1" if holds_backward else "", TICK_EQUATION]
        else:
            model = ["w : 1", rule.projection_equations(), "a_post = w * xbar_pre : 1 (summed)"]
        if topo.train:
            model.append("dw_acc : 1")
            if dense:
                model += [f"{name} : 1 (shared, constant)" for name in PLASTICITY_SCALARS]
                model += [f"{name}_acc : 1" for name in ("amp", "null") if holds_backward and name in rule.train_primitives]
                if index >= 1 and rule.counts_kinks:
                    model.append("kinks : 1 (shared)")
                if index >= 1 and rule.inverse_feedback:
                    model += ["singular_update : 1 (shared)", "singular_condition : 1 (shared)"]
        if feeds_back and not dense:
            model.append(f"fb_pre = {rule.feedback_expression()} : 1 (summed)")
        syn = Synapses(
            pre, post, model="\n".join(m for m in model if m), clock=clock,
            namespace=dict(namespace) if dense else namespace, name=f"proj{index}",
        )
        if spatial(op):
            # synapse k holds W^l's entry k (a convolution's: its kernel's, OIHW): storage, not a connection
            count = weight_count(op)
            syn.connect(i=np.arange(count) % topo.sizes[index], j=(np.arange(count) // topo.sizes[index]) % topo.sizes[index + 1])
        else:
            i, j = projection_indices(topo.sizes[index], topo.sizes[index + 1])  # the first copies
            syn.connect(i=i, j=j)
        if spatial(op):
            add_spatial_projection(syn, pre, post, layer_rule, op, functions=namespace, forward_order=3 * (index + 1) - 2,
                                   sample_dt=sample_dt, feedback_order=pre.order - 1 if feeds_back else None, copies=copies,
                                   derivative=layer_rule.derivative)
        elif dense:
            add_dense_projection(
                syn, pre, post, layer_rule, functions=namespace,
                forward_order=3 * (index + 1) - 2, sample_dt=sample_dt,
                feedback_order=pre.order - 1 if feeds_back else None,
                current_drive_order=ORDER_CURRENT_DRIVE if rule.needs_current_drive else None, copies=copies,
            )
        else:
            _schedule_summed(syn, index, rule, sample_clock)
        if topo.train and dense:
            noise = None
            if rule.mirror and holds_backward and index >= 1:
                steps_mirror, samples = rule.mirror_shape()
                noise = NeuronGroup(max(1, topo.n_batches) * steps_mirror * samples * topo.sizes[index], "v : 1",
                                    clock=clock, name=f"mirror{index}")
                extra.append(noise)
                noise_groups.append(noise)
            # accumulate and apply in C++ (with the bias of post), every period or every batch_size periods
            add_dense_plasticity(
                syn, pre, post, layer_rule, functions=namespace, copies=copies, sample_dt=sample_dt,
                accumulate_order=ORDER_ACCUMULATE, apply_order=ORDER_APPLY, holds_backward=holds_backward,
                noise_group=noise, op=op, columns=(rule.input_columns(topo.sizes) or [None] * n_layers)[index],
                inverts=index >= 1 and rule.inverse_feedback, counts_kinks=index >= 1 and rule.counts_kinks,
            )
        elif topo.train:
            syn.run_regularly(rule.accumulate_code(), dt=sample_dt, when="start", order=ORDER_ACCUMULATE, name=f"proj{index}_accumulate")
            syn.run_regularly(rule.apply_code(), dt=sample_dt, when="start", order=ORDER_APPLY, name=f"proj{index}_apply")
        projections.append(syn)

    # direct feedback (DFA): one feedback-only pathway from the output to every hidden layer;
    # dynamic inversion: from the controllers u^{l+1}, which the same Synapses drive with W^l x^l - delta^{l+1}
    for index in range(1, n_layers):
        holder = rule.backward_holder(index, n_layers)
        if holder is None or holder == f"proj{index}":
            continue
        source = rule.feedback_source(index, n_layers)
        pre, post = layers[index], controllers[source] if rule.controllers else layers[source]
        syn = Synapses(pre, post, model="\n".join(["wb : 1", TICK_EQUATION]), clock=clock, namespace=dict(namespace), name=holder)
        i, j = projection_indices(len(pre) // copies, len(post) // copies)
        syn.connect(i=i, j=j)
        add_dense_projection(syn, pre, post, rule, functions=namespace, forward_order=None, sample_dt=sample_dt,
                             feedback_order=pre.order - 1, current_drive_order=None, copies=copies)
        if rule.controllers:
            add_controller_drive(syn, projections[index], pre, post, layers[source], order=post.order - 1, copies=copies)
        projections.append(syn)

    # predictive coding's error connections: mu = Phi^l xbar^l, one projection of each hidden layer onto itself
    if rule.error_units == "connected":
        for index in range(1, n_layers):
            group = layers[index]
            syn = Synapses(group, group, model="w : 1\n" + TICK_EQUATION, clock=clock, namespace=dict(namespace), name=f"err{index}")
            i, j = projection_indices(topo.sizes[index], topo.sizes[index])
            syn.connect(i=i, j=j)
            add_error_connections(syn, group, sample_dt, order=3 * index + 1, copies=copies,
                                  learn_order=ORDER_ACCUMULATE if topo.train and rule.learns_state else None)
            projections.append(syn)

    if topo.loss == "ce":
        out = layers[-1]
        norm = Synapses(out, out, model="zsum_post = exp(u_pre - u_post) : 1 (summed)", clock=clock, name="softmax_norm")
        n_out = topo.sizes[-1]
        within = np.arange(n_out)
        # one softmax per copy: all pairs of units within a copy
        norm.connect(
            i=np.concatenate([s * n_out + np.tile(within, n_out) for s in range(copies)]),
            j=np.concatenate([s * n_out + np.repeat(within, n_out) for s in range(copies)]),
        )
        norm_sum = norm.summed_updaters["zsum_post"]
        norm_sum.when, norm_sum.order = "start", 3 * n_layers - 1
        extra.append(norm)

    if rule.stochastic:
        add_noise_seed(layers[0], order=ORDER_SEED)
    rule.extend_network(NetworkParts(topo, layers, projections[:n_layers], copies, sample_dt))

    monitors = {}
    if topo.record_variables:
        for index in range(1, n_layers + 1):
            monitors[index] = StateMonitor(
                layers[index],
                list(topo.record_variables),
                record=True,
                dt=topo.record_every * DT_INTERNAL * second,
                when="end",
                name=f"monitor{index}",
            )

    align_monitors = {}
    if topo.train and topo.align_interval:
        # sees the batch's summed update and the weights it was computed with,
        # between accumulation and application
        for index, syn in enumerate(projections[:n_layers]):
            align_monitors[index] = StateMonitor(
                syn,
                ["w", "dw_acc"],
                record=np.arange(weight_count(topo.ops[index]) if topo.ops else topo.sizes[index] * topo.sizes[index + 1]),
                dt=topo.align_interval * sample_dt,
                when="start",
                order=ORDER_ALIGN,
                name=f"align{index}",
            )
        for index in range(1, n_layers + 1):
            align_monitors[f"b{index}"] = StateMonitor(
                layers[index],
                ["b"],
                record=np.arange(topo.sizes[index]),  # the copies hold the same bias
                dt=topo.align_interval * sample_dt,
                when="start",
                order=ORDER_ALIGN,
                name=f"alignb{index}",
            )

    network = Network(*layers, *controllers.values(), *projections, *extra, *monitors.values(), *align_monitors.values())
    return BuiltNetwork(
        network=network,
        layers=layers,
        controllers=list(controllers.values()),
        projections=projections,
        monitors=monitors,
        align_monitors=align_monitors,
        noise_groups=noise_groups,
        input_values=input_values,
        target_values=target_values,
        duration=topo.n_steps * DT_INTERNAL,
        rule_parameters=run_time_terms(rule.neuron_terms(), rule.stochastic),
    )


# start-slot orders of the plasticity operations: all before the forward sweep (orders >= 0)
ORDER_SEED, ORDER_CURRENT_DRIVE, ORDER_ACCUMULATE, ORDER_ALIGN, ORDER_APPLY = -100, -40, -30, -20, -10


@dataclass
class NetworkParts:
    """What `arsim.rules.base.Rule.extend_network` may add operations to: the built layers and projections.

    Schedule of one clock step, as the rule sees it: in slot ``start``,
    ``ORDER_CURRENT_DRIVE`` (-40) precedes the plasticity of the sample that
    just relaxed and the forward sweep (orders >= 0, step 0 of a sample
    only); in slot ``groups`` the feedback sums run at order -1 and the
    layers' state updates (``x``, and a rule's differential equations such
    as an OU noise) at order 0, so orders 1, 2, ... see the step's new state.
    """

    topology: Topology
    layers: list
    #: ``proj0 .. proj{L-1}``: projection ``l`` holds ``W^l`` in ``w`` (and a rule's ``B^l`` in ``wb``)
    projections: list
    copies: int
    sample_dt: object

    ORDER_CURRENT_DRIVE = ORDER_CURRENT_DRIVE

    def every_step(self, layer: int, code: str, order: int, name: str, when: str = "groups") -> None:
        """Run Brian2 abstract ``code`` on every unit of ``layer`` at every step (slot ``when``, ``order``)."""
        group = self.layers[layer]
        group.run_regularly(code, when=when, order=order, name=f"{group.name}_{name}")

    def drive(self, index: int, source: str, target: str, order: int, when: str = "start") -> None:
        """Every step, ``target`` of layer ``index + 1`` = ``W^index`` times ``source`` of layer ``index`` (every copy)."""
        syn = self.projections[index]
        add_drive(syn, syn.source, syn.target, source, target, self.copies, when=when, order=order)

    def operation(self, index: int, name: str, arrays: dict, numpy_body, cpp_body: str, arguments: dict | None = None,
                  order: int = 0, when: str = "groups", blas: bool = False) -> None:
        """An operation on projection ``index`` every step (`arsim.brian.cpp_projection.add_operation`)."""
        add_operation(self.projections[index], name, arrays, numpy_body, cpp_body, self.copies, arguments=arguments,
                      when=when, order=order, blas=blas)


def _schedule_summed(syn, index: int, rule: Rule, sample_clock) -> None:
    """Place the summed updaters of projection ``index`` (``projection = "synapses"``)."""
    forward_sum = syn.summed_updaters["a_post"]
    forward_sum.when, forward_sum.order = "start", 3 * (index + 1) - 2
    # the forward sweep happens once per sample: running the sum on every
    # relaxation step would double the synaptic work for nothing
    forward_sum._clock = sample_clock
    if rule.needs_current_drive:
        # every step, before anything reads fpnow: the drive of the state the
        # step starts from (and, at a sample's step 0, of the final relaxed state)
        current_sum = syn.summed_updaters["anow_post"]
        current_sum.when, current_sum.order = "start", ORDER_CURRENT_DRIVE


def _add_bias_plasticity(group, sample_dt, rule: Rule) -> None:
    """Bias learning of a non-input layer: the same accumulate/apply phases as the weights."""
    group.run_regularly(rule.bias_accumulate_code(), dt=sample_dt, when="start", order=ORDER_ACCUMULATE + 1, name=f"{group.name}_accumulate")
    group.run_regularly(
        "b = b - apply_update * lr * db_acc\ndb_acc = db_acc * (1 - apply_update)",
        dt=sample_dt,
        when="start",
        order=ORDER_APPLY + 1,
        name=f"{group.name}_apply",
    )
