"""Parameter sweeps: grid expansion, compile-once scheduling, engines, the results store.

A sweep is a list of points, each a fully resolved config
(`arsim.config.resolve`), run by one *command* of the registry `COMMANDS`:
``relax`` (the relaxation of `arsim relax`), ``train`` (`arsim.experiment.train`,
to pick hyper-parameters) or ``sxl`` (the Song-Xu-Lafferty study, numpy
only, no build). The whole grid is expanded and validated before anything
is built, so an unknown key or a value of the wrong type stops the sweep
with one line and no compilation.

Compile once
    Points are grouped by their build key (the `arsim.brian.network.Topology`
    without the step budget). Each group is compiled once, for the largest
    number of relaxation steps in the group; every point then passes its own
    parameters (weights, tau, dt, its number of steps, ...) as run-time
    arguments of that one binary. Each free worker gets a point of a
    finished build if there is one, else the next build.

Workers
    A build is compiled once into the shared build cache (under its lock);
    every worker process (or thread) then runs from that one directory,
    which is safe because `arsim.brian.devices` gives every run its own
    directory for inputs and results.

Engines
    ``inline`` (``--jobs 1``: the coordinating process runs everything),
    ``local`` (a process pool) and ``dask`` (a dask.distributed cluster, or a
    LocalCluster when no scheduler is given). In every engine only the
    coordinating process writes the results store.

Modules
    `derived` (grid coordinates that are not model keys), `commands` (what a
    point runs), `plan` (grid syntax, expansion, grouping by build),
    `engines` (workers and engines), `run` (the coordinator), `store` (the
    SQLite results store), `select` (``--where`` over stored points), `cli`
    (``arsim sweep`` and ``arsim results``).
"""

from __future__ import annotations

from .commands import COMMANDS, Command
from .derived import DERIVED_KEYS, derived_values
from .engines import check_engine, compile_build, make_engine, run_point
from .plan import SweepPlan, SweepPoint, parse_axis, plan_sweep, split_values
from .run import SweepReport, run_sweep
from .select import parse_where, record_values, select
from .store import Store, point_hash

__all__ = [
    "DERIVED_KEYS", "Command", "COMMANDS", "SweepPoint", "SweepPlan", "SweepReport", "Store", "point_hash",
    "split_values", "parse_axis", "plan_sweep", "derived_values", "record_values", "parse_where", "select",
    "compile_build", "run_point", "check_engine", "make_engine", "run_sweep",
]
