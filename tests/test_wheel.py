"""The wheel works outside the checkout: package, bundled models, console script.

Builds the wheel offline from a copy of the project's build inputs (pip
wheel --no-deps --no-build-isolation, with this interpreter's setuptools),
installs it with --no-deps into a fresh venv that sees this environment's
packages (Brian2, numpy, ...) behind its own, and runs ``arsim models`` and
``arsim relax quick`` (one small standalone compile) from an unrelated
directory, checking that the arsim it ran is the installed one.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args, **kwargs):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, stdin=subprocess.DEVNULL, **kwargs)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``(venv python, venv bin, wheel path)`` of the freshly built and installed wheel."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "src"
    source.mkdir()
    for path in ROOT.iterdir():  # the build inputs: top-level files and the package, no build/ or egg-info
        if path.is_file() and not path.name.startswith("."):
            shutil.copy2(path, source / path.name)
    shutil.copytree(ROOT / "arsim", source / "arsim", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    wheels = base / "wheels"
    built = _run([sys.executable, "-m", "pip", "wheel", source, "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", wheels])
    assert built.returncode == 0, f"pip wheel failed:\n{built.stdout}\n{built.stderr}"
    (wheel,) = wheels.glob("arsim-*.whl")

    venv = base / "venv"
    created = _run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", venv])
    assert created.returncode == 0, created.stderr
    python = venv / "bin" / "python"
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
    # this interpreter's packages (its venv's, which --system-site-packages does not reach), behind the venv's own,
    # as site directories: their .pth files run too (setuptools' distutils shim, which Brian2 needs on Python >= 3.12;
    # an editable arsim's finder only answers when the installed arsim is missing, which the test catches)
    ours = [p for p in dict.fromkeys([*site.getsitepackages(), sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])]
    lines = [f"import site; site.addsitedir({p!r})\n" for p in ours if Path(p).is_dir()]
    (purelib / "zz_test_environment.pth").write_text("".join(lines))
    install = _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel])
    assert install.returncode == 0, f"pip install of the wheel failed:\n{install.stdout}\n{install.stderr}"
    return python, venv / "bin", wheel


def _env(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env["ARSIM_BUILD_DIR"] = str(tmp_path / "builds")
    return env


def test_wheel_holds_the_package_and_every_bundled_model(installed):
    _, _, wheel = installed
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    # every module of the checkout's package and subpackages (rules/, brian/, reference/, sweeps/, studies/)
    modules = sorted(path.relative_to(ROOT).as_posix() for path in (ROOT / "arsim").rglob("*.py"))
    assert "arsim/brian/devices.py" in modules and "arsim/sweeps/plan.py" in modules
    for module in modules:
        assert module in names, f"{module} is not in {wheel.name}"
    checkout_models = sorted(path.name for path in (ROOT / "models").glob("*.toml"))
    assert checkout_models, "no models/*.toml in the checkout"
    for name in checkout_models:
        assert f"arsim/model_files/{name}" in names, f"model {name} is not in {wheel.name} (setup.cfg package_data)"
    assert any(n.endswith(".dist-info/entry_points.txt") for n in names)


def test_installed_arsim_lists_and_relaxes_a_bundled_model_from_another_directory(installed, tmp_path):
    python, bin_dir, _ = installed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = _env(tmp_path)
    where = _run([python, "-c", "import arsim.models as m; print(m.__file__); print(m.MODELS_DIR)"], cwd=elsewhere, env=env)
    assert where.returncode == 0, where.stderr
    module_file, models_dir = where.stdout.split()
    venv = bin_dir.parent.resolve()
    assert Path(module_file).resolve().is_relative_to(venv), f"imported {module_file}, not the installed wheel"
    assert Path(models_dir).resolve().is_relative_to(venv)

    listed = _run([bin_dir / "arsim", "models"], cwd=elsewhere, env=env)
    assert listed.returncode == 0, listed.stderr
    lines = dict(line.split(None, 1) for line in listed.stdout.splitlines())
    assert {"digits_ar", "quick", "fig1", "mnist_ar"} <= set(lines), listed.stdout
    assert "compiles once" in lines["quick"]

    unknown = _run([bin_dir / "arsim", "relax", "no_such_model"], cwd=elsewhere, env=env)
    assert unknown.returncode == 2 and len(unknown.stderr.strip().splitlines()) == 1, unknown.stderr
    assert "bundled: digits_ar, digits_cnn, digits_forward, digits_gait, fig1, mnist_ar, mnist_cnn, mnist_forward, mnist_gait, quick" in unknown.stderr

    relaxed = _run([bin_dir / "arsim", "relax", "quick", "--set", "sizes=[4, 3, 2]", "--set", "duration=20.0", "--json"],
                   cwd=elsewhere, env=env)
    assert relaxed.returncode == 0, relaxed.stderr
    assert '"layers"' in relaxed.stdout and '"name": "quick"' in relaxed.stdout
    assert any((tmp_path / "builds").iterdir()), "the relaxation compiled nothing into ARSIM_BUILD_DIR"
