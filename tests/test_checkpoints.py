"""Checkpoints and resume: a run killed (kill -9, SIGTERM) and resumed writes the same log
as one that ran through, for an agent in the container and for one on the host."""

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
from conftest import TEST_ENVS
from helpers import wait_gone

import remote
from remote.protocol.loop import checkpoint_folder, read_checkpoint
from remote.protocol.runlog import read_log

sys.path.insert(0, str(TEST_ENVS))
import testagents  # noqa: E402  (the host-side agents; the container imports the same file)

EPISODES = 30


def trajectory(log: Path) -> list[tuple]:
    """What must be equal between two runs: episodes, seeds, returns, lengths."""
    return [(x["episode"], x["seed"], x["return"], x["length"]) for x in read_log(log)]


def host_script(agent: str) -> str:
    """A host process that runs 30 episodes, checkpointing every 5; ``agent`` is the run's
    agent expression (a name for the container, or an object made here)."""
    return f"""
import sys, remote, testagents
image, log = sys.argv[1], sys.argv[2]
E = {str(TEST_ENVS)!r}
with remote.RemoteRunner(image, binds=[f"{{E}}:{{E}}:ro"], env={{"PYTHONPATH": E}}) as runner:
    print(runner.pid, flush=True)
    runner.run({agent}, {EPISODES}, env_id="CartPole-v1", seed=3, log=log, checkpoint_every=5,
               **({{"agent_kwargs": {{"seed": 1, "delay": 0.002}}}} if isinstance({agent}, str) else {{}}))
"""


def start_host(script: str, image: str, log: Path) -> tuple[subprocess.Popen, int]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TEST_ENVS), os.environ.get("PYTHONPATH", "")])}
    host = subprocess.Popen(
        [sys.executable, "-c", script, image, str(log)], stdout=subprocess.PIPE, text=True, env=env
    )
    return host, int(host.stdout.readline())


def wait_for_episodes(
    log: Path, count: int, host: subprocess.Popen | None = None, timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while not (log.exists() and len(read_log(log)) >= count):
        assert host is None or host.poll() is None, "the host ended before it was interrupted"
        assert time.monotonic() < deadline, f"{log} did not reach {count} episodes"
        time.sleep(0.005)


AGENTS = {
    "in the container": ('"testagents:Walker"', lambda: "testagents:Walker"),
    "on the host": ("testagents.Walker(seed=1, delay=0.002)", lambda: testagents.Walker(seed=1, delay=0.002)),
}


@pytest.mark.parametrize("where", list(AGENTS))
def test_kill_9_after_episode_10_then_resume_writes_the_uninterrupted_log(
    image, test_env_options, tmp_path, where
):
    expression, make_agent = AGENTS[where]
    kwargs = {"agent_kwargs": {"seed": 1, "delay": 0.002}} if where == "in the container" else {}
    with remote.RemoteRunner(image, **test_env_options) as runner:
        whole = runner.run(
            make_agent(), EPISODES, env_id="CartPole-v1", seed=3, log=tmp_path / "whole", **kwargs
        )
    assert whole["episodes"] == EPISODES and whole["checkpoint"] == EPISODES

    log = tmp_path / "cut"
    host, container_pid = start_host(host_script(expression), image, log)
    wait_for_episodes(log, 10, host)
    host.kill()
    host.wait()
    assert wait_gone([container_pid]) == []
    done_before = len(read_log(log))
    assert 10 <= done_before < EPISODES

    with remote.RemoteRunner(image, **test_env_options) as runner:
        summary = runner.run(
            make_agent(),
            EPISODES,
            env_id="CartPole-v1",
            seed=3,
            log=log,
            resume=True,
            checkpoint_every=5,
            **kwargs,
        )
    assert trajectory(log) == trajectory(tmp_path / "whole")
    assert summary["resumed_from"] in range(5, done_before + 1, 5)  # its last checkpoint, every 5 episodes
    assert summary["episodes"] == EPISODES and summary["mean_return"] == pytest.approx(whole["mean_return"])
    assert summary["steps"] == whole["steps"]
    assert read_checkpoint(checkpoint_folder(log))["next_episode"] == EPISODES


def test_an_agent_on_the_host_acts_as_it_does_in_the_container(image, test_env_options, tmp_path):
    with remote.RemoteRunner(image, **test_env_options) as runner:
        inside = runner.run(
            "testagents:Learner",
            8,
            env_id="CartPole-v1",
            seed=5,
            log=tmp_path / "in",
            agent_kwargs={"seed": 2},
        )
        outside = runner.run(
            testagents.Learner(seed=2), 8, env_id="CartPole-v1", seed=5, log=tmp_path / "out"
        )
    assert trajectory(tmp_path / "in") == trajectory(tmp_path / "out")
    assert inside["steps"] == outside["steps"] and outside["episodes"] == 8
    assert read_log(tmp_path / "out")[0]["image_sha256"] == runner.image_sha256


def test_a_state_dict_agent_resumes_identically(image, test_env_options, tmp_path):
    options = {"env_id": "CartPole-v1", "seed": 0, "agent_kwargs": {"seed": 4}}
    with remote.RemoteRunner(image, **test_env_options) as runner:
        runner.run("testagents:Learner", 12, log=tmp_path / "whole", **options)
        first = runner.run("testagents:Learner", 6, log=tmp_path / "split", **options)
        assert first["checkpoint"] == 6
        second = runner.run("testagents:Learner", 12, log=tmp_path / "split", resume=True, **options)
    assert second["resumed_from"] == 6 and second["episodes"] == 12
    assert trajectory(tmp_path / "split") == trajectory(tmp_path / "whole")
    state = read_checkpoint(checkpoint_folder(tmp_path / "split"))
    assert state["agent_state"] == "state_dict" and state["next_episode"] == 12


def test_resuming_another_run_is_refused(image, test_env_options, tmp_path):
    log = tmp_path / "run"
    with remote.RemoteRunner(image, **test_env_options) as runner:
        runner.run("testagents:Walker", 2, env_id="CartPole-v1", seed=0, log=log)
        kept = log.read_bytes()
        with pytest.raises(remote.ExperimentError, match="of another run"):
            runner.run("testagents:Walker", 4, env_id="CartPole-v1", seed=1, log=log, resume=True)
        assert log.read_bytes() == kept
        # a finished run resumed: nothing more to do, the same summary
        again = runner.run("testagents:Walker", 2, env_id="CartPole-v1", seed=0, log=log, resume=True)
        assert again["episodes"] == 2 and again["resumed_from"] == 2 and log.read_bytes() == kept


def test_checkpoint_on_demand_during_a_run(image, test_env_options, tmp_path):
    log = tmp_path / "run"
    with remote.RemoteRunner(image, **test_env_options) as runner:
        reached: list[int] = []

        def ask() -> None:
            while not (log.exists() and len(read_log(log)) >= 3):
                time.sleep(0.01)
            reached.extend(runner.checkpoint(timeout=30))

        asker = threading.Thread(target=ask)
        asker.start()
        summary = runner.run(
            "testagents:Walker",
            40,
            env_id="CartPole-v1",
            log=log,
            agent_kwargs={"delay": 0.002},
            checkpoint_every_sec=None,
        )
        asker.join()
    assert len(reached) == 1 and 3 <= reached[0] < 40
    assert summary["checkpoint"] == 40


SIGNALLED = """
import sys, remote
image, log, E = sys.argv[1], sys.argv[2], sys.argv[3]
with remote.RemoteRunner(image, binds=[f"{E}:{E}:ro"], env={"PYTHONPATH": E}) as runner:
    print(runner.pid, flush=True)
    summary = runner.run("testagents:Walker", 200, env_id="CartPole-v1", log=log,
                         agent_kwargs={"delay": 0.002}, checkpoint_every_sec=None)
print("not reached: remote's SIGTERM handler ends the process", flush=True)
"""


def test_sigterm_checkpoints_at_the_end_of_the_episode_then_the_process_ends(
    image, test_env_options, tmp_path
):
    log = tmp_path / "run"
    host = subprocess.Popen(
        [sys.executable, "-c", SIGNALLED, image, str(log), str(TEST_ENVS)], stdout=subprocess.PIPE, text=True
    )
    container_pid = int(host.stdout.readline())
    wait_for_episodes(log, 3, host)
    os.kill(host.pid, signal.SIGUSR1)  # a checkpoint, and the run goes on
    deadline = time.monotonic() + 30
    while read_checkpoint(checkpoint_folder(log)) is None:
        assert time.monotonic() < deadline and host.poll() is None
        time.sleep(0.01)
    os.kill(host.pid, signal.SIGTERM)
    assert host.wait(30) == -signal.SIGTERM and "not reached" not in host.stdout.read()
    assert wait_gone([container_pid]) == []
    state = read_checkpoint(checkpoint_folder(log))
    assert state["next_episode"] == len(read_log(log)) < 200  # the checkpoint covers every logged episode
    with remote.RemoteRunner(image, **test_env_options) as runner:
        summary = runner.run(
            "testagents:Walker", 200, env_id="CartPole-v1", log=log, resume=True, agent_kwargs={"delay": 0.0}
        )
        runner.run("testagents:Walker", 200, env_id="CartPole-v1", log=tmp_path / "whole")
    assert summary["resumed_from"] == state["next_episode"]
    assert trajectory(log) == trajectory(tmp_path / "whole")
    assert json.loads(log.read_text().splitlines()[-1])["episode"] == 199


def test_a_crashed_container_is_restarted_and_its_run_resumes(image, test_env_options, tmp_path):
    from remote.manager import ContainerManager
    from remote.manager.processes import server_pid
    from remote.manager.record import Record

    with remote.RemoteRunner(image, **test_env_options) as runner:
        runner.run("testagents:Walker", EPISODES, env_id="CartPole-v1", log=tmp_path / "whole")
    log = tmp_path / "run"
    with ContainerManager(
        Record(tmp_path / "record.sqlite"), max_restarts=2, backoff=0.1, sample_interval=0
    ) as manager:
        name = manager.create(0, image, cpus=0, **test_env_options)
        manager.start(name)
        first = server_pid(manager.runner(name))
        results: list = []
        worker = threading.Thread(
            target=lambda: results.append(
                manager.run(
                    name,
                    "testagents:Walker",
                    EPISODES,
                    env_id="CartPole-v1",
                    log=log,
                    checkpoint_every=4,
                    agent_kwargs={"delay": 0.002},
                )
            )
        )
        worker.start()
        wait_for_episodes(log, 10)
        os.kill(first, signal.SIGKILL)  # the server dies mid-run
        worker.join(60)
        assert not worker.is_alive() and results, "the run did not finish after the restart"
        assert manager.status(name).restarts == 1 and server_pid(manager.runner(name)) != first
    summary = results[0]
    assert 4 <= summary["resumed_from"] <= 12 and summary["episodes"] == EPISODES
    assert trajectory(log) == trajectory(tmp_path / "whole")


def test_pause_with_a_checkpoint_then_resume_the_run_goes_on(image, test_env_options, tmp_path):
    from remote.manager import ContainerManager
    from remote.manager.record import Record

    log = tmp_path / "run"
    with ContainerManager(Record(tmp_path / "record.sqlite"), sample_interval=0) as manager:
        name = manager.create(0, image, cpus=0, timeout=2.0, **test_env_options)
        manager.start(name)
        results: list = []
        worker = threading.Thread(
            target=lambda: results.append(
                manager.run(
                    name,
                    "testagents:Walker",
                    60,
                    env_id="CartPole-v1",
                    log=log,
                    agent_kwargs={"delay": 0.002},
                )
            )
        )
        worker.start()
        wait_for_episodes(log, 3)
        manager.pause(name, checkpoint=True)
        frozen = len(read_log(log))
        covered = read_checkpoint(checkpoint_folder(log))["next_episode"]
        assert 3 <= covered <= frozen
        time.sleep(3.0)  # longer than the runner's timeout: the run's polls wait for the thaw
        assert len(read_log(log)) <= frozen + 1  # frozen (at most an episode being written ended)
        manager.resume(name)
        worker.join(60)
        events = [e["event"] for e in manager.record.query("SELECT event FROM events")]
    assert results and results[0]["episodes"] == 60 and "CHECKPOINT" in events


# -- videos -----------------------------------------------------------------------------------


def test_videos_of_a_run_in_the_container_and_on_the_host_have_a_frame_per_step_plus_one(
    envs_image, test_env_options, tmp_path
):
    from remote.manager import ContainerManager
    from remote.manager.record import Record
    from remote.video import count_frames

    record = Record(tmp_path / "record.sqlite")
    with ContainerManager(record, sample_interval=0) as manager:
        name = manager.create(0, envs_image, cpus=0, **test_env_options)
        manager.start(name)
        inside = manager.run(
            name, "testagents:pushes_left", 5, env_id="CartPole-v1", log=tmp_path / "in.jsonl", video_every=2
        )
        host_agent, out_log, host_videos = (
            testagents.Walker(seed=0),
            tmp_path / "out.jsonl",
            tmp_path / "host-videos",
        )
        outside = manager.run(
            name, host_agent, 2, env_id="CartPole-v1", log=out_log, video_every=1, video_dir=host_videos
        )
    videos = tmp_path / "in.jsonl.videos"
    assert inside["videos"] == [str(videos / f"episode-{i:06d}.mp4") for i in (0, 2, 4)]
    assert sorted(p.name for p in videos.iterdir()) == [
        "episode-000000.mp4",
        "episode-000002.mp4",
        "episode-000004.mp4",
    ]
    lengths = [line["length"] for line in read_log(tmp_path / "in.jsonl")]
    assert [count_frames(v) for v in inside["videos"]] == [lengths[i] + 1 for i in (0, 2, 4)]
    lengths = [line["length"] for line in read_log(tmp_path / "out.jsonl")]
    assert [count_frames(v) for v in outside["videos"]] == [n + 1 for n in lengths]
    assert outside["videos"][0].startswith(str(tmp_path / "host-videos"))
    runs = [s for s in record.list_sessions(name, everything=True) if s["agent"]]  # (an env session too)
    assert [s["videos"] for s in runs] == [inside["videos"], outside["videos"]]
