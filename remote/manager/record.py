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
from collections.abc import Iterable, Iterator, Mapping, Sequence
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
    [  # 3: each container's output log; what each session was (agent, config) and how it ended
        "ALTER TABLE containers ADD COLUMN log TEXT",
        "ALTER TABLE sessions ADD COLUMN agent TEXT",
        "ALTER TABLE sessions ADD COLUMN config TEXT",
        "ALTER TABLE sessions ADD COLUMN status TEXT",
        "ALTER TABLE sessions ADD COLUMN final_return REAL",
        "ALTER TABLE sessions ADD COLUMN mean_return REAL",
        "ALTER TABLE sessions ADD COLUMN checkpoint INTEGER",
        "ALTER TABLE sessions ADD COLUMN wall_time REAL",
        "ALTER TABLE sessions ADD COLUMN videos TEXT",
        "UPDATE sessions SET status = CASE WHEN lost = 1 THEN 'lost' WHEN ended IS NULL THEN 'running' "
        "ELSE 'finished' END, wall_time = ended - started, "
        "mean_return = CASE WHEN episodes > 0 THEN total_return / episodes END",
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
#: A session's ``status``: running, then how it ended (``lost``: its host process died).
SESSION_STATUSES = ("running", "finished", "cancelled", "failed", "interrupted", "lost")
#: The columns of a session that :meth:`Record.update_session` may set.
SESSION_FIELDS = (
    "seed",
    "steps",
    "episodes",
    "total_return",
    "status",
    "final_return",
    "mean_return",
    "checkpoint",
    "videos",
)

Row = dict[str, Any]


def default_path() -> Path:
    """``$REMOTE_RECORD``, else ``record.sqlite`` in the cache folder (see
    :func:`remote.cache.cache_dir`). On a cluster whose cache is on a shared filesystem, set
    ``REMOTE_RECORD`` to node-local storage: the record is per host (its owners are local
    pids, its port leases local ports) and SQLite's WAL mode does not work over NFS."""
    return record_file() or cache_dir() / "record.sqlite"


def _placeholders(values: Sequence[object]) -> str:
    return ", ".join("?" * len(values))


def plain(value: Any) -> Any:
    """``value`` as JSON can hold it: mappings (keys as str), lists and scalars as they are,
    anything else as its repr."""
    if isinstance(value, Mapping):
        return {k if isinstance(k, str) else repr(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(plain(value))


def _paths(paths: Iterable[str | os.PathLike[str]] | None) -> str | None:
    """A list of file paths as JSON (None stays None)."""
    return None if paths is None else json.dumps([os.fspath(p) for p in paths])


def _session(row: Row) -> Row:
    """A session row with its JSON columns (``config``, ``videos``) read."""
    for key in ("config", "videos"):
        if row.get(key) is not None:
            row[key] = json.loads(row[key])
    return row


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

    def set_container_log(self, container_id: int, path: str | os.PathLike[str] | None) -> None:
        """Note where a container's output log is (None: it has none, or it was removed)."""
        with self.transaction() as db:
            db.execute(
                "UPDATE containers SET log = ? WHERE id = ?",
                (None if path is None else os.fspath(path), container_id),
            )

    def container(self, container_id: int) -> Row:
        """Every column of a container (``log`` among them).

        Raises:
            UnknownContainer: there is no container with that id.
        """
        rows = self.query("SELECT * FROM containers WHERE id = ?", (container_id,))
        if not rows:
            raise UnknownContainer(f"no container with id {container_id} on {self.path}")
        return rows[0]

    def find_container(self, target: str) -> Row:
        """Every column of the newest container called ``target``, else (if it is a number)
        of the newest whose container process had that pid; in any state, of any owner.

        Raises:
            UnknownContainer: none is called (or had the pid) ``target``.
        """
        rows = self.query("SELECT * FROM containers WHERE name = ? ORDER BY id DESC LIMIT 1", (target,))
        if not rows and target.isdigit():
            rows = self.query(
                "SELECT * FROM containers WHERE pid = ? ORDER BY id DESC LIMIT 1", (int(target),)
            )
        if not rows:
            raise UnknownContainer(
                f"no container named {target!r} (or with that pid) on the record; see `remote ps --all`"
            )
        return rows[0]

    def ended_logs(self, before: float | None = None) -> list[Row]:
        """Containers that have ended (before the time ``before``, if given) and still have a
        log on the record: ``id, name, log``."""
        return self.query(
            "SELECT id, name, log FROM containers WHERE log IS NOT NULL "
            f"AND (lost = 1 OR state IN ({_placeholders(ENDED_STATES)})) AND updated < ? ORDER BY id",
            (*ENDED_STATES, float("inf") if before is None else before),
        )

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
                "UPDATE sessions SET lost = 1, ended = ?, status = 'lost', wall_time = ? - started "
                "WHERE container_id = ? AND ended IS NULL",
                (now, now, container_id),
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
        self,
        container_id: int,
        env_id: str,
        image_sha256: str | None,
        seed: int | None = None,
        *,
        agent: str | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> int:
        """Start a session (an env, or a :meth:`remote.RemoteRunner.run` of ``agent``, its
        entry point) in a container, status ``running``; ``config`` (episodes, seed, kwargs)
        is kept as JSON, what JSON cannot hold as its repr. Returns the session's id."""
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT INTO sessions (container_id, env_id, seed, image_sha256, started, agent, config, "
                "status) VALUES (?, ?, ?, ?, ?, ?, ?, 'running')",
                (container_id, env_id, seed, image_sha256, time.time(), agent, _json(config)),
            )
        return cursor.lastrowid  # type: ignore[return-value]

    def update_session(self, session_id: int, **fields: Any) -> None:
        """Set columns of a running session (``checkpoint``, ``videos``: a list of paths,
        ``episodes``, ...: one of :data:`SESSION_FIELDS`).

        Raises:
            ValueError: a field is not such a column, or a status not one of :data:`SESSION_STATUSES`.
        """
        unknown = sorted(set(fields) - set(SESSION_FIELDS))
        if unknown:
            raise ValueError(
                f"sessions have no field {', '.join(unknown)}; known: {', '.join(SESSION_FIELDS)}"
            )
        if "status" in fields and fields["status"] not in SESSION_STATUSES:
            raise ValueError(f"status must be one of {', '.join(SESSION_STATUSES)}, not {fields['status']!r}")
        if not fields:
            return
        if "videos" in fields:
            fields["videos"] = _paths(fields["videos"])
        names = list(fields)  # only SESSION_FIELDS: safe in the statement
        with self.transaction() as db:
            db.execute(
                f"UPDATE sessions SET {', '.join(f'{name} = ?' for name in names)} WHERE id = ?",
                (*(fields[name] for name in names), session_id),
            )

    def end_session(
        self,
        session_id: int,
        *,
        seed: int | None,
        steps: int,
        episodes: int,
        total_return: float,
        status: str = "finished",
        final_return: float | None = None,
        mean_return: float | None = None,
        checkpoint: int | None = None,
        videos: Sequence[str | os.PathLike[str]] | None = None,
    ) -> None:
        """End a session (now) with what it did and how it ended (``status``, one of
        :data:`SESSION_STATUSES`); ``wall_time`` is its time from start to end. A ``checkpoint``
        or ``videos`` left None keeps what :meth:`update_session` set.

        Raises:
            ValueError: ``status`` is not one of :data:`SESSION_STATUSES`.
        """
        if status not in SESSION_STATUSES:
            raise ValueError(f"status must be one of {', '.join(SESSION_STATUSES)}, not {status!r}")
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "UPDATE sessions SET ended = ?, seed = ?, steps = ?, episodes = ?, total_return = ?, "
                "status = ?, final_return = ?, mean_return = ?, checkpoint = COALESCE(?, checkpoint), "
                "videos = COALESCE(?, videos), wall_time = ? - started WHERE id = ?",
                (
                    now,
                    seed,
                    steps,
                    episodes,
                    total_return,
                    status,
                    final_return,
                    mean_return,
                    checkpoint,
                    _paths(videos),
                    now,
                    session_id,
                ),
            )

    def session(self, session_id: int) -> Row:
        """Every column of a session (``config`` and ``videos`` read from JSON), with its
        container's ``name`` as ``container``.

        Raises:
            KeyError: there is no session with that id.
        """
        rows = self.query(
            "SELECT s.*, c.name AS container FROM sessions s LEFT JOIN containers c ON c.id = s.container_id "
            "WHERE s.id = ?",
            (session_id,),
        )
        if not rows:
            raise KeyError(f"no session {session_id} on {self.path}")
        return _session(rows[0])

    def list_sessions(self, name: str | None = None, everything: bool = False, ended: int = 20) -> list[Row]:
        """Sessions (of the containers called ``name``, if given), by id: all of them if
        ``everything``, else the open ones of the containers ``remote ps`` shows and the last
        ``ended`` that ended. Rows: every column (``config``, ``videos`` read from JSON), the
        container's ``name`` as ``container``, its ``owner_pid`` and ``owner_started``."""
        named = "(? IS NULL OR c.name = ?)"
        where, args = named, [name, name]
        if not everything:
            where += (
                f" AND ((s.ended IS NULL AND c.lost = 0 AND c.state IN ({_placeholders(SHOWN_STATES)})) "
                "OR s.id IN (SELECT s.id FROM sessions s JOIN containers c ON c.id = s.container_id "
                f"WHERE s.ended IS NOT NULL AND {named} ORDER BY s.ended DESC LIMIT ?))"
            )
            args += [*SHOWN_STATES, name, name, ended]
        rows = self.query(
            "SELECT s.*, c.name AS container, c.owner_pid, c.owner_started FROM sessions s "
            f"JOIN containers c ON c.id = s.container_id WHERE {where} ORDER BY s.id",
            tuple(args),
        )
        return [_session(row) for row in rows]

    def sessions_of(self, container_ids: Sequence[int], open_only: bool) -> list[Row]:
        """Sessions of these containers (only those not ended if ``open_only``; ``config`` and
        ``videos`` read from JSON), with the container's ``name`` as ``container``; by id."""
        rows = self.query(
            "SELECT s.*, c.name AS container FROM sessions s JOIN containers c ON c.id = s.container_id "
            f"WHERE s.container_id IN ({_placeholders(container_ids)})"
            + (" AND s.ended IS NULL" if open_only else "")
            + " ORDER BY s.id",
            tuple(container_ids),
        )
        return [_session(row) for row in rows]

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
