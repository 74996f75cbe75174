"""The record: one SQLite file, shared by every process of a user on a host.

It holds what must be true across processes (resource allocations, port leases) and what
happened (containers, their events, sessions, resource usage samples). WAL mode lets
readers run beside a writer; every write is one ``BEGIN IMMEDIATE`` transaction, so
processes queue on the file's write lock (``busy_timeout``) instead of failing.

A process that writes rows is their *owner*, known by pid and start time (a pid alone
can be reused). Rows whose owner is dead are reclaimed by the next process that looks.

This is the only module of the package that speaks SQL: the rest reads and writes through
the methods of :class:`Record`. The tables' version is SQLite's ``PRAGMA user_version``; a
file of an older version is upgraded by :data:`MIGRATIONS` when it is opened.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ..config import record_file
from ..errors import RecordError, UnknownContainer
from ..images.cache import cache_dir
from ..runtime.processes import Owner

#: Milliseconds a writer waits for another process's transaction to finish.
BUSY_TIMEOUT_MS = 30_000

#: The tables of schema version 1 (migration 0 → 1 creates them).
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


#: Schema migrations: ``MIGRATIONS[n]`` takes a file from version ``n`` to ``n + 1``. A file
#: is brought to :data:`SCHEMA_VERSION` in one transaction when it is opened; append to the
#: list (never edit an entry) to change the tables.
MIGRATIONS: list[list[str]] = [
    [statement.strip() for statement in SCHEMA.split(";") if statement.strip()],
    [  # 2: indexes for the queries that filter on a container (and the latest usage sample)
        "CREATE INDEX events_container ON events (container_id)",
        "CREATE INDEX usage_container_time ON usage (container_id, time)",
        "CREATE INDEX sessions_container ON sessions (container_id)",
    ],
]
#: Version of the tables (SQLite's ``PRAGMA user_version``) this code reads and writes.
SCHEMA_VERSION = len(MIGRATIONS)
#: Tables whose rows have an owner process and are reclaimed once it is gone.
OWNED_TABLES = ("allocations", "port_leases")
#: Container states with no process left: the orphan sweep passes them by.
ENDED_STATES = ("STOPPED", "ERROR", "DELETED")
#: Container states in which it has a process that :meth:`Record.find_running` may stop.
RUNNING_STATES = ("STARTING", "RUNNING", "PAUSED")
#: What ``remote ps`` shows unless asked for everything.
SHOWN_STATES = ("CREATED", "STARTING", "RUNNING", "PAUSED")

Row = dict[str, Any]


def default_path() -> Path:
    """``$REMOTE_RECORD``, else ``record.sqlite`` in the cache folder (see
    :func:`remote.cache.cache_dir`). On a cluster whose cache is on a shared filesystem, set
    ``REMOTE_RECORD`` to node-local storage: the record is per host (its owners are local
    pids, its port leases local ports) and SQLite's WAL mode does not work over NFS."""
    return record_file() or cache_dir() / "record.sqlite"


def _placeholders(values: Sequence[object]) -> str:
    return ", ".join("?" * len(values))


class Record:
    """A connection to the record file, usable from any thread of this process.

    Each method below is one transaction; called inside :meth:`transaction` they join it,
    so a read and the write that depends on it can be made atomic across processes.

    Args:
        path: the SQLite file; default :func:`default_path`. An older file is migrated.

    Raises:
        RecordError: the file has a newer schema than this code knows.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._depth = 0  # transactions open on the thread holding the lock (nested: savepoints)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=0)
        self._db.row_factory = sqlite3.Row
        self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")
        with self.transaction() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RecordError(
                    f"{self.path} has record schema {version}, newer than this remote's {SCHEMA_VERSION}: "
                    "upgrade remote, or move the file away (or set REMOTE_CACHE) to start a new record"
                )
            for migration in MIGRATIONS[max(version, 0) :]:
                for statement in migration:
                    db.execute(statement)
            if version != SCHEMA_VERSION:
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # -- transactions and reads ----------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, begun IMMEDIATE: it holds the write lock from its start, so
        a read-then-write inside it sees no other process's change in between. Inside
        another one (on this thread) it is a savepoint of that one. Outside this module,
        group the methods of :class:`Record` in it rather than using the connection."""
        with self._lock:
            nested = self._depth > 0
            self._db.execute("SAVEPOINT nested" if nested else "BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield self._db
            except BaseException:
                if nested:  # undo this part only; the enclosing transaction goes on
                    self._db.execute("ROLLBACK TO nested")
                    self._db.execute("RELEASE nested")
                else:
                    self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("RELEASE nested" if nested else "COMMIT")
            finally:
                self._depth -= 1

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[Row]:
        """Rows of a read-only query, as dicts (for tests and debugging: the methods below
        are the record's interface)."""
        with self._lock:
            return [dict(row) for row in self._db.execute(sql, args).fetchall()]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- containers ----------------------------------------------------------------------

    def add_container(self, name: str, image: str, state: str, owner: Owner) -> int:
        """Put a new container on the record, owned by ``owner``; returns its id."""
        now = time.time()
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT INTO containers (name, image, state, owner_pid, owner_started, created, updated) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (name, image, state, owner.pid, owner.started, now, now),
            )
        return cursor.lastrowid  # type: ignore[return-value]

    def update_container(
        self,
        container_id: int,
        state: str,
        *,
        detail: str | None = None,
        pid: int | None = None,
        pid_started: float | None = None,
        run_dir: str | None = None,
        limits: str | None = None,
        restarts: int = 0,
        returncode: int | None = None,
        reason: str | None = None,
    ) -> None:
        """Write a container's whole row (its ``state`` and what goes with it) and note the
        state as an event with ``detail``, in one transaction."""
        with self.transaction() as db:
            db.execute(
                "UPDATE containers SET state = ?, pid = ?, pid_started = ?, run_dir = ?, limits = ?, "
                "restarts = ?, returncode = ?, reason = ?, updated = ? WHERE id = ?",
                (
                    state,
                    pid,
                    pid_started,
                    run_dir,
                    limits,
                    restarts,
                    returncode,
                    reason,
                    time.time(),
                    container_id,
                ),
            )
            self.add_event(container_id, state, detail)

    def latest_container_id(self, name: str, owner: Owner) -> int:
        """Id of the newest container called ``name`` that ``owner`` put on the record.

        Raises:
            UnknownContainer: it has none of that name.
        """
        rows = self.query(
            "SELECT id FROM containers WHERE name = ? AND owner_pid = ? AND owner_started = ? "
            "ORDER BY id DESC LIMIT 1",
            (name, owner.pid, owner.started),
        )
        if not rows:
            raise UnknownContainer(f"no container named {name!r} of process {owner.pid} on {self.path}")
        return rows[0]["id"]

    def find_running(self, target: str) -> list[Row]:
        """Containers not lost and in a state with a process, called ``target`` or (if it is
        a number) whose container process has that pid; newest first. Rows: ``id, name,
        state, pid, pid_started, run_dir``."""
        return self.query(
            "SELECT id, name, state, pid, pid_started, run_dir FROM containers WHERE lost = 0 AND "
            f"state IN ({_placeholders(RUNNING_STATES)}) AND (name = ? OR pid = ?) ORDER BY id DESC",
            (*RUNNING_STATES, target, int(target) if target.isdigit() else -1),
        )

    def live_containers(self) -> list[Row]:
        """Containers not lost and not ended, for the orphan sweep (call it inside
        :meth:`transaction` with :meth:`mark_lost`). Rows: ``id, name, owner_pid,
        owner_started, pid, pid_started, run_dir``."""
        return self.query(
            "SELECT id, name, owner_pid, owner_started, pid, pid_started, run_dir FROM containers "
            f"WHERE lost = 0 AND state NOT IN ({_placeholders(ENDED_STATES)})",
            ENDED_STATES,
        )

    def mark_lost(self, container_id: int, reason: str) -> None:
        """A container whose host process died: STOPPED and lost, with a LOST event, and its
        open sessions ended and lost."""
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "UPDATE containers SET state = 'STOPPED', lost = 1, reason = ?, updated = ? WHERE id = ?",
                (reason, now, container_id),
            )
            self.add_event(container_id, "LOST", reason, at=now)
            db.execute(
                "UPDATE sessions SET lost = 1, ended = ? WHERE container_id = ? AND ended IS NULL",
                (now, container_id),
            )

    def containers_with_usage(self, everything: bool) -> list[Row]:
        """Every column of the containers (all, or those not lost in a state ``remote ps``
        shows), with ``sampled_cpu`` and ``sampled_rss`` of their latest usage sample; by id."""
        where, args = "", ()
        if not everything:
            where, args = f"WHERE lost = 0 AND state IN ({_placeholders(SHOWN_STATES)})", SHOWN_STATES
        return self.query(
            "SELECT c.*, "
            "(SELECT cpu_percent FROM usage u WHERE u.container_id = c.id ORDER BY time DESC LIMIT 1) "
            "AS sampled_cpu, "
            "(SELECT rss FROM usage u WHERE u.container_id = c.id ORDER BY time DESC LIMIT 1) AS sampled_rss "
            f"FROM containers c {where} ORDER BY c.id",
            args,
        )

    # -- events --------------------------------------------------------------------------

    def add_event(
        self, container_id: int, event: str, detail: str | None = None, *, at: float | None = None
    ) -> None:
        """Note ``event`` (with ``detail``) on a container's history, at time ``at`` (now)."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO events (container_id, time, event, detail) VALUES (?, ?, ?, ?)",
                (container_id, time.time() if at is None else at, event, detail),
            )

    def last_event(self, container_id: int) -> Row | None:
        """The latest ``event, detail`` noted on a container, if any."""
        rows = self.query(
            "SELECT event, detail FROM events WHERE container_id = ? ORDER BY rowid DESC LIMIT 1",
            (container_id,),
        )
        return rows[0] if rows else None

    # -- sessions and usage --------------------------------------------------------------

    def open_session(
        self, container_id: int, env_id: str, image_sha256: str | None, seed: int | None = None
    ) -> int:
        """Start a session (an env, or a :meth:`remote.RemoteRunner.run`) in a container;
        returns its id."""
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT INTO sessions (container_id, env_id, seed, image_sha256, started) "
                "VALUES (?, ?, ?, ?, ?)",
                (container_id, env_id, seed, image_sha256, time.time()),
            )
        return cursor.lastrowid  # type: ignore[return-value]

    def end_session(
        self, session_id: int, *, seed: int | None, steps: int, episodes: int, total_return: float
    ) -> None:
        """End a session (now) with what it did."""
        with self.transaction() as db:
            db.execute(
                "UPDATE sessions SET ended = ?, seed = ?, steps = ?, episodes = ?, total_return = ? "
                "WHERE id = ?",
                (time.time(), seed, steps, episodes, total_return, session_id),
            )

    def sessions_of(self, container_ids: Sequence[int], open_only: bool) -> list[Row]:
        """Sessions of these containers (only those not ended if ``open_only``), with the
        container's ``name`` as ``container``; by id."""
        return self.query(
            "SELECT s.*, c.name AS container FROM sessions s JOIN containers c ON c.id = s.container_id "
            f"WHERE s.container_id IN ({_placeholders(container_ids)})"
            + (" AND s.ended IS NULL" if open_only else "")
            + " ORDER BY s.id",
            tuple(container_ids),
        )

    def add_usage(self, samples: Iterable[tuple[int, float, float, int]]) -> None:
        """Usage samples ``(container_id, time, cpu_percent, rss)``, in one transaction."""
        with self.transaction() as db:
            db.executemany(
                "INSERT INTO usage (container_id, time, cpu_percent, rss) VALUES (?, ?, ?, ?)", samples
            )

    # -- resources: allocations and port leases ------------------------------------------

    def reclaim_dead_owners(self, table: str) -> int:
        """Delete the rows of ``table`` (one of :data:`OWNED_TABLES`) whose owner process is
        gone; returns how many owners were dead."""
        if table not in OWNED_TABLES:
            raise ValueError(f"table {table!r} has no owned rows; expected one of {', '.join(OWNED_TABLES)}")
        with self.transaction() as db:
            rows = db.execute(f"SELECT DISTINCT owner_pid, owner_started FROM {table}").fetchall()
            dead = [(pid, started) for pid, started in rows if not Owner(pid, started).alive()]
            for pid, started in dead:
                db.execute(f"DELETE FROM {table} WHERE owner_pid = ? AND owner_started = ?", (pid, started))
        return len(dead)

    def allocations(self) -> list[Row]:
        """Every allocation: ``id, cpus, cpu_ids`` (a list), ``memory, gpus`` (a list)."""
        return [
            {**row, "cpu_ids": json.loads(row["cpu_ids"]), "gpus": json.loads(row["gpus"])}
            for row in self.query("SELECT id, cpus, cpu_ids, memory, gpus FROM allocations")
        ]

    def add_allocation(
        self, owner: Owner, cpus: float, cpu_ids: Sequence[int], memory: int, gpus: Sequence[str]
    ) -> int:
        """Note resources promised to ``owner``; returns the allocation's id."""
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT INTO allocations (owner_pid, owner_started, cpus, cpu_ids, memory, gpus, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    owner.pid,
                    owner.started,
                    cpus,
                    json.dumps(list(cpu_ids)),
                    memory,
                    json.dumps(list(gpus)),
                    time.time(),
                ),
            )
        return cursor.lastrowid  # type: ignore[return-value]

    def remove_allocation(self, allocation_id: int) -> None:
        """Forget an allocation (nothing happens if it is gone already)."""
        with self.transaction() as db:
            db.execute("DELETE FROM allocations WHERE id = ?", (allocation_id,))

    def leased_ports(self) -> set[int]:
        """The ports leased now."""
        return {row["port"] for row in self.query("SELECT port FROM port_leases")}

    def add_leases(self, ports: Iterable[int], name: str, owner: Owner) -> None:
        """Lease ``ports`` to ``name``, owned by ``owner``, in one transaction."""
        now = time.time()
        with self.transaction() as db:
            db.executemany(
                "INSERT INTO port_leases (port, name, owner_pid, owner_started, created) "
                "VALUES (?, ?, ?, ?, ?)",
                [(port, name, owner.pid, owner.started, now) for port in ports],
            )

    def remove_leases(self, leases: Iterable[tuple[int, str]]) -> None:
        """End the leases ``(port, name)`` (a port leased to another name stays leased)."""
        with self.transaction() as db:
            db.executemany("DELETE FROM port_leases WHERE port = ? AND name = ?", list(leases))
