"""Shared fixtures: one build directory per test session, builds shared by topology."""

from __future__ import annotations

import os

import numpy as np
import pytest

from arsim.config import resolve
from arsim.brian.devices import get_runner
from arsim.brian.network import topology_for
from arsim.relax import run_relaxation
from arsim.spec import Experiment

E = Experiment.from_config  # tests type a resolved config as the CLI does

#: every relaxation test compiles for this many steps and runs fewer via run-time n_relax
MAX_RELAX = 300
SMALL_NET = [6, 5, 4, 3, 2]


@pytest.fixture(scope="session", autouse=True)
def build_dir(tmp_path_factory):
    """Compile into a session-private cache (also seen by CLI subprocesses).

    Under pytest-xdist the workers share one cache (the run's common temporary
    directory): a build one worker compiled, the others reuse, and the
    runner's lock lets only one of them compile it.
    """
    if os.environ.get("PYTEST_XDIST_WORKER"):
        path = tmp_path_factory.getbasetemp().parent / "arsim_builds"
        path.mkdir(exist_ok=True)
    else:
        path = tmp_path_factory.mktemp("arsim_builds")
    old = os.environ.get("ARSIM_BUILD_DIR")
    os.environ["ARSIM_BUILD_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("ARSIM_BUILD_DIR", None)
    else:
        os.environ["ARSIM_BUILD_DIR"] = old


@pytest.fixture(scope="session")
def relax(build_dir):
    """``relax(**keys)`` relaxes a small net in Brian2, sharing builds by topology."""
    runners = {}

    def run(device="cpp", **keys):
        config = resolve({"sizes": SMALL_NET, "init_std": 0.5, "duration": 300.0, **keys})
        topo = topology_for(E(config), max_relax=MAX_RELAX)
        key = (topo, device)
        if key not in runners:
            runners[key] = get_runner(topo, device)
        return run_relaxation(config, runner=runners[key])

    return run


def training_data(config: dict, n_samples: int, seed: int = 5):
    """Uniform random inputs and one-hot targets sized for ``config`` (tests of training)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 1.0, size=(n_samples, config["sizes"][0]))
    targets = np.eye(config["sizes"][-1])[rng.integers(config["sizes"][-1], size=n_samples)]
    return x, targets
