"""``arsim train``: outputs, resume after SIGKILL, divergence reports and user errors."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from arsim.cli import main

#: a tiny digits model: one build, an epoch takes a fraction of a second
TINY = """
name = "tiny"
sizes = [64, 6, 10]
activation = "tanh"
output_activation = "linear"
bias = true
init_std = 0.1
seed = 3
tau = 10.0
dt = 2.0
duration = 10.0
[train]
data = "digits"
epochs = 2
batch_size = 16
lr = 0.01
max_samples = 96
align_every = 2
"""


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny.toml"
    path.write_text(TINY)
    return path


def _arsim(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "arsim.cli", *map(str, args)], capture_output=True, text=True, **kwargs)


def _weights(directory):
    with np.load(Path(directory) / "weights.npz") as data:
        return {k: data[k] for k in data.files}


def _rows(directory):
    rows = json.loads((Path(directory) / "metrics.json").read_text())
    for row in rows:
        row.pop("seconds"), row.pop("samples_per_second")
    return rows


def test_train_writes_results_and_bp_baseline_shares_the_start(tiny_model, tmp_path, capsys):
    assert main(["train", str(tiny_model), "--out", str(tmp_path / "ar"), "--quiet"]) == 0
    assert main(["train", str(tiny_model), "--out", str(tmp_path / "bp"), "--quiet", "--set", "rule=bp"]) == 0
    out = capsys.readouterr().out
    assert "samples/s" in out and "compile" in out
    for name in ("checkpoint.npz", "metrics.csv", "metrics.json", "run.json", "weights.npz"):
        assert (tmp_path / "ar" / name).is_file()
    run = json.loads((tmp_path / "ar" / "run.json").read_text())
    assert run["seed"] == 3 and run["config"]["train.data"] == "digits" and "brian2" in run["versions"]
    ar_rows, bp_rows = _rows(tmp_path / "ar"), _rows(tmp_path / "bp")
    assert [r["epoch"] for r in ar_rows] == [0, 1, 2]
    assert ar_rows[0] == bp_rows[0]  # same initial weights, same data
    assert ar_rows[2]["train_loss"] < ar_rows[0]["train_loss"]
    # 5 steps at dt/tau 0.2 leave x^1 short of dL/dxbar^1 (by (1 - 0.2)^5 of the start), while
    # the top projection sees the clamped output error and is exactly BP's
    assert 0.01 < ar_rows[1]["rel_error_0"] < 1.0
    assert ar_rows[1]["rel_error_1"] < 1e-12
    header = (tmp_path / "ar" / "metrics.csv").read_text().splitlines()[0]
    assert header.startswith("epoch,train_loss,train_accuracy,test_loss,test_accuracy")


def test_resume_after_sigkill_equals_uninterrupted_run(tiny_model, tmp_path):
    epochs = 30
    reference = _arsim("train", tiny_model, "--out", tmp_path / "whole", "--quiet", "--epochs", epochs)
    assert reference.returncode == 0, reference.stderr
    checkpoint = tmp_path / "killed" / "checkpoint.npz"
    proc = subprocess.Popen(
        [sys.executable, "-m", "arsim.cli", "train", str(tiny_model), "--out", str(tmp_path / "killed"), "--quiet", "--epochs", str(epochs)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    epoch = -1
    while time.time() < deadline and proc.poll() is None:
        if checkpoint.exists():
            try:
                with np.load(checkpoint) as data:
                    epoch = int(data["epoch"])
            except (OSError, ValueError, KeyError):
                epoch = -1
            if epoch >= 2:
                break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with np.load(checkpoint) as data:
        killed_at = int(data["epoch"])
    assert 2 <= killed_at < epochs
    assert not (tmp_path / "killed" / "weights.npz").exists()
    resumed = _arsim("train", tiny_model, "--out", tmp_path / "killed", "--quiet", "--epochs", epochs, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    whole, again = _weights(tmp_path / "whole"), _weights(tmp_path / "killed")
    assert whole.keys() == again.keys()
    for key in whole:
        np.testing.assert_array_equal(whole[key], again[key])
    assert _rows(tmp_path / "whole") == _rows(tmp_path / "killed")


def test_divergence_names_epoch_batch_and_layer(tiny_model, tmp_path, capsys):
    code = main(["train", str(tiny_model), "--out", str(tmp_path / "nan"), "--quiet", "--set", "train.lr=1e300"])
    err = capsys.readouterr().err
    assert code == 3
    assert "NaN/Inf" in err and "epoch 1, batch" in err and "layer" in err
    assert not (tmp_path / "nan" / "weights.npz").exists()
    with np.load(tmp_path / "nan" / "checkpoint.npz") as data:
        assert int(data["epoch"]) == 0  # the last complete state, not a corrupted one


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--set", "sizes=[60, 6, 10]"], "sizes[0] = 60"),
        (["--set", "sizes=[64, 6, 3]"], "sizes[-1] = 3"),
        (["--set", "train.data=idx:/no/such/dir"], "/no/such/dir"),
        (["--set", "train.data=cifar"], "train.data"),
        (["--set", "train.batch_size=0"], "train.batch_size"),
        (["--set", "train.batch_size=500"], "train.batch_size = 500"),
        (["--set", "train.lr=-1"], "train.lr"),
        (["--set", "rule=hebb"], "rule"),
        (["--set", "train.rule=bp"], "rule"),
        (["--epochs", "0"], "train.epochs"),
    ],
)
def test_bad_training_input_gives_one_line_error(tiny_model, tmp_path, capsys, args, needle):
    assert main(["train", str(tiny_model), "--out", str(tmp_path / "out"), "--quiet", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_corrupt_idx_file_is_reported(tiny_model, tmp_path, capsys):
    data = tmp_path / "idx"
    data.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (data / name).write_bytes(b"\x00\x00\x08\x03garbage")
    assert main(["train", str(tiny_model), "--out", str(tmp_path / "out"), "--quiet", "--set", f"train.data=idx:{data}"]) == 2
    err = capsys.readouterr().err
    assert "idx3-ubyte" in err and len(err.strip().splitlines()) == 1


def test_existing_run_and_mismatched_resume_are_refused(tiny_model, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(tiny_model), "--out", str(out), "--quiet", "--epochs", "1"]) == 0
    assert main(["train", str(tiny_model), "--out", str(out), "--quiet"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", str(tiny_model), "--out", str(out), "--quiet", "--resume", "--set", "train.lr=0.02"]) == 2
    assert "train.lr" in capsys.readouterr().err
    assert main(["train", str(tiny_model), "--out", str(tmp_path / "none"), "--quiet", "--resume"]) == 2
    assert "does not exist" in capsys.readouterr().err
