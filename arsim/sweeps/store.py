"""The results store of parameter sweeps: one SQLite file plus npz arrays beside it.

A point of a sweep is identified by `point_hash`, a content hash of the
command, the fully resolved config (which includes the seed) and the arsim
version. The store holds

``points``
    one row per recorded point: the hash, the command, a status (``ok``, or
    ``diverged`` when the simulation produced NaN/Inf), the resolved config
    and the swept values as JSON, the seed, versions and git revision, the
    wall times (compile, simulation run, whole point), the worker, and the
    summary metrics as columns;
``layers``
    the per-layer metrics of each point (one row per layer, a column per
    metric);
``sweeps``
    one row per invocation of ``arsim sweep``: what was run and how long it
    took (compiles, compile time, run time, wall time, overhead per point).

Large arrays go to ``<store stem>.arrays/<hash>.npz`` next to the database.

A point is recorded atomically: its npz file is written first (via a
temporary file and a rename), then its ``points`` row and ``layers`` rows
are inserted in one SQLite transaction. The commit of that transaction is
the moment the point exists; an npz file without a row (the process died in
between) is an orphan that the next run of the point overwrites. Only one
process (the sweep's coordinator) writes; any number may read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import time
from pathlib import Path

import numpy as np

from .. import __version__
from ..config import ConfigError
from ..io import save_npz

__all__ = ["SCHEMA_VERSION", "Store", "point_hash", "canonical_json"]

SCHEMA_VERSION = 1

_CREATE = """
CREATE TABLE IF NOT EXISTS sweeps (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started TEXT NOT NULL,
    finished TEXT,
    argv TEXT,
    command TEXT,
    engine TEXT,
    jobs INTEGER,
    points_total INTEGER,
    points_skipped INTEGER,
    points_run INTEGER,
    points_failed INTEGER,
    builds INTEGER,
    compiles INTEGER,
    compile_seconds REAL,
    run_seconds REAL,
    point_seconds REAL,
    wall_seconds REAL,
    overhead_per_point REAL
);
CREATE TABLE IF NOT EXISTS points (
    hash TEXT PRIMARY KEY,
    command TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    sweep_id INTEGER REFERENCES sweeps(id),
    point TEXT NOT NULL,
    config TEXT NOT NULL,
    seed INTEGER,
    topology TEXT,
    compile_seconds REAL,
    run_seconds REAL,
    point_seconds REAL,
    worker TEXT,
    arsim_version TEXT,
    brian2_version TEXT,
    git_revision TEXT,
    created TEXT,
    arrays TEXT
);
CREATE TABLE IF NOT EXISTS layers (
    hash TEXT NOT NULL REFERENCES points(hash),
    layer INTEGER NOT NULL,
    PRIMARY KEY (hash, layer)
);
"""

#: bookkeeping columns of ``points`` (everything else there is a summary metric)
POINT_COLUMNS = (
    "hash", "command", "status", "error", "sweep_id", "point", "config", "seed", "topology", "compile_seconds",
    "run_seconds", "point_seconds", "worker", "arsim_version", "brian2_version", "git_revision", "created", "arrays",
)


def canonical_json(value) -> str:
    """JSON with sorted keys and no whitespace: equal content gives equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def point_hash(command: str, config: dict, version: str = __version__) -> str:
    """Content hash of one sweep point (20 hex digits).

    Parameters
    ----------
    command : str
        The sweep command (``"relax"``): the same config run by another
        command is another point.
    config : dict
        The fully resolved config (`arsim.config.resolve`), seed included.
    version : str
        arsim version; results of another version are other points.
    """
    payload = canonical_json({"command": command, "config": config, "arsim": version})
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _quote(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise ValueError(f"metric name {name!r}: expected letters, digits and underscores")
    return f'"{name}"'


class Store:
    """A sweep results store (SQLite database + npz directory).

    Parameters
    ----------
    path : path
        The database file, e.g. ``results/depth.sqlite``.
    create : bool
        Create the file if it does not exist; otherwise a missing file is a
        `ConfigError` (a user error: a wrong path).
    """

    def __init__(self, path, create: bool = True):
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise ConfigError(f"{self.path}: results store not found")
        if create and not self.path.parent.is_dir():
            raise ConfigError(f"{self.path}: directory {self.path.parent} does not exist")
        self.arrays_dir = self.path.with_name(self.path.stem + ".arrays")
        # isolation_level=None: transactions are explicit (BEGIN ... COMMIT) below
        self.db = sqlite3.connect(str(self.path), timeout=60.0, isolation_level=None)
        try:
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as err:
            self.db.close()
            raise ConfigError(f"{self.path}: not an arsim results store ({err})") from None
        if tables and "points" not in tables:
            self.db.close()
            raise ConfigError(f"{self.path}: not an arsim results store (no 'points' table)")
        if version > SCHEMA_VERSION:
            self.db.close()
            raise ConfigError(f"{self.path}: store schema {version} is newer than this arsim ({SCHEMA_VERSION})")
        if create and "points" not in tables:
            self.db.executescript("BEGIN;" + _CREATE + f"PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")

    # -- context manager -------------------------------------------------
    def close(self) -> None:
        """Close the database connection."""
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- writing ---------------------------------------------------------
    def completed(self) -> set:
        """Hashes of every recorded point."""
        return {row[0] for row in self.db.execute("SELECT hash FROM points")}

    def _columns(self, table: str) -> set:
        return {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}

    def _ensure_columns(self, table: str, names) -> None:
        # metric columns are added on first use, so a new command (or a new
        # metric) needs no schema migration; called inside the transaction
        missing = [n for n in names if n not in self._columns(table)]
        for name in missing:
            self.db.execute(f"ALTER TABLE {table} ADD COLUMN {_quote(name)} REAL")

    def record(self, entry: dict, layers: list, arrays: dict | None = None) -> bool:
        """Record one point atomically.

        Parameters
        ----------
        entry : dict
            ``points`` values: the keys of `POINT_COLUMNS` (``hash``,
            ``command``, ``status``, ``config`` and ``point`` required; the
            config and point as dicts) plus ``summary``, a dict of numeric
            summary metrics stored as columns.
        layers : list of dict
            One dict per layer with ``layer`` and numeric metrics (other
            values, e.g. the role string, are stored as text).
        arrays : dict, optional
            Arrays saved to ``<hash>.npz`` before the rows are committed.

        Returns
        -------
        bool
            False if the point was already recorded (nothing is changed).
        """
        digest = entry["hash"]
        if self.db.execute("SELECT 1 FROM points WHERE hash = ?", (digest,)).fetchone():
            return False
        relative = None
        if arrays is not None:
            # written before the row: a committed row always has its file
            target = self.arrays_dir / f"{digest}.npz"
            save_npz(target, arrays)
            relative = str(target.relative_to(self.path.parent))
        row = {key: entry.get(key) for key in POINT_COLUMNS}
        # key order kept (the schema's, the grid's) for reading; the hash does not depend on it
        row["config"] = json.dumps(entry["config"], allow_nan=False)
        row["point"] = json.dumps(entry["point"], allow_nan=False)
        row["arrays"] = relative
        row["created"] = row["created"] or _utc_now()
        summary = {k: _as_real(v) for k, v in (entry.get("summary") or {}).items()}
        self.db.execute("BEGIN IMMEDIATE")
        try:
            if self.db.execute("SELECT 1 FROM points WHERE hash = ?", (digest,)).fetchone():
                self.db.execute("ROLLBACK")
                return False  # another coordinator recorded it meanwhile
            self._ensure_columns("points", summary)
            names = list(row) + list(summary)
            self.db.execute(
                f"INSERT INTO points ({', '.join(_quote(n) for n in names)}) VALUES ({', '.join('?' * len(names))})",
                [*row.values(), *summary.values()],
            )
            for layer in layers:
                values = {"hash": digest, **{k: _as_db_value(v) for k, v in layer.items()}}
                self._ensure_layer_columns(values)
                self.db.execute(
                    f"INSERT INTO layers ({', '.join(_quote(n) for n in values)}) VALUES ({', '.join('?' * len(values))})",
                    list(values.values()),
                )
            self.db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
            raise
        return True

    def _ensure_layer_columns(self, values: dict) -> None:
        existing = self._columns("layers")
        for name, value in values.items():
            if name not in existing:
                kind = "TEXT" if isinstance(value, str) else ("INTEGER" if isinstance(value, int) else "REAL")
                self.db.execute(f"ALTER TABLE layers ADD COLUMN {_quote(name)} {kind}")

    def begin_sweep(self, info: dict) -> int:
        """Insert a ``sweeps`` row for a starting sweep; return its id."""
        info = {"started": _utc_now(), **info}
        self.db.execute("BEGIN IMMEDIATE")
        cursor = self.db.execute(
            f"INSERT INTO sweeps ({', '.join(info)}) VALUES ({', '.join('?' * len(info))})", list(info.values())
        )
        self.db.execute("COMMIT")
        return cursor.lastrowid

    def end_sweep(self, sweep_id: int, info: dict) -> None:
        """Fill in the totals of a finished sweep."""
        info = {"finished": _utc_now(), **{k: _as_db_value(v) for k, v in info.items()}}
        self.db.execute("BEGIN IMMEDIATE")
        self.db.execute(f"UPDATE sweeps SET {', '.join(f'{k} = ?' for k in info)} WHERE id = ?", [*info.values(), sweep_id])
        self.db.execute("COMMIT")

    # -- reading ---------------------------------------------------------
    def records(self) -> list:
        """Every recorded point as a dict, in recording order.

        Keys: the `POINT_COLUMNS` (``config`` and ``point`` decoded from
        JSON), ``summary`` (the summary metric columns) and ``layers`` (list
        of per-layer dicts ordered by layer). SQL NULL metrics read as NaN.
        """
        point_cols = [r[1] for r in self.db.execute("PRAGMA table_info(points)")]
        layer_cols = [r[1] for r in self.db.execute("PRAGMA table_info(layers)")]
        by_hash = {}
        for values in self.db.execute(f"SELECT {', '.join(_quote(c) for c in point_cols)} FROM points ORDER BY rowid"):
            row = dict(zip(point_cols, values))
            record = {key: row[key] for key in POINT_COLUMNS}
            record["config"] = json.loads(row["config"])
            record["point"] = json.loads(row["point"])
            record["summary"] = {k: _from_real(v) for k, v in row.items() if k not in POINT_COLUMNS}
            record["layers"] = []
            by_hash[row["hash"]] = record
        for values in self.db.execute(
            f"SELECT {', '.join(_quote(c) for c in layer_cols)} FROM layers ORDER BY hash, layer"
        ):
            layer = {k: (_from_real(v) if k not in ("hash", "layer") else v) for k, v in zip(layer_cols, values)}
            digest = layer.pop("hash")
            layer["layer"] = int(layer["layer"])
            by_hash[digest]["layers"].append(layer)
        return list(by_hash.values())

    def sweeps(self) -> list:
        """Every ``sweeps`` row as a dict."""
        cursor = self.db.execute("SELECT * FROM sweeps ORDER BY id")
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, values)) for values in cursor]

    def load_arrays(self, record: dict) -> dict:
        """The npz arrays of a record (empty dict if it was stored without)."""
        if not record.get("arrays"):
            return {}
        with np.load(self.path.parent / record["arrays"]) as data:
            return {key: data[key] for key in data.files}


def _as_real(value):
    if value is None:
        return None
    return float(value)


def _as_db_value(value):
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    return value


def _from_real(value):
    # SQLite stores NaN as NULL; metrics come back as NaN so arithmetic works
    return float("nan") if value is None else value
