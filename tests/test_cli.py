"""The command line: bad input gives one clear line and exit 2; --save is exact and atomic."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from arsim import config as config_mod
from arsim.cli import main

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "models" / "quick.toml"


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("bogus=1", "unknown key"),
        ("sizes=[4, 0, 2]", "sizes"),
        ("sizes=[4]", "at least 2"),
        ("dt=25.0", "dt/tau"),
        ("dt=20.0", "dt/tau"),
        ("dt=-1.0", "dt = -1.0"),
        ("tau=0", "tau = 0"),
        ("activation=softplus", "activation = 'softplus'"),
        ("tau=\"fast\"", "wrong type"),
        ("bias=1", "wrong type"),
        ("feedback=mirror", "feedback"),
        ("loss=hinge", "loss"),
        ("duration=10.5", "whole number"),
        ("record.every=0", "record.every"),
        ("record.variables=[\"v\"]", "record.variables"),
        ("loss=ce", "output_activation"),
    ],
)
def test_bad_values_give_one_line_error_and_exit_2(override, fragment, capsys, tmp_path):
    out = tmp_path / "r.npz"
    code = main(["relax", str(QUICK), "--set", override, "--save", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("arsim: error:") and fragment in err[0], err
    assert "Traceback" not in err[0]
    assert not out.exists() and not list(tmp_path.iterdir())


def test_errors_name_key_value_and_accepted_range():
    with pytest.raises(config_mod.ConfigError, match=r"activation = 'softplus'.*one of 'linear'"):
        config_mod.resolve({"sizes": [2, 2], "activation": "softplus"})
    with pytest.raises(config_mod.ConfigError, match=r"sizes = \[3, 0\].*integers >= 1"):
        config_mod.resolve({"sizes": [3, 0]})
    with pytest.raises(config_mod.ConfigError, match=r"train.parallel = 'batch' with projection = 'synapses'.*expected projection = 'dense'"):
        config_mod.resolve({"sizes": [2, 2], "projection": "synapses", "train.parallel": "batch"})
    with pytest.raises(config_mod.ConfigError, match=r"train.parallel = 'copies'.*one of 'auto', 'batch', 'sample'"):
        config_mod.resolve({"sizes": [2, 2], "train.parallel": "copies"})


def test_missing_and_malformed_model_files(tmp_path, capsys):
    assert main(["relax", str(tmp_path / "nope.toml")]) == 2
    bad = tmp_path / "bad.toml"
    bad.write_text("sizes = [1, 2\n")
    assert main(["relax", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "not found" in err[0] and "not valid TOML" in err[1]


def test_console_script_exit_code_and_no_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "arsim.cli", "relax", str(QUICK), "--set", "dt=30"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_relax_save_has_exactly_the_documented_keys(tmp_path, capsys):
    out = tmp_path / "quick.npz"
    assert main(["relax", str(QUICK), "--set", "duration=50.0", "--save", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    L = 4
    with np.load(out) as data:
        keys = set(data.files)
        expected = {"x_in", "target", "t"}
        expected |= {f"{k}{l}" for k in ("W", "b", "B", "dW", "db") for l in range(L)}
        expected |= {f"xbar{l}" for l in range(L + 1)}
        expected |= {f"{k}{l}" for k in ("x", "xtrace") for l in range(1, L + 1)}
        assert keys == expected
        assert data["W1"].shape == (12, 16) and data["B1"].shape == (16, 12)
        assert data["xtrace2"].shape == (len(data["t"]), 12)
        np.testing.assert_allclose(data["B2"], data["W2"].T)
        # dW is AR's estimate of +dL/dW from the relaxed state
        np.testing.assert_allclose(data["dW3"], np.outer(data["x4"] * (1 - data["xbar4"] ** 2), data["xbar3"]), atol=1e-12)
        np.testing.assert_allclose(data["t"], 0.1 * np.arange(51), rtol=1e-12)
    meta = json.loads(Path(str(out) + ".json").read_text())
    assert meta["seed"] == 1 and meta["config"]["duration"] == 50.0 and "brian2" in meta["versions"]
    assert report["layers"][-1]["role"] == "output clamp" and len(report["layers"]) == L


def test_nan_is_reported_with_step_and_layer_and_no_file(tmp_path, capsys):
    out = tmp_path / "nan.npz"
    code = main(
        ["relax", str(QUICK), "--set", "activation=linear", "--set", "init_std=1e120", "--set", "duration=10.0", "--save", str(out)]
    )
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 3
    assert "xbar of layer 3" in err and "step 0" in err, err
    assert not out.exists()


def test_relaxation_overflow_is_reported_at_its_step(tmp_path, capsys):
    """Linear net, weights 1e50: the forward pass stays finite (~1e200), the
    adjoint of layer 1 would be ~1e350, so it overflows during relaxation."""
    code = main(
        ["relax", str(QUICK), "--set", "activation=linear", "--set", "output_activation=linear",
         "--set", "init_std=1e50", "--set", "duration=30.0", "--save", str(tmp_path / "o.npz")]
    )
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 3 and "layer 1 first recorded at relaxation step" in err, err
    assert " step 0 " not in err
    assert not (tmp_path / "o.npz").exists()
