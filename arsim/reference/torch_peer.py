"""Batched AR training in PyTorch: the bench peer of `arsim bench` (optional dependency).

The AR authors' code is PyTorch, and it is what many users would write:
the same algorithm as the Brian2 network and `arsim.rules.Rule.reference_epoch`
(forward sweep, ``N`` synchronous Euler steps of the relaxation of SPEC
section 2 with ``B = W^T``, the local update summed over a minibatch, SGD),
every sample of a batch a row of a tensor, float64 on the CPU. Only exact AR
(``rule = "ar"`` with its default switches) is written here; `arsim bench`
checks its weights against the other two implementations to 1e-9 before it
reports a ratio.
"""

from __future__ import annotations

import numpy as np

__all__ = ["available", "ar_epoch_torch", "blas_description"]


def available() -> bool:
    """Whether torch can be imported."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def blas_description() -> str:
    """torch's version and the BLAS it computes float64 matrix products with."""
    import torch

    blas = "MKL" if torch.backends.mkl.is_available() else "non-MKL BLAS"
    return f"torch {torch.__version__} ({blas}, {torch.get_num_threads()} threads)"


_ACTIVATIONS = {
    "linear": (lambda u: u, lambda u: u * 0 + 1),
    "relu": (lambda u: u * (u > 0), lambda u: (u > 0).to(u.dtype)),
    "tanh": (lambda u: u.tanh(), lambda u: 1 - u.tanh() ** 2),
    "sigmoid": (lambda u: u.sigmoid(), lambda u: u.sigmoid() * (1 - u.sigmoid())),
}


def ar_epoch_torch(experiment, W: list, b: list, x_in: np.ndarray, targets: np.ndarray):
    """One epoch of exact AR minibatch SGD on the rows of ``x_in``; returns ``(W, b)`` as numpy arrays.

    Raises
    ------
    ValueError
        For an experiment this peer does not implement (another rule or switch).
    """
    import torch

    net, rule = experiment.network, experiment.rule
    if net.convolutional:
        raise ValueError("the torch peer implements dense networks only")
    if rule.name != "ar" or rule.feedback != "transpose" or not rule.frozen_forward or not rule.derivative \
            or rule.ordering != "synchronous" or net.loss != "mse" or net.activation not in _ACTIVATIONS \
            or net.output_activation not in _ACTIVATIONS:
        raise ValueError("the torch peer implements exact AR (synchronous, frozen, derivative) with the mse loss only")
    f, fp = _ACTIVATIONS[net.activation]
    f_out, fp_out = _ACTIVATIONS[net.output_activation]
    eta = net.eta
    steps = net.n_relax_steps
    batch, lr = experiment.training.batch_size, experiment.training.lr
    W = [torch.tensor(w, dtype=torch.float64) for w in W]
    b = [torch.tensor(v, dtype=torch.float64) for v in b]
    x_all = torch.tensor(x_in, dtype=torch.float64)
    t_all = torch.tensor(targets, dtype=torch.float64)
    n_layers = len(W)
    with torch.no_grad():
        for start in range(0, len(x_all) - batch + 1, batch):
            xbar, slope = [x_all[start:start + batch]], [None]
            for l in range(n_layers):
                a = xbar[-1] @ W[l].T + b[l]
                top = l == n_layers - 1
                xbar.append((f_out if top else f)(a))
                slope.append((fp_out if top else fp)(a))
            x = [v.clone() for v in xbar]
            x[n_layers] = 2.0 * (xbar[-1] - t_all[start:start + batch])
            for _ in range(steps):
                fb = [(x[l + 1] * slope[l + 1]) @ W[l] for l in range(1, n_layers)]
                for l in range(1, n_layers):
                    x[l] = x[l] + eta * (fb[l - 1] - x[l])
            for l in range(n_layers):
                delta = x[l + 1] * slope[l + 1]
                W[l] = W[l] - lr * (delta.T @ xbar[l])
                if net.bias:
                    b[l] = b[l] - lr * delta.sum(dim=0)
    return [w.numpy() for w in W], [v.numpy() for v in b]
