"""The standalone runner: build reuse, run-time argument checks, and runtime == cpp.

Brian2's cpp_standalone binary silently ignores a wrong-size array passed
at run time, and the file names of its arrays are device-internal; these
tests guard arsim's handling of both against a Brian2 upgrade.
"""

import numpy as np
import pytest

from arsim.brian import devices
from arsim.config import resolve
from arsim.brian.network import topology_for
from arsim.relax import draw_problem, network_params, run_relaxation
from arsim.spec import Experiment

E = Experiment.from_config  # tests type a resolved config as the CLI does

from conftest import SMALL_NET


@pytest.fixture(scope="module")
def small(build_dir):
    config = resolve({"sizes": SMALL_NET, "init_std": 0.5, "duration": 20.0, "bias": True})
    topo = topology_for(E(config), max_relax=300)
    return config, topo, devices.get_runner(topo)


def test_second_runner_of_a_topology_reuses_the_build(small):
    config, topo, runner = small
    before = devices.BUILD_COUNTER["compiled"]
    again = devices.get_runner(topo)
    assert devices.BUILD_COUNTER["compiled"] == before
    assert again.directory == runner.directory
    for spec in runner.manifest["outputs"].values():
        assert spec["file"]  # every result has a recorded device file name


def test_model_source_edit_changes_the_build_key(small, monkeypatch):
    _, topo, runner = small
    monkeypatch.setattr(devices, "_model_source_digest", lambda: "edited")
    assert devices._topology_hash(topo) != runner.directory.name


def test_wrong_size_or_unknown_run_time_array_is_refused(small):
    config, topo, runner = small
    params = network_params(topo, E(config).network, draw_problem(E(config)))
    bad = dict(params, **{"proj1.w": params["proj1.w"][:-1]})
    with pytest.raises(ValueError, match=r"proj1\.w.*19 elements.*needs 20"):
        runner.run(bad)
    with pytest.raises(ValueError, match="unknown network parameter 'proj9.w'"):
        runner.run(dict(params, **{"proj9.w": np.zeros(3)}))


def test_runtime_device_equals_standalone(small):
    config, topo, runner = small
    cpp = run_relaxation(config, runner=runner)
    runtime = run_relaxation(config, runner=devices.get_runner(topo, "runtime"))
    for layer in range(1, len(SMALL_NET)):
        np.testing.assert_allclose(runtime.xtrace[layer], cpp.xtrace[layer], rtol=0, atol=1e-12)
    assert np.abs(cpp.xtrace[1][-1] - cpp.xtrace[1][0]).max() > 1e-3  # it relaxed


def test_run_files_go_to_the_run_directory_and_are_removed(small, tmp_path, monkeypatch):
    """A run's input and result files live in ``$ARSIM_RUN_DIR`` and are gone after it."""
    config, topo, runner = small
    monkeypatch.setenv("ARSIM_RUN_DIR", str(tmp_path))
    assert devices.run_files_dir() == tmp_path
    seen = []
    original = devices.subprocess.run

    def spy(args, **kwargs):
        results = args[args.index("--results_dir") + 1]
        seen.append(results)
        return original(args, **kwargs)

    monkeypatch.setattr(devices.subprocess, "run", spy)
    result = runner.run(network_params(topo, E(config).network, draw_problem(E(config))))
    assert result["layer1.x"].shape == (SMALL_NET[1],)
    assert len(seen) == 1 and seen[0].startswith(str(tmp_path))
    assert list(tmp_path.iterdir()) == []
