"""RemoteRunner.run: the experiment loop runs in the container and logs each episode to a
host file that outlives a killed host process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import children, wait_gone

import remote
from remote.protocol.runlog import LOG_FIELDS, read_log
from remote.runs import POLL_PERIOD

ROOT = Path(__file__).resolve().parent.parent


def test_five_episodes_logged_on_the_host(runtime, test_env_options, tmp_path):
    log = tmp_path / "logs" / "run.jsonl"
    log.parent.mkdir()
    seen = []
    binds = [*test_env_options["binds"], f"{log.parent}:{log.parent}"]  # podman/docker see no /tmp
    with runtime.runner(binds=binds, env=test_env_options["env"]) as runner:
        summary = runner.run(
            "testagents:Balancer",
            5,
            env_id="CartPole-v1",
            seed=10,
            log=log,
            progress=lambda done, total: seen.append((done, total)),
        )
    lines = read_log(log)
    assert [line["episode"] for line in lines] == [0, 1, 2, 3, 4]
    assert [line["seed"] for line in lines] == [10, 11, 12, 13, 14]
    for line in lines:
        assert set(line) == set(LOG_FIELDS)
        assert line["env_id"] == "CartPole-v1" and line["image_sha256"] == runner.image_sha256
        assert line["return"] == line["length"] > 100  # CartPole pays 1 per step; the balancer lasts
        assert line["wall_time"] > 0
    assert summary["episodes"] == 5 and summary["log"] == str(log)
    assert summary["steps"] == sum(line["length"] for line in lines)
    assert summary["mean_return"] == pytest.approx(sum(line["return"] for line in lines) / 5)
    assert seen[-1] == (5, 5)


def test_a_plain_policy_is_reproducible_by_seed(image, test_env_options, tmp_path):
    with remote.RemoteRunner(image, **test_env_options) as runner:
        for name in ("a", "b"):
            runner.run("testagents:random_policy", 3, env_id="CartPole-v1", seed=7, log=tmp_path / name)
    first, second = read_log(tmp_path / "a"), read_log(tmp_path / "b")
    assert [(x["return"], x["length"]) for x in first] == [(x["return"], x["length"]) for x in second]


def test_agent_errors_arrive_with_their_traceback(image, test_env_options, tmp_path):
    log = tmp_path / "run.jsonl"
    with remote.RemoteRunner(image, **test_env_options) as runner:
        with pytest.raises(remote.ExperimentError, match="agent exploded") as failed:
            runner.run("testagents:crashing", 10, env_id="CartPole-v1", log=log)
        assert isinstance(failed.value, RuntimeError) and "testagents.py" in failed.value.remote_traceback
        assert 1 <= len(read_log(log)) < 10  # the episodes before the crash are logged
        kept = log.read_bytes()
        with pytest.raises(remote.ExperimentError, match="already holds episodes: pass resume=True"):
            runner.run("testagents:Balancer", 1, env_id="CartPole-v1", log=log)
        assert log.read_bytes() == kept  # a log with episodes is never started over
        with pytest.raises(remote.ExperimentError, match="cannot import the agent module 'nosuch'"):
            runner.run("nosuch:agent", 1, env_id="CartPole-v1", log=tmp_path / "b.jsonl")
        with pytest.raises(remote.ExperimentError, match="could not|NoSuchEnv"):
            runner.run("testagents:Balancer", 1, env_id="NoSuchEnv-v0", log=tmp_path / "c.jsonl")
        # the runner still works after failed runs
        assert (
            runner.run("testagents:Balancer", 1, env_id="CartPole-v1", log=tmp_path / "d.jsonl")["episodes"]
            == 1
        )


def test_a_log_the_container_cannot_see_is_refused(image, test_env_options, tmp_path):
    shadow, logs = tmp_path / "shadow", tmp_path / "logs"
    shadow.mkdir()
    options = {**test_env_options, "binds": [*test_env_options["binds"], f"{shadow}:{logs}"]}
    with (
        remote.RemoteRunner(image, **options) as runner,
        pytest.raises(remote.ExperimentError, match="bind its folder"),
    ):
        runner.run("testagents:Balancer", 1, env_id="CartPole-v1", log=logs / "run.jsonl")
    assert list(shadow.iterdir()) == []  # nothing written where it would be lost


HOST = """
import sys, remote
E = sys.argv[2]
with remote.RemoteRunner(sys.argv[1], binds=[f"{E}:{E}:ro"], env={"PYTHONPATH": E}) as runner:
    print(runner.pid, flush=True)
    runner.run("testagents:Balancer", 1000, env_id="CartPole-v1", log=sys.argv[3],
               agent_kwargs={"delay": 0.0002})
"""


def test_killing_the_host_leaves_a_readable_log(image, tmp_path):
    log = tmp_path / "run.jsonl"
    host = subprocess.Popen(
        [sys.executable, "-c", HOST, image, str(ROOT / "tests" / "envs"), str(log)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    container = int(host.stdout.readline())
    tree = [container, *children(container)]
    deadline = time.monotonic() + 60
    while not (log.exists() and log.read_text().count("\n") >= 3) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(host.pid, signal.SIGKILL)
    host.wait(10)
    assert wait_gone(tree, 15) == []  # the container follows its host
    text = log.read_text()
    assert text.endswith("\n")
    entries = [json.loads(line) for line in text.splitlines()]  # every line whole
    assert len(entries) >= 3 and len(entries) < 1000
    assert [e["episode"] for e in entries] == list(range(len(entries)))
    assert read_log(log) == entries


def test_short_episodes_cost_one_poll_per_period_not_one_per_episode(image, test_env_options, tmp_path):
    polls: list[int] = []
    with remote.RemoteRunner(image, **test_env_options) as runner:
        started = time.monotonic()
        summary = runner.run(
            "testagents:pushes_left",
            300,
            env_id="CartPole-v1",
            log=tmp_path / "run",
            progress=lambda d, t: polls.append(d),
        )
        took = time.monotonic() - started
    assert summary["episodes"] == 300 and summary["mean_length"] < 12
    assert len(polls) <= took / 0.5 + 2, f"{len(polls)} polls in {took:.2f} s"
    assert polls[-1] == 300 and polls == sorted(polls)


def test_control_calls_from_another_thread_are_not_held_back_by_a_runs_polls(
    image, test_env_options, tmp_path
):
    # a run's polls wait in the container for up to POLL_PERIOD each; on the runner's own
    # control connection they held its lock, and a make from another thread waited 1-2 s
    with remote.RemoteRunner(image, **test_env_options) as runner:
        done: list[dict] = []
        worker = threading.Thread(
            target=lambda: done.append(
                runner.run("testagents:random_policy", 8000, env_id="CartPole-v1", log=tmp_path / "run")
            )
        )
        worker.start()
        time.sleep(0.5)  # the run is polling
        waits = []
        for _ in range(5):
            started = time.monotonic()
            runner.make("CartPole-v1").close()
            waits.append(time.monotonic() - started)
        during = worker.is_alive()
        worker.join()
    assert max(waits) < POLL_PERIOD, [f"{w:.2f}" for w in waits]
    assert during, "the run ended before the makes: they did not meet its polls"
    assert done[0]["episodes"] == 8000
