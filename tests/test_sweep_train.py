"""The ``train`` sweep command: points train with `arsim.experiment.train` and share one build.

One tiny AR network (digits, 64-16-10, one epoch on 128 samples) is
compiled once, into this module's build directory, by the sweep; the
training points and the direct `experiment.train` run use that build.
"""

import os

import pytest

from arsim.cli import main
from arsim.config import load
from arsim.brian.devices import BUILD_COUNTER
from arsim.experiment import train
from arsim.sweeps.store import Store

MODEL = """
name = "tiny_train"
sizes = [64, 16, 10]
activation = "relu"
output_activation = "linear"
bias = true
seed = 0
duration = 20.0
[train]
data = "digits"
epochs = 1
batch_size = 16
lr = 5e-3
max_samples = 128
align_every = 2
"""

GRID = ["--grid", "train.lr=1e-3,5e-3"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("train_model") / "tiny_train.toml"
    path.write_text(MODEL)
    return path


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    return tmp_path_factory.mktemp("train_builds")


@pytest.fixture(scope="module")
def swept(model, builds, tmp_path_factory):
    store = tmp_path_factory.mktemp("train_store") / "train.sqlite"
    argv = ["sweep", str(model), "--command", "train", *GRID, "--store", str(store), "--build-dir", str(builds), "--jobs", "1", "--no-progress"]
    assert main(argv) == 0
    return store, argv


def _build_dirs(root):
    return [p for p in root.iterdir() if p.is_dir()]


def test_train_points_share_one_build_and_are_stored(swept, builds):
    store_path, _ = swept
    with Store(store_path, create=False) as store:
        records = store.records()
        sweep_row = store.sweeps()[-1]
    assert [r["status"] for r in records] == ["ok", "ok"]
    assert sorted(r["config"]["train.lr"] for r in records) == [1e-3, 5e-3]
    assert sweep_row["builds"] == 1 and sweep_row["compiles"] == 1
    assert len(_build_dirs(builds)) == 1
    for record in records:
        # train found the sweep's build in --build-dir instead of compiling its own
        assert record["compile_seconds"] == 0.0
        assert record["topology"] == _build_dirs(builds)[0].name
        assert [layer["epoch"] for layer in record["layers"]] == [0, 1]
        assert record["summary"]["test_accuracy"] == record["layers"][-1]["test_accuracy"]
        assert record["summary"]["epochs"] == 1
        assert 0.0 <= record["summary"]["best_test_accuracy"] <= 1.0
    assert "ARSIM_BUILD_DIR" not in os.environ or os.environ["ARSIM_BUILD_DIR"] != str(builds)


def test_rerunning_the_train_sweep_skips_its_points(swept, capsys):
    _, argv = swept
    assert main(argv) == 0
    assert "2 points: 0 run, 2 already in the store" in capsys.readouterr().out


def test_stored_accuracy_equals_a_direct_training_run(swept, model, builds, tmp_path, monkeypatch):
    store_path, _ = swept
    config = load(model, ["train.lr=5e-3"])
    monkeypatch.setenv("ARSIM_BUILD_DIR", str(builds))
    compiled = BUILD_COUNTER["compiled"]
    direct = train(config, tmp_path / "direct", progress=False)
    assert BUILD_COUNTER["compiled"] == compiled  # the sweep's build, no second compile
    with Store(store_path, create=False) as store:
        (record,) = [r for r in store.records() if r["config"]["train.lr"] == 5e-3]
        arrays = store.load_arrays(record)
    assert record["config"] == config
    final = direct.rows[-1]
    assert record["summary"]["test_accuracy"] == final["test_accuracy"]
    assert record["summary"]["train_loss"] == final["train_loss"]
    assert record["summary"]["train_accuracy"] == final["train_accuracy"]
    assert list(arrays["test_accuracy"]) == [row["test_accuracy"] for row in direct.rows]
    for name, value in direct.params.arrays().items():
        assert (arrays[name] == value).all(), name


def test_bp_training_points_need_no_build(model, tmp_path, capsys):
    store_path = tmp_path / "bp.sqlite"
    compiled = BUILD_COUNTER["compiled"]
    argv = ["sweep", str(model), "--command", "train", "--set", "rule=bp", *GRID, "--store", str(store_path), "--jobs", "1", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2 points: 2 run" in out and "builds: 0 network shapes, 0 compiled" in out
    assert BUILD_COUNTER["compiled"] == compiled
    direct = train(load(model, ["rule=bp", "train.lr=1e-3"]), tmp_path / "direct", progress=False)
    with Store(store_path, create=False) as store:
        (record,) = [r for r in store.records() if r["config"]["train.lr"] == 1e-3]
    assert record["topology"] is None
    assert record["summary"]["test_accuracy"] == direct.rows[-1]["test_accuracy"]
    assert main(["results", str(store_path)]) == 0
    assert "test_accuracy" in capsys.readouterr().out
