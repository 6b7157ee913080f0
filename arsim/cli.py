"""The ``arsim`` command line.

User errors (bad model files, bad overrides, bad paths) print one line on
stderr and exit with status 2, without a traceback and without writing any
output file.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from .config import ConfigError

__all__ = ["main"]


def _rule_text(rule) -> str:
    """``rule NAME [table values]`` (and, for AR, ``feedback ..., derivative ...``) for the summary lines."""
    table = f" [{', '.join(f'{k} {v}' for k, v in rule.settings.items())}]" if rule.settings else ""
    # the switches are AR's (config refuses them for the other rules, whose backward pathway is their own)
    switches = f", feedback {rule.feedback}, derivative {rule.derivative}" if rule.name == "ar" else ""
    return f"rule {rule.name}{table}{switches}"


def _fmt(value, infinite: str = "inf") -> str:
    if isinstance(value, float) and math.isinf(value):
        return infinite
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _print_table(rows: list, result, out=None) -> None:
    out = sys.stdout if out is None else out  # the stdout of the call, not of the import
    experiment = result.experiment
    net, rule, probe = experiment.network, experiment.rule, experiment.probe
    eta = net.eta
    n_steps = len(result.t) and int(round(result.t[-1] / eta))
    print(
        f"{experiment.name}: sizes {list(net.sizes)}, {net.activation}/{net.output_activation},"
        f" loss {net.loss}, {_rule_text(rule)},"
        f" {rule.ordering}; dt/tau = {eta:g}, {n_steps} steps = {n_steps * eta:g} tau",
        file=out,
    )
    header = (
        "layer", "units", "x rel.err", f"t_conv({probe.threshold:g})", f"x err@{probe.report_tau:g}tau",
        "dW cos", "dW angle[deg]", "dW rel.err",
    )
    print("  ".join(f"{h:>14}" for h in header), file=out)
    for row in rows:
        cells = (
            f"{row['layer']}{' (clamp)' if row['role'] == 'output clamp' else ''}",
            row["units"],
            row["x_rel_error"],
            row["t_conv_tau"],
            row["x_rel_error_at_report"],
            row["dW_cosine"],
            row["dW_angle_deg"],
            row["dW_rel_error"],
        )
        texts = [_fmt(c, "not reached" if k == 3 else "inf") for k, c in enumerate(cells)]
        print("  ".join(f"{t:>14}" for t in texts), file=out)
    print(
        f"(times in units of tau; dW row l is the gradient of W^{{l-1}}; compile {result.compile_seconds:.1f} s, run {result.run_seconds:.3f} s)",
        file=out,
    )


def _cmd_relax(args) -> int:
    from . import config as config_mod
    from .io import provenance, save_npz, write_json
    from .models import resolve_model
    from .relax import run_relaxation
    from .spec import Experiment

    experiment = Experiment.from_config(config_mod.load(resolve_model(args.model), args.set))
    if args.save is not None and not Path(args.save).suffix == ".npz":
        raise ConfigError(f"--save {args.save}: expected a file name ending in .npz")
    if args.save is not None and not Path(args.save).resolve().parent.is_dir():
        raise ConfigError(f"--save {args.save}: directory {Path(args.save).parent} does not exist")
    _print_warnings(experiment)
    if args.device == "cpp":
        print("arsim: building the standalone network (cached after the first time)...", file=sys.stderr)
    result = run_relaxation(experiment, device=args.device)
    summary = {"layers": result.layers, "compile_seconds": result.compile_seconds, "run_seconds": result.run_seconds}
    if result.diagnostics:
        summary.update(result.diagnostics)
        print("arsim: " + ", ".join(f"{key} = {value}" for key, value in result.diagnostics.items()), file=sys.stderr)
    if experiment.rule.counts_repairs:
        summary["b_repairs"] = result.repairs
        print(f"arsim: repaired B of {result.repairs} unstable hidden layer(s) of the drawn weights", file=sys.stderr)
    if args.save is not None:
        save_npz(args.save, result.arrays())
        write_json(str(args.save) + ".json", {**provenance(experiment), **summary})
    if args.json:
        json.dump({**provenance(experiment), **summary}, sys.stdout, indent=1, default=_json_safe)
        print()
    else:
        _print_table(result.layers, result)
    return 0


def _print_warnings(experiment) -> None:
    for line in experiment.rule.config_warnings(experiment.network):
        print(f"arsim: warning: {line}", file=sys.stderr)


def _cmd_train(args) -> int:
    from . import config as config_mod
    from .experiment import train
    from .models import resolve_model
    from .spec import Experiment

    overrides = list(args.set)
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    experiment = Experiment.from_config(config_mod.load(resolve_model(args.model), overrides))
    rule = experiment.rule
    out = Path(args.out) if args.out else Path("runs") / f"{experiment.name}-{rule.name}-seed{experiment.seed}"
    _print_warnings(experiment)
    summary = train(experiment, out, resume=args.resume, device=args.device, progress=not args.quiet)
    last = summary.rows[-1]
    print(
        f"{experiment.name} ({_rule_text(rule)}):"
        f" epoch {last['epoch']}: train loss {last['train_loss']:.4g}, train acc {last['train_accuracy']:.4f},"
        f" test acc {last['test_accuracy']:.4f}"
    )
    print(
        f"throughput {summary.samples_per_second:.1f} samples/s (compile {summary.compile_seconds:.1f} s separate);"
        f" results in {out}/"
    )
    return 0


def _cmd_models(args) -> int:
    from .models import list_models

    models = list_models()
    width = max((len(name) for name, _, _ in models), default=0)
    for name, description, _ in models:
        print(f"{name:<{width}}  {description}".rstrip())
    return 0


def _cmd_rules(args) -> int:
    from .rules import RULES, cards

    if args.markdown:
        sys.stdout.write(cards())
        return 0
    if args.name:
        if args.name not in RULES:
            raise ConfigError(f"arsim rules {args.name}: unknown rule; expected one of {', '.join(RULES)}")
        sys.stdout.write(RULES[args.name].card())
        return 0
    for name, cls in RULES.items():
        table = ", ".join(f"{name}.{p}" for p in cls.params) or "-"
        print(f"{name:6} {cls.title:28} parameters: {table}")
    return 0


def _parse_sizes(text: str) -> list:
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise ConfigError(f"--sizes {text!r}: expected comma-separated integers, e.g. 784,300,300,100,10") from None
    if len(sizes) < 3 or min(sizes) < 1:
        raise ConfigError(f"--sizes {text!r}: expected at least 3 layer sizes >= 1 (input, hidden..., output)")
    return sizes


def _cmd_bench(args) -> int:
    from . import config as config_mod
    from .bench import format_table, run_bench
    from .models import resolve_model

    sizes = _parse_sizes(args.sizes)
    for name, value, low in (("--steps", args.steps, 1), ("--repeat", args.repeat, 1), ("--samples", args.samples, 1),
                             ("--relax-samples", args.relax_samples, 1), ("--threads", 1 if args.threads is None else args.threads, 1)):
        if value < low:
            raise ConfigError(f"{name} {value}: expected an integer >= {low}")
    overrides = dict(config_mod_parse(text) for text in args.set)
    from .rules import RULES

    for name in args.rule or ():
        if name not in RULES or not RULES[name].simulated:
            simulated = ", ".join(n for n, cls in RULES.items() if cls.simulated)
            raise ConfigError(f"--rule {name}: expected a simulated rule, one of {simulated}")
    from .brian.devices import build_cache_dir

    print("arsim: compiling the builds (relaxation, one-sample run, one per training mode), then timing...", file=sys.stderr)
    result = run_bench(sizes, steps=args.steps, repeat=args.repeat, train_samples=args.samples, overrides=overrides,
                       parts=tuple(args.only) if args.only else ("relax", "train"), relax_samples=args.relax_samples,
                       build_root=build_cache_dir() if args.cached else None, projections=tuple(args.projection or ("dense", "synapses")),
                       threads=args.threads, rules=tuple(args.rule or ()),
                       models=tuple(config_mod.load(resolve_model(name)) for name in args.model or ()))
    if args.json:
        json.dump(result, sys.stdout, indent=1, default=_json_safe)
        print()
    else:
        print(format_table(result))
    return 0


def config_mod_parse(text: str):
    """``key=value`` override of the bench network (validated when the config is resolved)."""
    from .config import parse_override

    return parse_override(text)


def _json_safe(value):
    if isinstance(value, float):
        return None if not math.isfinite(value) else value
    return str(value)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``arsim`` command."""
    parser = argparse.ArgumentParser(prog="arsim", description="Activation Relaxation as Brian2 neuron dynamics.")
    sub = parser.add_subparsers(dest="command", required=True)
    relax = sub.add_parser("relax", help="relax one network and compare with backprop")
    relax.add_argument("model", help="model file (TOML) or bundled model name (arsim models), e.g. quick")
    relax.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a model key")
    relax.add_argument("--save", metavar="FILE.npz", help="write the arrays to FILE.npz (and provenance to FILE.npz.json)")
    relax.add_argument("--json", action="store_true", help="print the per-layer table as JSON")
    relax.add_argument("--device", choices=("cpp", "runtime"), default="cpp", help="Brian2 device (default cpp_standalone)")
    relax.set_defaults(func=_cmd_relax)

    train = sub.add_parser("train", help="train on a data set with AR (Brian2) or the BP baseline")
    train.add_argument("model", help="model file (TOML) or bundled model name (arsim models), e.g. digits_ar")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a model key")
    train.add_argument("--epochs", type=int, metavar="N", help="train for N epochs (overrides train.epochs)")
    train.add_argument("--out", metavar="DIR", help="output directory (default runs/NAME-RULE-seedSEED)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last complete epoch")
    train.add_argument("--device", choices=("cpp", "runtime"), default="cpp", help="Brian2 device (default cpp_standalone)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=_cmd_train)

    models = sub.add_parser("models", help="list the bundled models (usable by name as MODEL)")
    models.set_defaults(func=_cmd_models)

    rules = sub.add_parser("rules", help="list the credit-assignment rules, or print a rule's doc card")
    rules.add_argument("name", nargs="?", help="print this rule's card (Parameter | Unit | Math | Default | Description)")
    rules.add_argument("--markdown", action="store_true", help="every card as markdown (the text of docs/rules.md)")
    rules.set_defaults(func=_cmd_rules)

    bench = sub.add_parser("bench", help="Brian2 vs dense numpy throughput ratios, measured side by side")
    bench.add_argument("--sizes", default="784,300,300,100,10", help="layer sizes (default: the paper's MNIST net)")
    bench.add_argument("--steps", type=int, default=100, help="relaxation steps per sample (default 100)")
    bench.add_argument("--repeat", type=int, default=5, help="repeats; the median and min-max are reported")
    bench.add_argument("--samples", type=int, default=1024,
                       help="training samples per timed run (whole batches of 64; default 1024, arsim train's longest run)")
    bench.add_argument("--threads", type=int, default=None,
                       help="BLAS threads of numpy and of the Brian2 binary (default: numpy's own setting, 1 for Brian2)")
    bench.add_argument("--relax-samples", type=int, default=1000,
                       help="samples relaxed per timed relaxation run (default 1000; the per-run overhead is reported apart)")
    bench.add_argument("--only", action="append", choices=("relax", "train"), help="run only this part")
    bench.add_argument("--projection", action="append", choices=("dense", "synapses"),
                       help="Brian2 projection backend(s) to time (default both)")
    bench.add_argument("--rule", action="append", metavar="NAME",
                       help="also time this rule's training against its numpy reference (repeatable; e.g. --rule kp --rule wm)")
    bench.add_argument("--model", action="append", metavar="MODEL",
                       help="add the batch-parallel training of this model's network (e.g. digits_cnn, mnist_cnn; repeatable)")
    bench.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key of the bench network")
    bench.add_argument("--json", action="store_true", help="print the measurements as JSON")
    bench.add_argument("--cached", action="store_true", help="reuse cached builds (compile times are those recorded when built)")
    bench.set_defaults(func=_cmd_bench)
    from .sweeps import cli as cli_sweep  # the sweep and results subcommands

    cli_sweep.register(sub)
    return parser


def main(argv: list | None = None) -> int:
    """Entry point of the ``arsim`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"arsim: error: {err}", file=sys.stderr)
        return 2
    except FloatingPointError as err:
        print(f"arsim: error: {err}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("arsim: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (``arsim results ... | head``): not an error of ours;
        # point stdout at devnull so the interpreter's final flush stays quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
