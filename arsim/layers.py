"""Layer geometry: dense and convolutional projections (with max pooling), and their numpy operators.

A network is a list of unit layers ``x^0 .. x^L`` (``sizes``) joined by
projections ``l = 0 .. L-1``. With ``sizes = [...]`` every projection is
`Dense`; a model file's ``[[layers]]`` list (`from_layer_list`) gives the
layers a shape ``(channels, height, width)`` and makes projections `Conv`.
A ``maxpool`` entry is not a layer of units: it belongs to the next
projection (``pool``), which first takes the maximum over each window of the
layer below and then projects, as in the AR follow-up's code (the pool
relaxes nothing: the feedback is routed through the argmax of the stored
forward pass, SPEC section 2 and research/ar_cnn.md section 4).

Every projection has the three operations of AR and backprop
(research/ar_cnn.md section 3):

``forward(W, x)``
    the drive ``a = T_W(pool(x))`` (no bias) and the pool's argmax (the cache);
``adjoint(M, delta, cache)``
    the feedback ``T_M^T delta`` routed back through the argmax, for a matrix
    ``M`` in ``W``'s layout (``W`` itself for the exact adjoint);
``gradient(delta, x, cache)``
    ``dL/dW`` of the summed loss, the sum over samples (and, for a
    convolution, over positions: the kernel exists once, so weight sharing
    is exact by construction).

Conventions: a spatial layer is flattened channel-major (``c, i, j``, as
``x.reshape(C, H, W)``); a kernel is ``(F, C, k, k)`` (OIHW, PyTorch's and the
authors' ``W.reshape(F, -1)``); the convolution is a correlation (the kernel
is not flipped); ties in a pool window go to the first maximum in row-major
order. Batches have samples in rows. These numpy operators use im2col /
col2im; the tests check them against plain loops and finite differences.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Dense", "Conv", "LayerError", "from_layer_list", "dense_ops", "feedback_shape", "exact_feedback", "feedback_matrix"]


class LayerError(ValueError):
    """A layer list that does not fit together (one line naming the layer and what fits)."""


@dataclass(frozen=True)
class _Pooled:
    """The optional max pool on a projection's input (``pool`` 0: none)."""

    in_shape: tuple | None
    pool: int

    @property
    def pooled_shape(self) -> tuple | None:
        if self.in_shape is None or not self.pool:
            return self.in_shape
        c, h, w = self.in_shape
        return (c, h // self.pool, w // self.pool)

    def _pool(self, x: np.ndarray):
        """``(pooled, argmax)``: the window maxima and, per pooled unit, the flat input index it came from."""
        if not self.pool:
            return x, None
        c, h, w = self.in_shape
        p = self.pool
        batch = x.shape[0]
        windows = x.reshape(batch, c, h // p, p, w // p, p).transpose(0, 1, 2, 4, 3, 5).reshape(batch, c, h // p, w // p, p * p)
        first = np.argmax(windows, axis=-1)  # the first maximum in row-major window order
        pooled = np.take_along_axis(windows, first[..., None], axis=-1)[..., 0]
        u, v = np.divmod(first, p)
        rows = np.arange(h // p)[None, None, :, None] * p + u
        cols = np.arange(w // p)[None, None, None, :] * p + v
        index = (np.arange(c)[None, :, None, None] * h + rows) * w + cols
        return pooled.reshape(batch, -1), index.reshape(batch, -1)

    def _unpool(self, y: np.ndarray, argmax) -> np.ndarray:
        """Route ``y`` (one value per pooled unit) to the argmax units of the input; every other unit gets 0."""
        if not self.pool:
            return y
        out = np.zeros((y.shape[0], int(np.prod(self.in_shape))), dtype=y.dtype)
        np.put_along_axis(out, argmax, y, axis=1)
        return out


@dataclass(frozen=True)
class Dense(_Pooled):
    """``a = W pool(x)``: ``W`` of shape ``(n_out, n_in)``, ``n_in`` the (pooled) input's units."""

    n_in: int = 0
    n_out: int = 0
    kind: str = "dense"

    @property
    def weight_shape(self) -> tuple:
        return (self.n_out, self.n_in)

    def forward(self, W: np.ndarray, x: np.ndarray):
        pooled, argmax = self._pool(x)
        return pooled @ W.T, argmax

    def adjoint(self, M: np.ndarray, delta: np.ndarray, cache) -> np.ndarray:
        return self._unpool(delta @ M, cache)

    def gradient(self, delta: np.ndarray, x: np.ndarray, cache) -> np.ndarray:
        return delta.T @ self._pool(x)[0]


@dataclass(frozen=True)
class Conv(_Pooled):
    """A 2-D convolution (correlation) of the (pooled) input with one ``(F, C, k, k)`` kernel."""

    channels: int = 1
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    kind: str = "conv"

    @property
    def out_shape(self) -> tuple:
        c, h, w = self.pooled_shape
        size = lambda n: (n + 2 * self.padding - self.kernel) // self.stride + 1  # noqa: E731
        return (self.channels, size(h), size(w))

    @property
    def weight_shape(self) -> tuple:
        return (self.channels, self.pooled_shape[0], self.kernel, self.kernel)

    def _columns(self, x: np.ndarray) -> np.ndarray:
        """im2col: ``(batch, positions, C k k)`` patches of the pooled input, position-major in (row, column)."""
        c, h, w = self.pooled_shape
        k, s, p = self.kernel, self.stride, self.padding
        _, ho, wo = self.out_shape
        image = x.reshape(x.shape[0], c, h, w)
        if p:
            image = np.pad(image, ((0, 0), (0, 0), (p, p), (p, p)))
        strided = np.lib.stride_tricks.sliding_window_view(image, (k, k), axis=(2, 3))[:, :, ::s, ::s][:, :, :ho, :wo]
        # (batch, C, ho, wo, k, k) -> (batch, ho, wo, C, k, k)
        return strided.transpose(0, 2, 3, 1, 4, 5).reshape(x.shape[0], ho * wo, c * k * k)

    def forward(self, W: np.ndarray, x: np.ndarray):
        pooled, argmax = self._pool(x)
        cols = self._columns(pooled)
        out = cols @ W.reshape(W.shape[0], -1).T  # (batch, positions, F)
        return out.transpose(0, 2, 1).reshape(x.shape[0], -1), argmax

    def adjoint(self, M: np.ndarray, delta: np.ndarray, cache) -> np.ndarray:
        """The transposed convolution (col2im of ``M^T delta``), then the pool's routing."""
        c, h, w = self.pooled_shape
        k, s, p = self.kernel, self.stride, self.padding
        f, ho, wo = self.out_shape
        batch = delta.shape[0]
        cols = delta.reshape(batch, f, ho * wo).transpose(0, 2, 1) @ M.reshape(f, -1)  # (batch, positions, C k k)
        cols = cols.reshape(batch, ho, wo, c, k, k)
        image = np.zeros((batch, c, h + 2 * p, w + 2 * p), dtype=delta.dtype)
        for u in range(k):
            for v in range(k):
                image[:, :, u:u + s * ho:s, v:v + s * wo:s] += cols[:, :, :, :, u, v].transpose(0, 3, 1, 2)
        if p:
            image = image[:, :, p:p + h, p:p + w]
        return self._unpool(image.reshape(batch, -1), cache)

    def gradient(self, delta: np.ndarray, x: np.ndarray, cache) -> np.ndarray:
        cols = self._columns(self._pool(x)[0])
        f = self.channels
        d = delta.reshape(delta.shape[0], f, -1)  # (batch, F, positions)
        return np.einsum("bfp,bpq->fq", d, cols).reshape(self.weight_shape)


def dense_ops(sizes) -> tuple:
    """The projections of a plain MLP of ``sizes``."""
    return tuple(Dense(in_shape=None, pool=0, n_in=sizes[l], n_out=sizes[l + 1]) for l in range(len(sizes) - 1))


def feedback_shape(op) -> tuple:
    """Shape of the backward matrix ``B^l`` of a projection: ``(n_in, n_out)`` (dense, ``W^T``'s) or the kernel's."""
    return op.weight_shape if op.kind == "conv" else op.weight_shape[::-1]


def exact_feedback(op, W: np.ndarray) -> np.ndarray:
    """The ``B`` that makes the feedback exact: ``W^T`` of a dense projection, the kernel itself of a convolution."""
    return W.copy() if op.kind == "conv" else W.T.copy()


def feedback_matrix(op, B: np.ndarray) -> np.ndarray:
    """``B`` in ``W``'s layout, the ``M`` of `adjoint`."""
    return B if op.kind == "conv" else B.T


def from_layer_list(input_shape, layers) -> tuple:
    """The projections of a model file's ``[[layers]]`` list on an input of ``input_shape`` ``(C, H, W)``.

    Returns ``(ops, sizes)``: one `Dense` or `Conv` per projection and the
    unit count of every layer (input first). Raises `LayerError` naming
    the offending entry (``layers[i]``) and what would fit.
    """
    if len(input_shape) != 3 or not all(isinstance(n, int) and n >= 1 for n in input_shape):
        raise LayerError(f"input_shape = {list(input_shape)}; expected [channels, height, width], integers >= 1")
    shape = tuple(input_shape)  # of the current layer of units; None once flattened by a dense layer
    units = int(np.prod(shape))
    sizes, ops, pool = [units], [], 0
    for index, entry in enumerate(layers):
        where = f"layers[{index}]"
        if not isinstance(entry, dict) or "kind" not in entry:
            raise LayerError(f"{where} = {entry!r}; expected a table with kind = 'conv', 'maxpool' or 'dense'")
        kind = entry["kind"]
        allowed = {"conv": {"channels", "kernel", "stride", "padding", "in_channels"}, "maxpool": {"size"}, "dense": {"units"}}
        if kind not in allowed:
            raise LayerError(f"{where}: kind = {kind!r}; expected 'conv', 'maxpool' or 'dense'")
        unknown = sorted(set(entry) - allowed[kind] - {"kind"})
        if unknown:
            raise LayerError(f"{where} ({kind}): unknown key {unknown[0]!r}; accepted: {', '.join(sorted(allowed[kind]))}")
        for key in allowed[kind] - {"in_channels"}:
            value = entry.get(key, {"stride": 1, "padding": 0}.get(key))
            least = 0 if key == "padding" else 1
            if value is None:
                raise LayerError(f"{where} ({kind}): {key} is missing; expected an integer >= {least}")
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise LayerError(f"{where} ({kind}): {key} = {value!r}; expected an integer >= {least}")
        if kind == "maxpool":
            size = entry["size"]
            if shape is None:
                raise LayerError(f"{where} (maxpool): follows a dense layer; expected it after the input or a conv layer")
            if pool:
                raise LayerError(f"{where} (maxpool): a second pool in a row; expected one maxpool with size = {pool * size}")
            c, h, w = shape
            if h % size or w % size:
                raise LayerError(f"{where} (maxpool, size {size}): does not divide its {h}x{w} input;"
                                 f" expected a size that divides both {h} and {w}")
            pool = size
            continue
        if kind == "conv":
            if shape is None:
                raise LayerError(f"{where} (conv): follows a dense layer; expected convolutions before the dense layers")
            op = Conv(in_shape=shape, pool=pool, channels=entry["channels"], kernel=entry["kernel"],
                      stride=entry.get("stride", 1), padding=entry.get("padding", 0))
            c, h, w = op.pooled_shape
            if entry.get("in_channels", c) != c:
                raise LayerError(f"{where} (conv): in_channels = {entry['in_channels']!r} but its input has {c} channels;"
                                 f" expected in_channels = {c} (or no in_channels)")
            if op.kernel > min(h, w) + 2 * op.padding:
                raise LayerError(f"{where} (conv, kernel {op.kernel}): larger than its {h}x{w} input (padding {op.padding});"
                                 f" expected kernel <= {min(h, w) + 2 * op.padding}")
            shape = op.out_shape
            units = int(np.prod(shape))
        else:
            op = Dense(in_shape=shape, pool=pool, n_in=int(np.prod(_Pooled(shape, pool).pooled_shape)) if shape else units,
                       n_out=entry["units"])
            shape, units = None, entry["units"]
        ops.append(op)
        sizes.append(units)
        pool = 0
    if pool:
        raise LayerError(f"layers[{len(layers) - 1}] (maxpool): the last entry; expected a conv or dense layer after a pool")
    if not ops or ops[-1].kind != "dense":
        raise LayerError(f"layers: the last entry is {'a ' + ops[-1].kind if ops else 'missing'};"
                         " expected a dense output layer (units = the number of classes)")
    return tuple(ops), sizes
