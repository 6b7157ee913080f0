"""Initial forward weights: the model file's ``init`` (``normal`` or ``orthogonal``) from a seeded generator."""

from __future__ import annotations

import numpy as np

__all__ = ["INITS", "forward_weights", "orthogonal"]

INITS = ("normal", "orthogonal")


def orthogonal(rng: np.random.Generator, n_rows: int, n_cols: int) -> np.ndarray:
    """A Haar-random ``n_rows x n_cols`` matrix with orthonormal rows or columns (whichever are fewer).

    QR of a Gaussian matrix with the signs of ``R``'s diagonal moved into
    ``Q`` (Mezzadri 2007): without that correction ``Q`` is not Haar-distributed.
    """
    tall = max(n_rows, n_cols), min(n_rows, n_cols)
    q, r = np.linalg.qr(rng.normal(0.0, 1.0, size=tall))
    q = q * np.sign(np.diag(r))
    return q if n_rows >= n_cols else q.T


def forward_weights(rng: np.random.Generator, sizes, init: str = "normal", std: float = 0.05, columns=None,
                    ops=None) -> list:
    """``W^l`` of shape ``(sizes[l+1], sizes[l])`` for every layer: ``N(0, std^2)`` or `orthogonal`.

    ``columns[l]`` (default all) is how many inputs ``W^l`` reads: only that
    block is drawn and the other columns are 0 (GAIT-prop's tower form).
    With ``ops`` (`arsim.layers`) every ``W^l`` has its projection's
    ``weight_shape`` (a convolution's kernel; orthogonal: of the kernel as a
    ``F x C k k`` matrix).
    """
    if init not in INITS:
        raise ValueError(f"init = {init!r}; expected one of {', '.join(repr(i) for i in INITS)}")
    if ops is not None and any(op.kind == "conv" or op.pool for op in ops):
        shapes = [op.weight_shape for op in ops]
        if init == "normal":
            return [rng.normal(0.0, std, size=shape) for shape in shapes]
        return [orthogonal(rng, shape[0], int(np.prod(shape[1:]))).reshape(shape) for shape in shapes]
    columns = list(sizes[:-1]) if columns is None else columns
    out = []
    for l in range(len(sizes) - 1):
        shape = (sizes[l + 1], columns[l])
        block = rng.normal(0.0, std, size=shape) if init == "normal" else orthogonal(rng, *shape)
        if columns[l] == sizes[l]:
            out.append(block)
        else:
            out.append(np.concatenate([block, np.zeros((sizes[l + 1], sizes[l] - columns[l]))], axis=1))
    return out
