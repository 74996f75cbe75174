"""remote.ray on a real two-node Ray cluster started here: a head (``node_a``) and a worker
node (``node_b``), each its own ``ray start`` with its own temp dir and record file; envs
placed on both, stepped as one vector env, and one node killed."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import psutil
import pytest
from conftest import IN_CI

import remote

try:
    import ray
except ImportError:
    if IN_CI:
        raise
    pytest.skip(reason="ray is not installed (pip install -e .[cluster])", allow_module_level=True)

ENV_ID = "CartPole-v1"
SEED = 100


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _node_processes(folder: str) -> list[psutil.Process]:
    """The processes of the Ray node whose temp dir is ``folder``, and their children (the
    workers holding actors are the raylet's children)."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        if proc.pid != os.getpid() and any(folder in arg for arg in proc.info["cmdline"] or []):
            found[proc.pid] = proc
            for child in proc.children(recursive=True):
                found[child.pid] = child
    return list(found.values())


def kill_node(folder: str, spare: list[psutil.Process] = ()) -> int:
    """SIGKILL every process of a Ray node but ``spare``: the node is gone."""
    procs = [p for p in _node_processes(folder) if p not in spare]
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(procs, timeout=10)
    return len(procs)


class Cluster:
    def __init__(self, root: Path, image: str) -> None:
        self.root = root
        self.address = f"127.0.0.1:{_free_port()}"
        self.image = image
        self.records = {name: root / f"record-{name}.sqlite" for name in ("node_a", "node_b")}
        self.temp = {name: str(root / name) for name in ("node_a", "node_b")}

    def start(self, name: str, head: bool) -> None:
        env = {
            **os.environ,
            "RAY_USAGE_STATS_ENABLED": "0",
            # find a dead node in ~3 s instead of ~30 s (Ray's defaults, for real networks)
            "RAY_health_check_initial_delay_ms": "0",
            "RAY_health_check_period_ms": "1000",
            "RAY_health_check_timeout_ms": "1000",
            "RAY_health_check_failure_threshold": "2",
            # per-node record on node-local storage; the image cache stays the user's
            "REMOTE_RECORD": str(self.records[name]),
        }
        where = ["--head", f"--port={self.address.split(':')[1]}"] if head else [f"--address={self.address}"]
        subprocess.run(
            [
                str(Path(sys.executable).with_name("ray")),
                "start",
                *where,
                "--node-ip-address=127.0.0.1",
                "--num-cpus=2",
                f"--resources={json.dumps({name: 100, 'apptainer': 100})}",
                "--object-store-memory=80000000",
                f"--temp-dir={self.temp[name]}",
                "--disable-usage-stats",
                *(["--include-dashboard=false"] if head else []),
            ],
            check=True,
            capture_output=True,
            env=env,
            timeout=120,
        )

    def stop(self) -> None:
        for folder in self.temp.values():
            kill_node(folder)


@pytest.fixture(scope="module")
def cluster(image):
    # a short root: Ray's socket paths under it must fit in 107 bytes
    root = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))
    c = Cluster(root, image)
    try:
        c.start("node_a", head=True)
        c.start("node_b", head=False)
        ray.init(address=c.address, log_to_driver=False)
        nodes = {n["NodeID"]: n for n in ray.nodes() if n["Alive"]}
        c.node_ids = {
            name: next(i for i, n in nodes.items() if name in n["Resources"]) for name in ("node_a", "node_b")
        }
        yield c
    finally:
        if ray.is_initialized():
            ray.shutdown()
        c.stop()
        shutil.rmtree(root, ignore_errors=True)
    assert not _node_processes(str(root)), "Ray processes left running"


PINNED = [{"node_a": 1}, {"node_b": 1}, {"node_a": 1}, {"node_b": 1}]


def local_trajectory(seeds: list[int], actions: np.ndarray) -> list[tuple]:
    """The same run with gymnasium's SyncVectorEnv on this host."""
    envs = gym.vector.SyncVectorEnv([lambda: gym.make(ENV_ID)] * len(seeds))
    try:
        steps = [envs.reset(seed=seeds)[0]]
        for action in actions:
            obs, reward, terminated, truncated, _ = envs.step(action)
            steps.append((obs, reward, terminated, truncated))
        return steps
    finally:
        envs.close()


def remote_trajectory(envs: remote.ray.RayVectorEnv, seeds: list[int], actions: np.ndarray) -> list[tuple]:
    steps = [envs.reset(seed=seeds)[0]]
    for action in actions:
        obs, reward, terminated, truncated, _ = envs.step(action)
        steps.append((obs, reward, terminated, truncated))
    return steps


def assert_same(got: list[tuple], want: list[tuple]) -> None:
    np.testing.assert_array_equal(got[0], want[0])
    for t, (g, w) in enumerate(zip(got[1:], want[1:], strict=True)):
        for part, a, b in zip(("obs", "reward", "terminated", "truncated"), g, w, strict=True):
            np.testing.assert_array_equal(a, b, err_msg=f"step {t}: {part}")


def test_eight_envs_on_two_nodes_equal_local(cluster):
    import remote.ray

    envs = remote.ray.make_vec(ENV_ID, 8, image=cluster.image, envs_per_actor=2, resources=PINNED)
    try:
        a, b = cluster.node_ids["node_a"], cluster.node_ids["node_b"]
        assert envs.num_envs == 8
        assert envs.env_nodes == [a, a, b, b, a, a, b, b]
        assert envs.observation_space.shape == (8, 4)
        actions = np.random.default_rng(0).integers(0, 2, size=(150, 8))
        seeds = [SEED + i for i in range(8)]
        got = remote_trajectory(envs, seeds, actions)
        assert sum(bool(step[2].any()) for step in got[1:]) > 5, "no episode ended: autoreset untested"
        assert_same(got, local_trajectory(seeds, actions))

        # each node's record names the containers that node ran
        for name, node in cluster.node_ids.items():
            with sqlite3.connect(cluster.records[name]) as db:
                rows = db.execute(
                    "SELECT c.name, e.detail FROM events e JOIN containers c ON c.id = e.container_id "
                    "WHERE e.event = 'PLACED'"
                ).fetchall()
            mine = [p["container"] for p in envs.placements if p["node_id"] == node]
            assert sorted(r[0] for r in rows) == sorted(mine)
            assert all(f"ray node {node} on {socket.gethostname()}" == r[1] for r in rows)
    finally:
        envs.close()


def test_spread_without_pinning_uses_both_nodes(cluster):
    envs = remote.make_vec(ENV_ID, 4, image=cluster.image, envs_per_container=1, backend="ray", num_cpus=1)
    try:
        assert set(envs.env_nodes) == set(cluster.node_ids.values())
        obs, _ = envs.reset(seed=0)
        assert obs.shape == (4, 4)
    finally:
        envs.close()


def test_container_dying_under_a_live_actor_raises_container_died(cluster):
    import remote.ray

    envs = remote.ray.make_vec(ENV_ID, 2, image=cluster.image, envs_per_actor=1, resources=PINNED[:2])
    try:
        envs.reset(seed=0)
        actors = [p for p in _node_processes(cluster.temp["node_b"]) if p.cmdline()[:1] == ["ray::EnvActor"]]
        assert len(actors) == 1
        servers = [c for c in actors[0].children(recursive=True) if "remote.server" in " ".join(c.cmdline())]
        assert len(servers) == 1
        servers[0].kill()
        with pytest.raises(remote.ContainerDied, match="died") as died:
            envs.step(np.zeros(2, dtype=np.int64))
        assert died.value.env_indices == [1]
        assert actors[0].is_running()  # the actor lives on; only its container died
    finally:
        envs.close()


def test_killed_node_raises_container_died_and_the_others_go_on(cluster):
    """Runs last: it kills node_b."""
    import remote.ray

    envs = remote.ray.make_vec(ENV_ID, 8, image=cluster.image, envs_per_actor=2, resources=PINNED)
    try:
        envs.reset(seed=SEED)
        envs.step(np.zeros(8, dtype=np.int64))
        # the actors on node_b, and their containers (the actor's children)
        actors = [p for p in _node_processes(cluster.temp["node_b"]) if p.cmdline()[:1] == ["ray::EnvActor"]]
        assert len(actors) == 2
        containers = [c for a in actors for c in a.children(recursive=True)]
        assert any("Apptainer" in " ".join(c.cmdline()) for c in containers)
        # Ray's processes die; the containers are left to notice (their lifeline closes)
        assert kill_node(cluster.temp["node_b"], spare=containers) > 0
        with pytest.raises(remote.ContainerDied) as died:
            envs.step(np.zeros(8, dtype=np.int64))
        assert died.value.env_indices == [2, 3, 6, 7]
        assert "without_lost" in str(died.value) and "node" in str(died.value)
        with pytest.raises(remote.ContainerDied):  # and again, without waiting on Ray
            envs.step(np.zeros(8, dtype=np.int64))
        # the containers on the dead node stop on their own once their actor is gone
        psutil.wait_procs(containers, timeout=15)
        assert not [c for c in containers if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]

        survivors = envs.without_lost()
        assert survivors.num_envs == 4
        assert set(survivors.env_nodes) == {cluster.node_ids["node_a"]}
        actions = np.random.default_rng(1).integers(0, 2, size=(60, 4))
        seeds = [7, 8, 9, 10]
        assert_same(remote_trajectory(survivors, seeds, actions), local_trajectory(seeds, actions))
        survivors.close()
    finally:
        envs.close()
