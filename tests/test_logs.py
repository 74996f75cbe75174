"""The container's output: a bounded log (rotated at half its cap), on the record for a
managed container, read with `remote logs`, forwarded to logging, and nothing of a run left
in /tmp after kill -9 of its host; and how a run's session ends on the record."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest
from helpers import cli, wait_gone

import remote
from remote.manager import ContainerManager
from remote.manager.record import Record
from remote.runtime import ServerProcess
from remote.runtime.output import ContainerOutput, follow, rotated, tail

ROOT = Path(__file__).resolve().parent.parent
CHATTY = "testenvs:ChattyEnv"


def log_size(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, rotated(path)) if p.exists())


@pytest.fixture
def private_tmp(monkeypatch) -> Path:
    """A short folder standing in for /tmp (run folders go to $TMPDIR), for this process and
    the hosts it starts: other processes' run folders in the real /tmp do not show in it."""
    folder = Path(tempfile.mkdtemp(prefix="rl-", dir="/tmp"))
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    yield folder
    for path in folder.iterdir():
        subprocess.run(["rm", "-rf", str(path)], check=False)
    folder.rmdir()


# -- the log itself, with a plain process ----------------------------------------------------------


def test_the_log_rotates_at_half_its_cap_and_tail_spans_both_files(tmp_path):
    path = tmp_path / "out.log"
    output = ContainerOutput(path, max_bytes=4096)
    script = (
        "import sys\nfor i in range(1000): print(f'line {i:04d}', file=sys.stderr if i % 2 else sys.stdout)"
    )
    process = ServerProcess([sys.executable, "-u", "-c", script], output)
    assert process.exited.wait(30) and output.done  # drained before exited is set
    assert path.stat().st_size <= 2048 and rotated(path).stat().st_size <= 2048
    assert log_size(path) <= 4096
    kept = (rotated(path).read_text() + path.read_text()).splitlines()
    assert kept[-1] == "line 0999" and kept == [f"line {i:04d}" for i in range(1000 - len(kept), 1000)]
    lines = path.read_text().count("\n")
    assert tail(path, lines + 3).splitlines() == kept[-(lines + 3) :]  # across path.1 and path
    assert tail(path, None).splitlines() == kept
    assert process.log_tail(2) == "line 0998\nline 0999"
    assert tail(tmp_path / "none.log") == ""
    path.unlink()
    rotated(path).unlink()
    assert output.tail(1) == "line 0999\n"  # from the files it holds open, until closed
    output.close()
    assert output.tail(1) == ""


def test_follow_yields_what_is_written_across_rotation(tmp_path):
    path = tmp_path / "out.log"
    output = ContainerOutput(path, max_bytes=300)
    script = "import time\nfor i in range(40):\n    print(f'n{i:02d}', flush=True)\n    time.sleep(0.05)"
    process = ServerProcess([sys.executable, "-u", "-c", script], output)
    seen = "".join(follow(path, lambda: not process.exited.is_set(), interval=0.01))
    assert process.exited.is_set()
    assert seen.splitlines() == [f"n{i:02d}" for i in range(40)]  # 160 bytes: rotated at 150
    assert rotated(path).exists()


# -- a runner's output -----------------------------------------------------------------------------


def test_a_runner_keeps_its_output_in_its_run_folder_and_its_tail_after_death(image, test_env_options):
    runner = remote.RemoteRunner(image, **test_env_options)
    assert runner.output_log.parent == runner.run_dir
    env = runner.make(CHATTY, nbytes=20)
    env.reset(seed=0)
    env.step(0)
    deadline = time.monotonic() + 5
    while "chatty 0:1 " not in tail(runner.output_log, 1) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert tail(runner.output_log, 1) == f"chatty 0:1 {'x' * 20}\n"
    os.kill(runner.pid, signal.SIGKILL)
    with pytest.raises(remote.ContainerDied) as died:
        deadline = time.monotonic() + 10  # a count of steps could all be answered before the kill lands
        while time.monotonic() < deadline:
            env.step(0)
    last = died.value.log_tail.splitlines()[-1]  # of the steps answered before the kill landed
    assert last.startswith("chatty 0:") and last.endswith(" " + "x" * 20) and last in str(died.value)
    runner.close()
    assert not runner.run_dir.exists() and not runner.output_log.exists()


def test_the_tail_is_kept_when_the_server_empties_its_run_folder_at_close(image, test_env_options):
    runner = remote.RemoteRunner(image, **test_env_options)
    env = runner.make(CHATTY, nbytes=7)
    env.reset(seed=0)
    env.step(0)
    runner.close()  # the server removes what is in its run folder as it exits, output.log too
    assert runner.log_tail == "chatty 0:1 xxxxxxx" and not runner.run_dir.exists()


def test_forwarded_output_reaches_logging(image, test_env_options, caplog, tmp_path):
    caplog.set_level(logging.INFO, logger="remote.container")
    log = tmp_path / "out.log"
    with remote.RemoteRunner(image, forward_output=True, output_log=log, **test_env_options) as runner:
        assert runner.options["forward_output"] is True and runner.options["output_log"] == str(log)
        env = runner.make(CHATTY, nbytes=5)
        env.reset(seed=0)
        env.step(0)
        deadline = time.monotonic() + 5
        while not any("chatty 0:1" in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
            time.sleep(0.02)
    (record,) = [r for r in caplog.records if "chatty 0:1" in r.getMessage()]
    assert record.name == "remote.container" and record.levelno == logging.INFO
    assert record.getMessage() == f"{runner.name}: chatty 0:1 xxxxx"
    assert log.read_text() == "chatty 0:1 xxxxx\n"  # a log of one's own is kept after close


# -- 100,000 steps of 10 KB each -------------------------------------------------------------------


def test_100000_steps_of_10_kb_stay_under_the_cap_and_remote_logs_tails_them(
    image, test_env_options, tmp_path
):
    path = tmp_path / "record.sqlite"
    record = Record(path)
    with ContainerManager(record, prefix="chatty", sample_interval=0) as manager:
        name = manager.create(0, image, **test_env_options)
        manager.start(name)
        started = time.monotonic()
        summary = manager.runner(name).run(
            "testagents:random_policy", 100, env_id=CHATTY, seed=0, log=tmp_path / "run.jsonl"
        )
        took = time.monotonic() - started
        log = manager.log_path(name)
        assert summary["steps"] == 100_000
        row = record.find_container(name)
        assert log == tmp_path / "logs" / f"{name}-{row['id']}.log" and row["log"] == str(log)
        size = log_size(log)
        print(f"100,000 steps of 10 KB: {took:.1f} s, log {size / 2**20:.2f} MiB (path + path.1)")
        assert took < 60
        assert size <= 10 * 2**20
        assert rotated(log).stat().st_size > 5 * 2**20 - 10300  # half the cap, to the last whole line
        done = cli("logs", name, "--tail", "5", REMOTE_RECORD=str(path))
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert [line.split()[1] for line in lines] == [f"99:{t}" for t in range(996, 1001)]
        assert all(line.endswith("x" * 10240) for line in lines)
        (session,) = record.list_sessions(name, everything=True)
        assert (session["status"], session["agent"], session["steps"]) == (
            "finished",
            "testagents:random_policy",
            100_000,
        )
        assert session["config"] == {
            "episodes": 100,
            "seed": 0,
            "log": str(tmp_path / "run.jsonl"),
            "env_kwargs": {},
            "agent_kwargs": {},
        }
        assert session["checkpoint"] == 100
        assert session["mean_return"] == session["final_return"] == 1000.0 and session["wall_time"] > 0
    assert log.exists()  # kept after the container stopped, for post-mortem


def test_remote_logs_follows_across_rotation_until_the_container_stops(
    image, test_env_options, tmp_path, monkeypatch
):
    monkeypatch.setenv("REMOTE_OUTPUT_MAX_BYTES", "64K")  # rotated every 3 steps of 10 KB
    path = tmp_path / "record.sqlite"
    with ContainerManager(Record(path), prefix="follow", sample_interval=0) as manager:
        name = manager.create(0, image, **test_env_options)
        manager.start(name)
        env = manager.make(name, CHATTY)
        env.reset(seed=0)
        env.step(0)
        follower = subprocess.Popen(
            [sys.executable, "-m", "remote.cli", "logs", name, "-f"],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT), "REMOTE_RECORD": str(path)},
        )
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(follower.stdout), daemon=True)
        reader.start()
        deadline = time.monotonic() + 30
        while not lines and time.monotonic() < deadline:
            time.sleep(0.05)
        for _ in range(11):
            env.step(0)
            time.sleep(0.3)
        assert follower.poll() is None  # still following: the container runs
        manager.stop(name)
        assert follower.wait(15) == 0
        reader.join(5)
    assert [line.split()[1] for line in lines] == [f"0:{t}" for t in range(1, 13)]
    assert rotated(manager.log_path(name)).exists()


def test_remote_logs_of_an_unknown_container_exits_2(tmp_path):
    done = cli("logs", "nosuch-0", REMOTE_RECORD=str(tmp_path / "record.sqlite"))
    assert done.returncode == 2 and "no container named 'nosuch-0'" in done.stderr


# -- kill -9 of the host ---------------------------------------------------------------------------

RUNNER_HOST = """
import json, sys, remote
options = json.loads(sys.argv[2])
runner = remote.RemoteRunner(sys.argv[1], **options)
env = runner.make("testenvs:ChattyEnv")
env.reset(seed=0)
for _ in range(50):
    env.step(0)
print(json.dumps({"run_dir": str(runner.run_dir), "pid": runner.pid}), flush=True)
sys.stdin.read()
"""

MANAGER_HOST = """
import json, sys, remote
from remote.manager.record import Record
options = json.loads(sys.argv[2])
manager = remote.ContainerManager(Record(sys.argv[3]), prefix="victim", sample_interval=0)
name = manager.create(0, sys.argv[1], **options)
manager.start(name)
env = manager.make(name, "testenvs:ChattyEnv")
env.reset(seed=0)
for _ in range(50):
    env.step(0)
runner = manager.runner(name)
print(json.dumps({"run_dir": str(runner.run_dir), "pid": runner.pid, "name": name}), flush=True)
sys.stdin.read()
"""


def _host(script: str, *args: str) -> tuple[subprocess.Popen, dict]:
    host = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return host, json.loads(host.stdout.readline())


def _sweeper(host: subprocess.Popen, run_dir: str) -> psutil.Process:
    (sweeper,) = [
        p for p in psutil.Process(host.pid).children() if run_dir in p.cmdline() and "sh" in p.name()
    ]
    return sweeper


def test_kill_9_of_a_runner_host_leaves_nothing_in_tmp(image, test_env_options, private_tmp):
    before = set(os.listdir(private_tmp))
    host, state = _host(RUNNER_HOST, image, json.dumps(test_env_options))
    run_dir = Path(state["run_dir"])
    assert run_dir.parent == private_tmp
    deadline = time.monotonic() + 10  # the pump may lag the env's prints on a loaded machine
    while (run_dir / "output.log").stat().st_size <= 50 * 10240:
        assert time.monotonic() < deadline, "the container's output did not reach its log"
        time.sleep(0.05)
    tree = [state["pid"], *(p.pid for p in psutil.Process(state["pid"]).children(recursive=True))]
    host.kill()
    host.wait()
    assert wait_gone(tree, 10) == []
    deadline = time.monotonic() + 10  # the sweeper removes the run folder, and the log in it
    while run_dir.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert set(os.listdir(private_tmp)) == before == set()
    assert not list(Path("/tmp").glob(f"*{run_dir.name}*"))


def test_kill_9_of_a_manager_host_and_its_sweeper_then_the_next_manager_leaves_nothing_in_tmp(
    image, test_env_options, private_tmp, tmp_path
):
    path = tmp_path / "record.sqlite"
    host, state = _host(MANAGER_HOST, image, json.dumps(test_env_options), str(path))
    run_dir = Path(state["run_dir"])
    assert run_dir.parent == private_tmp
    tree = [state["pid"], *(p.pid for p in psutil.Process(state["pid"]).children(recursive=True))]
    _sweeper(host, str(run_dir)).kill()  # the whole host: nothing is left to clean up after it
    host.kill()
    host.wait()
    assert wait_gone(tree, 10) == []  # its lifeline closed: the server exits on its own
    assert os.listdir(private_tmp) == [run_dir.name]  # left behind: no one removed it
    record = Record(path)
    with ContainerManager(record, sample_interval=0) as manager:
        assert manager.swept == [state["name"]] and run_dir in manager.removed_run_dirs
    assert os.listdir(private_tmp) == []
    (row,) = record.query("SELECT log, lost FROM containers")
    assert row["lost"] == 1 and Path(row["log"]).parent == tmp_path / "logs"
    (session,) = record.list_sessions(everything=True)
    assert session["status"] == "lost" and session["ended"] is not None
    done = cli("logs", state["name"], "--tail", "1", REMOTE_RECORD=str(path))  # post-mortem
    assert done.returncode == 0 and done.stdout.startswith("chatty 0:50 xxx"), done.stderr


# -- how a run's session ends ---------------------------------------------------------------------


def test_an_interrupted_run_is_on_the_record_with_the_episodes_it_logged(image, test_env_options, tmp_path):
    record = Record(tmp_path / "record.sqlite")
    log = tmp_path / "run.jsonl"
    with ContainerManager(record, prefix="ctrlc", sample_interval=0) as manager:
        name = manager.create(0, image, **test_env_options)
        manager.start(name)
        timer = threading.Timer(2.0, os.kill, args=(os.getpid(), signal.SIGINT))
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            manager.runner(name).run(
                "testagents:Balancer",
                1000,
                env_id="CartPole-v1",
                seed=3,
                log=log,
                agent_kwargs={"delay": 0.001},
            )
        timer.join()
    (session,) = record.list_sessions(name, everything=True)
    logged = remote.read_log(log)
    assert session["status"] == "interrupted" and session["agent"] == "testagents:Balancer"
    assert session["config"] == {
        "episodes": 1000,
        "seed": 3,
        "log": str(log),
        "env_kwargs": {},
        "agent_kwargs": {"delay": 0.001},
    }
    assert 1 <= session["episodes"] == len(logged) < 1000
    assert session["final_return"] == logged[-1]["return"] and session["steps"] == sum(
        x["length"] for x in logged
    )
    assert session["wall_time"] >= 2.0
