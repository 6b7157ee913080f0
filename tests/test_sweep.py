"""Sweeps: grid syntax and validation, compile once per shape, equality with
individual ``arsim relax`` runs, resume after kill -9, and the dask engine.

One build (a 5-layer net, compiled for 20 relaxation steps) serves every
sweep in this file; the individual ``arsim relax`` runs compile their own
builds (20 and 8 steps) in the session's build directory.
"""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from arsim.cli import main
from arsim.config import ConfigError
from arsim.sweeps.store import Store
from arsim.sweeps import parse_axis, plan_sweep, split_values

MODEL = """
name = "sweeptest"
sizes = [6, 5, 4, 3, 2]
activation = "tanh"
output_activation = "tanh"
bias = true
init_std = 0.5
seed = 3
tau = 10.0
dt = 1.0
duration = 20.0
"""

# tau x dt at one network shape: 20 and 8 relaxation steps share one build
GRID = ["--grid", "tau=5.0,10.0", "--grid", "dt=1.0,2.5"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("sweep_model") / "sweeptest.toml"
    path.write_text(MODEL)
    return path


@pytest.fixture(scope="module")
def sweep_builds(tmp_path_factory):
    """A build directory of this module only, to count its compilations."""
    return tmp_path_factory.mktemp("sweep_builds")


@pytest.fixture(scope="module")
def swept(model, sweep_builds, tmp_path_factory):
    """The tau x dt sweep run once with the local engine (2 worker processes)."""
    store = tmp_path_factory.mktemp("sweep_store") / "local.sqlite"
    code = main(["sweep", str(model), *GRID, "--jobs", "2", "--store", str(store), "--build-dir", str(sweep_builds), "--no-progress"])
    assert code == 0
    return store


# -- grid syntax and validation (nothing is built) ---------------------------


def test_values_split_at_top_level_commas():
    assert split_values("1,2.5, 3") == ["1", "2.5", "3"]
    assert split_values("[4,3,2],[8, 4,2]") == ["[4,3,2]", "[8, 4,2]"]
    assert split_values('"a,b",c') == ['"a,b"', "c"]
    assert parse_axis("sizes=[4,3,2],[8,2]") == ("sizes", [[4, 3, 2], [8, 2]])
    assert parse_axis("activation=tanh,relu") == ("activation", ["tanh", "relu"])
    assert parse_axis("tau=5,7.5") == ("tau", [5, 7.5])
    with pytest.raises(ConfigError, match="empty value"):
        parse_axis("tau=5,,7")
    with pytest.raises(ConfigError, match="expected key=value1,value2"):
        parse_axis("tau")


def test_grid_zip_and_repeat_expand_in_order(model):
    plan = plan_sweep(model, grid=["tau=5.0,10.0", "activation=tanh,relu"], zipped=["seed=1,2,3", "init_std=0.1,0.2,0.3"], repeat=1)
    assert len(plan.points) == 2 * 2 * 3
    assert plan.points[0].values == {"tau": 5.0, "activation": "tanh", "seed": 1, "init_std": 0.1}
    assert plan.points[1].values == {"tau": 5.0, "activation": "tanh", "seed": 2, "init_std": 0.2}
    assert [(p.config["seed"], p.config["init_std"]) for p in plan.points[:3]] == [(1, 0.1), (2, 0.2), (3, 0.3)]
    repeated = plan_sweep(model, grid=["tau=5.0,10.0"], repeat=3)
    assert [(p.config["tau"], p.config["seed"]) for p in repeated.points] == [(t, s) for t in (5.0, 10.0) for s in (3, 4, 5)]
    assert len({p.hash for p in repeated.points}) == 6
    # --set seed is the first seed of --repeat
    assert [p.config["seed"] for p in plan_sweep(model, sets=["seed=7"], repeat=2).points] == [7, 8]
    # one build for the whole tau x activation x seed grid
    assert len(plan.groups()) == 1


def test_derived_keys_set_model_keys(model):
    plan = plan_sweep(model, grid=["depth=1,2,4", "eta=0.3,1.9"], sets=["width=7", "steps=40"])
    sizes = {p.values["depth"]: p.config["sizes"] for p in plan.points}
    assert sizes == {1: [6, 2], 2: [6, 7, 2], 4: [6, 7, 7, 7, 2]}
    for point in plan.points:
        config = point.config
        assert config["dt"] == pytest.approx(point.values["eta"] * config["tau"], rel=1e-15)
        assert config["duration"] == pytest.approx(40 * config["dt"], rel=1e-15)
    assert plan.points[0].config["dt"] == 3.0  # not 3.0000000000000004
    assert len(plan.groups()) == 3
    # width alone keeps the depth; depth alone keeps the model's hidden width
    assert plan_sweep(model, grid=["width=9"]).points[0].config["sizes"] == [6, 9, 9, 9, 2]
    # --set sizes is the template of the input and output sizes
    templated = plan_sweep(model, grid=["depth=2,3"], sets=["sizes=[8,3,4]"])
    assert [p.config["sizes"] for p in templated.points] == [[8, 3, 4], [8, 3, 3, 4]]
    with pytest.raises(ConfigError, match=r"depth = 2 needs width \(the model's hidden sizes \[5, 4, 3\]"):
        plan_sweep(model, grid=["depth=2"])


def test_points_share_a_build_with_the_largest_step_budget(model):
    plan = plan_sweep(model, grid=GRID[1::2])
    ((topology, points),) = plan.groups().items()
    assert len(points) == 4 and topology.max_relax == 20


def test_duplicate_points_are_merged(model):
    plan = plan_sweep(model, grid=["dt=1.0,1", "tau=10.0"])
    assert len(plan.points) == 1 and plan.duplicates == 1


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--grid", "bogus=1,2"], "--grid bogus: unknown key"),
        (["--zip", "nope=1"], "--zip nope: unknown key"),
        (["--set", "nope=1"], "--set nope: unknown key"),
        (["--grid", "tau=5.0,fast"], "tau = 'fast' has the wrong type"),
        (["--grid", "bias=1,0"], "bias = 1 has the wrong type"),
        (["--grid", "depth=2,2.5"], "depth = 2.5 has the wrong type"),
        (["--grid", "eta=0.5,2.5"], "dt/tau = 2.5"),
        (["--grid", "sizes=[4,3],[4]"], "at least 2"),
        (["--grid", "tau=1.0,2.0", "--set", "tau=3.0"], "already given"),
        (["--grid", "eta=0.1", "--set", "dt=1.0"], "eta sets dt"),
        (["--grid", "depth=2,3", "--grid", "sizes=[2,2]"], "depth sets sizes"),
        (["--zip", "tau=1.0,2.0", "--zip", "seed=1"], "equal numbers"),
        (["--grid", "seed=1,2", "--repeat", "2"], "both set the seed"),
        (["--grid", "tau"], "expected key=value1"),
        (["--jobs", "0"], "--jobs 0"),
        (["--store", "x.txt"], "ending in .sqlite"),
        (["--scheduler", "tcp://localhost:1"], "only with --engine dask"),
    ],
)
def test_bad_sweeps_fail_in_one_line_before_building(args, fragment, model, tmp_path, capsys, monkeypatch):
    builds = tmp_path / "builds"
    builds.mkdir()
    monkeypatch.setenv("ARSIM_BUILD_DIR", str(builds))
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "s.sqlite"
    code = main(["sweep", str(model), "--store", str(store), "--no-progress", *args] if "--store" not in args else ["sweep", str(model), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("arsim: error:") and fragment in err[0], err
    assert not list(builds.iterdir()) and not store.exists()


def test_missing_model_is_a_user_error(tmp_path, capsys):
    assert main(["sweep", str(tmp_path / "none.toml"), "--grid", "tau=1.0"]) == 2
    assert "model file not found" in capsys.readouterr().err


# -- running sweeps -----------------------------------------------------------


def test_one_compile_for_a_sweep_over_tau_and_dt(swept, sweep_builds):
    with Store(swept, create=False) as store:
        (sweep,) = store.sweeps()
        assert len(store.records()) == 4
    assert sweep["builds"] == 1 and sweep["compiles"] == 1 and sweep["points_run"] == 4
    assert sweep["compile_seconds"] > 0 and sweep["wall_seconds"] > 0
    assert sweep["argv"].startswith("arsim sweep ") and "--grid tau=5.0,10.0 --grid dt=1.0,2.5" in sweep["argv"]
    assert len(list(sweep_builds.glob("*/manifest.json"))) == 1


def test_sweep_numbers_equal_individual_relax_runs(swept, model, tmp_path, capsys):
    with Store(swept, create=False) as store:
        records = store.records()
        stored_arrays = {r["hash"]: store.load_arrays(r) for r in records}
    assert {(r["config"]["tau"], r["config"]["dt"]) for r in records} == {(t, d) for t in (5.0, 10.0) for d in (1.0, 2.5)}
    for record in records:
        tau, dt = record["config"]["tau"], record["config"]["dt"]
        save = tmp_path / f"relax_{tau}_{dt}.npz"
        capsys.readouterr()
        assert main(["relax", str(model), "--set", f"tau={tau}", "--set", f"dt={dt}", "--json", "--save", str(save)]) == 0
        single = json.loads(capsys.readouterr().out)
        assert single["config"] == record["config"]
        assert len(single["layers"]) == len(record["layers"]) == 4
        for mine, theirs in zip(record["layers"], single["layers"]):
            for key, value in theirs.items():
                if isinstance(value, float):
                    assert mine[key] == pytest.approx(value, rel=1e-12, abs=1e-300, nan_ok=True), (key, tau, dt)
                else:
                    assert mine[key] == value
        with np.load(save) as data:
            arrays = stored_arrays[record["hash"]]
            assert set(arrays) == set(data.files)
            for key in data.files:
                np.testing.assert_allclose(arrays[key], data[key], rtol=1e-12, atol=1e-15, err_msg=key)
        # the steps differ (20 and 8) but the convergence time is on one grid
        assert record["summary"]["t_conv_max_tau"] == max(layer["t_conv_tau"] for layer in single["layers"][:-1])


def test_rerunning_a_sweep_runs_nothing(swept, model, sweep_builds, capsys):
    code = main(["sweep", str(model), *GRID, "--jobs", "1", "--store", str(swept), "--build-dir", str(sweep_builds), "--no-progress"])
    assert code == 0
    with Store(swept, create=False) as store:
        last = store.sweeps()[-1]
        assert len(store.records()) == 4
    assert (last["points_skipped"], last["points_run"], last["compiles"]) == (4, 0, 0)
    assert "4 already in the store" in capsys.readouterr().out


def test_kill_9_part_way_then_resume(model, sweep_builds, tmp_path):
    store = tmp_path / "killed.sqlite"
    args = ["sweep", str(model), "--grid", "seed=" + ",".join(map(str, range(30))), "--grid", "dt=1.0,2.5",
            "--jobs", "2", "--store", str(store), "--build-dir", str(sweep_builds), "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "arsim.cli", *args], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    count = 0
    try:
        while count < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
            if store.exists():
                try:
                    count = sqlite3.connect(store, timeout=5).execute("SELECT COUNT(*) FROM points").fetchone()[0]
                except sqlite3.OperationalError:
                    count = 0
        os.kill(proc.pid, signal.SIGKILL)  # the coordinator only, as `kill -9 PID`
        proc.wait()
        # its workers notice and exit
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            pytest.fail("sweep workers outlived their killed coordinator")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    with Store(store, create=False) as db:
        before = {r["hash"]: r for r in db.records()}
    assert 3 <= len(before) < 60, "the sweep was not killed part-way"

    assert main(args[:-1] + ["--jobs", "1", "--no-progress"]) == 0
    with Store(store, create=False) as db:
        records = db.records()
        assert db.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        last = db.sweeps()[-1]
        hashes = [r["hash"] for r in records]
        assert len(hashes) == len(set(hashes)) == 60
        assert {(r["config"]["seed"], r["config"]["dt"]) for r in records} == {(s, d) for s in range(30) for d in (1.0, 2.5)}
        assert (last["points_skipped"], last["points_run"]) == (len(before), 60 - len(before))
        for record in records:
            assert record["status"] == "ok" and len(record["layers"]) == 4
            arrays = db.load_arrays(record)
            # the npz belongs to its row: its weights come from the row's seed
            assert arrays["W0"].shape == (5, 6) and np.all(np.isfinite(arrays["xtrace1"]))
            rng = np.random.default_rng(record["config"]["seed"])
            np.testing.assert_array_equal(arrays["W0"], rng.normal(0.0, 0.5, size=(5, 6)))
            if record["hash"] in before:
                assert record["created"] == before[record["hash"]]["created"]
    assert len(list(sweep_builds.glob("*/manifest.json"))) == 1


@pytest.mark.parametrize("scheduler", [False, True], ids=["local-cluster", "scheduler-address"])
def test_dask_engine_matches_local_engine(scheduler, swept, model, sweep_builds, tmp_path):
    distributed = pytest.importorskip("distributed")
    store = tmp_path / "dask.sqlite"
    args = ["sweep", str(model), *GRID, "--engine", "dask", "--jobs", "2", "--store", str(store),
            "--build-dir", str(sweep_builds), "--no-progress"]
    if scheduler:
        # a cluster started elsewhere, as on SLURM: the sweep only gets its address
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster:
            code = main(args + ["--scheduler", cluster.scheduler_address])
    else:
        code = main(args)
    assert code == 0
    with Store(swept, create=False) as local, Store(store, create=False) as remote:
        a = {r["hash"]: r for r in local.records()}
        b = {r["hash"]: r for r in remote.records()}
        assert set(a) == set(b) and len(a) == 4
        for digest in a:
            # exactly equal (NaN where the report time was not simulated)
            np.testing.assert_equal(b[digest]["layers"], a[digest]["layers"])
            np.testing.assert_equal(b[digest]["summary"], a[digest]["summary"])
            x, y = local.load_arrays(a[digest]), remote.load_arrays(b[digest])
            assert set(x) == set(y) and all(np.array_equal(x[k], y[k]) for k in x)
        assert remote.sweeps()[-1]["compiles"] == 0
    # the dask workers ran in processes of their own
    assert {r["worker"].rsplit("-", 2)[1] for r in b.values()} - {str(os.getpid())}


def test_figures_are_drawn_from_the_store_alone(swept, tmp_path, monkeypatch):
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "analysis" / "sweep_figures.py"
    spec = importlib.util.spec_from_file_location("sweep_figures", script)
    figures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(figures)
    # no simulation: a runner would fail
    monkeypatch.setattr("arsim.brian.devices.StandaloneRunner.run", lambda *a, **k: pytest.fail("simulated"))
    out = tmp_path / "figs"
    assert figures.main([str(swept), "--x", "tau", "--heatmap", "tau,dt", "--out-dir", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {
        f"sweep_tconv_{name}.{ext}" for name in ("vs_tau", "heatmap") for ext in ("png", "svg")
    }
    rows = figures.load(swept)
    # 4 points x 3 hidden layers, k = 1..3 below the output
    assert len(rows) == 12 and sorted({r["k"] for r in rows}) == [1, 2, 3]
    assert figures.main([str(swept), "--x", "bogus", "--out-dir", str(out)]) == 2
    assert figures.main([str(swept), "--heatmap", "tau", "--out-dir", str(out)]) == 2
