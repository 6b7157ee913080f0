"""``arsim train --resume`` of a run killed before its first checkpoint.

A run writes ``run.json`` before it builds the network and its first
``checkpoint.npz`` (the untrained state) after; a ``kill -9`` in between
leaves a directory that ``--resume`` restarts from the beginning when the
stored config is the same model, and refuses (one line naming the key)
when it is not.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from arsim import config as config_mod
from arsim.cli import main

#: a tiny digits model (as in test_train_cli): one small build, epochs of a fraction of a second
TINY = """
name = "tiny_early"
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
    path = tmp_path_factory.mktemp("models") / "tiny_early.toml"
    path.write_text(TINY)
    return path


def _train(model, out, *args, env):
    return subprocess.run([sys.executable, "-m", "arsim.cli", "train", str(model), "--out", str(out), "--quiet", *args],
                          capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)


def _weights(directory):
    with np.load(Path(directory) / "weights.npz") as data:
        return {k: data[k] for k in data.files}


def _rows(directory):
    rows = json.loads((Path(directory) / "metrics.json").read_text())
    for row in rows:
        row.pop("seconds"), row.pop("samples_per_second")
    return rows


def test_resume_after_sigkill_before_the_first_checkpoint_equals_uninterrupted_run(tiny_model, tmp_path):
    # a build directory of its own: the killed run is still compiling when it writes run.json,
    # which leaves seconds to kill it before its first checkpoint
    env = dict(os.environ, ARSIM_BUILD_DIR=str(tmp_path / "builds"))
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "arsim.cli", "train", str(tiny_model), "--out", str(killed), "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=env,
        start_new_session=True,  # its own process group: the kill takes the compiler with it
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (killed / "run.json").exists():
        time.sleep(0.005)
    running = proc.poll() is None
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert running, "the run ended before it could be killed"
    assert (killed / "run.json").is_file(), "the run wrote no run.json within 120 s"
    if (killed / "checkpoint.npz").exists():
        pytest.fail("the run wrote its first checkpoint before the kill landed (the build was not slow enough)")

    resumed = _train(tiny_model, killed, "--resume", env=env)
    assert resumed.returncode == 0, resumed.stderr
    notes = [line for line in resumed.stderr.splitlines() if "no checkpoint" in line]
    assert len(notes) == 1 and "epoch 0" in notes[0], resumed.stderr
    whole = _train(tiny_model, tmp_path / "whole", env=env)
    assert whole.returncode == 0, whole.stderr
    reference, again = _weights(tmp_path / "whole"), _weights(killed)
    assert reference.keys() == again.keys()
    for key in reference:
        np.testing.assert_array_equal(reference[key], again[key])
    assert _rows(tmp_path / "whole") == _rows(killed)
    assert [row["epoch"] for row in _rows(killed)] == [0, 1, 2]


def _early_run_dir(path: Path, config: dict) -> Path:
    """What a run killed before its first checkpoint leaves: run.json only."""
    path.mkdir()
    (path / "run.json").write_text(json.dumps({"config": config, "seed": config["seed"]}))
    return path


def test_resume_of_an_early_run_of_another_model_names_the_key(tiny_model, tmp_path, capsys):
    other = dict(config_mod.load(tiny_model), **{"train.lr": 0.02})
    out = _early_run_dir(tmp_path / "other", other)
    assert main(["train", str(tiny_model), "--out", str(out), "--quiet", "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.lr = 0.01" in err and "run.json" in err, err
    assert not (out / "checkpoint.npz").exists()


def test_resume_without_run_json_or_with_a_broken_one_is_refused(tiny_model, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", str(tiny_model), "--out", str(empty), "--quiet", "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checkpoint.npz does not exist" in err, err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "run.json").write_text("{not json")
    assert main(["train", str(tiny_model), "--out", str(broken), "--quiet", "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "run.json" in err, err
