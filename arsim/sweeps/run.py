"""The sweep coordinator: schedules builds and points on an engine and records every result in the store."""

from __future__ import annotations

import collections
import contextlib
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from .engines import compile_build, run_point
from .plan import SweepPlan
from .store import Store

__all__ = ["SweepReport", "run_sweep"]


@dataclass
class SweepReport:
    """What a sweep did and what it cost (times in seconds).

    ``overhead_per_point`` is ``(jobs * wall - compile - simulation) / points
    run``: the worker time per point spent on anything but compiling and
    simulating (drawing the problem, the oracle, metrics, transfers,
    recording, scheduling, idle workers). With ``--jobs 1`` it is the wall
    time beyond compile and simulation, per point.
    """

    points_total: int = 0
    points_skipped: int = 0
    points_run: int = 0
    points_failed: int = 0
    duplicates: int = 0
    builds: int = 0
    compiles: int = 0
    compile_seconds: float = 0.0
    run_seconds: float = 0.0
    point_seconds: float = 0.0
    record_seconds: float = 0.0
    wall_seconds: float = 0.0
    jobs: int = 1
    engine: str = "inline"
    failures: list = field(default_factory=list)

    @property
    def overhead_per_point(self) -> float:
        if not self.points_run:
            return float("nan")
        return (self.jobs * self.wall_seconds - self.compile_seconds - self.run_seconds) / self.points_run

    def summary(self) -> str:
        """A few lines for the terminal."""
        lines = [
            f"sweep: {self.points_total} points: {self.points_run} run, {self.points_skipped} already in the store,"
            f" {self.points_failed} failed" + (f" ({self.duplicates} duplicate points merged)" if self.duplicates else ""),
            f"builds: {self.builds} network shapes, {self.compiles} compiled ({self.compile_seconds:.1f} s)",
            f"simulation: {self.run_seconds:.2f} s in {self.points_run} runs;"
            f" wall {self.wall_seconds:.1f} s on {self.jobs} {self.engine} job(s)",
        ]
        if self.points_run:
            lines.append(
                f"overhead: {self.overhead_per_point:.3f} s per point (jobs x wall - compile - simulation, per point run);"
                f" in the worker beyond the simulation {(self.point_seconds - self.run_seconds) / self.points_run:.3f} s,"
                f" recording {self.record_seconds / self.points_run:.3f} s"
            )
        for values, message in self.failures[:10]:
            lines.append(f"failed: {values}: {message}")
        return "\n".join(lines)


def run_sweep(
    plan: SweepPlan,
    store: Store,
    engine,
    build_root=None,
    want_arrays: bool = True,
    progress: bool = True,
    argv: str | None = None,
) -> SweepReport:
    """Run the points of ``plan`` that ``store`` does not hold yet and record them.

    The engine gets one task per free worker: a point of a finished build
    when there is one, else the next build (one per network shape), so
    points run while other shapes compile. Each finished point is recorded
    at once (npz first, then the rows in one transaction), so a killed sweep
    loses at most the points in flight.

    Parameters
    ----------
    plan : SweepPlan
        Validated points (`plan_sweep`).
    store : Store
        The results store (written only here).
    engine : InlineEngine, LocalEngine or DaskEngine
        Where builds and points run (`make_engine`); not closed here.
    build_root : path, optional
        Build cache (default: each worker's ``$ARSIM_BUILD_DIR`` or
        ``~/.cache/arsim/builds``); must be visible to the workers.
    want_arrays : bool
        Store each point's arrays in an npz file.
    progress : bool
        Show a tqdm progress bar (points done/total, ETA) on stderr.
    argv : str, optional
        The command line, kept in the ``sweeps`` table.
    """
    import brian2
    from tqdm import tqdm
    from ..io import provenance

    started = time.perf_counter()
    report = SweepReport(engine=engine.name, jobs=engine.jobs, duplicates=plan.duplicates)
    done = store.completed()
    pending = [p for p in plan.points if p.hash not in done]
    report.points_total = len(plan.points)
    report.points_skipped = report.points_total - len(pending)
    groups = plan.groups(pending)
    unbuilt = groups.pop(None, [])  # points without a build run at once
    report.builds = len(groups)
    git_revision = provenance(None)["git_revision"] if pending else None
    build_root = None if build_root is None else str(Path(build_root).resolve())
    sweep_id = store.begin_sweep(
        {"argv": argv, "command": plan.command, "engine": engine.name, "jobs": engine.jobs, "points_total": report.points_total}
    )
    bar = tqdm(total=report.points_total, initial=report.points_skipped, unit="point", desc="sweep", disable=not progress, file=sys.stderr)
    # Tasks are handed to the engine one per free worker, points of finished
    # builds before further builds: results (and a useful ETA) arrive while
    # other shapes compile, instead of every point queueing behind every build.
    to_compile = collections.deque(groups)
    ready = collections.deque((point, None, None) for point in unbuilt)  # (point, topology, build name)
    compiling, running = {}, {}
    builds_done = 0

    def _postfix():
        bar.set_postfix_str(f"builds {builds_done}/{len(groups)}", refresh=True)

    def _fill():
        capacity = engine.capacity()
        report.jobs = max(report.jobs, capacity)
        while len(compiling) + len(running) < capacity and (ready or to_compile):
            if ready:
                point, topo, name = ready.popleft()
                future = engine.submit(run_point, plan.command, point.config, topo, build_root, want_arrays, name)
                running[future] = point
            else:
                topo = to_compile.popleft()
                compiling[engine.submit(compile_build, topo, build_root)] = topo

    try:
        if groups:
            _postfix()
        _fill()
        while compiling or running:
            for future in engine.wait_first(set(compiling) | set(running)):
                if future in compiling:
                    topo = compiling.pop(future)
                    builds_done += 1
                    _postfix()
                    try:
                        info = future.result()
                    except Exception as err:
                        for point in groups[topo]:
                            report.failures.append((point.values, f"build failed: {_one_line(err)}"))
                        report.points_failed += len(groups[topo])
                        continue
                    report.compiles += int(info["compiled"])
                    report.compile_seconds += info["compile_seconds"]
                    ready.extend((point, topo, Path(info["directory"]).name) for point in groups[topo])
                    continue
                point = running.pop(future)
                try:
                    out = future.result()
                except Exception as err:
                    report.failures.append((point.values, _one_line(err)))
                    report.points_failed += 1
                    continue
                if out["compile_seconds"]:
                    # a worker that cannot see the coordinator's build (no
                    # shared file system) compiled its own copy
                    report.compiles += 1
                    report.compile_seconds += out["compile_seconds"]
                record_started = time.perf_counter()
                store.record(
                    {
                        "hash": point.hash,
                        "command": plan.command,
                        "status": out["status"],
                        "error": out["error"],
                        "sweep_id": sweep_id,
                        "point": point.values,
                        "config": point.config,
                        "seed": point.config.get("seed"),
                        "topology": out["topology"],
                        "compile_seconds": out["compile_seconds"],
                        "run_seconds": out["run_seconds"],
                        "point_seconds": out["point_seconds"],
                        "worker": out["worker"],
                        "arsim_version": __version__,
                        "brian2_version": brian2.__version__,
                        "git_revision": git_revision,
                        "summary": out["summary"],
                    },
                    out["layers"],
                    out["arrays"],
                )
                report.record_seconds += time.perf_counter() - record_started
                report.points_run += 1
                if math.isfinite(out["run_seconds"]):
                    report.run_seconds += out["run_seconds"]
                report.point_seconds += out["point_seconds"]
                bar.update(1)
            _fill()
    finally:
        bar.close()
        report.wall_seconds = time.perf_counter() - started
        with contextlib.suppress(Exception):
            store.end_sweep(
                sweep_id,
                {
                    "jobs": report.jobs,
                    "points_skipped": report.points_skipped,
                    "points_run": report.points_run,
                    "points_failed": report.points_failed,
                    "builds": report.builds,
                    "compiles": report.compiles,
                    "compile_seconds": report.compile_seconds,
                    "run_seconds": report.run_seconds,
                    "point_seconds": report.point_seconds,
                    "wall_seconds": report.wall_seconds,
                    "overhead_per_point": report.overhead_per_point if report.points_run else None,
                },
            )
    return report


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:500]}"
