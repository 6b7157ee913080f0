"""Convolutional and pooling projections (`arsim.layers`) and the oracle on them, against loops and finite differences.

Every expected value comes from plain nested loops written here (no im2col,
no col2im) or from central finite differences of the summed loss.
"""

import numpy as np
import pytest

from arsim.activations import get_activation
from arsim.cli import main
from arsim.config import ConfigError, resolve
from arsim.layers import Conv, Dense, from_layer_list
from arsim.reference import oracle
from arsim.spec import Experiment

E = Experiment.from_config
TANH, LINEAR = get_activation("tanh"), get_activation("linear")


def conv_loops(W, x, in_shape, stride=1, padding=0, pool=0):
    """``a[b, f, i, j] = sum_{c,u,v} W[f,c,u,v] xp[b, c, i s + u, j s + v]`` with ``xp`` the pooled, padded input."""
    batch = x.shape[0]
    c, h, w = in_shape
    image = x.reshape(batch, c, h, w)
    if pool:
        pooled = np.zeros((batch, c, h // pool, w // pool))
        for b in range(batch):
            for ch in range(c):
                for i in range(h // pool):
                    for j in range(w // pool):
                        pooled[b, ch, i, j] = image[b, ch, i * pool:(i + 1) * pool, j * pool:(j + 1) * pool].max()
        image, h, w = pooled, h // pool, w // pool
    padded = np.zeros((batch, c, h + 2 * padding, w + 2 * padding))
    padded[:, :, padding:padding + h, padding:padding + w] = image
    f, _, k, _ = W.shape
    ho, wo = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    out = np.zeros((batch, f, ho, wo))
    for b in range(batch):
        for o in range(f):
            for i in range(ho):
                for j in range(wo):
                    for ch in range(c):
                        for u in range(k):
                            for v in range(k):
                                out[b, o, i, j] += W[o, ch, u, v] * padded[b, ch, i * stride + u, j * stride + v]
    return out.reshape(batch, -1)


@pytest.mark.parametrize("in_shape,f,k,stride,padding,pool", [
    ((2, 7, 7), 3, 3, 1, 0, 0), ((2, 8, 8), 3, 3, 2, 1, 2), ((1, 6, 6), 2, 5, 1, 2, 0), ((3, 4, 4), 2, 2, 1, 0, 2),
])
def test_conv_forward_adjoint_and_kernel_gradient_against_loops(in_shape, f, k, stride, padding, pool):
    rng = np.random.default_rng(1)
    op = Conv(in_shape=in_shape, pool=pool, channels=f, kernel=k, stride=stride, padding=padding)
    x = rng.normal(size=(3, int(np.prod(in_shape))))
    W = rng.normal(size=op.weight_shape)
    a, cache = op.forward(W, x)
    np.testing.assert_allclose(a, conv_loops(W, x, in_shape, stride, padding, pool), rtol=0, atol=1e-12)
    y = rng.normal(size=a.shape)
    # the adjoint: <T(x), y> = <x, T^T(y)>, T linear for a fixed pool routing (the argmax of x)
    assert abs(np.sum(a * y) - np.sum(x * op.adjoint(W, y, cache))) < 1e-12 * np.sum(np.abs(a * y))
    # the kernel gradient of <T_W(x), y>: central differences, and exact sharing (one F x C x k x k array)
    grad = op.gradient(y, x, cache)
    assert grad.shape == (f, in_shape[0], k, k)
    eps, fd = 1e-6, np.zeros_like(W)
    for index in np.ndindex(W.shape):
        up, down = W.copy(), W.copy()
        up[index] += eps
        down[index] -= eps
        fd[index] = (np.sum(op.forward(up, x)[0] * y) - np.sum(op.forward(down, x)[0] * y)) / (2 * eps)
    np.testing.assert_allclose(grad, fd, rtol=0, atol=1e-7 * np.abs(fd).max())


def _cnn(layers, input_shape=(1, 6, 6), **keys):
    return E(resolve({"input_shape": list(input_shape), "layers": layers, "activation": "tanh", "bias": True, **keys}))


CNN = [{"kind": "conv", "channels": 3, "kernel": 3}, {"kind": "maxpool", "size": 2}, {"kind": "conv", "channels": 2, "kernel": 2},
       {"kind": "dense", "units": 4}]


def test_backprop_through_conv_and_pool_against_finite_differences_of_the_loss():
    experiment = _cnn(CNN)
    net = experiment.network
    ops = net.ops
    assert [op.kind for op in ops] == ["conv", "conv", "dense"] and ops[1].pool == 2 and net.sizes == (36, 48, 2, 4)
    rng = np.random.default_rng(2)
    W = [rng.normal(0.0, 0.5, size=op.weight_shape) for op in ops]
    b = [rng.normal(0.0, 0.1, size=n) for n in net.sizes[1:]]
    x = rng.normal(size=(2, 36))
    target = np.eye(4)[[1, 3]]

    def loss(W, x=x):
        fwd = oracle.forward(W, b, x, TANH, LINEAR, "mse", ops=ops)
        return oracle.loss(fwd.xbar[-1], target, "mse")

    fwd = oracle.forward(W, b, x, TANH, LINEAR, "mse", ops=ops)
    grads = oracle.backward(W, fwd, target, "mse", ops=ops)
    eps = 1e-6
    for l, w in enumerate(W):
        fd = np.zeros_like(w)
        for index in np.ndindex(w.shape):
            up = [v.copy() for v in W]
            down = [v.copy() for v in W]
            up[l][index] += eps
            down[l][index] -= eps
            fd[index] = (loss(up) - loss(down)) / (2 * eps)
        np.testing.assert_allclose(grads.dW[l], fd, rtol=0, atol=1e-6 * np.abs(fd).max(), err_msg=f"layer {l}")
    # the adjoint of the input (through both convolutions and the pool)
    fd = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[index] += eps
        down[index] -= eps
        fd[index] = (loss(W, up) - loss(W, down)) / (2 * eps)
    np.testing.assert_allclose(grads.dxbar[0], fd, rtol=0, atol=1e-6 * np.abs(fd).max())


def test_max_pool_routes_the_adjoint_to_the_argmax_units_only():
    experiment = _cnn([{"kind": "conv", "channels": 2, "kernel": 3}, {"kind": "maxpool", "size": 2}, {"kind": "dense", "units": 3}],
                      input_shape=(1, 10, 10))
    ops = experiment.network.ops
    rng = np.random.default_rng(3)
    W = [rng.normal(size=op.weight_shape) for op in ops]
    b = [np.zeros(n) for n in experiment.network.sizes[1:]]
    x = rng.normal(size=(4, 100))
    fwd = oracle.forward(W, b, x, TANH, LINEAR, "mse", ops=ops)
    g = oracle.backward(W, fwd, np.eye(3)[[0, 1, 2, 0]], "mse", ops=ops).dxbar[1]
    windows = fwd.xbar[1].reshape(4, 2, 4, 2, 4, 2).transpose(0, 1, 2, 4, 3, 5).reshape(4, 2, 4, 4, 4)
    winner = np.argmax(windows, axis=-1)  # row-major first maximum, written out here
    routed = g.reshape(4, 2, 4, 2, 4, 2).transpose(0, 1, 2, 4, 3, 5).reshape(4, 2, 4, 4, 4)
    for index in np.ndindex(winner.shape):
        others = np.delete(routed[index], winner[index])
        assert np.all(others == 0.0) and routed[index][winner[index]] != 0.0
    assert np.count_nonzero(g) == 4 * 2 * 16  # one unit per window of the 2 x 8 x 8 conv output


@pytest.mark.parametrize("layers,input_shape,named", [
    ([{"kind": "conv", "channels": 2, "kernel": 9}, {"kind": "dense", "units": 3}], [1, 8, 8], "layers[0] (conv, kernel 9)"),
    ([{"kind": "conv", "channels": 2, "kernel": 3, "in_channels": 3}, {"kind": "dense", "units": 3}], [1, 8, 8], "in_channels = 3"),
    ([{"kind": "conv", "channels": 2, "kernel": 3}, {"kind": "maxpool", "size": 4}, {"kind": "dense", "units": 3}], [1, 8, 8],
     "layers[1] (maxpool, size 4): does not divide its 6x6 input"),
    ([{"kind": "conv", "channels": 2, "kernel": 3}, {"kind": "dense", "units": 0}], [1, 8, 8], "layers[1] (dense): units = 0"),
    ([{"kind": "dense", "units": 5}, {"kind": "maxpool", "size": 2}, {"kind": "dense", "units": 3}], [1, 8, 8], "follows a dense"),
    ([{"kind": "conv", "channels": 2, "kernel": 3}], [1, 8, 8], "expected a dense output layer"),
    ([{"kind": "conv", "channels": 2, "kernel": 3}, {"kind": "pool", "size": 2}, {"kind": "dense", "units": 3}], [1, 8, 8], "kind = 'pool'"),
    ([{"kind": "conv", "channels": 2}, {"kind": "dense", "units": 3}], [1, 8, 8], "kernel is missing"),
    ([{"kind": "dense", "units": 3}], [], "input_shape"),
])
def test_bad_layer_lists_are_one_line_naming_the_layer(layers, input_shape, named):
    with pytest.raises(ConfigError) as info:
        resolve({"input_shape": input_shape, "layers": layers})
    message = str(info.value)
    assert "\n" not in message and named in message, message


def test_layers_fix_sizes_and_refuse_rules_and_sizes_that_do_not_fit():
    layers = [{"kind": "conv", "channels": 2, "kernel": 3}, {"kind": "maxpool", "size": 2}, {"kind": "dense", "units": 3}]
    config = resolve({"input_shape": [1, 8, 8], "layers": layers})
    assert config["sizes"] == [64, 72, 3]
    assert resolve(config)["sizes"] == [64, 72, 3]  # a resolved config passes again
    with pytest.raises(ConfigError, match=r"sizes = \[64, 10, 3\] does not match the layers, which give \[64, 72, 3\]"):
        resolve({"input_shape": [1, 8, 8], "layers": layers, "sizes": [64, 10, 3]})
    with pytest.raises(ConfigError, match="rule = 'kp' with conv / maxpool layers"):
        resolve({"input_shape": [1, 8, 8], "layers": layers, "rule": "kp"})
    with pytest.raises(ConfigError, match="projection = 'synapses' with maxpool layers"):
        resolve({"input_shape": [1, 8, 8], "layers": layers, "projection": "synapses"})
    dense_only = resolve({"input_shape": [1, 8, 8], "layers": [{"kind": "dense", "units": 5}, {"kind": "dense", "units": 3}],
                          "rule": "kp"})
    assert dense_only["sizes"] == [64, 5, 3] and not E(dense_only).network.convolutional


def test_a_bad_layer_list_in_a_model_file_exits_2_and_writes_nothing(tmp_path, capsys):
    model = tmp_path / "cnn.toml"
    model.write_text('input_shape = [1, 8, 8]\n[[layers]]\nkind = "conv"\nchannels = 4\nkernel = 3\n'
                     '[[layers]]\nkind = "maxpool"\nsize = 4\n[[layers]]\nkind = "dense"\nunits = 10\n')
    out = tmp_path / "out"
    assert main(["train", str(model), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "layers[1] (maxpool, size 4)" in err[0] and "divides both 6 and 6" in err[0], err
    assert not out.exists()


def test_backprop_trains_a_cnn_on_the_digits_from_the_shell(tmp_path, capsys):
    assert main(["train", "digits_cnn", "--set", "rule=bp", "--epochs", "2", "--out", str(tmp_path / "bp"), "--quiet"]) == 0
    import json

    rows = json.loads((tmp_path / "bp" / "metrics.json").read_text())
    assert rows[-1]["test_accuracy"] > 0.8 and rows[-1]["train_loss"] < rows[0]["train_loss"]
