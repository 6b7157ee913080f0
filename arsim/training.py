"""Training: AR learning inside one standalone Brian2 run per epoch, and the BP baseline.

An epoch is a few equal runs of the compiled network, each a whole number
of batches (`chunk_batches`). The samples of a run (the epoch's order is
shuffled from ``seed`` and the epoch number) are the rows of the input and
target `TimedArray` s; every sample takes ``1 + N`` clock steps (forward
sweep, ``N`` relaxation steps), the local update is accumulated at the start
of the next sample and applied at each batch boundary (``arsim/brian/neuron.py``).
Weights go in and come out as run-time arrays, so runs never recompile.

The backprop baseline uses the same initial weights, sample order and batch
schedule in float64 numpy, so the two differ only by credit assignment.
Samples that do not fill a last batch are dropped from the epoch (both rules).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from . import metrics
from .brian.devices import Runner, get_runner
from .brian.network import DT_INTERNAL, Topology, topology_for
from .initialise import forward_weights
from .layers import exact_feedback
from .reference import oracle
from .relax import Problem, network_params, noise_seed
from .spec import Experiment, NetworkSpec

__all__ = ["Params", "init_params", "epoch_order", "chunk_batches", "train_topology", "BrianTrainer", "ChunkResult", "bp_epoch", "evaluate"]


@dataclass
class Params:
    """Trainable state: forward weights ``W``, biases ``b``, backward weights ``B`` and the rule's own arrays.

    ``state`` holds what a rule trains beside them (`arsim.rules.base.Rule.initial_state`,
    e.g. predictive coding's error connections ``Phi{l}``), by npz key.
    """

    W: list
    b: list
    B: list
    state: dict = field(default_factory=dict)

    def copy(self) -> "Params":
        return Params([w.copy() for w in self.W], [v.copy() for v in self.b], [m.copy() for m in self.B],
                      {k: v.copy() for k, v in self.state.items()})

    def astype(self, dtype) -> "Params":
        """A copy with every array in ``dtype`` (float32 references of ``precision = "float32"``)."""
        return Params([w.astype(dtype) for w in self.W], [v.astype(dtype) for v in self.b], [m.astype(dtype) for m in self.B],
                      {k: v.astype(dtype) for k, v in self.state.items()})

    def arrays(self) -> dict:
        """Flat dict ``W{l}``, ``b{l}``, ``B{l}`` and the rule's own keys, for npz files."""
        out = {}
        for l in range(len(self.W)):
            out[f"W{l}"], out[f"b{l}"], out[f"B{l}"] = self.W[l], self.b[l], self.B[l]
        return {**out, **self.state}

    @classmethod
    def from_arrays(cls, data, n_layers: int, state_keys=()) -> "Params":
        """Read what `arrays` wrote; ``state_keys`` names the rule's own arrays (`Rule.initial_state`)."""
        return cls(
            [np.array(data[f"W{l}"]) for l in range(n_layers)],
            [np.array(data[f"b{l}"]) for l in range(n_layers)],
            [np.array(data[f"B{l}"]) for l in range(n_layers)],
            {key: np.array(data[key]) for key in state_keys},
        )


def init_params(experiment: Experiment) -> Params:
    """Initial weights from the seed: ``W`` by ``init`` (`arsim.initialise`), zero biases, ``B`` by the rule."""
    rng = np.random.default_rng([experiment.seed, 1])
    net = experiment.network
    sizes = net.sizes
    W = forward_weights(rng, sizes, net.init, net.init_std, experiment.rule.input_columns(sizes), ops=net.ops)
    b = [np.zeros(sizes[l + 1]) for l in range(len(sizes) - 1)]
    B = experiment.rule.initial_backward(W, rng, net.feedback_std)
    return Params(W, b, B, experiment.rule.initial_state(sizes, rng))


def epoch_order(experiment: Experiment, n_train: int, epoch: int) -> np.ndarray:
    """Indices of the samples of ``epoch``, whole batches only, seeded by (seed, epoch)."""
    batch = experiment.training.batch_size
    n_used = (n_train // batch) * batch
    rng = np.random.default_rng([experiment.seed, 2, epoch])
    return rng.permutation(n_train)[:n_used]


def chunk_batches(n_batches: int, batch_size: int, max_samples: int = 1024) -> int:
    """Batches per standalone run: the largest divisor of ``n_batches`` within ``max_samples``.

    An epoch is split into equal runs of whole batches so that every run of
    the one build has the same length, progress is reported between runs,
    and the accumulated update is empty at every run boundary.
    """
    best = 1
    for k in range(1, n_batches + 1):
        if n_batches % k == 0 and k * batch_size <= max_samples:
            best = k
    return best


def train_topology(experiment: Experiment, chunk_samples: int, max_relax: int | None = None) -> Topology:
    """The build key of a training run of ``chunk_samples`` samples per run.

    ``max_relax`` (default: the experiment's steps) is the longest relaxation the
    build can run; shorter ones are a run-time parameter. With
    `Experiment.batch_parallel` the layers hold ``train.batch_size`` copies
    and a run has one sample period per batch; otherwise one per sample.
    """
    batch = experiment.training.batch_size
    copies = batch if experiment.batch_parallel else 1
    align = 0
    if experiment.training.align_every:
        # record at every g-th batch of a run, g dividing both the run and the
        # sampling interval, so every sampled batch of the epoch is recorded
        align = math.gcd(experiment.training.align_every, chunk_samples // batch) * (batch // copies)
    return dataclasses.replace(
        topology_for(experiment, max_relax=max_relax, n_samples=chunk_samples // copies),
        record_variables=(), record_every=1, train=True, align_interval=align, copies=copies,
        n_batches=chunk_samples // batch if experiment.rule.mirror else 0,
    )


@dataclass
class ChunkResult:
    """What one standalone training run produced."""

    params: Params
    #: ``(batch, layer, angle_deg, rel_error)`` for every sampled batch (1-based within the epoch)
    alignment: list = field(default_factory=list)
    seconds: float = 0.0
    #: layers whose ``B`` the rule repaired before or after the run (`arsim.rules.base.Rule.stabilise`)
    repairs: int = 0
    #: the rule's counters of the run (`arsim.rules.base.Rule.diagnostics`)
    diagnostics: dict = field(default_factory=dict)


class BrianTrainer:
    """Runs AR training in the compiled Brian2 network, one run per chunk of batches.

    Parameters
    ----------
    experiment : arsim.spec.Experiment
    chunk_samples : int
        Samples per run (a whole number of batches; fixes the build).
    device : {"cpp", "runtime"}
    max_relax : int, optional
        Longest relaxation of the build (default: the experiment's).
    runner : Runner, optional
        A compiled network of this topology to reuse.
    """

    def __init__(self, experiment: Experiment, chunk_samples: int, device: str = "cpp", max_relax: int | None = None,
                 runner: Runner | None = None):
        self.experiment = experiment
        batch = experiment.training.batch_size
        if chunk_samples < batch or chunk_samples % batch:
            raise ValueError(f"a run holds whole batches: {chunk_samples} samples with batch size {batch}")
        self.topology = train_topology(experiment, chunk_samples, max_relax)
        n_relax = experiment.network.n_relax_steps
        if n_relax > self.topology.max_relax:
            raise ValueError(f"{n_relax} relaxation steps requested; the build holds at most {self.topology.max_relax}")
        if runner is not None and runner.topology != self.topology:
            raise ValueError("the runner was built for another topology")
        self.rule = experiment.rule
        self.runner = runner or get_runner(self.topology, device)
        # the (W, B) lists the last run's `stabilise` returned: the next run, handed them back, skips that work
        self._stabilised: tuple | None = None

    def mirror_noise(self, epoch: int, first_batch: int) -> dict:
        """The mirror noise of one run, ``{l: (batches, steps, samples, n_l)}``, seeded by (seed, epoch, first batch)."""
        if not self.rule.mirror:
            return {}
        rng = np.random.default_rng([self.experiment.seed, 7, epoch, first_batch])
        n_batches = self.topology.samples_per_run // self.experiment.training.batch_size
        return self.rule.mirror_noise(rng, n_batches, self.experiment.network.sizes)

    def params_for_run(self, params: Params, x: np.ndarray, targets: np.ndarray, noise: dict | None = None,
                       seed: int = 0) -> dict:
        """Run-time arrays of one run: those of a relaxation plus the learning parameters (``seed``: a stochastic rule's)."""
        topo, net, training = self.topology, self.experiment.network, self.experiment.training
        # sample p * copies + c is copy c of period p: the rows of x, flattened, are the input rows
        b = [np.tile(v, topo.copies) for v in params.b]
        problem = Problem(W=params.W, b=b, B=params.B, x_in=x, target=targets, state=params.state, noise_seed=seed)
        out = network_params(topo, net, problem, rule=self.rule)
        for layer in range(topo.n_layers + 1):
            # AR and its peers train from the forward state, as their numpy references do (the rule decides)
            out[f"layer{layer}.x_start"] = np.array([self.rule.x_start(net.initial_state, training=True)])
            out[f"layer{layer}.lr"] = np.array([training.lr])
            out[f"layer{layer}.batch_size"] = np.array([training.batch_size])
            out[f"layer{layer}.learn_bias"] = np.array([1.0 if layer >= 1 and net.learns_bias(layer - 1) else 0.0])
        if topo.projection == "dense":
            for layer, values in enumerate(self.rule.plasticity_scalars(training.lr, net.sizes)):
                for name, value in values.items():
                    out[f"proj{layer}.{name}"] = np.array([value])
        for layer, values in (noise or {}).items():
            out[f"mirror{layer}.v"] = values.ravel()
        return out

    def run_chunk(self, params: Params, x: np.ndarray, targets: np.ndarray, first_batch: int = 0, epoch: int = 1,
                  noise: dict | None = None) -> ChunkResult:
        """Train on the rows of ``x`` / ``targets`` (in sample order, one run's worth).

        ``first_batch`` is the number of batches of the epoch before this run;
        it places the sampled alignment batches on the epoch's batch grid and,
        with ``epoch``, seeds the mirror noise (`mirror_noise`) unless
        ``noise`` is given.
        """
        import time

        topo = self.topology
        if len(x) != topo.samples_per_run:
            raise ValueError(f"this build trains on {topo.samples_per_run} samples per run, got {len(x)}")
        started = time.perf_counter()
        if noise is None:
            noise = self.mirror_noise(epoch, first_batch)
        eta = self.experiment.network.eta
        if self._stabilised is not None and params.W is self._stabilised[0] and params.B is self._stabilised[1]:
            B, repairs_before = params.B, 0  # stabilised after the previous run (GAIT-prop: its inverses)
        else:
            B, repairs_before = self.rule.stabilise(params.W, params.B, eta,
                                                    f"before the run of epoch {epoch} at batch {first_batch + 1}")
        if B is not params.B:
            params = dataclasses.replace(params, B=B)
        # a stochastic rule's noise: a stream per (seed, epoch, first batch), so a resumed run draws the same
        seed = noise_seed(self.experiment.seed, epoch, first_batch)
        raw = self.runner.run(self.params_for_run(params, x, targets, noise, seed=seed))
        seconds = time.perf_counter() - started
        sizes = topo.sizes
        self.rule.check_run(raw, topo.n_layers, epoch, first_batch)
        W = self.rule.constrain_weights([raw[f"proj{l}.w"].reshape(w.shape) for l, w in enumerate(params.W)])
        b = [raw[f"layer{l + 1}.b"][:sizes[l + 1]].copy() for l in range(topo.n_layers)]
        new = Params(W, b, self.rule.backward_from_results(raw, W, params.B), self.rule.state_from_results(raw, params.state))
        new.B, repairs_after = self.rule.stabilise(new.W, new.B, eta, f"after the run of epoch {epoch} that ended at batch"
                                                   f" {first_batch + len(x) // self.experiment.training.batch_size}")
        self._stabilised = (new.W, new.B)
        return ChunkResult(params=new, alignment=self._alignment(raw, x, targets, first_batch), seconds=seconds,
                           repairs=repairs_before + repairs_after, diagnostics=self.rule.diagnostics(raw, self.experiment.network))

    def _alignment(self, raw: dict, x: np.ndarray, targets: np.ndarray, first_batch: int) -> list:
        """Angle and relative error of the recorded batch updates against BP on the same batch."""
        topo, net = self.topology, self.experiment.network
        if not topo.align_interval:
            return []
        batch, every = self.experiment.training.batch_size, self.experiment.training.align_every
        hidden, output = net.hidden, net.output
        sizes = topo.sizes
        rows = []
        for record, t in enumerate(raw["align0.t"]):
            # samples done in this run
            boundary = int(round(t / (DT_INTERNAL * topo.steps_per_sample))) * topo.copies
            if boundary == 0 or boundary > topo.samples_per_run or (first_batch + boundary // batch) % every:
                continue
            first = boundary - batch
            # the recorded weights are those the batch was computed with (not yet updated)
            shapes = [op.weight_shape for op in net.ops]
            W = [raw[f"align{l}.w"][record].reshape(shapes[l]) for l in range(topo.n_layers)]
            b = [raw[f"alignb{l + 1}.b"][record] for l in range(topo.n_layers)]
            fwd = oracle.forward(W, b, x[first:boundary], hidden, output, net.loss, ops=net.ops)
            bp = oracle.backward(W, fwd, targets[first:boundary], net.loss, ops=net.ops)
            for l in range(topo.n_layers):
                update = raw[f"align{l}.dw_acc"][record].reshape(shapes[l])
                rows.append(
                    (first_batch + boundary // batch, l, metrics.angle_deg(update, bp.dW[l]), metrics.relative_error(update, bp.dW[l]))
                )
        return rows


def bp_epoch(experiment: Experiment, params: Params, x: np.ndarray, targets: np.ndarray, after_batch=None) -> Params:
    """One epoch of minibatch SGD with exact backprop (numpy, float64, batched).

    ``after_batch(batch_index, params)`` is called after every update.
    """
    net = experiment.network
    hidden, output = net.hidden, net.output
    batch, lr = experiment.training.batch_size, experiment.training.lr
    new = params.copy()
    ops = net.ops
    for index, start in enumerate(range(0, len(x) - batch + 1, batch)):
        fwd = oracle.forward(new.W, new.b, x[start:start + batch], hidden, output, net.loss, ops=ops)
        grads = oracle.backward(new.W, fwd, targets[start:start + batch], net.loss, ops=ops)
        for l in range(len(new.W)):
            new.W[l] = new.W[l] - lr * grads.dW[l]
            if net.learns_bias(l):
                new.b[l] = new.b[l] - lr * grads.db[l]
        new.B = [exact_feedback(op, w) for op, w in zip(ops, new.W)]
        if after_batch is not None:
            after_batch(index, new)
    return new


def evaluate(network: NetworkSpec, params: Params, x: np.ndarray, labels: np.ndarray, n_classes: int) -> dict:
    """Mean loss per sample and accuracy of the forward network on ``x``."""
    out = oracle.forward(params.W, params.b, x, network.hidden, network.output, network.loss, ops=network.ops).xbar[-1]
    targets = np.eye(n_classes)[labels]
    return {
        "loss": oracle.loss(out, targets, network.loss) / len(x),
        "accuracy": float(np.mean(np.argmax(out, axis=1) == labels)),
    }
