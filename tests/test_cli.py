"""The `remote` command: every subcommand run for real, in a subprocess, against real
containers, with its exit status (0 ok, 1 failed, 2 usage, 3 runtime failure)."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import os
import pty
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from helpers import cli, wait_gone
from https_server import ImageServer

import remote
from remote.images import cache, payload
from remote.progress import Progress
from remote.runtime.processes import Owner

ROOT = Path(__file__).resolve().parent.parent
TEST_ENVS = ROOT / "tests" / "envs"
IN_CI = os.environ.get("CI", "").lower() == "true"
COMMANDS = [
    "pull",
    "build",
    "images",
    "inspect",
    "shell",
    "run",
    "ps",
    "logs",
    "sessions",
    "stop",
    "kill",
    "gc",
    "check",
    "bench",
]


@pytest.fixture
def cache_root(tmp_path, monkeypatch) -> Path:
    """A cache (and record) of this test's own, for this process and the commands it runs."""
    root = tmp_path / "cache"
    monkeypatch.setenv("REMOTE_CACHE", str(root))
    return root


# -- help and usage ------------------------------------------------------------------------------


def test_help_lists_every_command_with_a_summary_and_examples():
    done = cli("--help")
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    for command in COMMANDS:
        (line,) = [x for x in lines if x.split()[:1] == [command]]
        assert len(line.split()) > 3  # a one-line summary
    assert "Examples:" in done.stdout and "$ remote run" in done.stdout and "Exit status" in done.stdout
    assert cli("help", "run").stdout.startswith("usage: remote run")
    assert "Examples:" in cli("check", "--help").stdout
    assert cli("--version").stdout.strip() == f"remote {remote.__version__}"


def test_usage_errors_exit_2():
    assert cli().returncode == 2
    assert cli("images").returncode == 2  # an action is required
    done = cli("run", "x.sif", "CartPole-v1", "--episodes", "3", "--log", "l.jsonl")
    assert done.returncode == 2 and "--agent" in done.stderr
    assert cli("frobnicate").returncode == 2
    zero = cli("run", "x.sif", "CartPole-v1", "--agent", "a:b", "--episodes", "0", "--log", "l")
    assert zero.returncode == 2 and "not a positive whole number" in zero.stderr
    assert cli("images", "prune").returncode == 2  # nothing said about what to prune


def test_the_installed_command():
    script = Path(sys.executable).parent / "remote"
    if not script.exists():
        if IN_CI:
            pytest.fail("CI=true: the `remote` entry point is not installed next to the Python")
        pytest.skip(reason="no `remote` entry point beside this Python (pip install -e . makes it)")
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "check" in done.stdout


# -- images --------------------------------------------------------------------------------------


def test_pull_ls_rm_and_prune(tmp_path, cache_root):
    server = ImageServer(tmp_path)
    try:
        data = os.urandom(1 << 20)
        digest = hashlib.sha256(data).hexdigest()
        server.files["/envs.sif"] = data
        server.files["/other.sif"] = data[::-1]
        ca = {"REMOTE_CA_BUNDLE": str(server.ca_bundle)}
        done = cli("pull", server.url("/envs.sif"), "--sha256", digest, "--json", **ca)
        assert done.returncode == 0, done.stderr
        pulled = json.loads(done.stdout)
        assert pulled["sha256"] == digest and Path(pulled["path"]).read_bytes() == data
        wrong = cli("pull", server.url("/other.sif"), "--sha256", "b" * 64, **ca)
        assert wrong.returncode == 3 and "sha256" in wrong.stderr
        other = hashlib.sha256(data[::-1]).hexdigest()
        assert cli("pull", server.url("/other.sif"), "--sha256", other, **ca).returncode == 0
    finally:
        server.close()
    listed = json.loads(cli("images", "ls", "--json").stdout)
    assert sorted(e["sha256"] for e in listed) == sorted([digest, other])
    table = cli("images", "ls").stdout
    assert table.startswith("NAME") and "envs.sif" in table and digest[:12] in table
    done = cli("images", "rm", digest[:12])
    assert done.returncode == 0 and "removed envs.sif" in done.stdout
    assert not Path(pulled["path"]).exists()
    assert cli("images", "rm", digest[:12]).returncode == 2  # nothing matches any more
    done = cli("images", "prune", "--older-than", "0s")
    assert done.returncode == 0 and "1 image(s) removed" in done.stdout
    assert json.loads(cli("images", "ls", "--json").stdout) == []


def test_build_a_recipe(minimal_image, tmp_path, cache_root):
    if os.geteuid() != 0 and not IN_CI:
        pytest.skip(reason="a localimage build as non-root needs --fakeroot set up for this user")
    recipe = tmp_path / "tiny.def"
    recipe.write_text("Bootstrap: localimage\nFrom: {{ BASE }}\n\n%post\n    echo built > /opt/built.txt\n")
    out = tmp_path / "tiny.sif"
    done = cli("build", str(recipe), str(out), "--build-arg", f"BASE={minimal_image}", "--json", timeout=300)
    assert done.returncode == 0, done.stderr
    built = json.loads(done.stdout)
    assert built["path"] == str(out) and Path(built["cached"]).is_file()
    assert hashlib.sha256(out.read_bytes()).hexdigest() == built["sha256"]
    shown = subprocess.run(
        ["apptainer", "exec", str(out), "cat", "/opt/built.txt"], capture_output=True, text=True
    )
    assert shown.stdout == "built\n"
    assert "\r" not in done.stderr  # no progress bar when stderr is not a terminal
    assert cli("build", str(tmp_path / "missing.def")).returncode == 2
    bad = tmp_path / "bad.def"
    bad.write_text(f"Bootstrap: localimage\nFrom: {tmp_path / 'no-such.sif'}\n")
    failed = cli("build", str(bad))
    assert failed.returncode == 3 and "building" in failed.stderr


# -- experiments ---------------------------------------------------------------------------------


def test_run_an_experiment(image, tmp_path, cache_root):
    log = tmp_path / "runs" / "balancer.jsonl"
    args = ["run", image, "CartPole-v1", "--pythonpath", str(TEST_ENVS), "--episodes", "5", "--seed", "3"]
    done = cli(*args, "--agent", "testagents:Balancer", "--log", str(log), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    lines = remote.read_log(log)
    assert summary["episodes"] == 5 and summary["log"] == str(log)
    assert [x["seed"] for x in lines] == [3, 4, 5, 6, 7]
    assert summary["steps"] == sum(x["length"] for x in lines)
    assert "\r" not in done.stderr  # quiet: stderr is not a terminal
    text = cli(*args, "--agent", "testagents:random_policy", "--log", str(tmp_path / "r.jsonl"))
    assert text.returncode == 0 and "5 episodes of CartPole-v1" in text.stdout
    failed = cli(*args, "--agent", "testagents:crashing", "--log", str(tmp_path / "c.jsonl"))
    assert failed.returncode == 1 and "agent exploded" in failed.stderr
    missing = cli("run", str(tmp_path / "nope.sif"), "CartPole-v1", "--agent", "a:b", "--episodes", "1",
                  "--log", str(tmp_path / "m.jsonl"))  # fmt: skip
    assert missing.returncode == 3 and "no image" in missing.stderr
    # the runs are sessions on the record
    sessions = json.loads(cli("ps", "--all", "--json").stdout)["sessions"]
    assert [(s["env_id"], s["seed"], s["episodes"]) for s in sessions][:2] == [("CartPole-v1", 3, 5)] * 2


def test_remote_checkpoint_then_stop_then_run_resume_gives_the_uninterrupted_log(image, tmp_path, cache_root):
    log = tmp_path / "run.jsonl"
    args = ["run", image, "CartPole-v1", "--pythonpath", str(TEST_ENVS), "--agent", "testagents:Walker"]
    args += [
        "--episodes",
        "60",
        "--agent-arg",
        "delay=0.003",
        "--checkpoint-every-sec",
        "0",
        "--log",
        str(log),
    ]
    running = subprocess.Popen(
        [sys.executable, "-m", "remote.cli", *args, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
    )
    name = f"run-{running.pid}"
    deadline = time.monotonic() + 60
    while not (log.exists() and len(remote.read_log(log)) >= 3):
        assert running.poll() is None and time.monotonic() < deadline, (
            running.stderr.read() if running.poll() else ""
        )
        time.sleep(0.02)
    asked = cli("checkpoint", name)
    assert asked.returncode == 0 and f"{name}: run.jsonl checkpointed at ep-" in asked.stdout, asked.stderr
    assert cli("stop", name).returncode == 0  # SIGTERM: the run checkpoints at the end of its episode
    out, err = running.communicate(timeout=60)
    assert running.returncode == 0, err
    stopped = json.loads(out)
    assert (
        stopped["stopped"] and stopped["checkpoint"] == stopped["episodes"] == len(remote.read_log(log)) < 60
    )
    again = cli(*args, "--resume", "--json")
    assert again.returncode == 0, again.stderr
    resumed = json.loads(again.stdout)
    assert resumed["resumed_from"] == stopped["episodes"] and resumed["episodes"] == 60
    with remote.RemoteRunner(
        image, binds=[f"{TEST_ENVS}:{TEST_ENVS}:ro"], env={"PYTHONPATH": str(TEST_ENVS)}
    ) as runner:
        runner.run("testagents:Walker", 60, env_id="CartPole-v1", log=tmp_path / "whole")
    key = [(x["episode"], x["seed"], x["return"]) for x in remote.read_log(log)]
    assert key == [(x["episode"], x["seed"], x["return"]) for x in remote.read_log(tmp_path / "whole")]
    sessions = json.loads(cli("sessions", "--all", "--json").stdout)
    mine = [s for s in sessions if s["config"] and s["config"].get("log") == str(log)]
    assert [(s["status"], s["checkpoint"]) for s in mine] == [
        ("interrupted", stopped["episodes"]),
        ("finished", 60),
    ]


def test_run_draws_a_progress_bar_on_a_terminal(image, tmp_path, cache_root):
    master, terminal = pty.openpty()
    args = ["run", image, "CartPole-v1", "--pythonpath", str(TEST_ENVS), "--episodes", "5"]
    args += ["--agent", "testagents:Balancer", "--log", str(tmp_path / "run.jsonl")]
    process = subprocess.Popen(
        [sys.executable, "-m", "remote.cli", *args],
        stdout=subprocess.PIPE,
        stderr=terminal,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
    )
    os.close(terminal)
    drawn = b""
    with contextlib.suppress(OSError):  # EIO once the command has exited
        while chunk := os.read(master, 4096):
            drawn += chunk
    os.close(master)
    assert process.wait(120) == 0
    assert "remote: run CartPole-v1  [########################]  5/5 episodes" in drawn.decode()


# -- containers on the record --------------------------------------------------------------------


def test_ps_shows_a_running_container_with_its_usage(image, cache_root):
    with remote.ContainerManager(prefix="pstest", sample_interval=0.2) as manager:
        name = manager.create(0, image)
        manager.start(name)
        env = manager.make(name, "CartPole-v1")
        env.reset(seed=0)
        for _ in range(200):
            if env.step(env.action_space.sample())[2]:
                env.reset()
        done = cli("ps", "--json")
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        (row,) = [c for c in report["containers"] if c["name"] == name]
        assert row["state"] == "RUNNING" and row["pid"] == manager.status(name).pid
        assert isinstance(row["cpu_percent"], float) and row["cpu_percent"] >= 0
        assert row["rss"] > 10 * 2**20  # a Python with numpy and gymnasium
        assert 0 < row["uptime"] < 600
        (session,) = [s for s in report["sessions"] if s["container"] == name]
        assert session["env_id"] == "CartPole-v1" and session["ended"] is None
        assert session["status"] == "running" and row["sessions"] == 1
        table = cli("ps").stdout.splitlines()
        assert table[0].split()[:6] == ["NAME", "STATE", "PID", "UPTIME", "CPU", "%"]
        assert table[0].split()[7:9] == ["RESTARTS", "SESSIONS"]
        (line,) = [x for x in table if x.startswith(name)]
        assert "RUNNING" in line and "MiB" in line
        assert line.split()[7:9] == ["0", "1"]  # RESTARTS, SESSIONS (after CPU % and an RSS of 2 words)
        env.close()
    assert name not in cli("ps").stdout  # stopped: only in `remote ps --all`
    assert name in cli("ps", "--all").stdout


def test_stop_and_kill_by_name_and_pid(image, cache_root):
    with remote.ContainerManager(prefix="stoptest", sample_interval=0, backoff=0.05) as manager:
        first, second = manager.create(0, image), manager.create(1, image)
        manager.start(first)
        manager.start(second)
        pids = [manager.status(first).pid, manager.status(second).pid]
        done = cli("stop", first)
        assert done.returncode == 0 and f"stopped {first}" in done.stdout
        done = cli("kill", str(pids[1]))
        assert done.returncode == 0 and f"killed {second}" in done.stdout
        assert wait_gone(pids, 10) == []
        time.sleep(0.5)  # a restart would have begun by now (backoff 0.05 s)
        for name in (first, second):
            status = manager.status(name)
            assert status.state is remote.State.STOPPED and status.restarts == 0, status
            assert "requested by process" in status.reason
        again = cli("stop", first)
        assert again.returncode == 2 and "no running container" in again.stderr


HOST = """
import sys, time, remote
manager = remote.ContainerManager(prefix="gctest", sample_interval=0)
name = manager.create(0, sys.argv[1])
manager.start(name)
print(name, manager.status(name).pid, flush=True)
time.sleep(600)
"""


def test_gc_sweeps_orphans_stale_run_folders_and_old_images(image, tmp_path, cache_root):
    host = subprocess.Popen(
        [sys.executable, "-c", HOST, image],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    name, pid = host.stdout.readline().split()
    os.kill(host.pid, signal.SIGKILL)
    host.wait(10)
    assert wait_gone([int(pid)], 15) == []  # the container follows its host ...
    (row,) = json.loads(cli("ps", "--json").stdout)["containers"]
    assert row["state"] == "LOST"  # ... and `remote ps` sees its owner is dead
    # a run folder whose sweeper died with its owner (kill -9 of the whole group)
    dead = subprocess.Popen(["sleep", "10"])
    owner = Owner.of(dead.pid)
    dead.kill()
    dead.wait()
    stale = Path(tempfile.mkdtemp(prefix="rmt-", dir="/tmp"))
    (stale / "config.json").write_text(json.dumps({"transport": "unix", "owner": [owner.pid, owner.started]}))
    with remote.RemoteRunner(image) as live:  # a live run folder stays
        old = cache.staging_dir() / "old.tmp"
        old.write_bytes(b"x" * 1000)
        cache.publish(old, cache.image_path("a" * 64))
        cache.record("https://example.org/old.sif", "old.sif", "a" * 64)
        old_code, recent_code = payload.payload_dir().parent / "old", payload.payload_dir().parent / "recent"
        for folder in (old_code, recent_code):
            (folder / "top").mkdir(parents=True)
        os.utime(old_code, (time.time() - 8 * 86400,) * 2)  # a payload unused for 8 days
        time.sleep(1.1)
        done = cli("gc", "--older-than", "1s", "--json")
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert live.run_dir.is_dir() and str(live.run_dir) not in report["run_dirs"]
    assert report["orphans"] == [name]
    assert str(stale) in report["run_dirs"] and not stale.exists()
    assert [e["name"] for e in report["images"]] == ["old.sif"]
    assert report["payloads"] == [str(old_code)] and recent_code.is_dir() and payload.payload_dir().is_dir()
    assert json.loads(cli("ps", "--all", "--json").stdout)["containers"][0]["lost"] == 1
    shutil.rmtree(stale, ignore_errors=True)


def test_sessions_logs_and_gc_of_logs(image, tmp_path, cache_root):
    envs = {"binds": [f"{TEST_ENVS}:{TEST_ENVS}:ro"], "env": {"PYTHONPATH": str(TEST_ENVS)}}
    with remote.ContainerManager(prefix="sesstest", sample_interval=0) as manager:
        old, name = manager.create(0, image), manager.create(1, image, **envs)
        manager.start(old)
        manager.start(name)
        env = manager.make(name, "CartPole-v1")
        env.reset(seed=0)
        for _ in range(5):
            env.step(0)
        with pytest.raises(remote.ExperimentError, match="agent exploded"):
            manager.runner(name).run(
                "testagents:crashing", 10, env_id="CartPole-v1", log=tmp_path / "r.jsonl"
            )
        listed = json.loads(cli("sessions", "--json").stdout)
        (open_env,) = [s for s in listed if s["container"] == name and s["ended"] is None]
        assert (open_env["status"], open_env["agent"], open_env["ended"]) == ("running", None, None)
        env.close()
        logs = [manager.log_path(old), manager.log_path(name)]
    assert all(log.exists() for log in logs)
    done = cli("sessions", name)
    assert done.returncode == 0, done.stderr
    header, *lines = done.stdout.splitlines()
    assert header.split() == [
        "ID",
        "CONTAINER",
        "ENV",
        "AGENT",
        "STATUS",
        "EPISODES",
        "STEPS",
        "FINAL",
        "MEAN",
        "CHECKPOINT",
        "WALL",
    ]
    assert lines[0].split()[1:7] == [name, "CartPole-v1", "-", "finished", "0", "5"]
    failed = lines[1].split()
    assert failed[1:5] == [name, "CartPole-v1", "testagents:crashing", "failed"] and int(failed[5]) >= 1
    returns = [line["return"] for line in remote.read_log(tmp_path / "r.jsonl")]  # what the log got
    assert int(failed[5]) == len(returns) and failed[7:9] == [
        f"{returns[-1]:.2f}",
        f"{sum(returns) / len(returns):.2f}",
    ]
    unknown = cli("sessions", "nosuch-0")
    assert unknown.returncode == 2 and "no container named 'nosuch-0'" in unknown.stderr
    assert cli("logs", name).returncode == 0
    record = sqlite3.connect(cache_root / "record.sqlite")
    record.execute("UPDATE containers SET updated = ? WHERE name = ?", (time.time() - 8 * 86400, old))
    record.commit()
    record.close()
    done = cli("gc", "--older-than", "0", "--json")  # the logs of containers ended over 7 days ago
    assert done.returncode == 0 and json.loads(done.stdout)["logs"] == [str(logs[0])]
    assert not logs[0].exists() and logs[1].exists()
    done = cli("gc", "--older-than", "0", "--logs", "--json")
    assert json.loads(done.stdout)["logs"] == [str(logs[1])] and not logs[1].exists()
    gone = cli("logs", name)
    assert gone.returncode == 2 and "has no log on the record" in gone.stderr


# -- check and bench -----------------------------------------------------------------------------


def test_check_passes_on_the_shipped_image(image, cache_root):
    done = cli("check", image, "CartPole-v1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("PASS  ") == 7 and "FAIL" not in done.stdout
    report = json.loads(cli("check", image, "CartPole-v1", "--json").stdout)
    assert report["passed"] and len(report["results"]) == 7


def test_check_fails_naming_the_broken_contract(image, cache_root):
    done = cli("check", image, "testenvs:SeedIgnoringEnv", "--pythonpath", str(TEST_ENVS))
    assert done.returncode == 1
    assert "FAIL  seeding determinism: reset(seed=123) twice gave different observations" in done.stdout
    assert "PASS  step contract" in done.stdout
    assert "contracts broken: seeding determinism" in done.stdout
    report = json.loads(
        cli("check", image, "testenvs:SeedIgnoringEnv", "--pythonpath", str(TEST_ENVS), "--json").stdout
    )
    assert not report["passed"]
    assert {r["name"] for r in report["results"] if not r["passed"]} >= {"seeding determinism"}


def test_check_of_a_missing_image_is_a_runtime_failure(tmp_path, cache_root):
    done = cli("check", str(tmp_path / "nope.sif"), "CartPole-v1")
    assert done.returncode == 3 and "no image" in done.stderr


def test_bench_runs_remote_bench_or_says_it_is_missing(image, cache_root):
    if importlib.util.find_spec("remote.bench") is None:
        done = cli("bench")
        assert done.returncode == 3 and "remote.bench" in done.stderr
    else:
        done = cli("bench", "--quick", "--only", "transport", "--image", image, timeout=300)
        assert done.returncode == 0, done.stderr
        assert "| measurement | median |" in done.stdout and "CartPole remote step" in done.stdout
        assert "| warm `Pool.make` → first `reset` |" in done.stdout  # the warm pool's figure
        # a row whose image is missing is printed with the reason, never left out
        nope = [
            "--envs-image",
            "/nope.sif",
            "--dacbench-image",
            "/nope.sif",
            "--other-python-image",
            "/nope.sif",
        ]
        done = cli("bench", "--quick", "--only", "envs", "--image", image, *nope, timeout=300)
        assert done.returncode == 0, done.stderr
        for row in ("LunarLander-v3 overhead per step", "another Python", "FunctionApproximation-v0 step"):
            (line,) = [line for line in done.stdout.splitlines() if row in line]
            assert "not measured: image /nope.sif not found" in line
        assert "| CartPole-v1 step on one CPU, remote" in done.stdout  # measured: it needs no missing image
        done = cli("bench", "--help")
        assert done.returncode == 0 and "remote.bench" in done.stdout and "--quick" in done.stdout
        missing = cli("bench", "--quick", "--image", "/nonexistent.sif")
        assert missing.returncode == 2 and "/nonexistent.sif" in missing.stderr  # its own usage error


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_lines_are_drawn_on_a_terminal_only():
    quiet = io.StringIO()
    with Progress("run x", total=4, unit="episodes", stream=quiet) as bar:
        bar.update(2)
    assert quiet.getvalue() == ""
    terminal = _Terminal()
    with Progress("building a.def", stream=terminal):  # no total: the time elapsed, redrawn
        time.sleep(0.7)
    drawn = terminal.getvalue()
    assert drawn.count("\rremote: building a.def  ") >= 3 and drawn.endswith(" s \n")  # start, tick, end
    counted = _Terminal()
    with Progress("run x", total=4, unit="episodes", stream=counted) as bar:
        bar.update(2)
    drawn = counted.getvalue()
    assert drawn.startswith("\rremote: run x  [") and drawn.endswith("\n")
    assert "\rremote: run x  [############............]  2/4 episodes  50%  " in drawn  # the last state
