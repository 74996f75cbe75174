"""The record: one SQLite file, shared by every process of a user on a host.

It holds what must be true across processes (resource allocations, port leases) and what
happened (containers, their events, sessions, resource usage samples). WAL mode lets
readers run beside a writer; every write is one ``BEGIN IMMEDIATE`` transaction, so
processes queue on the file's write lock (``busy_timeout``) instead of failing.

A process that writes rows is their *owner*, known by pid and start time (a pid alone
can be reused). Rows whose owner is dead are reclaimed by the next process that looks.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..config import record_file
from ..errors import RecordError
from ..images.cache import cache_dir
from ..runtime.processes import Owner

#: Version of the tables below; a file with another version is refused, not altered.
SCHEMA_VERSION = 1
#: Milliseconds a writer waits for another process's transaction to finish.
BUSY_TIMEOUT_MS = 30_000

SCHEMA = """
CREATE TABLE containers (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    image TEXT NOT NULL,
    state TEXT NOT NULL,
    owner_pid INTEGER NOT NULL,
    owner_started REAL NOT NULL,
    pid INTEGER,
    pid_started REAL,
    run_dir TEXT,
    limits TEXT,
    restarts INTEGER NOT NULL DEFAULT 0,
    returncode INTEGER,
    reason TEXT,
    lost INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX containers_owner ON containers (owner_pid, owner_started);
CREATE TABLE events (
    container_id INTEGER NOT NULL REFERENCES containers (id),
    time REAL NOT NULL,
    event TEXT NOT NULL,
    detail TEXT
);
CREATE TABLE sessions (
    id INTEGER PRIMARY KEY,
    container_id INTEGER REFERENCES containers (id),
    env_id TEXT NOT NULL,
    seed INTEGER,
    image_sha256 TEXT,
    started REAL NOT NULL,
    ended REAL,
    steps INTEGER NOT NULL DEFAULT 0,
    episodes INTEGER NOT NULL DEFAULT 0,
    total_return REAL NOT NULL DEFAULT 0,
    lost INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE usage (
    container_id INTEGER NOT NULL REFERENCES containers (id),
    time REAL NOT NULL,
    cpu_percent REAL NOT NULL,
    rss INTEGER NOT NULL
);
CREATE TABLE allocations (
    id INTEGER PRIMARY KEY,
    owner_pid INTEGER NOT NULL,
    owner_started REAL NOT NULL,
    cpus REAL NOT NULL,
    cpu_ids TEXT NOT NULL,
    memory INTEGER NOT NULL,
    gpus TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE port_leases (
    port INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    owner_pid INTEGER NOT NULL,
    owner_started REAL NOT NULL,
    created REAL NOT NULL
);
"""


def default_path() -> Path:
    """``$REMOTE_RECORD``, else ``record.sqlite`` in the cache folder (see
    :func:`remote.cache.cache_dir`). On a cluster whose cache is on a shared filesystem, set
    ``REMOTE_RECORD`` to node-local storage: the record is per host (its owners are local
    pids, its port leases local ports) and SQLite's WAL mode does not work over NFS."""
    return record_file() or cache_dir() / "record.sqlite"


class Record:
    """A connection to the record file, usable from any thread of this process.

    Args:
        path: the SQLite file; default :func:`default_path`.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=0)
        self._db.row_factory = sqlite3.Row
        self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")
        with self.transaction() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise RecordError(
                    f"{self.path} has record schema {version}, this remote uses {SCHEMA_VERSION}: "
                    "move the file away (or set REMOTE_CACHE) to start a new record"
                )

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, begun IMMEDIATE: it holds the write lock from its start, so
        a read-then-write inside it sees no other process's change in between."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        """Rows of a read-only query, as dicts."""
        with self._lock:
            return [dict(row) for row in self._db.execute(sql, args).fetchall()]

    def event(self, container_id: int, event: str, detail: str | None = None) -> None:
        """Note ``event`` on a container's history."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO events (container_id, time, event, detail) VALUES (?, ?, ?, ?)",
                (container_id, time.time(), event, detail),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()


def reclaim_dead_owners(db: sqlite3.Connection, table: str) -> int:
    """Delete the rows of ``table`` whose owner process is gone; inside a transaction."""
    rows = db.execute(f"SELECT DISTINCT owner_pid, owner_started FROM {table}").fetchall()
    dead = [(pid, started) for pid, started in rows if not Owner(pid, started).alive()]
    for pid, started in dead:
        db.execute(f"DELETE FROM {table} WHERE owner_pid = ? AND owner_started = ?", (pid, started))
    return len(dead)
