"""Faults with real containers: repeated kill -9s, a frozen container, a failed start."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from helpers import apptainer_instances, children, process_state, wait_gone

import remote


def test_100_kill_9_cycles_each_a_typed_container_died_within_2_s(image):
    slowest = 0.0
    for cycle in range(100):
        env = remote.make("CartPole-v1", image=image)
        env.reset(seed=cycle)
        pids = [env.runner.pid, *children(env.runner.pid)]
        os.kill(env.runner.pid, signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(remote.ContainerDied):
            while time.monotonic() - started < 10:  # not a step count: a busy machine steps slowly
                env.step(0)
        slowest = max(slowest, time.monotonic() - started)
        assert slowest < 2.0, f"cycle {cycle}: ContainerDied after {slowest:.2f} s"
        assert wait_gone(pids) == [], f"cycle {cycle}: processes left"
        assert not env.runner.run_dir.exists(), f"cycle {cycle}: run dir left"
        env.close()
    assert wait_gone(children(os.getpid())) == [], "child processes left after 100 cycles"
    assert apptainer_instances() == ""
    print(f"100 kill -9 cycles: 100 ContainerDied, slowest detection {slowest * 1e3:.0f} ms, 0 orphans")


def test_a_frozen_container_times_out_with_a_clear_error_and_closes(image):
    runner = remote.RemoteRunner(image, timeout=1.0)
    env = runner.make("CartPole-v1")
    env.reset(seed=0)
    frozen = [runner.pid, *children(runner.pid)]
    for pid in frozen:  # every process: the group alone is not always all of it
        os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 5  # SIGSTOP is asynchronous: wait until all are stopped
    while not all(process_state(pid) == "T" for pid in frozen):
        assert time.monotonic() < deadline, "the container did not stop"
        time.sleep(0.01)
    started = time.monotonic()
    with pytest.raises(remote.CallTimeout, match="no answer within 1 s"):
        env.step(0)
    assert 0.9 < time.monotonic() - started < 5
    with pytest.raises(remote.RemoteError, match="timed out earlier"):
        env.step(0)  # the stream is out of step: a clear error, not a wrong answer
    pids = [runner.pid, *children(runner.pid)]
    started = time.monotonic()
    runner.close(timeout=0.5)  # a stopped container is killed, not waited for forever
    assert time.monotonic() - started < 5
    assert wait_gone(pids) == []
    assert not runner.run_dir.exists()


def test_a_failed_start_raises_one_clear_error(image):
    with pytest.raises(remote.ContainerStartError) as caught:
        remote.RemoteRunner(image, python="/no/such/python3")
    error = caught.value
    assert error.__context__ is None and error.__cause__ is None, "a secondary error leaked"
    assert "exited during start-up" in str(error) and "/no/such/python3" in str(error)


def test_bad_arguments_fail_before_anything_starts(image):
    before = children(os.getpid())
    with pytest.raises(ValueError, match="transport"):
        remote.RemoteRunner(image, transport="carrier-pigeon")
    with pytest.raises(ValueError, match="timeout"):
        remote.RemoteRunner(image, timeout=0)
    with pytest.raises(ValueError, match="exactly one"):
        remote.RemoteRunner()
    assert children(os.getpid()) == before


def test_ctrl_c_during_a_step_leaves_the_env_closable_at_once(image, test_env_options):
    """KeyboardInterrupt while a step is in flight: the reply is still owed, so the stream
    is dropped (a later call says so, never returns the stale reply) and close() does not
    wait for the step to finish."""
    env = remote.make("testenvs:SlowEnv", image=image, runner_options=test_env_options)
    env.reset(seed=0)
    pids = [env.runner.pid, *children(env.runner.pid)]
    timer = threading.Timer(0.5, os.kill, args=(os.getpid(), signal.SIGINT))
    timer.start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        env.step(0)
    assert time.monotonic() - started < 5
    with pytest.raises(remote.RemoteError, match="interrupted"):
        env.step(0)
    started = time.monotonic()
    env.close()
    assert time.monotonic() - started < 5, "close() waited for the interrupted step"
    assert wait_gone(pids) == []
