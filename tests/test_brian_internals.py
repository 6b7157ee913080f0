"""The Brian2 device internals arsim relies on, checked against the installed Brian2.

The dense projections (`arsim.brian.cpp_projection`) reach Brian2's arrays from
hand-written C++ through the global symbols ``device.get_array_name``
returns, and the standalone runner (`arsim.brian.devices`) passes run-time
arrays as ``group.variable=file`` arguments and reads the result files the
binary writes. None of this is documented API. A Brian2 release that
changes it would otherwise show up as a C++ compiler error or wrong
numbers in other tests; these tests name the broken assumption instead.
They only generate code (no compiler run), for a tiny training network
that has every array the C++ touches (batch copies, learned feedback).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

#: the variables of every layer and of every projection that the C++ code touches
LAYER_VARIABLES = ("x", "xbar", "fp", "fb", "a", "anow", "b", "db_acc")
SYNAPSE_VARIABLES = ("w", "wb", "dw_acc")
REAL = {"float64": "double", "float32": "float"}


def _unsupported(what: str) -> str:
    import brian2

    return (
        f"installed Brian2 {brian2.__version__}: {what}. arsim's C++ (arsim/brian/cpp_projection.py) and standalone runner"
        " (arsim/brian/devices.py) rely on this device-internal detail: this Brian2 release is not supported"
        " (setup.cfg's brian2 range) until they are adapted"
    )


@pytest.fixture(scope="module", params=["float64", "float32"])
def generated(request, tmp_path_factory):
    """Generate (not compile) the standalone code of a tiny batch-parallel training network."""
    from brian2 import device, prefs, second, set_device
    from brian2.devices.device import reset_device

    from arsim.brian import cpp_projection
    from arsim.config import resolve
    from arsim.brian.network import build_network, topology_for
    from arsim.spec import Experiment

    precision = request.param
    config = resolve({"sizes": [3, 4, 2], "feedback": "learned", "duration": 4.0, "precision": precision})
    topo = dataclasses.replace(topology_for(Experiment.from_config(config)), record_variables=(), train=True, copies=2)
    directory = tmp_path_factory.mktemp(f"generated_{precision}")
    prefs.reset_to_defaults()
    set_device("cpp_standalone", build_on_run=False, directory=str(directory))
    try:
        built = build_network(topo)
        built.network.run(built.duration * second)
        assert hasattr(cpp_projection, "_names"), "arsim.brian.cpp_projection._names is gone: point this test at its replacement"
        names = [
            cpp_projection._names(device, syn, built.layers[index], built.layers[index + 1])
            for index, syn in enumerate(built.projections)
        ]
        info = {
            "precision": precision,
            "built": built,
            "names": names,
            "array_name": {},
            "object_name": {},
            "filename": {},
            "kind": {},
        }
        for obj, variables in [(g, LAYER_VARIABLES) for g in built.layers] + [(s, SYNAPSE_VARIABLES) for s in built.projections]:
            for var in variables:
                variable = obj.variables[var]
                key = (obj.name, var)
                info["array_name"][key] = device.get_array_name(variable)
                info["object_name"][key] = device.get_array_name(variable, access_data=False)
                info["filename"][key] = device.get_array_filename(variable)
                info["kind"][key] = (type(variable).__name__, getattr(variable, "ndim", None), np.dtype(variable.dtype))
        device.build(directory=str(directory), compile=False, run=False, with_output=False)
    finally:
        device.reinit()
        reset_device("runtime")
        prefs.reset_to_defaults()
    info["objects.h"] = (directory / "objects.h").read_text()
    info["objects.cpp"] = (directory / "objects.cpp").read_text()
    info["main.cpp"] = (directory / "main.cpp").read_text()
    info["makefile"] = (directory / "makefile").read_text()
    info["code_objects"] = {path.name: path.read_text() for path in (directory / "code_objects").glob("*.cpp")}
    return info


def test_array_names_and_variable_types_follow_the_scheme_the_cpp_assumes(generated):
    from brian2.core.variables import ArrayVariable, DynamicArrayVariable

    real = np.dtype(generated["precision"])
    for (obj, var), name in generated["array_name"].items():
        kind, ndim, dtype = generated["kind"][(obj, var)]
        if var in SYNAPSE_VARIABLES:
            assert kind == DynamicArrayVariable.__name__ and ndim == 1, _unsupported(
                f"synaptic variable {obj}.{var} is a {kind} with ndim {ndim}, not a 1-d DynamicArrayVariable"
            )
            expected = f"_dynamic_array_{obj}_{var}"
            got = generated["object_name"][(obj, var)]
            assert got == expected, _unsupported(f"get_array_name({obj}.{var}, access_data=False) is {got!r}, not {expected!r}")
        else:
            assert kind == ArrayVariable.__name__, _unsupported(f"neuron variable {obj}.{var} is a {kind}, not an ArrayVariable")
            expected = f"_array_{obj}_{var}"
            assert name == expected, _unsupported(f"get_array_name({obj}.{var}) is {name!r}, not {expected!r}")
        assert dtype == real, _unsupported(f"{obj}.{var} has dtype {dtype}, not the default float dtype {real}")


def test_every_array_the_cpp_uses_is_declared_in_namespace_brian_with_its_type(generated):
    header = generated["objects.h"]
    match = re.search(r"namespace brian\s*\{(.*)\n\}", header, re.S)
    assert match, _unsupported("objects.h declares no 'namespace brian { ... }'")
    declarations = match.group(1)
    real = REAL[generated["precision"]]
    expressions = {expr for names in generated["names"] for expr in names.values()}
    assert any(expr.endswith(".data()") for expr in expressions) and any(not expr.endswith(".data()") for expr in expressions)
    for expr in sorted(expressions):
        assert expr.startswith("brian::"), f"arsim's C++ expression {expr!r} does not name a brian:: symbol"
        symbol = expr[len("brian::"):]
        if symbol.endswith(".data()"):
            symbol = symbol[: -len(".data()")]
            pattern = rf"extern\s+std::vector\s*<\s*{real}\s*>\s+{re.escape(symbol)}\s*;"
            what = f"std::vector<{real}> {symbol}"
        else:
            pattern = rf"extern\s+{real}\s*\*\s*{re.escape(symbol)}\s*;"
            what = f"{real} *{symbol}"
        assert re.search(pattern, declarations), _unsupported(f"objects.h does not declare 'extern {what};' in namespace brian")


def test_user_function_code_is_compiled_next_to_objects_h(generated):
    defined = {}
    for name, text in generated["code_objects"].items():
        for func in re.findall(r"static\s+double\s+(arsim_\w+)\s*\(", text):
            defined[func] = (name, text)
    for syn in generated["built"].projections:
        for suffix in ("feedback", "a", "accumulate_batch", "apply_batch"):
            func = f"arsim_{syn.name}_{suffix}"
            if suffix == "feedback" and syn.name == "proj0":
                continue  # the input does not relax: no feedback into layer 0
            assert func in defined, _unsupported(f"the support code of user function {func} is in no generated code object")
            name, text = defined[func]
            assert re.search(r'#include\s+"objects.h"', text), _unsupported(
                f"code_objects/{name}, which holds {func}, does not include objects.h (the brian:: arrays are invisible there)"
            )


def test_run_time_argument_names_and_result_files_are_what_the_runner_uses(generated):
    objects = generated["objects.cpp"]
    for layer in generated["built"].layers:
        for var in ("b", "tau", "lr"):
            argument = f"{layer.name}.{var}"  # arsim.brian.devices: f"{view.group_name}.{view.name}"
            assert f'name == "{argument}"' in objects, _unsupported(f"the binary does not accept the run-time argument {argument}=...")
    for syn in generated["built"].projections:
        for var in ("w", "wb"):
            assert f'name == "{syn.name}.{var}"' in objects, _unsupported(f"the binary does not accept {syn.name}.{var}=...")
    for timed in ("input_values", "target_values"):
        assert f'name == "{timed}.values"' in objects, _unsupported(f"the binary does not accept the TimedArray argument {timed}.values=...")
    assert '"--results_dir"' in generated["main.cpp"], _unsupported("main.cpp has no --results_dir argument")
    for (obj, var), filename in generated["filename"].items():
        assert f'results_dir + "{filename}"' in objects, _unsupported(
            f"the binary does not write {obj}.{var} to results_dir/get_array_filename(...) = {filename!r}"
        )


def test_random_generators_can_be_reseeded_at_run_time(generated):
    """A stochastic rule's binary reseeds ``brian::_random_generators`` at its first step (`cpp_projection.add_noise_seed`)."""
    header = generated["objects.h"]
    match = re.search(r"namespace brian\s*\{(.*)\n\}", header, re.S)
    assert match and re.search(r"extern\s+std::vector\s*<\s*RandomGenerator\s*>\s+_random_generators\s*;", match.group(1)), \
        _unsupported("objects.h does not declare 'extern std::vector<RandomGenerator> _random_generators;' in namespace brian")
    assert re.search(r"void\s+seed\s*\(\s*unsigned\s+long\s+\w+\s*\)", header), _unsupported(
        "RandomGenerator has no 'void seed(unsigned long)' (the noise of a run could not be seeded from its arguments)")


def test_makefile_names_its_compiler_flags_on_an_optimisations_line(generated):
    """`arsim.brian.devices._make` precompiles the common headers with the flags of this line (else it builds without)."""
    makefile = generated["makefile"]
    match = re.search(r"^OPTIMISATIONS = (.*)$", makefile, re.MULTILINE)
    assert match and "-O" in match.group(1), _unsupported("the makefile has no 'OPTIMISATIONS = <flags>' line")
    assert re.search(r"^CXXFLAGS = .*\$\(OPTIMISATIONS\)", makefile, re.MULTILINE), _unsupported(
        "the makefile's CXXFLAGS do not use $(OPTIMISATIONS)")
