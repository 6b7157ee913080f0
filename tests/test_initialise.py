"""Initial forward weights (``init``): Haar-random orthogonal matrices and the unchanged normal stream."""

import numpy as np
import pytest

from arsim.config import ConfigError, resolve
from arsim.initialise import forward_weights, orthogonal
from arsim.spec import Experiment
from arsim.training import init_params


@pytest.mark.parametrize("shape", [(7, 7), (4, 9), (9, 4)])
def test_orthogonal_has_orthonormal_rows_or_columns(shape):
    Q = orthogonal(np.random.default_rng(0), *shape)
    assert Q.shape == shape
    small = min(shape)
    gram = Q @ Q.T if shape[0] <= shape[1] else Q.T @ Q
    np.testing.assert_allclose(gram, np.eye(small), rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.linalg.svd(Q, compute_uv=False), np.ones(small), rtol=0, atol=1e-12)


def test_orthogonal_is_haar_distributed():
    """Under Haar measure every entry has mean 0 and variance 1/n; QR without the sign fix is biased."""
    rng = np.random.default_rng(1)
    entries = np.array([orthogonal(rng, 3, 3)[[0, 1, 2], [0, 1, 2]] for _ in range(3000)])
    assert np.all(np.abs(entries.mean(axis=0)) < 0.05)  # standard error sqrt(1/3/3000) = 0.011
    assert np.all(np.abs((entries**2).mean(axis=0) - 1 / 3) < 0.03)
    q, r = np.linalg.qr(np.random.default_rng(2).normal(size=(3000, 3, 3)))
    assert np.abs(q[:, 0, 0].mean()) > 0.2  # the control: raw Householder QR is not Haar


def test_normal_init_is_the_seeded_normal_stream():
    config = resolve({"sizes": [5, 4, 3], "init_std": 0.3, "seed": 4})
    rng = np.random.default_rng([4, 1])
    expected = [rng.normal(0.0, 0.3, size=(4, 5)), rng.normal(0.0, 0.3, size=(3, 4))]
    for got, want in zip(init_params(Experiment.from_config(config)).W, expected):
        np.testing.assert_array_equal(got, want)


def test_orthogonal_init_reaches_training_and_bad_init_is_refused():
    config = resolve({"sizes": [5, 4, 4], "init": "orthogonal", "seed": 4})
    W = init_params(Experiment.from_config(config)).W
    np.testing.assert_allclose(W[1] @ W[1].T, np.eye(4), rtol=0, atol=1e-12)
    with pytest.raises(ConfigError, match="init = 'glorot'"):
        resolve({"sizes": [5, 4, 4], "init": "glorot"})
    with pytest.raises(ValueError, match="init = 'x'"):
        forward_weights(np.random.default_rng(0), [3, 2], "x")
