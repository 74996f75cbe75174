"""Port leases, resource allocation and the record, across real concurrent processes."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3

import pytest
from helpers import lease_at_once

import remote
from remote.manager.allocator import ResourceAllocator, parse_size
from remote.manager.ports import instance_name, is_free, lease_ports, release_ports
from remote.manager.record import SCHEMA_VERSION, Record
from remote.runtime import Apptainer
from remote.runtime.limits import CGROUP, RLIMIT, LimitedRuntime

WORKERS = 32


def test_32_processes_lease_32_distinct_free_ports(tmp_path):
    path = tmp_path / "record.sqlite"
    Record(path)
    ctx = multiprocessing.get_context("forkserver")  # children forked from a clean, thread-free process
    ctx.set_forkserver_preload(["remote.ports"])
    barrier, ports, done = ctx.Barrier(WORKERS), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=lease_at_once, args=(path, i, barrier, ports, done)) for i in range(WORKERS)]
    for p in procs:
        p.start()
    try:
        got = [ports.get(timeout=60) for _ in range(WORKERS)]
        assert len(set(got)) == WORKERS, f"duplicate ports: {sorted(got)}"
        assert all(is_free(port) for port in got), "a leased port is in use"
        rows = Record(path).query("SELECT port, name FROM port_leases")
        assert sorted(r["port"] for r in rows) == sorted(got)
        assert {r["name"] for r in rows} == {f"w-{i}" for i in range(WORKERS)}
    finally:
        done.set()
        for p in procs:
            p.join(30)
    # the owners are gone: the next lease reclaims their rows
    record = Record(path)
    mine = lease_ports(record, "next", 2)
    assert [r["name"] for r in record.query("SELECT name FROM port_leases")] == ["next", "next"]
    release_ports(record, mine)
    assert record.query("SELECT * FROM port_leases") == []


def test_a_bound_port_is_not_leased(tmp_path, monkeypatch):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        monkeypatch.setenv("REMOTE_PORT_RANGE", f"{port}-{port}")
        with pytest.raises(remote.ResourceUnavailable, match="not enough free ports"):
            lease_ports(Record(tmp_path / "r.sqlite"), "x")


def test_instance_names():
    assert instance_name("ppo", 3) == "ppo-3"
    with pytest.raises(ValueError):
        instance_name("a b", 1)


def test_over_allocation_names_what_is_short_and_succeeds_after_deallocate(tmp_path):
    allocator = ResourceAllocator(Record(tmp_path / "r.sqlite"), cpus=[0, 1], memory="1G", gpus=["0", "1"])
    first = allocator.allocate(cpus=1.5, memory="768M", gpus=1)
    assert first.cpu_ids == (0, 1) and first.memory == 768 * 2**20 and first.gpus == ("0",)

    with pytest.raises(remote.ResourceUnavailable) as caught:
        allocator.allocate(cpus=1, memory="128M")
    assert "CPUs: 1 asked, 0.5 of 2 free" in str(caught.value)
    assert "memory" not in str(caught.value)
    with pytest.raises(remote.ResourceUnavailable, match=r"memory: 512 MiB asked, 256 MiB of 1024 MiB free"):
        allocator.allocate(cpus=0.5, memory="512M")
    with pytest.raises(remote.ResourceUnavailable, match=r"GPUs: 2 asked, 1 of 2 free"):
        allocator.allocate(gpus=2)
    assert not allocator.can_allocate(cpus=1)
    assert allocator.utilisation() == {"cpus": 0.75, "memory": 0.75, "gpus": 0.5}

    allocator.deallocate(first)
    assert allocator.can_allocate(cpus=1, memory="512M", gpus=2)
    second = allocator.allocate(cpus=1, memory="512M", gpus=2)
    assert second.gpus == ("0", "1")
    allocator.deallocate(second)
    assert allocator.utilisation() == {"cpus": 0.0, "memory": 0.0, "gpus": 0.0}


def _allocate_and_wait(path, ready) -> None:
    ResourceAllocator(Record(path), cpus=[0, 1], memory="1G", gpus=[]).allocate(cpus=2, memory="1G")
    ready.set()
    signal.pause()


def test_allocations_are_shared_across_processes_and_reclaimed_from_dead_ones(tmp_path):
    path = tmp_path / "r.sqlite"
    allocator = ResourceAllocator(Record(path), cpus=[0, 1], memory="1G", gpus=[])
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    other = ctx.Process(target=_allocate_and_wait, args=(path, ready))
    other.start()
    try:
        assert ready.wait(30)
        with pytest.raises(remote.ResourceUnavailable, match="CPUs.*memory"):
            allocator.allocate(cpus=1, memory="1M")
    finally:
        os.kill(other.pid, signal.SIGKILL)
        other.join()
    allocator.deallocate(allocator.allocate(cpus=2, memory="1G"))  # the dead process's share came back


def test_gpus_go_to_the_container_with_nv_and_cuda_visible_devices(tmp_path, apptainer):
    allocator = ResourceAllocator(
        Record(tmp_path / "r.sqlite"), cpus=[0, 1], memory="1G", gpus=["0", "1", "2"]
    )
    allocator.allocate(gpus=1)
    allocation = allocator.allocate(cpus=1, memory="256M", gpus=2)
    cgroup = LimitedRuntime(Apptainer(), allocation, CGROUP).command("img.sif", "python3", ["-c", "pass"])
    assert cgroup[:3] == ["taskset", "-c", "0"]
    assert cgroup[4] == "exec" and {"--nv", "--cpus", "--memory"} <= set(cgroup)
    assert cgroup[cgroup.index("--memory") + 1] == str(256 * 2**20)
    assert "CUDA_VISIBLE_DEVICES=1,2" in cgroup
    fallback = LimitedRuntime(Apptainer(), allocation, RLIMIT).command("img.sif", "python3", ["-c", "pass"])
    assert fallback[:3] == ["taskset", "-c", "0"] and "--memory" not in fallback


def test_parse_size():
    assert parse_size("512M") == 512 * 2**20
    assert parse_size("1.5GiB") == 3 * 2**29
    assert parse_size(1000) == 1000
    with pytest.raises(ValueError):
        parse_size("lots")


def test_record_is_wal_versioned_and_refuses_another_schema(tmp_path):
    path = tmp_path / "r.sqlite"
    Record(path)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(remote.RecordError, match="schema"):
        Record(path)
