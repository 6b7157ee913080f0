"""The sweep results store: content hashes, atomic records, crash safety, queries and export.

No Brian2 build here: records are written directly, so these tests are fast.
"""

import csv
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from arsim.sweeps import store as store_mod
from arsim.cli import main
from arsim.config import ConfigError, resolve
from arsim.sweeps.store import Store, point_hash
from arsim.sweeps import parse_where, record_values, select


def _config(**keys):
    return resolve({"sizes": [4, 3, 2], **keys})


def _entry(config, **extra):
    return {
        "hash": point_hash("relax", config),
        "command": "relax",
        "status": "ok",
        "point": {"tau": config["tau"]},
        "config": config,
        "seed": config["seed"],
        "run_seconds": 0.5,
        "summary": {"t_conv_max_tau": 7.5, "x_rel_error_max": 1e-9},
        **extra,
    }


LAYERS = [
    {"layer": 1, "units": 3, "role": "hidden", "t_conv_tau": 7.5, "x_rel_error": 1e-9, "x_rel_error_at_report": float("nan")},
    {"layer": 2, "units": 2, "role": "output clamp", "t_conv_tau": float("inf"), "x_rel_error": 0.0, "x_rel_error_at_report": 0.0},
]


def test_point_hash_is_a_content_hash():
    config = _config()
    shuffled = dict(reversed(list(config.items())))
    assert point_hash("relax", config) == point_hash("relax", shuffled)
    assert point_hash("relax", config) != point_hash("relax", _config(seed=1))
    assert point_hash("relax", config) != point_hash("relax", _config(tau=10.000001))
    assert point_hash("relax", config) != point_hash("train", config)
    assert point_hash("relax", config) != point_hash("relax", config, version="0.0.0")


def test_record_round_trip(tmp_path):
    config = _config(tau=5.0)
    arrays = {"x1": np.arange(3.0), "W0": np.ones((3, 4))}
    with Store(tmp_path / "s.sqlite") as store:
        assert store.record(_entry(config), LAYERS, arrays)
    with Store(tmp_path / "s.sqlite", create=False) as store:
        (record,) = store.records()
        assert store.completed() == {point_hash("relax", config)}
        assert record["config"] == config and record["point"] == {"tau": 5.0}
        assert record["summary"] == {"t_conv_max_tau": 7.5, "x_rel_error_max": 1e-9}
        assert record["layers"][0]["units"] == 3 and isinstance(record["layers"][0]["units"], int)
        assert record["layers"][0]["role"] == "hidden"
        assert math.isnan(record["layers"][0]["x_rel_error_at_report"])
        assert math.isinf(record["layers"][1]["t_conv_tau"])
        assert record["arrays"] == f"s.arrays/{record['hash']}.npz"
        loaded = store.load_arrays(record)
        assert set(loaded) == set(arrays) and all(np.array_equal(loaded[k], arrays[k]) for k in arrays)


def test_recording_a_point_twice_keeps_one_row(tmp_path):
    config = _config()
    with Store(tmp_path / "s.sqlite") as store:
        assert store.record(_entry(config), LAYERS)
        assert not store.record(_entry(config, status="changed"), LAYERS)
        assert [r["status"] for r in store.records()] == ["ok"]
        assert store.db.execute("SELECT COUNT(*) FROM layers").fetchone()[0] == 2


def test_a_failure_before_commit_leaves_no_row_and_a_rerun_records_it(tmp_path, monkeypatch):
    config = _config()
    digest = point_hash("relax", config)
    store = Store(tmp_path / "s.sqlite")

    def fail(*args):
        raise OSError("disk full")

    # the npz is already written when the transaction fails
    monkeypatch.setattr(Store, "_ensure_layer_columns", fail)
    with pytest.raises(OSError):
        store.record(_entry(config), LAYERS, {"a": np.zeros(2)})
    monkeypatch.undo()
    assert (tmp_path / "s.arrays" / f"{digest}.npz").exists()  # an orphan
    assert store.completed() == set()
    assert store.db.execute("SELECT COUNT(*) FROM layers").fetchone()[0] == 0
    assert store.record(_entry(config), LAYERS, {"a": np.ones(2)})
    (record,) = store.records()
    assert np.array_equal(store.load_arrays(record)["a"], np.ones(2))
    store.close()


WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from arsim.config import resolve
    from arsim.sweeps.store import Store, point_hash

    store = Store(sys.argv[1])
    done = store.completed()
    for seed in range(int(sys.argv[2])):
        config = resolve({"sizes": [4, 3, 2], "seed": seed})
        digest = point_hash("relax", config)
        if digest in done:
            continue
        layers = [{"layer": l, "t_conv_tau": float(seed + l)} for l in range(1, 1 + seed % 5)]
        arrays = {"seed": np.full(20000, float(seed))}
        store.record({"hash": digest, "command": "relax", "status": "ok", "point": {"seed": seed},
                      "config": config, "summary": {"n_layers": len(layers)}}, layers, arrays)
    """
)


def test_kill_9_while_recording_loses_nothing_committed(tmp_path):
    db = tmp_path / "s.sqlite"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    n_points = 400
    proc = subprocess.Popen([sys.executable, str(script), str(db), str(n_points)])
    deadline = time.monotonic() + 60
    count = 0
    while count < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
        if db.exists():
            try:
                count = sqlite3.connect(db, timeout=5).execute("SELECT COUNT(*) FROM points").fetchone()[0]
            except sqlite3.OperationalError:
                count = 0
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with Store(db, create=False) as store:
        assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        before = {r["hash"]: r for r in store.records()}
    assert 20 <= len(before) < n_points, "the writer was not killed part-way"
    subprocess.run([sys.executable, str(script), str(db), str(n_points)], check=True)
    with Store(db, create=False) as store:
        records = store.records()
        assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        hashes = [r["hash"] for r in records]
        assert len(hashes) == len(set(hashes)) == n_points
        assert store.db.execute("SELECT COUNT(*) FROM layers").fetchone()[0] == sum(s % 5 for s in range(n_points))
        for record in records:
            seed = record["config"]["seed"]
            assert record["summary"]["n_layers"] == len(record["layers"]) == seed % 5
            assert [layer["t_conv_tau"] for layer in record["layers"]] == [seed + l for l in range(1, 1 + seed % 5)]
            assert np.array_equal(store.load_arrays(record)["seed"], np.full(20000, float(seed)))
            if record["hash"] in before:
                assert record["created"] == before[record["hash"]]["created"]


def test_missing_or_foreign_store_is_a_user_error(tmp_path, capsys):
    with pytest.raises(ConfigError, match="not found"):
        Store(tmp_path / "none.sqlite", create=False)
    foreign = tmp_path / "other.sqlite"
    sqlite3.connect(foreign).execute("CREATE TABLE t (x)")
    with pytest.raises(ConfigError, match="not an arsim results store"):
        Store(foreign, create=False)
    text = tmp_path / "text.sqlite"
    text.write_text("hello, this is not a database" * 10)
    with pytest.raises(ConfigError, match="not an arsim results store"):
        Store(text)
    assert main(["results", str(tmp_path / "none.sqlite")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("arsim: error:")


@pytest.fixture
def filled(tmp_path):
    """A store with points over tau x dt (eta = dt / tau)."""
    path = tmp_path / "s.sqlite"
    with Store(path) as store:
        for tau in (10.0, 20.0):
            for dt in (1.0, 3.0, 5.0):
                config = _config(tau=tau, dt=dt, duration=15.0)
                entry = _entry(config, point={"tau": tau, "dt": dt})
                entry["summary"] = {"t_conv_max_tau": dt * tau}
                layers = [{"layer": 1, "units": 3, "role": "hidden", "t_conv_tau": dt}, {"layer": 2, "units": 2, "role": "output clamp", "t_conv_tau": 0.0}]
                store.record(entry, layers)
    return path


def test_where_selects_by_config_derived_and_summary_keys(filled):
    with Store(filled, create=False) as store:
        records = store.records()
    taus = lambda rs: sorted((r["config"]["tau"], r["config"]["dt"]) for r in rs)  # noqa: E731
    assert taus(select(records, ["tau=10"])) == [(10.0, 1.0), (10.0, 3.0), (10.0, 5.0)]
    # eta = 3 / 10 is 0.30000000000000004: equality is to rounding
    assert taus(select(records, ["eta=0.3"])) == [(10.0, 3.0)]
    assert taus(select(records, ["eta>=0.25", "tau!=20"])) == [(10.0, 3.0), (10.0, 5.0)]
    assert taus(select(records, ["t_conv_max_tau<25"])) == [(10.0, 1.0), (20.0, 1.0)]
    assert taus(select(records, ["depth=2", "steps=5"])) == [(10.0, 3.0), (20.0, 3.0)]
    assert select(records, ["activation=relu"]) == []
    assert record_values(records[0])["depth"] == 2
    with pytest.raises(ConfigError, match="unknown key"):
        select(records, ["bogus=1"])
    with pytest.raises(ConfigError, match="cannot compare"):
        select(records, ["activation>1"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_where("tau~1")
    assert parse_where("tau == 5") == ("tau", "=", 5)


def test_results_lists_and_exports_csv(filled, tmp_path, capsys):
    out = tmp_path / "r.csv"
    assert main(["results", str(filled), "--where", "dt>=3", "--csv", str(out)]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].split()[:4] == ["hash", "status", "tau", "dt"]
    assert listing[-1] == "4 points (csv: " + str(out) + ")"
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8  # 4 points x 2 layers
    assert {(float(r["tau"]), float(r["dt"]), int(r["layer"])) for r in rows} == {
        (tau, dt, l) for tau in (10.0, 20.0) for dt in (3.0, 5.0) for l in (1, 2)
    }
    for row in rows:
        assert float(row["t_conv_tau"]) == (float(row["dt"]) if row["layer"] == "1" else 0.0)
        assert float(row["eta"]) == pytest.approx(float(row["dt"]) / float(row["tau"]))
        assert json.loads(row["sizes"]) == [4, 3, 2]
    assert main(["results", str(filled), "--where", "nope=1"]) == 2
    assert main(["results", str(filled), "--csv", str(tmp_path / "no" / "r.csv")]) == 2


def test_schema_version_is_checked(tmp_path):
    path = tmp_path / "s.sqlite"
    Store(path).close()
    sqlite3.connect(path).execute(f"PRAGMA user_version = {store_mod.SCHEMA_VERSION + 1}")
    with pytest.raises(ConfigError, match="newer"):
        Store(path)
