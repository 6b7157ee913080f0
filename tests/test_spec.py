"""The config is resolved once: `arsim.spec.Experiment` types every key, and no module below reads the dict."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from arsim.config import RULE_KEYS, SCHEMA, ConfigError, load, resolve
from arsim.models import MODELS_DIR
from arsim.spec import KEY_FIELDS, OWN_KEYS, Experiment
from arsim.studies.song_xu_lafferty import SXL_KEYS

PACKAGE = Path(__file__).resolve().parents[1] / "arsim"

#: the modules allowed to read a config dict: the loader, the typing, the experiment layer itself
#: (it compares a checkpoint's stored config with the run's, key by key), the sweep planner (its
#: grid coordinates are model-file keys), and the SXL study's own typing (`StudySpec.from_config`)
READERS = {"config.py", "spec.py", "experiment.py", "sweep.py", "cli_sweep.py", "sweeps", "studies/song_xu_lafferty.py"}


def test_every_model_file_key_has_one_typed_home():
    typed = set(KEY_FIELDS) | set(OWN_KEYS) | set(RULE_KEYS) | set(SXL_KEYS)
    assert set(SCHEMA) - typed == set(), "a model-file key no typed object holds"
    assert len(typed) == len(KEY_FIELDS) + len(OWN_KEYS) + len(RULE_KEYS) + len(SXL_KEYS), "a key typed twice"
    assert typed - set(SCHEMA) == set()


@pytest.mark.parametrize("model", sorted(p.name for p in MODELS_DIR.glob("*.toml")))
def test_bundled_models_type_to_their_values(model):
    config = load(MODELS_DIR / model)
    experiment = Experiment.from_config(config)
    for key, (part, field, convert) in KEY_FIELDS.items():
        value = getattr(getattr(experiment, part), field)
        # a list becomes a tuple (the layer tables: tuples of their sorted items, so the spec stays hashable)
        expected = convert(config[key]) if key == "layers" else tuple(config[key]) if isinstance(config[key], list) else config[key]
        assert value == expected, key
    if config["layers"]:
        assert [dict(entry) for entry in experiment.network.layers] == config["layers"]
    assert (experiment.name, experiment.seed, experiment.rule.name) == (config["name"], config["seed"], config["rule"])
    assert experiment.rule.settings == {k.split(".", 1)[1]: v for k, v in config.items() if k.startswith(config["rule"] + ".")}
    if config["rule"] == "ar":
        # AR's switches; another rule's backward pathway is its own (GAIT-prop's feedback carries no extra f')
        assert (experiment.rule.feedback, experiment.rule.derivative, experiment.rule.ordering, experiment.rule.forward) == (
            config["feedback"], config["derivative"], config["ordering"], config["forward"])
    assert experiment.network.n_relax_steps == round(config["duration"] / config["dt"])
    assert experiment.network.eta == config["dt"] / config["tau"]


def test_experiment_is_immutable_and_keeps_the_resolved_dict_read_only():
    experiment = Experiment.from_raw({"sizes": [3, 4, 2]})
    with pytest.raises(dataclasses.FrozenInstanceError):
        experiment.network.dt = 2.0
    with pytest.raises(TypeError):
        experiment.config["dt"] = 2.0
    assert dict(experiment.config) == resolve({"sizes": [3, 4, 2]})
    assert Experiment.from_config(experiment) is experiment


def test_replace_validates_again_and_drops_the_old_rule_table():
    kp = Experiment.from_raw({"sizes": [3, 4, 2], "rule": "kp", "kp.decay": 0.5})
    assert kp.replace(**{"train.lr": 1e-3}).training.lr == 1e-3
    assert kp.replace(**{"train.lr": 1e-3}).rule.settings == {"decay": 0.5}
    wm = kp.replace(rule="wm")
    assert wm.rule.name == "wm" and "kp.decay" not in wm.config
    with pytest.raises(ConfigError, match=r"train.lr = -1.0 is out of range"):
        kp.replace(**{"train.lr": -1.0})


def test_batch_parallel_follows_train_parallel_and_the_projection():
    assert Experiment.from_raw({"sizes": [3, 2]}).batch_parallel
    assert not Experiment.from_raw({"sizes": [3, 2], "train.parallel": "sample"}).batch_parallel
    assert not Experiment.from_raw({"sizes": [3, 2], "projection": "synapses"}).batch_parallel


def _dict_reads(path: Path) -> list:
    """``config[...]`` / ``x.config[...]`` subscripts and ``config.get(...)`` calls in one module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        target = None
        if isinstance(node, ast.Subscript):
            target = node.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
            target = node.func.value
        name = target.id if isinstance(target, ast.Name) else target.attr if isinstance(target, ast.Attribute) else None
        if name in ("config", "cfg"):
            found.append(node.lineno)
    return found


def test_no_module_below_the_experiment_layer_reads_the_config_dict():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative in READERS or relative.split("/")[0] in READERS:
            continue
        lines = _dict_reads(path)
        if lines:
            offenders[relative] = lines
    assert offenders == {}


def test_the_dict_read_scan_finds_a_read(tmp_path):
    # the scan above must be able to fail
    module = tmp_path / "module.py"
    module.write_text("def f(config, run):\n    return config['dt'] + run.config['tau'] + config.get('seed')\n")
    assert _dict_reads(module) == [2, 2, 2]
