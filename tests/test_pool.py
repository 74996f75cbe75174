"""The warm pool, with real containers."""

from __future__ import annotations

import json
import os
import signal
import statistics
import threading
import time

import pytest

import remote


def wait_for(predicate, seconds=30.0):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_make_from_a_warm_container(image):
    with remote.Pool(image, min_idle=1, max_size=2) as pool:
        wait_for(lambda: pool.status()["idle"] == 1)
        pid = pool.status()["containers"][0]["pid"]
        times = []
        for seed in range(15):
            started = time.perf_counter()
            env = pool.make("CartPole-v1")
            env.reset(seed=seed)
            times.append(time.perf_counter() - started)
            assert env.step(0)[1] == 1.0
            env.close()
        status = pool.status()
        assert [c["pid"] for c in status["containers"]] == [pid], "a new container was started"
        assert status["containers"][0]["served"] == 15
        json.dumps(status)  # monitoring output is JSON-ready
        print(f"pool.make + first reset, median {statistics.median(times) * 1e3:.2f} ms")


def test_grows_on_demand_up_to_max_size_then_waits(image):
    with remote.Pool(image, min_idle=0, max_size=2) as pool:
        envs = [pool.make("CartPole-v1") for _ in range(2)]
        pool.wait_timeout = 1.0
        status = pool.status()
        assert status["size"] == 2 and status["busy"] == 2
        assert len({c["pid"] for c in status["containers"]}) == 2  # exclusive: one env each
        with pytest.raises(remote.ResourceUnavailable, match="max_size"):
            pool.make("CartPole-v1")
        got = []
        waiter = threading.Thread(target=lambda: got.append(pool.make("CartPole-v1")))
        pool.wait_timeout = 10.0
        waiter.start()
        wait_for(lambda: pool.status()["queue"] == 1)
        envs[0].close()  # frees a container: the waiting make gets it
        waiter.join(10)
        assert len(got) == 1 and got[0].reset(seed=0)[0].shape == (4,)
        for env in [*envs[1:], *got]:
            env.close()


def test_idle_container_released_after_idle_timeout(image):
    with remote.Pool(image, min_idle=0, max_size=1, idle_timeout=0.5) as pool:
        env = pool.make("CartPole-v1")
        pid = pool.status()["containers"][0]["pid"]
        env.close()
        assert pool.status()["size"] == 1  # kept for a while
        wait_for(lambda: pool.status()["size"] == 0, seconds=10)
        wait_for(lambda: not os.path.exists(f"/proc/{pid}"), seconds=10)


def test_shared_mode_puts_several_envs_in_one_container(image):
    with remote.Pool(image, min_idle=0, max_size=1, shared=True, envs_per_container=3) as pool:
        envs = [pool.make("CartPole-v1") for _ in range(3)]
        pool.wait_timeout = 0.5
        status = pool.status()
        assert status["size"] == 1 and status["containers"][0]["envs"] == 3
        for seed, env in enumerate(envs):
            env.reset(seed=seed)
            assert env.step(1)[1] == 1.0
        with pytest.raises(remote.ResourceUnavailable):
            pool.make("CartPole-v1")
        for env in envs:
            env.close()
        assert pool.status()["containers"][0]["envs"] == 0


def test_dead_container_is_replaced(image):
    with remote.Pool(image, min_idle=1, max_size=2) as pool:
        wait_for(lambda: pool.status()["idle"] == 1)
        pid = pool.status()["containers"][0]["pid"]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: [c["pid"] for c in pool.status()["containers"]] not in ([pid], []))
        env = pool.make("CartPole-v1")
        assert env.reset(seed=0)[0].shape == (4,)
        env.close()


def test_closing_the_pool_stops_everything(image):
    pool = remote.Pool(image, min_idle=2, max_size=2)
    wait_for(lambda: pool.status()["size"] == 2)
    pids = [c["pid"] for c in pool.status()["containers"]]
    env = pool.make("CartPole-v1")
    pool.close()
    wait_for(lambda: not any(os.path.exists(f"/proc/{p}") for p in pids), seconds=10)
    with pytest.raises(remote.RemoteError):
        env.step(0)
    with pytest.raises(remote.RemoteError, match="closed"):
        pool.make("CartPole-v1")
