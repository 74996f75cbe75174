"""The record's schema migrations (PRAGMA user_version) and its interface, without containers."""

from __future__ import annotations

import os
import sqlite3
import time

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
INDEXES_V2_SQL = """
CREATE INDEX events_container ON events (container_id);
CREATE INDEX usage_container_time ON usage (container_id, time);
CREATE INDEX sessions_container ON sessions (container_id);
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
    assert SCHEMA_VERSION == 3 == len(MIGRATIONS)
    assert _user_version(path) == 3
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
    assert _user_version(path) == 3


def _v2_file(path, owner: Owner) -> None:
    """A file of version 2, as remote 2 left it: version 1 with its indexes, and sessions
    ended, open and lost."""
    _v1_file(path, owner)
    db = sqlite3.connect(path)
    db.executescript(INDEXES_V2_SQL)
    db.execute(
        "INSERT INTO sessions (container_id, env_id, seed, started, ended, steps, episodes, total_return) "
        "VALUES (1, 'CartPole-v1', 8, 20.0, 25.5, 100, 4, 80.0)"
    )
    db.execute(
        "INSERT INTO sessions (container_id, env_id, started, ended, lost) VALUES (1, 'X-v0', 30.0, 31.0, 1)"
    )
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()


def test_a_version_2_file_is_migrated_with_its_rows_intact(tmp_path):
    path = tmp_path / "v2.sqlite"
    _v2_file(path, Owner.current())
    record = Record(path)
    assert _user_version(path) == SCHEMA_VERSION == 3
    assert INDEXES_V2.items() <= _indexes(path).items()
    (container,) = record.query("SELECT name, image, state, created, log FROM containers")
    assert container == {
        "name": "old-0",
        "image": "old.sif",
        "state": "STOPPED",
        "created": 10.0,
        "log": None,
    }
    sessions = record.sessions_of([1], open_only=False)
    assert [(s["env_id"], s["seed"], s["steps"], s["episodes"], s["total_return"]) for s in sessions] == [
        ("CartPole-v1", 7, 42, 0, 0.0),
        ("CartPole-v1", 8, 100, 4, 80.0),
        ("X-v0", None, 0, 0, 0.0),
    ]
    # what the old rows tell is filled in; the rest is unknown
    assert [(s["status"], s["wall_time"], s["mean_return"]) for s in sessions] == [
        ("running", None, None),
        ("finished", 5.5, 20.0),
        ("lost", 1.0, None),
    ]
    assert all(
        s["agent"] is s["config"] is s["checkpoint"] is s["videos"] is s["final_return"] is None
        for s in sessions
    )
    assert record.last_event(1) == {"event": "STOPPED", "detail": "stop requested"}
    record.close()


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
    assert record.session(session)["status"] == "finished" and record.session(session)["wall_time"] >= 0
    record.set_container_log(second, "/logs/w-0-2.log")
    assert record.find_container("w-0")["log"] == "/logs/w-0-2.log" == record.container(second)["log"]
    assert record.find_container(str(os.getpid()))["id"] == second
    with pytest.raises(remote.UnknownContainer, match="no container named 'w-9'"):
        record.find_container("w-9")
    assert record.ended_logs() == []  # w-0 (second) runs
    running = record.open_session(second, "CartPole-v1", None)
    record.mark_lost(second, "lost: test")
    assert record.session(running)["status"] == "lost" and record.session(running)["lost"] == 1
    assert [r["id"] for r in record.live_containers()] == [first] and record.find_running("w-0") == []
    assert record.last_event(second) == {"event": "LOST", "detail": "lost: test"}
    assert [c["id"] for c in record.containers_with_usage(everything=False)] == [first]
    assert [r["log"] for r in record.ended_logs()] == ["/logs/w-0-2.log"]
    assert record.ended_logs(before=time.time() - 3600) == []  # it ended just now


class Opaque:
    def __repr__(self) -> str:
        return "Opaque()"


def test_a_run_session_with_its_agent_config_progress_and_end(tmp_path):
    record = Record(tmp_path / "r.sqlite")
    container = record.add_container("w-0", "img.sif", "RUNNING", Owner.current())
    config = {
        "episodes": 10,
        "seed": 0,
        "env_kwargs": {"size": 3, 4: Opaque()},
        "agent_kwargs": {"x": (1, 2)},
    }
    session = record.open_session(
        container, "CartPole-v1", "ab" * 32, 0, agent="pkg.agents:ppo", config=config
    )
    row = record.session(session)
    assert (row["status"], row["agent"], row["container"]) == ("running", "pkg.agents:ppo", "w-0")
    assert row["config"] == {
        "episodes": 10,
        "seed": 0,
        "env_kwargs": {"size": 3, "4": "Opaque()"},
        "agent_kwargs": {"x": [1, 2]},
    }
    record.update_session(session, checkpoint=5, videos=[tmp_path / "a.mp4"], episodes=5)
    assert (record.session(session)["checkpoint"], record.session(session)["videos"]) == (
        5,
        [str(tmp_path / "a.mp4")],
    )
    with pytest.raises(ValueError, match="no field ended"):
        record.update_session(session, ended=1.0)
    with pytest.raises(ValueError, match="status must be one of"):
        record.update_session(session, status="exploded")
    with pytest.raises(ValueError, match="status must be one of"):
        record.end_session(session, seed=0, steps=1, episodes=1, total_return=1.0, status="done")
    time.sleep(0.05)
    record.end_session(
        session,
        seed=0,
        steps=500,
        episodes=10,
        total_return=200.0,
        status="cancelled",
        final_return=30.0,
        mean_return=20.0,
    )
    row = record.session(session)
    assert (row["status"], row["steps"], row["final_return"], row["mean_return"]) == (
        "cancelled",
        500,
        30.0,
        20.0,
    )
    assert row["checkpoint"] == 5 and row["videos"] == [str(tmp_path / "a.mp4")]  # kept from the update
    assert row["wall_time"] == pytest.approx(row["ended"] - row["started"]) and row["wall_time"] >= 0.05
    with pytest.raises(KeyError):
        record.session(999)


def test_the_sessions_listed_by_default_and_with_everything(tmp_path):
    record = Record(tmp_path / "r.sqlite")
    owner = Owner.current()
    up, down = (
        record.add_container("up-0", "i", "RUNNING", owner),
        record.add_container("down-0", "i", "STOPPED", owner),
    )
    ended = [record.open_session(down, f"E{i}-v0", None) for i in range(25)]
    for session in ended:
        record.end_session(session, seed=None, steps=1, episodes=0, total_return=0.0)
    running = record.open_session(up, "R-v0", None)
    forgotten = record.open_session(down, "F-v0", None)  # open, but its container is not shown
    shown = [s["id"] for s in record.list_sessions()]
    assert shown == [*ended[-20:], running]
    assert [s["id"] for s in record.list_sessions(everything=True)] == [*ended, running, forgotten]
    assert [s["id"] for s in record.list_sessions("up-0", everything=True)] == [running]
    assert [s["id"] for s in record.list_sessions("down-0", ended=3)] == ended[-3:]
    assert record.list_sessions()[-1]["container"] == "up-0" and "owner_pid" in record.list_sessions()[-1]


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
