"""ContainerManager with real containers: limits, pause/resume, restarts, the record, orphans."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest
from helpers import alive, wait_gone

import remote
from remote.manager import ContainerManager, State
from remote.manager.allocator import ResourceAllocator
from remote.manager.record import Record
from remote.runtime.limits import CGROUP, RLIMIT, cgroup_limits_available, container_cgroups

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def record(tmp_path) -> Record:
    return Record(tmp_path / "record.sqlite")


@pytest.fixture
def manager(record):
    with ContainerManager(record, prefix="test", sample_interval=0.2, backoff=0.2) as manager:
        yield manager


def server_process(manager: ContainerManager, name: str) -> psutil.Process:
    tree = psutil.Process(manager.status(name).pid).children(recursive=True)
    return next(p for p in tree if "remote.server" in " ".join(p.cmdline()))


def wait_for(predicate, seconds: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_lifecycle_record_sessions_usage_and_illegal_transitions(manager, record, image):
    name = manager.create(0, image, cpus=1, memory="1G")
    assert name == "test-0" and manager.status(name).state is State.CREATED
    with pytest.raises(remote.IllegalTransition, match="cannot pause container test-0: it is CREATED"):
        manager.pause(name)
    manager.start(name)
    status = manager.status(name)
    assert status.state is State.RUNNING and status.allocation.cpus == 1
    with pytest.raises(remote.IllegalTransition, match="cannot delete"):
        manager.delete(name)
    with pytest.raises(remote.IllegalTransition, match="cannot resume"):
        manager.resume(name)

    env = manager.make(name, "CartPole-v1")
    env.reset(seed=7)
    steps, episodes, total = 0, 0, 0.0
    while episodes < 2:
        _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        steps, total = steps + 1, total + reward
        if terminated or truncated:
            episodes += 1
            env.reset()
    wait_for(lambda: manager.status(name).rss, what="a usage sample")
    assert manager.status(name).rss > 10 * 2**20
    env.close()
    manager.stop(name)
    manager.delete(name)
    with pytest.raises(KeyError):
        manager.status(name)

    (session,) = record.query("SELECT * FROM sessions")
    assert (session["env_id"], session["seed"], session["steps"], session["episodes"]) == (
        "CartPole-v1",
        7,
        steps,
        2,
    )
    assert session["total_return"] == pytest.approx(total) and session["ended"] >= session["started"]
    assert len(session["image_sha256"]) == 64
    assert record.query("SELECT count(*) AS n FROM usage")[0]["n"] >= 1
    events = [e["event"] for e in record.query("SELECT event FROM events ORDER BY time")]
    assert events == ["STARTING", "RUNNING", "STOPPING", "STOPPED", "DELETED"]
    assert record.query("SELECT * FROM allocations") == []


def test_limits_are_applied_to_the_container_and_said_in_the_status(record, image):
    enforcement = CGROUP if cgroup_limits_available() else RLIMIT
    allocator = ResourceAllocator(record, cpus=[0, 1], memory="2G", gpus=[])
    with ContainerManager(record, allocator, sample_interval=0) as manager:
        manager.allocator.allocate(cpus=1)  # the container gets the other core
        name = manager.create(1, image, cpus=1, memory="1G", transport="tcp")
        manager.start(name)
        status = manager.status(name)
        assert status.limits == enforcement and status.allocation.cpu_ids == (1,)
        server = server_process(manager, name)
        assert server.cpu_affinity() == [1]
        if enforcement == RLIMIT:
            assert server.rlimit(psutil.RLIMIT_AS) == (2**30, 2**30)
        # TCP on the leased ports: the server listens on exactly those
        listening = {c.laddr.port for c in server.net_connections("tcp") if c.status == "LISTEN"}
        assert listening == set(status.ports) and len(status.ports) == 2
        env = manager.make(name, "CartPole-v1")
        env.reset(seed=0)
        env.close()
        manager.stop(name)
    assert record.query("SELECT * FROM port_leases") == []


@pytest.mark.skipif(not cgroup_limits_available(), reason="cgroup limits need root or cgroups v2 delegation")
def test_memory_limit_stops_the_container_and_the_record_says_why(record, image, test_env_options):
    with ContainerManager(record, max_restarts=0, sample_interval=0) as manager:
        name = manager.create(2, image, cpus=1, memory="300M", **test_env_options)
        manager.start(name)
        env = manager.make(name, "testenvs:MemoryHog", megabytes=100)
        env.reset(seed=0)
        assert env.step(1)[0][0] == 100  # under the limit: fine
        with pytest.raises(remote.OutOfMemory) as caught:
            for _ in range(10):
                env.step(1)
        assert isinstance(caught.value, remote.ContainerDied)
        assert "out of memory" in str(caught.value) and "300 MiB" in str(caught.value)
        wait_for(lambda: manager.status(name).state is State.ERROR, what="state ERROR")
        assert "out of memory" in manager.status(name).reason
    (row,) = record.query("SELECT state, reason, returncode FROM containers")
    assert row["state"] == "ERROR" and row["returncode"] == 137 and "out of memory" in row["reason"]


def test_rlimit_fallback_fails_the_allocation_inside_the_env(record, image, test_env_options):
    allocator = ResourceAllocator(record, cpus=[0, 1], memory="8G", gpus=[])
    with ContainerManager(record, allocator, limits=RLIMIT, sample_interval=0) as manager:
        name = manager.create(3, image, cpus=1, memory="3G", **test_env_options)
        manager.start(name)
        assert manager.status(name).limits == RLIMIT
        server = server_process(manager, name)
        assert server.rlimit(psutil.RLIMIT_AS) == (3 * 2**30, 3 * 2**30)
        room = 3 * 2**30 - server.memory_info().vms  # the limit counts address space, not RSS
        megabytes = int(room * 0.7 / 2**20)  # one block fits, two do not
        env = manager.make(name, "testenvs:MemoryHog", megabytes=megabytes)
        env.reset(seed=0)
        assert env.step(1)[0][0] == megabytes
        with pytest.raises(remote.RemoteEnvError, match="Unable to allocate") as caught:
            env.step(1)
        assert "MemoryError" in caught.value.remote_type
        assert env.step(0)[0][0] == megabytes  # the container lives on
        manager.stop(name)


def test_pause_blocks_steps_and_resume_continues_the_same_episode(manager, image, test_env_options):
    name = manager.create(4, image, timeout=2.0, **test_env_options)
    manager.start(name)
    env = manager.make(name, "testenvs:FaultyEnv")
    env.reset(seed=0)
    assert [env.step(0)[0][0] for _ in range(3)] == [1, 2, 3]
    server = server_process(manager, name)

    manager.pause(name)
    assert manager.status(name).state is State.PAUSED
    wait_for(lambda: server.status() == psutil.STATUS_STOPPED, 5, "the server to be stopped")
    result: list = []
    stepper = threading.Thread(target=lambda: result.append(env.step(0)[0][0]))
    stepper.start()
    stepper.join(1.0)
    assert stepper.is_alive() and result == [], "a step advanced while the container was paused"
    manager.resume(name)
    stepper.join(5.0)
    assert result == [4]
    assert env.step(0)[0][0] == 5  # same episode, same env

    manager.pause(name)
    started = time.monotonic()
    with pytest.raises(remote.CallTimeout, match="is PAUSED: resume it"):
        env.step(0)
    assert 1.5 < time.monotonic() - started < 10
    manager.resume(name)
    fresh = manager.make(name, "testenvs:FaultyEnv")
    fresh.reset(seed=0)
    assert fresh.step(0)[0][0] == 1

    manager.pause(name)
    tree = [server.pid, *(p.pid for p in psutil.Process(manager.status(name).pid).children(recursive=True))]
    started = time.monotonic()
    manager.kill(name)  # a frozen container dies at once
    assert time.monotonic() - started < 3 and wait_gone(tree, 1.0) == []
    assert manager.status(name).state is State.STOPPED and manager.status(name).reason == "kill requested"


def test_killed_container_is_restarted_with_backoff_then_error(record, image):
    with ContainerManager(record, max_restarts=2, backoff=0.3, sample_interval=0) as manager:
        name = manager.create(5, image, transport="tcp")
        manager.start(name)
        env = manager.make(name, "CartPole-v1")
        env.reset(seed=0)
        for restart in (1, 2):
            pid, ports = manager.status(name).pid, manager.status(name).ports
            cgroups = container_cgroups(server_process(manager, name).pid)
            assert bool(cgroups) == (manager.status(name).limits == CGROUP)
            os.killpg(pid, signal.SIGKILL)  # apptainer too: it cannot remove its cgroups
            wait_for(lambda pid=pid: manager.status(name).pid not in (None, pid), what=f"restart {restart}")
            wait_for(lambda: manager.status(name).state is State.RUNNING, what="RUNNING")
            assert manager.status(name).restarts == restart
            assert len(manager.status(name).ports) == 2 and manager.status(name).ports != ports
            assert [path for path in cgroups if path.exists()] == [], "cgroups of a dead container left"
            if restart == 1:
                with pytest.raises(remote.ContainerDied):
                    env.step(0)  # the env died with its container
                env = manager.make(name, "CartPole-v1")  # the restarted one serves new envs
                env.reset(seed=0)
                env.step(0)
        os.killpg(manager.status(name).pid, signal.SIGKILL)
        wait_for(lambda: manager.status(name).state is State.ERROR, what="ERROR")
        status = manager.status(name)
        assert "gave up after 2 restarts" in status.reason and "SIGKILL" in status.reason
        with pytest.raises(remote.IllegalTransition):
            manager.pause(name)
        assert record.query("SELECT * FROM port_leases") == [] == record.query("SELECT * FROM allocations")

    events = record.query("SELECT time, event, detail FROM events ORDER BY time")
    assert [e["event"] for e in events] == [
        "STARTING", "RUNNING", "STARTING", "RUNNING", "STARTING", "RUNNING", "ERROR",
    ]  # fmt: skip
    assert (
        "restart 1 of 2 in 0.3 s" in events[2]["detail"] and "restart 2 of 2 in 0.6 s" in events[4]["detail"]
    )
    assert events[3]["time"] - events[2]["time"] >= 0.3 and events[5]["time"] - events[4]["time"] >= 0.6


ORPHAN_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
from remote.manager import ContainerManager
from remote.manager.record import Record
manager = ContainerManager(Record({path!r}), prefix="orphan", sample_interval=0)
for worker, paused in enumerate([True, False]):
    name = manager.create(worker, {image!r})
    manager.start(name)
    env = manager.make(name, "CartPole-v1")
    env.reset(seed=0)
    if paused:
        manager.pause(name)  # a frozen container cannot see its host die
    print(manager.status(name).pid, flush=True)
sys.stdin.read()
"""


def test_kill_9_of_the_host_then_a_new_manager_leaves_nothing_running(tmp_path, image):
    path = tmp_path / "record.sqlite"
    script = ORPHAN_SCRIPT.format(root=str(ROOT), path=str(path), image=image)
    host = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        pids = [int(host.stdout.readline()) for _ in range(2)]
    finally:
        host.kill()
        host.wait()
    trees = {pid: [pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))] for pid in pids}
    time.sleep(0.5)
    assert alive(pids[0]), "the paused container should outlive its host (that is what the sweep is for)"

    record = Record(path)
    with ContainerManager(record, sample_interval=0) as manager:
        assert manager.list() == []
    assert wait_gone([p for tree in trees.values() for p in tree]) == []
    rows = record.query("SELECT name, state, lost, reason FROM containers ORDER BY name")
    assert [(r["name"], r["state"], r["lost"]) for r in rows] == [
        ("orphan-0", "STOPPED", 1),
        ("orphan-1", "STOPPED", 1),
    ]
    assert "still running and was killed" in rows[0]["reason"]
    assert [s["lost"] for s in record.query("SELECT lost FROM sessions")] == [1, 1]
    assert ContainerManager(record, sample_interval=0).sweep_orphans() == []  # once is enough


def test_the_orphan_sweep_kills_only_our_own_processes(record):
    stranger = subprocess.Popen(["sleep", "60"])  # alive, but not a container of ours
    try:
        with record.transaction() as db:
            db.execute(
                "INSERT INTO containers (name, image, state, owner_pid, owner_started, pid, pid_started, "
                "run_dir, created, updated) "
                "VALUES ('x-0', 'img', 'RUNNING', ?, 1.0, ?, ?, '/tmp/rmt-none', 0, 0)",
                (stranger.pid, stranger.pid, psutil.Process(stranger.pid).create_time()),
            )
        assert ContainerManager(record, sample_interval=0).sweep_orphans() == []  # swept by __init__
        assert stranger.poll() is None, "the sweep killed a process that is not ours"
        (row,) = record.query("SELECT state, lost, reason FROM containers")
        assert (row["state"], row["lost"]) == ("STOPPED", 1) and "was killed" not in row["reason"]
    finally:
        stranger.kill()
        stranger.wait()
