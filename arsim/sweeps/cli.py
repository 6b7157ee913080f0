"""The ``arsim sweep`` and ``arsim results`` subcommands (docs/sweeps.md).

``arsim sweep`` expands a grid over model keys, validates every point, runs
the points the store does not hold yet (one compile per network shape) and
records each as it finishes. ``arsim results`` lists and exports a store.
User errors exit with status 2 and one line (`arsim.cli.main`); a sweep in
which some points failed exits with status 1 after recording the others.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shlex
import sys
from pathlib import Path

__all__ = ["register"]


def register(subparsers) -> None:
    """Add the ``sweep`` and ``results`` subcommands to ``arsim``'s subparsers."""
    from .commands import COMMANDS

    sweep = subparsers.add_parser(
        "sweep",
        help="run a grid of points (compile once per network shape) into a resumable results store",
        description="Run a cartesian (or zipped) grid over model keys. Values are TOML literals separated by"
        " commas outside brackets, e.g. --grid tau=5.0,10.0 --grid 'sizes=[4,3,2],[8,4,2]'. Derived keys:"
        " depth (with width) sets sizes, eta sets dt = eta * tau, steps sets duration = steps * dt.",
    )
    sweep.add_argument("model", help="model file (TOML) or bundled model name (arsim models), e.g. quick")
    sweep.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...", help="a cartesian axis")
    sweep.add_argument("--zip", action="append", default=[], metavar="KEY=V1,V2,...", help="zipped axes (equal lengths), one more axis together")
    sweep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key of every point")
    sweep.add_argument("--repeat", type=int, default=1, metavar="N", help="run each point with seeds seed .. seed+N-1")
    sweep.add_argument("--command", choices=sorted(COMMANDS), default="relax", help="what each point runs (default relax)")
    sweep.add_argument("--jobs", type=int, default=None, metavar="N", help="parallel workers (default: the number of cores; 1 runs in this process)")
    sweep.add_argument("--engine", choices=("local", "dask"), default="local", help="local process pool or a dask.distributed cluster")
    sweep.add_argument("--scheduler", metavar="ADDRESS", help="dask scheduler (default: a LocalCluster of --jobs workers)")
    sweep.add_argument("--store", metavar="FILE.sqlite", help="results store (default results/<model>.sqlite)")
    sweep.add_argument("--build-dir", metavar="DIR", help="build cache seen by every worker (default $ARSIM_BUILD_DIR or ~/.cache/arsim/builds)")
    sweep.add_argument("--no-arrays", action="store_true", help="store metrics only, no npz arrays")
    sweep.add_argument("--no-progress", action="store_true", help="no progress bar")
    sweep.add_argument("--dry-run", action="store_true", help="validate and list the points and builds; run nothing")
    sweep.set_defaults(func=_cmd_sweep)

    results = subparsers.add_parser("results", help="list or export the points of a results store")
    results.add_argument("store", help="results store (.sqlite) written by arsim sweep")
    results.add_argument("--where", action="append", default=[], metavar="KEY=VALUE", help="keep points with KEY = (!=, <, <=, >, >=) VALUE; repeatable (and)")
    results.add_argument("--csv", metavar="FILE", help="write one row per point and layer to FILE")
    results.set_defaults(func=_cmd_results)


def _command_line(args) -> str:
    """The sweep as a shell command, from the parsed options (kept in the store)."""
    words = ["arsim", "sweep", args.model]
    for option in ("set", "grid", "zip"):
        for value in getattr(args, option):
            words += [f"--{option}", value]
    for option in ("repeat", "command", "jobs", "engine", "scheduler", "store", "build_dir"):
        value = getattr(args, option)
        if value is not None:
            words += [f"--{option.replace('_', '-')}", str(value)]
    words += [f"--{flag.replace('_', '-')}" for flag in ("no_arrays",) if getattr(args, flag)]
    return shlex.join(words)


def _cmd_sweep(args) -> int:
    from ..config import ConfigError
    from ..models import resolve_model
    from .store import Store
    from .engines import check_engine, make_engine
    from .plan import plan_sweep
    from .run import run_sweep

    check_engine(args.engine, args.jobs, args.scheduler)
    plan = plan_sweep(resolve_model(args.model), grid=args.grid, zipped=args.zip, sets=args.set, repeat=args.repeat, command=args.command)
    if args.store is not None and Path(args.store).suffix not in (".sqlite", ".db", ".sqlite3"):
        raise ConfigError(f"--store {args.store}: expected a file name ending in .sqlite")
    if args.build_dir is not None and not Path(args.build_dir).is_dir():
        raise ConfigError(f"--build-dir {args.build_dir}: directory does not exist")
    store_path = Path(args.store) if args.store is not None else Path("results") / (Path(args.model).stem + ".sqlite")
    if args.dry_run:
        return _dry_run(plan, store_path)
    if args.store is None:
        store_path.parent.mkdir(exist_ok=True)
    store = Store(store_path)
    try:
        engine = make_engine(args.engine, args.jobs, args.scheduler)
        try:
            report = run_sweep(
                plan,
                store,
                engine,
                build_root=args.build_dir,
                want_arrays=not args.no_arrays,
                progress=not args.no_progress,
                argv=_command_line(args),
            )
        finally:
            engine.close()
    finally:
        store.close()
    print(report.summary())
    print(f"store: {store_path}")
    return 1 if report.points_failed else 0


def _dry_run(plan, store_path: Path) -> int:
    from .store import Store

    done = set()
    if store_path.is_file():
        with Store(store_path, create=False) as store:
            done = store.completed()
    groups = plan.groups()
    try:
        _print_plan(plan, groups, done, store_path)
    except BrokenPipeError:  # e.g. piped into head
        sys.stdout = open(os.devnull, "w")
    return 0


def _print_plan(plan, groups, done, store_path) -> None:
    builds = sum(topo is not None for topo in groups)
    print(f"{len(plan.points)} points ({sum(p.hash in done for p in plan.points)} already in {store_path}), {builds} builds")
    for topo, points in groups.items():
        if topo is None:  # a command or rule without a Brian2 build (numpy only)
            print(f"no build: {len(points)} points")
        else:
            print(f"build sizes={list(topo.sizes)} feedback={topo.feedback} max_relax={topo.max_relax}: {len(points)} points")
        for point in points:
            mark = "done" if point.hash in done else "todo"
            print(f"  {point.hash}  {mark}  {point.values}")


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return "inf" if math.isinf(value) else f"{value:.4g}"
    if isinstance(value, list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _swept_keys(records) -> list:
    keys = []
    for record in records:
        keys += [k for k in record["point"] if k not in keys]
    return keys


def _summary_columns(records):
    """The summary metrics to print for commands other than relax (`Command.columns`), or None (relax's table)."""
    from .commands import COMMANDS

    commands = list(dict.fromkeys(record["command"] for record in records))
    if not commands or commands == ["relax"]:
        return None
    shown = []
    for name in commands:
        columns = COMMANDS[name].columns if name in COMMANDS else ()
        shown += [c for c in columns if c not in shown]
    return shown


def _fmt_metric(value) -> str:
    # counts (steps, epochs) are stored as REAL: print them whole
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return _fmt(value)


def _print_table(header, rows) -> None:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    print("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    for row in rows:
        print("  ".join(str(c).rjust(w) for c, w in zip(row, widths)))


def _cmd_results(args) -> int:
    from ..io import atomic_write_bytes
    from .store import Store
    from .select import record_values, select

    if args.csv is not None and not Path(args.csv).resolve().parent.is_dir():
        from ..config import ConfigError

        raise ConfigError(f"--csv {args.csv}: directory {Path(args.csv).parent} does not exist")
    with Store(args.store, create=False) as store:
        records = select(store.records(), args.where)
    keys = _swept_keys(records)
    if args.csv is not None:
        atomic_write_bytes(args.csv, _csv_text(records, keys).encode())
    shown = _summary_columns(records)
    if shown is not None:
        _print_table(["hash", "status", *keys, *shown, "run[s]"], [
            [record["hash"][:10], record["status"], *(_fmt(record_values(record).get(k)) for k in keys),
             *(_fmt_metric(record["summary"].get(k)) for k in shown), _fmt(record["run_seconds"])]
            for record in records
        ])
        print(f"{len(records)} points" + (f" (csv: {args.csv})" if args.csv else ""))
        return 0
    header = ["hash", "status", *keys, "t_conv[tau] l=1..L", "x err max", "dW cos min", "run[s]"]
    rows = []
    for record in records:
        values = record_values(record)
        t_conv = " ".join(_fmt(layer.get("t_conv_tau")) for layer in record["layers"])
        summary = record["summary"]
        rows.append(
            [
                record["hash"][:10],
                record["status"],
                *(_fmt(values.get(k)) for k in keys),
                t_conv,
                _fmt(summary.get("x_rel_error_max")),
                _fmt(summary.get("dW_cosine_min")),
                _fmt(record["run_seconds"]),
            ]
        )
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    print("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    for row in rows:
        print("  ".join(str(c).rjust(w) for c, w in zip(row, widths)))
    print(f"{len(records)} points" + (f" (csv: {args.csv})" if args.csv else ""))
    return 0


def _csv_text(records, keys) -> str:
    """One row per point and layer (a point without layers, e.g. diverged, gives one row)."""
    from ..config import SCHEMA
    from .derived import DERIVED_KEYS, derived_values

    layer_keys, summary_keys = [], []
    for record in records:
        for layer in record["layers"]:
            layer_keys += [k for k in layer if k not in layer_keys]
        summary_keys += [k for k in record["summary"] if k not in summary_keys]
    config_keys = [k for k in SCHEMA if k not in keys]
    columns = [
        "hash", "command", "status", "sweep_id", *keys, *[k for k in DERIVED_KEYS if k not in keys], *config_keys,
        *layer_keys, *summary_keys, "compile_seconds", "run_seconds", "point_seconds", "worker",
        "arsim_version", "brian2_version", "git_revision", "created", "arrays", "error",
    ]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for record in records:
        base = {**record["config"], **derived_values(record["config"]), **record["summary"]}
        base.update({k: record[k] for k in ("hash", "command", "status", "sweep_id", "compile_seconds", "run_seconds",
                                            "point_seconds", "worker", "arsim_version", "brian2_version",
                                            "git_revision", "created", "arrays", "error")})
        base = {k: (json.dumps(v) if isinstance(v, list) else v) for k, v in base.items()}
        for layer in record["layers"] or [{}]:
            writer.writerow({**base, **layer})
    return out.getvalue()
