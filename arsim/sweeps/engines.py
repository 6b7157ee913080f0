"""Where points run: the worker side (private runners of a shared build, `run_point`) and the engines.

``inline`` (the coordinating process), ``local`` (a process pool) and
``dask`` (a dask.distributed cluster or a LocalCluster).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import os
import signal
import socket
import threading
import time

from ..config import ConfigError
from ..spec import Experiment
from .commands import COMMANDS

__all__ = ["compile_build", "run_point", "InlineEngine", "LocalEngine", "DaskEngine", "default_jobs", "check_engine", "make_engine"]


_LOCAL = threading.local()


def _worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{threading.get_ident()}"


def _private_runner(topology, build_root=None):
    """This thread's runner for ``topology``, compiling the shared build if needed.

    Concurrent runs of one build are safe: `arsim.brian.devices.StandaloneRunner`
    gives every run its own directory for inputs and results.

    Returns
    -------
    runner : StandaloneRunner
    compile_seconds : float
        Time this call spent compiling (0 when the build existed).
    """
    from ..brian.devices import StandaloneRunner

    runners = _LOCAL.__dict__.setdefault("runners", {})
    key = (topology, str(build_root))
    if key in runners:
        return runners[key], 0.0
    runner = StandaloneRunner(topology, cache_dir=build_root)
    runners[key] = runner
    return runner, runner.compile_seconds


def compile_build(topology, build_root=None) -> dict:
    """Ensure the shared build of ``topology`` exists (compiling it if needed).

    Returns a dict with ``compiled`` (bool), ``compile_seconds`` and ``worker``.
    """
    from ..brian.devices import StandaloneRunner

    runner = StandaloneRunner(topology, cache_dir=build_root)
    return {
        "compiled": runner.compile_seconds > 0,
        "compile_seconds": runner.compile_seconds,
        "directory": str(runner.directory),
        "worker": _worker_name(),
    }


def run_point(command: str, config: dict, topology, build_root=None, want_arrays: bool = True, expected_build: str | None = None) -> dict:
    """Run one point on a worker; the coordinator records the returned dict.

    ``expected_build`` is the build directory name the coordinator's compile
    task produced; a worker whose arsim or Brian2 code gives another name
    (sources edited during the sweep, a cluster node with another install)
    raises instead of mixing code versions in one sweep.

    Returns
    -------
    dict
        ``status`` (``ok`` or ``diverged``), ``error``, ``layers``,
        ``summary``, ``arrays``, ``run_seconds`` (simulation),
        ``point_seconds`` (the whole call), ``compile_seconds`` (if this call
        had to compile), ``topology`` (build directory name) and ``worker``.
    """
    started = time.perf_counter()
    if expected_build is not None and topology is not None:
        from ..brian.devices import _topology_hash

        if _topology_hash(topology) != expected_build:
            raise RuntimeError(
                f"this worker's arsim/Brian2 code differs from the code that compiled build {expected_build}"
                " (sources edited during the sweep, or another installation); rerun the sweep"
            )
    # topology None: a point without a build (numpy only)
    runner, compiled = _private_runner(topology, build_root) if topology is not None else (None, 0.0)
    try:
        out = COMMANDS[command].run(Experiment.from_config(config), runner, want_arrays)
        out.update(status="ok", error=None)
    except FloatingPointError as err:
        # a diverging point is a result of the sweep (e.g. dt/tau beyond the
        # Euler stability limit), not a failure to retry
        out = {"status": "diverged", "error": str(err), "layers": [], "summary": {}, "arrays": None, "run_seconds": float("nan")}
    out.update(
        point_seconds=time.perf_counter() - started,
        compile_seconds=compiled + out.pop("compile_seconds", 0.0),
        topology=None if runner is None else runner.directory.name,
        worker=_worker_name(),
    )
    return out


# ---------------------------------------------------------------------------
# engines


class InlineEngine:
    """Run tasks in the coordinating process, one at a time, when waited for."""

    name = "inline"

    def __init__(self):
        self.jobs = 1
        self._queue = collections.deque()

    def submit(self, fn, *args):
        future = concurrent.futures.Future()
        self._queue.append((future, fn, args))
        return future

    def capacity(self) -> int:
        return 1

    def wait_first(self, futures) -> set:
        # tasks run in submission order, so points are recorded as they finish
        future, fn, args = self._queue.popleft()
        try:
            future.set_result(fn(*args))
        except Exception as err:  # handed to the coordinator like a worker's error
            future.set_exception(err)
        return {future}

    def close(self):
        self._queue.clear()


def _init_worker(parent: int):
    # Ctrl-C goes to the coordinator, which cancels queued points and lets
    # running ones finish, instead of every worker printing a traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # a pool worker holds both ends of its task queue, so it never sees the
    # coordinator die (kill -9) and would wait forever: watch the parent
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _exit_with_parent(parent: int):
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


class LocalEngine:
    """A process pool of ``jobs`` workers (spawned: no fork of a threaded parent)."""

    name = "local"

    def __init__(self, jobs: int):
        import multiprocessing

        self.jobs = jobs
        self.pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
            initargs=(os.getpid(),),
        )

    def submit(self, fn, *args):
        return self.pool.submit(fn, *args)

    def capacity(self) -> int:
        return self.jobs

    def wait_first(self, futures) -> set:
        return concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_COMPLETED).done

    def close(self):
        self.pool.shutdown(wait=True, cancel_futures=True)


class DaskEngine:
    """Tasks on a dask.distributed cluster (``scheduler`` address) or a LocalCluster of ``jobs`` workers."""

    name = "dask"

    def __init__(self, jobs: int, scheduler: str | None = None):
        try:
            import logging

            from distributed import Client, LocalCluster
        except ImportError:
            raise ConfigError("--engine dask: dask.distributed is not installed; pip install 'arsim[dask]'") from None
        self.cluster = None
        if scheduler:
            try:
                self.client = Client(scheduler, timeout=30)
            except (OSError, TimeoutError) as err:
                raise ConfigError(f"--scheduler {scheduler}: cannot connect ({err})") from None
            self.jobs = max(1, sum(w.get("nthreads", 1) for w in self.client.scheduler_info()["workers"].values()))
        else:
            self.cluster = LocalCluster(
                n_workers=jobs, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.ERROR
            )
            self.client = Client(self.cluster)
            self.jobs = jobs

    def submit(self, fn, *args):
        return self.client.submit(fn, *args, pure=False)

    def capacity(self) -> int:
        """Threads of the cluster now: workers of a batch system (SLURM) join and leave."""
        if self.cluster is None:
            with contextlib.suppress(Exception):
                self.jobs = max(1, sum(self.client.nthreads().values()))
        return self.jobs

    def wait_first(self, futures) -> set:
        from distributed import wait

        try:
            # wake up now and then to hand tasks to workers that joined meanwhile
            return set(wait(list(futures), timeout=5, return_when="FIRST_COMPLETED").done)
        except TimeoutError:
            return set()

    def close(self):
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def default_jobs() -> int:
    """The number of CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def check_engine(engine: str = "local", jobs: int | None = None, scheduler: str | None = None) -> int:
    """Validate engine options (before anything is created); return the number of jobs."""
    jobs = default_jobs() if jobs is None else jobs
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs}: expected an integer >= 1")
    if scheduler and engine != "dask":
        raise ConfigError("--scheduler: only with --engine dask")
    if engine not in ("local", "dask"):
        raise ConfigError(f"--engine {engine}: expected 'local' or 'dask'")
    if engine == "dask":
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise ConfigError("--engine dask: dask.distributed is not installed; pip install 'arsim[dask]'") from None
    return jobs


def make_engine(engine: str = "local", jobs: int | None = None, scheduler: str | None = None):
    """An engine by name: ``local`` (``inline`` when ``jobs == 1``) or ``dask``."""
    jobs = check_engine(engine, jobs, scheduler)
    if engine == "local":
        return InlineEngine() if jobs == 1 else LocalEngine(jobs)
    return DaskEngine(jobs, scheduler)
