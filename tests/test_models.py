"""Bundled models by name: `arsim.models.resolve_model`, `list_models` and ``arsim models``."""

from pathlib import Path

import pytest

from arsim.cli import main
from arsim.config import ConfigError, load
from arsim.models import MODELS_DIR, list_models, resolve_model

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ("digits_ar", "digits_cnn", "digits_forward", "digits_gait", "fig1", "mnist_ar", "mnist_cnn", "mnist_forward",
           "mnist_gait", "quick", "song_xu_lafferty")


def test_checkout_models_directory_is_the_package_data():
    assert (ROOT / "models").resolve() == MODELS_DIR
    assert sorted(p.stem for p in MODELS_DIR.glob("*.toml")) == sorted(BUNDLED)


def test_every_bundled_model_loads_and_has_its_file_name_and_a_description():
    models = list_models()
    assert [name for name, _, _ in models] == sorted(BUNDLED)
    for name, description, path in models:
        assert path.stem == name  # the name key is the name it is found by
        assert description and not description.startswith("#") and len(description) < 100, description
        assert load(resolve_model(name))["name"] == name


def test_resolve_model_paths_names_and_errors(tmp_path, monkeypatch):
    assert resolve_model("quick") == MODELS_DIR / "quick.toml"
    monkeypatch.chdir(tmp_path)
    assert resolve_model("missing.toml") == Path("missing.toml")  # a path: config.load reports it missing
    (tmp_path / "quick").write_text('sizes = [2, 2]\n')
    assert resolve_model("quick") == Path("quick")  # an existing path wins over the bundled name
    with pytest.raises(ConfigError, match=r"'nosuch'.*bundled: digits_ar, digits_cnn, digits_forward, digits_gait, fig1, mnist_ar, mnist_cnn, mnist_forward, mnist_gait, quick, song_xu_lafferty"):
        resolve_model("nosuch")
    (tmp_path / "adir").mkdir()
    with pytest.raises(ConfigError, match="is a directory"):
        resolve_model("adir")


def test_models_command_and_unknown_names(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == sorted(BUNDLED)
    assert "compiles once" in next(line for line in lines if line.startswith("quick"))
    for command in (["relax", "nosuch"], ["train", "nosuch", "--quiet"], ["sweep", "nosuch", "--grid", "tau=1.0"]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "bundled: digits_ar, digits_cnn, digits_forward, digits_gait, fig1, mnist_ar, mnist_cnn, mnist_forward, mnist_gait, quick, song_xu_lafferty" in err, err
