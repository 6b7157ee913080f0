"""A convolution as plain Brian2 Synapses with linked weights: the cross-check of the C++ path.

With ``projection = "synapses"`` a convolution (without a pool on its input)
is built from Brian2's own idioms only, the way ``projection = "synapses"``
cross-checks the dense C++ projections:

``proj{l}``
    a `NeuronGroup` of ``F C k k`` units holding the kernel (``w``, and
    ``wb`` for a separate backward kernel): the one array of the shared
    weights, and what the run-time arguments ``proj{l}.w`` / ``proj{l}.wb``
    replace;
``conv{l}``
    the unrolled connections, one synapse per (input pixel, output unit)
    pair the kernel joins, each with an integer ``k`` (its kernel entry) and
    ``w : 1 (linked)`` to the kernel's ``w[k]`` (Brian2 >= 2.9: linked
    variables in Synapses, indexed by a synaptic variable). Every synapse
    reads the kernel, so sharing is exact by construction; the summed
    variables ``a_post = w xbar_pre`` (once per sample) and
    ``fb_pre = B x_post [f'_post]`` (every step) are AR's forward drive and
    transposed-convolution feedback;
``grad{l}``
    in training, one synapse per connection from the output unit to its
    kernel entry, reading the input pixel through ``xin : 1 (linked)``
    (indexed by ``src``): ``dw_sample_post = x_pre f'_pre xin`` sums the
    sample's update of every kernel entry over positions, at the start of
    the next sample; the kernel group accumulates it over the batch and
    takes the SGD step (and ``dB = dW`` for a learned backward kernel).

The research note that designed it: research/ar_cnn.md section 3.
"""

from __future__ import annotations

import numpy as np
from brian2 import NeuronGroup, Synapses, linked_var

__all__ = ["conv_connections", "add_conv_synapses"]


def conv_connections(op) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(pre, post, kernel)`` indices of every (input pixel, output unit) pair of convolution ``op`` (no pool)."""
    c_in, h, w = op.in_shape
    f, ho, wo = op.out_shape
    k, s, pad = op.kernel, op.stride, op.padding
    pre, post, kernel = [], [], []
    for o in range(f):
        for c in range(c_in):
            for u in range(k):
                for v in range(k):
                    entry = ((o * c_in + c) * k + u) * k + v
                    for i in range(ho):
                        y = i * s + u - pad
                        if not 0 <= y < h:
                            continue
                        for j in range(wo):
                            z = j * s + v - pad
                            if 0 <= z < w:
                                pre.append((c * h + y) * w + z)
                                post.append((o * ho + i) * wo + j)
                                kernel.append(entry)
    return np.array(pre), np.array(post), np.array(kernel)


def add_conv_synapses(index: int, op, pre, post, rule, clock, sample_clock, sample_dt, namespace: dict, train: bool,
                      feeds_back: bool, holds_backward: bool, orders: dict) -> tuple:
    """Build convolution ``index`` of the synapses path; return ``(kernel_group, [the other objects])``.

    ``orders`` holds the start-slot orders ``forward``, ``sample_sum``,
    ``accumulate`` and ``apply`` (`arsim.brian.network`).
    """
    n_weights = int(np.prod(op.weight_shape))
    kernel_model = ["w : 1", "wb : 1" if holds_backward else ""]
    if train:
        kernel_model += [
            "dw_acc : 1", "dw_sample : 1",
            "lr : 1 (linked)", "batch_size : integer (linked)", "steps_per_sample : integer (linked)",
            "apply_update = int(t_in_timesteps > 0) * int((t_in_timesteps // steps_per_sample) % batch_size == 0) : 1",
        ]
    kernel = NeuronGroup(n_weights, "\n".join(m for m in kernel_model if m), clock=clock, name=f"proj{index}")
    objects = []
    i, j, k = conv_connections(op)

    matrix = "wb" if holds_backward else "w"
    carried = "x_post * fp_post" if rule.derivative else "x_post"
    model = ["w : 1 (linked)", "wb : 1 (linked)" if holds_backward else "", "k : integer (constant)",
             "a_post = w * xbar_pre : 1 (summed)", f"fb_pre = {matrix} * {carried} : 1 (summed)" if feeds_back else ""]
    connections = Synapses(pre, post, "\n".join(m for m in model if m), clock=clock, namespace=namespace, name=f"conv{index}")
    connections.connect(i=i, j=j)
    connections.k = k
    connections.w = linked_var(kernel, "w", index="k")
    if holds_backward:
        connections.wb = linked_var(kernel, "wb", index="k")
    forward = connections.summed_updaters["a_post"]
    # the forward sweep is once per sample (the dense path's forward drive runs at the same slot and order)
    forward.when, forward.order, forward._clock = "start", orders["forward"], sample_clock
    objects.append(connections)

    if train:
        kernel.lr = linked_var(post, "lr")
        kernel.batch_size = linked_var(post, "batch_size")
        kernel.steps_per_sample = linked_var(post, "steps_per_sample")
        gradient = Synapses(post, kernel, "src : integer (constant)\nxin : 1 (linked)\n"
                            "dw_sample_post = x_pre * fp_pre * xin : 1 (summed)", clock=clock, namespace=namespace,
                            name=f"grad{index}")
        gradient.connect(i=j, j=k)
        gradient.src = i
        gradient.xin = linked_var(pre, "xbar", index="src")
        summed = gradient.summed_updaters["dw_sample_post"]
        # at a sample's step 0, before its forward sweep: the relaxed x of the sample that just ended
        summed.when, summed.order, summed._clock = "start", orders["sample_sum"], sample_clock
        objects.append(gradient)
        kernel.run_regularly("dw_acc += dw_sample * int(t_in_timesteps > 0)", dt=sample_dt, when="start",
                             order=orders["accumulate"], name=f"proj{index}_accumulate")
        apply = ["w = w - apply_update * lr * dw_acc"]
        if rule.tied and holds_backward:
            apply.append("wb = wb - apply_update * lr * dw_acc")  # dB = dW: the backward kernel in the forward layout
        apply.append("dw_acc = dw_acc * (1 - apply_update)")
        kernel.run_regularly("\n".join(apply), dt=sample_dt, when="start", order=orders["apply"], name=f"proj{index}_apply")
    return kernel, objects
