"""The record's schema migrations (PRAGMA user_version) and its interface, without containers."""

from __future__ import annotations

import os
import sqlite3

import pytest

import remote
from remote.manager.record import MIGRATIONS, SCHEMA_VERSION, Record
from remote.runtime.processes import Owner

#: The tables of version 1, exactly as remote 1 created them: the fixture of an old file.
SCHEMA_V1 = """
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
INDEXES_V2 = {
    "events_container": ("events", ["container_id"]),
    "usage_container_time": ("usage", ["container_id", "time"]),
    "sessions_container": ("sessions", ["container_id"]),
}


def _v1_file(path, owner: Owner) -> None:
    db = sqlite3.connect(path)
    db.executescript(SCHEMA_V1)
    db.execute(
        "INSERT INTO containers (name, image, state, owner_pid, owner_started, created, updated) "
        "VALUES ('old-0', 'old.sif', 'STOPPED', 1, 1.0, 10.0, 11.0)"
    )
    db.execute("INSERT INTO events VALUES (1, 10.5, 'STOPPED', 'stop requested')")
    db.execute(
        "INSERT INTO sessions (container_id, env_id, seed, started, steps) "
        "VALUES (1, 'CartPole-v1', 7, 10.2, 42)"
    )
    db.execute("INSERT INTO usage VALUES (1, 10.3, 12.5, 1000)")
    db.execute(
        "INSERT INTO allocations (owner_pid, owner_started, cpus, cpu_ids, memory, gpus, created) "
        "VALUES (?, ?, 1, '[0]', 0, '[]', 10.0)",
        (owner.pid, owner.started),
    )
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()


def _indexes(path) -> dict[str, tuple[str, list[str]]]:
    db = sqlite3.connect(path)
    try:
        names = db.execute(
            "SELECT name, tbl_name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        )
        return {
            name: (table, [row[2] for row in db.execute(f"PRAGMA index_info({name})")])
            for name, table in names
        }
    finally:
        db.close()


def _user_version(path) -> int:
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        db.close()


def test_a_version_1_file_is_migrated_with_its_rows_intact(tmp_path):
    path = tmp_path / "old.sqlite"
    owner = Owner.current()
    _v1_file(path, owner)
    record = Record(path)
    assert SCHEMA_VERSION == 2 == len(MIGRATIONS)
    assert _user_version(path) == 2
    assert record.query("SELECT name, image, state, created FROM containers") == [
        {"name": "old-0", "image": "old.sif", "state": "STOPPED", "created": 10.0}
    ]
    assert record.last_event(1) == {"event": "STOPPED", "detail": "stop requested"}
    assert [(s["env_id"], s["seed"], s["steps"]) for s in record.sessions_of([1], open_only=False)] == [
        ("CartPole-v1", 7, 42)
    ]
    (row,) = record.containers_with_usage(everything=True)
    assert (row["sampled_cpu"], row["sampled_rss"]) == (12.5, 1000)
    assert [(a["cpus"], a["cpu_ids"], a["gpus"]) for a in record.allocations()] == [(1.0, [0], [])]
    assert INDEXES_V2.items() <= _indexes(path).items()
    record.close()
    Record(path).close()  # a current file is opened as it is
    assert _user_version(path) == 2


def test_a_newer_file_is_refused(tmp_path):
    path = tmp_path / "new.sqlite"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(remote.RecordError, match="schema 99.*upgrade remote"):
        Record(path)
    assert _user_version(path) == 99


def test_a_new_file_gets_the_current_schema(tmp_path):
    path = tmp_path / "fresh.sqlite"
    Record(path).close()
    assert _user_version(path) == SCHEMA_VERSION
    indexes = _indexes(path)
    assert INDEXES_V2.items() <= indexes.items()
    assert indexes["containers_owner"] == ("containers", ["owner_pid", "owner_started"])
    db = sqlite3.connect(path)
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    db.close()
    assert tables == {"containers", "events", "sessions", "usage", "allocations", "port_leases"}


def test_the_containers_events_and_sessions_through_the_interface(tmp_path):
    record = Record(tmp_path / "r.sqlite")
    owner = Owner.current()
    first = record.add_container("w-0", "img.sif", "CREATED", owner)
    second = record.add_container("w-0", "img.sif", "CREATED", owner)
    assert record.latest_container_id("w-0", owner) == second > first
    with pytest.raises(remote.UnknownContainer):
        record.latest_container_id("w-1", owner)
    record.update_container(
        second, "RUNNING", detail="up", pid=os.getpid(), pid_started=owner.started, run_dir="/x"
    )
    assert record.last_event(second) == {"event": "RUNNING", "detail": "up"}
    assert [r["id"] for r in record.find_running(str(os.getpid()))] == [second]
    assert [r["id"] for r in record.find_running("w-0")] == [second]
    session = record.open_session(second, "CartPole-v1", None)
    assert [s["container"] for s in record.sessions_of([second], open_only=True)] == ["w-0"]
    record.end_session(session, seed=3, steps=10, episodes=1, total_return=10.0)
    assert record.sessions_of([second], open_only=True) == []
    record.mark_lost(second, "lost: test")
    assert [r["id"] for r in record.live_containers()] == [first] and record.find_running("w-0") == []
    assert record.last_event(second) == {"event": "LOST", "detail": "lost: test"}
    assert [c["id"] for c in record.containers_with_usage(everything=False)] == [first]


def test_a_failed_part_of_a_transaction_is_undone_alone(tmp_path):
    record = Record(tmp_path / "r.sqlite")
    owner = Owner.current()
    with record.transaction():
        record.add_leases([40001], "a", owner)
        with pytest.raises(sqlite3.IntegrityError):
            record.add_leases([40002, 40001], "b", owner)  # 40001 is leased: all of this call goes
        record.add_leases([40003], "c", owner)
    assert record.leased_ports() == {40001, 40003}
    with pytest.raises(ValueError, match="no owned rows"):
        record.reclaim_dead_owners("containers")
