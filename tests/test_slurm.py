"""remote.slurm: array tasks under submitit's LocalExecutor (real processes, real
containers), an image from an https URL into one shared cache, and cancellation by SIGTERM."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import psutil
import pytest
from conftest import IN_CI, REQUIRED
from https_server import ImageServer

import remote
import remote.slurm

try:
    import submitit
except ImportError:
    if IN_CI:
        raise
    pytest.skip(reason="submitit is not installed (pip install -e .[cluster])", allow_module_level=True)

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


@pytest.fixture
def cluster_env(tmp_path, monkeypatch) -> dict[str, Path]:
    """One cache shared by every task; the record on (this node's) local storage."""
    paths = {"cache": tmp_path / "shared-cache", "record": tmp_path / "node-local" / "record.sqlite"}
    monkeypatch.setenv("REMOTE_CACHE", str(paths["cache"]))
    monkeypatch.setenv("REMOTE_RECORD", str(paths["record"]))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), str(ROOT)]))
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    return paths


def executor(folder: Path) -> submitit.LocalExecutor:
    ex = submitit.LocalExecutor(folder=folder)
    ex.update_parameters(timeout_min=5)
    return ex


def test_eight_array_tasks_one_download_own_ports_and_logs(tmp_path, cluster_env, image):
    import slurm_tasks

    data = Path(image).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    server = ImageServer(tmp_path)
    server.files["/gymnasium.sif"] = data
    os.environ["REMOTE_CA_BUNDLE"] = str(server.ca_bundle)
    try:
        logs = tmp_path / "logs"
        jobs = executor(tmp_path / "submitit").map_array(
            slurm_tasks.rollout,
            range(8),
            [server.url("/gymnasium.sif")] * 8,
            [digest] * 8,
            [str(logs)] * 8,
        )
        results = [job.result() for job in jobs]
    finally:
        del os.environ["REMOTE_CA_BUNDLE"]
        server.close()

    assert server.gets("/gymnasium.sif") == 1, server.requests
    assert [r["task"] for r in results] == list(range(8))
    assert len({r["container"] for r in results}) == 8
    assert len({r["run_dir"] for r in results}) == 8
    ports = [p for r in results for p in r["ports"]]
    assert len(ports) == 16 and len(set(ports)) == 16
    assert len({r["pid"] for r in results}) == 8  # eight processes, as eight array tasks
    for r in results:  # each task's seed, from its id
        env = gym.make("CartPole-v1")
        np.testing.assert_array_equal(r["obs"], env.reset(seed=r["seed"])[0])
    log_files = sorted(logs.iterdir())
    assert len(log_files) == 8
    for r in results:
        text = Path(r["log"]).read_text()
        assert f"container {r['container']}" in text and str(r["ports"]) in text
        assert f"task {r['task']} done" in text and "container stopped" in text
    # every container is stopped, on the node's record
    with sqlite3.connect(cluster_env["record"]) as db:
        states = db.execute("SELECT name, state FROM containers").fetchall()
    assert sorted(states) == sorted((r["container"], "STOPPED") for r in results)
    assert [p.name for p in (cluster_env["cache"] / "images" / "sha256").iterdir()] == [f"{digest}.sif"]


def test_sigterm_stops_the_container_and_flushes_the_log(tmp_path, cluster_env, image):
    import slurm_tasks

    hold = tmp_path / "running.json"
    logs = tmp_path / "logs"
    job = executor(tmp_path / "submitit").submit(slurm_tasks.rollout, 3, image, None, str(logs), str(hold))
    deadline = time.monotonic() + 120
    while not hold.exists():
        assert time.monotonic() < deadline and not job.done(), job.stderr()
        time.sleep(0.1)
    time.sleep(0.2)  # the file is written whole
    running = json.loads(hold.read_text())
    container = psutil.Process(running["container_pid"])
    tree = [container, *container.children(recursive=True)]
    os.kill(running["pid"], signal.SIGTERM)  # what scancel does to a task
    deadline = time.monotonic() + 60
    while not job.done():
        assert time.monotonic() < deadline, "the task did not exit on SIGTERM"
        time.sleep(0.1)
    assert not job.paths.result_pickle.exists()  # it was cut short: no result
    gone, alive = psutil.wait_procs(tree, timeout=15)
    assert not alive
    text = Path(running["log"]).read_text()
    assert "task 3 got SIGTERM" in text and "task 3: container stopped" in text
    with sqlite3.connect(cluster_env["record"]) as db:
        state = db.execute("SELECT state FROM containers WHERE name = ?", (running["container"],)).fetchone()
    assert state == ("STOPPED",)
    assert not Path(running["run_dir"]).exists()


def test_task_id_and_record_path(monkeypatch, tmp_path):
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "5")
    assert remote.slurm.task_id() == 5
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    assert remote.slurm.task_id(2) == 2
    with pytest.raises(RuntimeError, match="SLURM_ARRAY_TASK_ID"):
        remote.slurm.task_id()
    monkeypatch.setenv("REMOTE_RECORD", str(tmp_path / "r.sqlite"))
    assert remote.slurm.record_path() == tmp_path / "r.sqlite"
    monkeypatch.delenv("REMOTE_RECORD")
    monkeypatch.setenv("REMOTE_CACHE", str(tmp_path / "cache"))
    assert remote.slurm.record_path() == tmp_path / "cache" / "record.sqlite"  # tmp is not NFS
    assert remote.slurm.filesystem_type("/proc/self") == "proc"


# -- a real one-node Slurm cluster (scripts/start-slurm.sh) ----------------------------------


@pytest.fixture(scope="module")
def slurm() -> None:
    up = shutil.which("sbatch") is not None and subprocess.run(["sinfo"], capture_output=True).returncode == 0
    if not up:
        message = "no Slurm cluster here (scripts/start-slurm.sh starts one, as root)"
        if "slurm" in REQUIRED:
            pytest.fail(f"REMOTE_TEST_REQUIRE has slurm: {message}", pytrace=False)
        pytest.skip(reason=message)


def test_sbatch_array_of_eight(tmp_path, cluster_env, image, slurm):
    data = Path(image).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    server = ImageServer(tmp_path)
    server.files["/gymnasium.sif"] = data
    logs, out = tmp_path / "logs", tmp_path / "out"
    out.mkdir()
    try:
        # sbatch passes this environment on: the shared cache, the node's record, the CA
        env = {**os.environ, "REMOTE_CA_BUNDLE": str(server.ca_bundle)}
        done = subprocess.run(
            [
                "sbatch",
                "--wait",
                "--array=0-7",
                "--cpus-per-task=1",
                f"--output={tmp_path}/slurm-%A_%a.out",
                "--wrap",
                " ".join(
                    [sys.executable, str(TESTS / "slurm_tasks.py"), server.url("/gymnasium.sif"), digest]
                    + [str(logs), str(out)]
                ),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=280,
        )
    finally:
        server.close()
    outputs = "\n".join(p.read_text() for p in sorted(tmp_path.glob("slurm-*.out")))
    assert done.returncode == 0, done.stderr + outputs
    results = [json.loads((out / f"{i}.json").read_text()) for i in range(8)]
    job = done.stdout.split()[-1] if done.stdout.strip() else None
    assert server.gets("/gymnasium.sif") == 1, server.requests
    assert len({r["container"] for r in results}) == 8
    assert all(r["container"].startswith("slurm-") for r in results), job
    assert len({r["run_dir"] for r in results}) == 8
    ports = [p for r in results for p in r["ports"]]
    assert len(set(ports)) == 16
    assert [r["seed"] for r in results] == list(range(8))
    assert len(list(logs.glob("slurm-*.log"))) == 8
    for r in results:
        assert f"task {r['task']} done" in Path(r["log"]).read_text()


def test_scancel_stops_the_container_and_flushes_the_log(tmp_path, cluster_env, image, slurm):
    hold, logs = tmp_path / "running.json", tmp_path / "logs"
    script = f"import slurm_tasks; slurm_tasks.rollout(None, {image!r}, None, {str(logs)!r}, {str(hold)!r})"
    submitted = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--array=3",
            f"--output={tmp_path}/slurm-%A_%a.out",
            "--wrap",
            f'{sys.executable} -c "{script}"',
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    job = submitted.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 120
    while not hold.exists():
        assert time.monotonic() < deadline, "the task did not start"
        time.sleep(0.2)
    time.sleep(0.2)
    running = json.loads(hold.read_text())
    container = psutil.Process(running["container_pid"])
    tree = [container, *container.children(recursive=True)]
    subprocess.run(["scancel", job], check=True)
    gone, alive = psutil.wait_procs(tree, timeout=30)
    assert not alive
    deadline = time.monotonic() + 60
    while subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip():
        assert time.monotonic() < deadline, "the job did not end"
        time.sleep(0.2)
    text = Path(running["log"]).read_text()
    assert "task 3 got SIGTERM" in text and "task 3: container stopped" in text, text
    assert not Path(running["run_dir"]).exists()


@pytest.mark.timeout(480)
def test_a_requeued_task_resumes_its_run_from_the_checkpoint_of_its_sigterm(
    tmp_path, cluster_env, image, slurm
):
    from remote.protocol.runlog import read_log

    envs, logs, out = TESTS / "envs", tmp_path / "logs", tmp_path / "out"
    out.mkdir()
    script = (
        f"import slurm_tasks; slurm_tasks.experiment({image!r}, {str(logs)!r}, {str(out)!r}, {str(envs)!r})"
    )
    submitted = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--requeue",
            "--array=2",
            f"--output={tmp_path}/slurm-%A_%a.out",
            "--wrap",
            f'{sys.executable} -c "{script}"',
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    job = submitted.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 120
    run_logs: list[Path] = []
    while not (run_logs and len(read_log(run_logs[0])) >= 8):
        assert time.monotonic() < deadline, "the task's run did not get going"
        time.sleep(0.05)
        run_logs = sorted(logs.glob("run-*-2.jsonl"))
    subprocess.run(["scontrol", "requeue", f"{job}_2"], check=True)  # SIGTERM now, then run again
    # a requeued job is eligible again ~2 minutes later (its BeginTime: Slurm waits for the job
    # credential of the killed run to expire; brought forward, the new run is killed with
    # "Job credential revoked")
    deadline = time.monotonic() + 330
    while not (out / "2.json").exists():
        assert time.monotonic() < deadline, "the requeued task did not finish"
        time.sleep(0.2)
    summary = json.loads((out / "2.json").read_text())
    assert summary["attempt"] == 2 and 8 <= summary["resumed_from"] < 40, summary
    attempts = (logs / f"slurm-{job}-2.log").read_text()
    assert "got SIGTERM" in attempts and "(attempt 2)" in attempts
    # the same log as one uninterrupted run of the task (its seed: base 0 + task 2)
    with remote.RemoteRunner(image, binds=[f"{envs}:{envs}:ro"], env={"PYTHONPATH": str(envs)}) as runner:
        runner.run("testagents:Walker", 40, env_id="CartPole-v1", seed=2, log=tmp_path / "whole")
    key = [(x["episode"], x["seed"], x["return"], x["length"]) for x in read_log(run_logs[0])]
    assert key == [(x["episode"], x["seed"], x["return"], x["length"]) for x in read_log(tmp_path / "whole")]
