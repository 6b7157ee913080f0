"""The CBLAS of the compiled projections (model key ``blas``): OpenBLAS by default, Intel MKL on request."""

import numpy as np
import pytest

from arsim.brian import blas
from arsim.config import ConfigError, resolve
from arsim.spec import Experiment
from arsim.training import BrianTrainer, init_params, train_topology
from conftest import training_data

E = Experiment.from_config
HAS_MKL = blas.missing("mkl") is None


def test_blas_is_in_the_build_key_and_names_the_gemm():
    config = resolve({"sizes": [4, 3, 2]})
    assert train_topology(E(config), 8).blas == "openblas"
    library = blas.blas_library("openblas")
    assert library.gemm("double") == "scipy_cblas_dgemm" and library.gemm("float") == "scipy_cblas_sgemm"
    assert library.lapacke("getrf", "double") == "scipy_LAPACKE_dgetrf" and library.lapacke("getri", "float") == "scipy_LAPACKE_sgetri"
    with pytest.raises(ValueError, match="blas = 'atlas'"):
        blas.blas_library("atlas")


def test_mkl_without_its_wheels_is_one_line_naming_the_install(monkeypatch):
    monkeypatch.setattr(blas, "_installed_file", lambda distribution, pattern: None)
    with pytest.raises(ConfigError) as info:
        resolve({"sizes": [4, 3, 2], "blas": "mkl"})
    message = str(info.value)
    assert "\n" not in message and "blas = 'mkl'" in message and "arsim[mkl]" in message


@pytest.mark.skipif(not HAS_MKL, reason="Intel MKL's wheels are not installed (pip install 'arsim[mkl]'; CI's Python 3.13 stack has them)")
@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_training_linked_to_mkl_equals_the_numpy_reference(build_dir, precision):
    config = resolve({"sizes": [5, 4, 3, 2], "activation": "tanh", "bias": True, "init_std": 0.6, "feedback": "learned",
                      "feedback_std": 0.4, "duration": 30.0, "train.batch_size": 4, "train.lr": 0.05, "blas": "mkl",
                      "precision": precision})
    experiment = E(config)
    x, targets = training_data(config, 12)
    start = init_params(experiment)
    trainer = BrianTrainer(experiment, 12)
    assert trainer.topology.copies == 4 and trainer.topology.blas == "mkl"
    trained = trainer.run_chunk(start, x, targets).params
    dtype = np.float32 if precision == "float32" else np.float64
    reference = experiment.rule.reference_epoch(experiment, start.astype(dtype), x.astype(dtype), targets.astype(dtype))
    tolerance = 1e-10 if precision == "float64" else 1e-5
    for name in ("W", "b", "B"):
        deviation = max(float(np.max(np.abs(u - v))) for u, v in zip(getattr(trained, name), getattr(reference, name)))
        assert deviation < tolerance, (name, deviation)
    assert max(float(np.max(np.abs(u - v))) for u, v in zip(trained.W, start.W)) > 1e-2
    # the binary really linked MKL: its build directory's makefile names libmkl_rt
    assert "mkl_rt" in (trainer.runner.directory / "makefile").read_text()


@pytest.mark.skipif(not HAS_MKL, reason="Intel MKL's wheels are not installed (pip install 'arsim[mkl]'; CI's Python 3.13 stack has them)")
def test_gait_training_inverts_with_mkl_s_lapacke_inside_the_run(build_dir):
    """GAIT-prop's in-run inverses (LAPACKE getrf/getri) and penalty linked to MKL: three batches equal the reference."""
    config = resolve({"sizes": [5, 4, 3, 3], "activation": "tanh", "output_activation": "tanh", "bias": True, "init_std": 0.6,
                      "rule": "gait", "gait.gamma": 0.05, "duration": 30.0,
                      "train.batch_size": 4, "train.lr": 0.05, "blas": "mkl"})
    experiment = E(config)
    x, targets = training_data(config, 12)
    start = init_params(experiment)
    trainer = BrianTrainer(experiment, 12)
    trained = trainer.run_chunk(start, x, targets).params
    reference = experiment.rule.reference_epoch(experiment, start, x, targets)
    for name in ("W", "b", "B"):
        deviation = max(float(np.max(np.abs(u - v))) for u, v in zip(getattr(trained, name), getattr(reference, name)))
        assert deviation < 1e-10, (name, deviation)
    assert max(float(np.max(np.abs(u - v))) for u, v in zip(trained.W, start.W)) > 1e-2
    assert "mkl_rt" in (trainer.runner.directory / "makefile").read_text()
