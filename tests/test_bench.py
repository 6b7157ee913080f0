"""``arsim bench``: it measures equal work and reports every ratio (no timing assertions)."""

import json

import numpy as np
import pytest

from arsim import bench
from arsim.cli import main


@pytest.fixture(scope="module")
def tiny_result(build_dir):
    return bench.run_bench([6, 5, 4, 3], steps=7, repeat=2, train_samples=8, batch=4, relax_samples=3, build_root=build_dir,
                           projections=("dense",))


def test_bench_reports_ratios_of_checked_equal_work(tiny_result):
    dense = tiny_result["projections"]["dense"]
    relax, train, by_sample = dense["relaxation"], dense["training"], dense["training_by_sample"]
    assert max(part["max_abs_deviation"] for part in (relax, train, by_sample)) <= 1e-9
    # synapse updates: forward once, feedback of projections 1.. every step, per sample
    assert relax["synapse_updates_per_run"] == 3 * ((30 + 20 + 12) + 7 * (20 + 12))
    for part in (relax, train, by_sample):
        stats = part["ratio_brian2_over_numpy"]
        assert stats["n"] == 2 and 0 < stats["min"] <= stats["median"] <= stats["max"]
        assert part["compile_seconds"] > 0  # as measured when the build was made
    assert train["samples"] == 8 and train["batch_size"] == 4
    # the default training mode relaxes a batch as 4 copies; the other one sample at a time
    assert train["parallel_copies"] == 4 and by_sample["parallel_copies"] == 1
    assert tiny_result["machine"]["cores"] >= 1 and "brian2" in tiny_result["versions"]
    text = bench.format_table(tiny_result)
    assert "ratio Brian2/numpy" in text and "synapse-updates/s" in text and "samples/s" in text
    assert "batch of 4 at once" in text and "sample by sample" in text


def test_bench_rows_of_gait_of_pal_without_noise_and_of_a_cnn(build_dir):
    """GAIT-prop recomputes its inverses inside the run: both batches run at once and still equal the reference.

    PAL's noise is Brian2's own draw: its row runs at ``pal.sigma = 0`` (the rule's ``bench_keys``), where
    numpy computes the same numbers step by step.
    """
    from arsim.config import load
    from arsim.models import resolve_model

    result = bench.run_bench([6, 5, 4, 3], steps=7, repeat=1, train_samples=8, batch=4, build_root=build_dir, projections=(),
                             parts=("train",), rules=("gait", "pal"), models=(load(resolve_model("digits_cnn")),))
    for rule in ("gait", "pal"):
        row = result["rules"][rule]
        assert row["samples"] == 8 and row["samples_per_run"] == 8 and row["max_abs_deviation"] <= 1e-9, rule
        assert f"[rule = {rule}] training, dense, batch of 4 at once, 8 samples, 8 per run" in bench.format_table(result)
    # a CNN's row: Brian2's im2col + gemm against the batched numpy im2col reference of arsim.layers
    cnn = result["models"]["digits_cnn"]
    assert cnn["samples"] == 8 and cnn["parallel_copies"] == 4 and cnn["max_abs_deviation"] <= 1e-9
    assert "[model = digits_cnn] training (64-288-64-10 units)" in bench.format_table(result)


def test_bench_refuses_to_compare_unequal_work(monkeypatch, build_dir):
    """If the numpy side computed something else, no ratio is reported."""
    original = bench.relax_euler

    def wrong(*args, **kwargs):
        state, trace = original(*args, **kwargs)
        state[1] = state[1] + 1e-6
        return state, trace

    monkeypatch.setattr(bench, "relax_euler", wrong)
    with pytest.raises(AssertionError, match="differ"):
        bench.run_bench([6, 5, 4, 3], steps=7, repeat=1, train_samples=8, batch=4, relax_samples=2, parts=("relax",), build_root=build_dir,
                         projections=("dense",))


def test_bench_cli_json_and_errors(capsys):
    assert main(["bench", "--sizes", "6,5,4,3", "--steps", "7", "--repeat", "1", "--relax-samples", "2", "--only", "relax", "--json", "--cached",
                 "--projection", "dense", "--threads", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["projections"]["dense"]["relaxation"]["steps"] == 7 and "training" not in out["projections"]["dense"]
    assert out["blas_threads"] == {"numpy": [1], "brian2": "1"}
    assert main(["bench", "--sizes", "6,x"]) == 2
    assert "--sizes" in capsys.readouterr().err
    assert main(["bench", "--repeat", "0"]) == 2
    assert "--repeat 0" in capsys.readouterr().err
    assert main(["bench", "--threads", "0"]) == 2
    assert "--threads 0" in capsys.readouterr().err
    assert main(["bench", "--sizes", "6,5,4,3", "--set", "activation=cubic"]) == 2
    assert "activation" in capsys.readouterr().err


def test_synapse_update_count_closed_form():
    sizes = [784, 300, 300, 100, 10]
    weights = np.array([784 * 300, 300 * 300, 300 * 100, 100 * 10])
    assert bench._synapse_updates(sizes, 100) == weights.sum() + 100 * weights[1:].sum()


def test_equal_work_tolerance_by_precision():
    """float64 must agree to 1e-9; float32 to the tolerance the caller derives from its scale."""
    assert bench._check_equal(5e-10, 1e-3, "float64", "runs") == 1e-9
    with pytest.raises(AssertionError, match="differ by 2e-09"):
        bench._check_equal(2e-9, 1e-3, "float64", "runs")
    assert bench._check_equal(5e-4, 1e-3, "float32", "runs") == 1e-3
    with pytest.raises(AssertionError, match="> 0.001"):
        bench._check_equal(2e-3, 1e-3, "float32", "runs")
