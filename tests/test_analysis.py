"""The analysis scripts: files written, figures redrawn from stored data, numbers on the closed forms.

Every script runs once in ``--quick`` mode (tiny nets; two standalone builds
in all, shared between the scripts) into a temporary directory. The stored
numbers are checked against expectations derived from SPEC section 2, not
against earlier runs:

* cold start (``x(0) = 0``): the layer ``k`` below the output has relative
  error ``P(Binomial(n, eta) < k)`` after ``n`` Euler steps, whatever the
  weights, so its convergence time is the first ``n`` at which that tail is
  below the threshold;
* AR start: the top hidden layer sees the fixed clamp, so its error is
  ``(1 - eta)^n`` times its initial error, stable or not.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binom

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("fig1_relaxation", "convergence_vs_depth", "euler_stability", "convergence_peers", "pal_experiments")


def _load_script(name: str):
    """Import ``analysis/<name>.py`` (a script, not a package module)."""
    spec = importlib.util.spec_from_file_location(f"analysis_{name}", ROOT / "analysis" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick(tmp_path_factory, build_dir):
    """``quick(name)``: run ``name --quick`` once into a temporary directory; return (module, data, figures, code)."""
    root = tmp_path_factory.mktemp("analysis")
    done = {}

    def run(name):
        if name not in done:
            module = _load_script(name)
            data = root / "data" / f"{name}.npz"
            figures = root / "figures"
            code = module.main(["--quick", "--data", str(data), "--out-dir", str(figures)])
            done[name] = (module, data, figures, code)
        return done[name]

    return run


@pytest.mark.parametrize("name", SCRIPTS)
def test_simulate_and_plot_write_data_provenance_and_figures(quick, name):
    from PIL import Image

    module, data, figures, code = quick(name)
    assert code == 0
    stored = np.load(data)
    assert str(stored["script"]) == name and bool(stored["quick"])
    meta = json.loads(data.with_suffix(".json").read_text())
    assert meta["script"] == name and meta["quick"] is True
    assert {"config", "seed", "versions", "git_revision"} <= set(meta)
    png, svg = figures / f"{name}.png", figures / f"{name}.svg"
    with Image.open(png) as image:
        assert min(image.info["dpi"]) >= 200
        assert image.size[0] > 1000  # a two-panel figure, not an empty canvas
    assert "<svg" in svg.read_text()[:2000]
    # no stray temporary files from the atomic writes
    assert not [p for p in (*data.parent.iterdir(), *figures.iterdir()) if p.name.startswith(".")]


@pytest.mark.parametrize("name", SCRIPTS)
def test_plot_only_redraws_from_the_stored_file_without_simulating(quick, name, tmp_path, monkeypatch, capsys):
    module, data, _, _ = quick(name)

    def no_simulation(*args, **kwargs):
        raise AssertionError("--plot-only must not simulate")

    for simulation in ("simulate", "run_relaxation", "get_runner", "BrianTrainer"):
        if hasattr(module, simulation):
            monkeypatch.setattr(module, simulation, no_simulation)
    before = data.read_bytes()
    assert module.main(["--plot-only", "--data", str(data), "--out-dir", str(tmp_path / "redrawn")]) == 0
    assert (tmp_path / "redrawn" / f"{name}.png").stat().st_size > 0
    assert (tmp_path / "redrawn" / f"{name}.svg").stat().st_size > 0
    assert data.read_bytes() == before


@pytest.mark.parametrize("name", SCRIPTS)
def test_bad_command_lines_give_one_line_errors(name, tmp_path, capsys):
    module = _load_script(name)
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, script=np.array("something_else"))
    garbage = tmp_path / "garbage.npz"
    garbage.write_text("not a zip archive")
    cases = [
        (["--data", str(tmp_path / "out.txt")], "ending in .npz"),
        (["--plot-only", "--data", str(tmp_path / "missing.npz")], "no such data file"),
        (["--plot-only", "--quick", "--data", str(foreign)], "--quick"),
        (["--plot-only", "--data", str(foreign), "--out-dir", str(a_file)], "not a directory"),
        (["--plot-only", "--data", str(foreign), "--out-dir", str(tmp_path)], f"not a {name} data file"),
        (["--plot-only", "--data", str(garbage), "--out-dir", str(tmp_path)], "not a readable .npz"),
    ]
    for argv, fragment in cases:
        assert module.main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"{name}: error:") and fragment in err[0], (argv, err)
    assert not list((tmp_path).glob("*.png"))


def _binomial_convergence_step(k: int, eta: float, threshold: float) -> int:
    """First n with P(Bin(n, eta) <= k - 1) < threshold (the tail decreases with n)."""
    n = 0
    while binom.cdf(k - 1, n, eta) >= threshold:
        n += 1
    return n


def test_cold_start_convergence_times_are_the_binomial_tail(quick):
    _, data, _, code = quick("convergence_vs_depth")
    assert code == 0
    d = np.load(data)
    eta, threshold = float(d["eta"]), float(d["threshold"])
    steps = np.rint(d["t"] / eta).astype(int)
    np.testing.assert_allclose(d["t"], steps * eta, rtol=1e-12)
    checked = 0
    for i, depth in enumerate(d["depths"]):
        assert np.all(np.isnan(d["tconv_zero"][i, depth - 1:]))
        for k in range(1, depth):
            expected = _binomial_convergence_step(k, eta, threshold) * eta
            assert abs(d["tconv_zero"][i, k - 1] - expected) <= eta * (1 + 1e-9), (depth, k)
            # the whole stored trace, not only its threshold crossing (above round-off)
            tail = binom.cdf(k - 1, steps, eta)
            np.testing.assert_allclose(d["err_zero"][i, k - 1], tail, rtol=1e-9, atol=1e-14)
            checked += 1
    assert checked == sum(depth - 1 for depth in d["depths"])
    # the AR start converges too, within the simulated time
    finite = ~np.isnan(d["tconv_forward"])
    assert np.all(d["tconv_forward"][finite] < d["t"][-1])


def test_peers_fixed_prediction_on_the_binomial_tail_and_strict_pc_short_of_bp(quick):
    """PC under fixed prediction starts its error at 0: the same law as AR's cold start; strict PC and DI have a gap."""
    _, data, _, code = quick("convergence_peers")
    assert code == 0
    d = np.load(data)
    eta, threshold = float(d["eta"]), float(d["threshold"])
    steps = np.rint(d["t"] / eta).astype(int)
    checked = 0
    for i, depth in enumerate(d["depths"]):
        for k in range(1, depth):
            expected = _binomial_convergence_step(k, eta, threshold) * eta
            assert abs(d["tconv_pc_fixed"][i, k - 1] - expected) <= eta * (1 + 1e-9), (depth, k)
            np.testing.assert_allclose(d["err_pc_fixed"][i, k - 1], binom.cdf(k - 1, steps, eta), rtol=1e-9, atol=1e-13)
            assert d["gap_ar"][i, k - 1] < 1e-12 and d["gap_pc_fixed"][i, k - 1] < 1e-12
            # strict PC reaches its own fixed point, which is not backprop's gradient
            assert d["tconv_pc_strict"][i, k - 1] < d["t"][-1]
            assert d["gap_pc_strict"][i, k - 1] > 1e-2
            # dynamic inversion: the damped pseudo-inverse, not backprop's gradient
            assert d["gap_dinv"][i, k - 1] > 1e-2 and d["angle_dinv"][i, k - 1] > 1.0
            checked += 1
    assert checked == sum(depth - 1 for depth in d["depths"])
    # the top hidden layer (5 units under the 2-unit output) inverts a contracting layer: it converges in time
    assert np.all(np.isfinite(d["tconv_dinv"][:, 0]))
    # random feedback is counted at initialisation, seed by seed
    count, seeds = d["random_b_unstable_figure"]
    assert 0 <= count <= seeds == 4


def test_top_hidden_layer_error_is_one_minus_eta_to_the_n(quick):
    _, data, _, code = quick("euler_stability")
    assert code == 0
    d = np.load(data)
    eta, n = d["eta"], d["n_steps"]
    np.testing.assert_allclose(eta * n, float(d["T_tau"]), rtol=1e-12)
    assert eta.max() > 2.0 > eta.min()  # both sides of the stability boundary
    top = len(d["layers"]) - 1
    r0 = d["err_initial"][:, top]
    np.testing.assert_allclose(d["err_final"][:, top], np.abs(1 - eta) ** n * r0, rtol=1e-9, atol=1e-14)
    for i in range(len(eta)):
        m = np.arange(n[i] + 1)
        np.testing.assert_allclose(d["err"][i, top, m], np.abs(1 - eta[i]) ** m * r0[i], rtol=1e-9, atol=1e-14)
        assert np.all(np.isnan(d["err"][i, :, n[i] + 1:]))
    # every run starts from the same forward sweep
    np.testing.assert_allclose(d["err_initial"], d["err_initial"][:1].repeat(len(eta), axis=0), rtol=1e-12)


def test_fig1_top_layer_on_its_closed_form_and_gradients_reach_backprop(quick):
    _, data, _, code = quick("fig1_relaxation")
    assert code == 0
    d = np.load(data)
    eta = float(d["eta"])
    steps = np.rint(d["t"] / eta).astype(int)
    np.testing.assert_allclose(d["t"][-1], 30.0, rtol=1e-12)  # 30 tau shown
    top = len(d["layers"]) - 1
    expected = (1 - eta) ** steps * d["err"][top, 0]
    above_roundoff = expected > 1e-5  # where round-off (~1e-16) is below 1e-11 of the value
    np.testing.assert_allclose(d["err"][top, above_roundoff], expected[above_roundoff], rtol=1e-9)
    # convergence times follow the stored traces (first time after which the error stays below)
    for i in range(len(d["layers"])):
        below = d["err"][i] < d["threshold"]
        first = np.nonzero(~below)[0][-1] + 1
        assert d["t_conv"][i] == pytest.approx(d["t"][first])
    assert np.all(d["angle_deg"][:, -1] < 1e-4)


def test_fig1_gradient_angle_equals_the_metric_on_the_full_matrices():
    """The factorised angle of fig1 panel (b) is SPEC section 4's angle of the flattened matrices."""
    from arsim import metrics

    module = _load_script("fig1_relaxation")
    rng = np.random.default_rng(3)
    u, b = rng.normal(size=(6, 7)), rng.normal(size=5)
    g_star = rng.normal(size=(7, 5)) + 3 * np.outer(u[2], b)  # one row close to g*, none parallel
    expected = [metrics.angle_deg(np.outer(row, b), g_star) for row in u]
    np.testing.assert_allclose(module.gradient_angle_trace(u, b, g_star), expected, rtol=1e-12, atol=1e-10)
    parallel = module.gradient_angle_trace(2.5 * u[:1], b, np.outer(u[0], b))
    assert parallel[0] < 1e-5
