"""Start, stop, crash and clean-up of real containers; start-up errors; socket security."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import Pyro5.api
import Pyro5.errors
import pytest
from helpers import alive, apptainer_instances, children, container_exists, server_pid, wait_gone

import remote
from remote.errors import ProtocolError
from remote.protocol import ops, rundir
from remote.protocol.channel import Channel
from remote.protocol.ops import PROTOCOL_VERSION


def assert_nothing_left(runner: remote.RemoteRunner, pids: list[int]) -> None:
    assert wait_gone(pids) == [], "processes survived"
    assert wait_gone(children(os.getpid())) == [], "a child process of the host survived"
    assert not runner.run_dir.exists(), "run dir (sockets) left behind"
    assert apptainer_instances() == ""
    assert not container_exists(runner), "container left behind"


@pytest.mark.parametrize("victim", ["runtime", "server"])
def test_kill_9_mid_episode_raises_container_died(runtime, victim):
    """kill -9 of the runtime's process (apptainer, podman, the interpreter) or of the server."""
    runner = runtime.runner()
    env = runner.make("CartPole-v1")
    env.reset(seed=0)
    env.step(0)
    server = server_pid(runner)
    pids = [runner._process.pid, server, *children(runner._process.pid), *children(server)]
    os.kill(runner._process.pid if victim == "runtime" else server, signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(remote.ContainerDied) as caught:
        while time.monotonic() < started + 10:  # calls may be answered before the kill lands
            env.step(0)  # never "environment is closed": the server cuts its streams first
    elapsed = time.monotonic() - started
    assert elapsed < 5.0, f"ContainerDied after {elapsed:.2f} s"
    assert "died" in str(caught.value) and caught.value.returncode is not None
    assert_nothing_left(runner, pids)
    with pytest.raises(remote.RemoteError):
        env.step(0)  # stays an error, no hang
    runner.close()
    env.close()


def test_close_leaves_nothing(runtime):
    runner = runtime.runner()
    env = runner.make("CartPole-v1")
    env.reset()
    server = server_pid(runner)
    pids = [runner._process.pid, server, *children(runner._process.pid), *children(server)]
    runner.close()
    assert_nothing_left(runner, pids)
    runner.close()  # idempotent


def test_exception_in_with_block_leaves_nothing(image):
    with pytest.raises(ZeroDivisionError), remote.RemoteRunner(image) as runner:
        pids = [runner._process.pid, *children(runner._process.pid)]
        raise ZeroDivisionError
    assert_nothing_left(runner, pids)


def _host_script(target, options: dict, tail: str) -> str:
    """A host process that starts a runner and an env that spawns a child, and prints the
    pids of the runtime's process, the server and all the server's descendants."""
    return textwrap.dedent(f"""
        import json, sys, time, remote
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from helpers import children, server_pid
        runner = remote.RemoteRunner({target.image!r}, runtime={target.runtime!r}, **{options!r})
        env = runner.make("testenvs:SpawningEnv")
        env.reset(seed=0)
        server = server_pid(runner)
        pids = [runner._process.pid, server, *children(runner._process.pid), *children(server)]
        print(json.dumps({{"pids": pids, "run_dir": str(runner.run_dir)}}), flush=True)
        {tail}
    """)


def test_atexit_stops_the_container(runtime, test_env_options):
    out = subprocess.run(
        [sys.executable, "-c", _host_script(runtime, test_env_options, "pass")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    state = json.loads(out.stdout.splitlines()[-1])
    assert len(state["pids"]) >= 3, state  # the runtime's process, the server, the env's child
    assert wait_gone(state["pids"]) == []
    assert not Path(state["run_dir"]).exists()


def test_kill_9_of_the_host_stops_the_container(runtime, test_env_options):
    """No orphan on any runtime: the env's own child goes too (without a PID namespace, for
    the process runtime, the sweeper kills the server's process group)."""
    host = subprocess.Popen(
        [sys.executable, "-c", _host_script(runtime, test_env_options, "time.sleep(60)")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        state = json.loads(host.stdout.readline())
        assert len(state["pids"]) >= 3, state
        assert all(alive(pid) for pid in state["pids"])
        host.kill()
        host.wait()
        assert wait_gone(state["pids"]) == [], "container outlived its host"
        deadline = time.monotonic() + 5
        while Path(state["run_dir"]).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(state["run_dir"]).exists(), "sockets left behind"
    finally:
        host.kill()


def test_missing_image():
    with pytest.raises(remote.ImageNotFound, match="no image at"):
        remote.RemoteRunner("/nonexistent/cartpole.sif")


def test_apptainer_not_installed(image, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("REMOTE_APPTAINER", raising=False)
    with pytest.raises(remote.RuntimeNotAvailable, match="install Apptainer"):
        remote.make("CartPole-v1", image=image)


def test_server_that_cannot_start(image):
    before = set(children(os.getpid()))
    started = time.monotonic()
    with pytest.raises(remote.ContainerStartError) as caught:
        remote.RemoteRunner(image, python="/no/such/python3")
    assert time.monotonic() - started < 30
    assert "exited during start-up" in str(caught.value)
    assert "/no/such/python3" in caught.value.log_tail
    assert wait_gone(list(set(children(os.getpid())) - before)) == []


def test_unknown_env_id(image):
    before = set(children(os.getpid()))
    with pytest.raises(remote.EnvCreationError) as caught:
        remote.make("NoSuchEnv-v0", image=image)
    assert "NoSuchEnv" in str(caught.value) and "Check the env id" in str(caught.value)
    assert wait_gone(list(set(children(os.getpid())) - before)) == []


def test_version_mismatch(image, monkeypatch):
    monkeypatch.setattr(ops, "PROTOCOL_VERSION", 999)
    with pytest.raises(remote.VersionMismatch, match="999"):
        remote.RemoteRunner(image)


def test_unix_sockets_are_owner_only(image):
    with remote.RemoteRunner(image) as runner:
        assert stat.S_IMODE(runner.run_dir.stat().st_mode) == 0o700
        for name in ("control", "envs"):
            mode = (runner.run_dir / name).stat().st_mode
            assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600, name
        assert stat.S_IMODE((runner.run_dir / "secret").stat().st_mode) == 0o600


def test_the_run_folder_files(tmp_path):
    """What the host writes (owner-only, never over a file) and the server reads, and back."""
    rundir.write_secret(tmp_path, "s3cret")
    rundir.write_config(tmp_path, "tcp", (5000, 5001), (123, 4.5))
    for name in (rundir.SECRET, rundir.CONFIG):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    with pytest.raises(FileExistsError):
        rundir.write_secret(tmp_path, "another")
    assert rundir.read_secret(tmp_path) == "s3cret"
    assert rundir.read_config(tmp_path) == {"transport": "tcp", "ports": [5000, 5001], "owner": [123, 4.5]}
    assert rundir.read_owner(tmp_path) == (123, 4.5)
    assert rundir.read_ready(tmp_path) is None
    rundir.write_ready(tmp_path, 7, "/run/control", 5001)
    ready = {"pid": 7, "control": "/run/control", "stream": 5001, "protocol": PROTOCOL_VERSION}
    assert rundir.read_ready(tmp_path) == ready
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([rundir.SECRET, rundir.CONFIG, rundir.READY])
    (tmp_path / rundir.READY).write_text("{")
    with pytest.raises(ProtocolError):
        rundir.read_ready(tmp_path)
    (tmp_path / rundir.CONFIG).write_text('{"transport": "unix"}')
    with pytest.raises(ValueError):
        rundir.read_owner(tmp_path)


def test_long_tmpdir_keeps_socket_paths_short(image, monkeypatch, tmp_path):
    long_dir = tmp_path / ("x" * 60) / ("y" * 60)
    long_dir.mkdir(parents=True)
    monkeypatch.setenv("TMPDIR", str(long_dir))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    with remote.RemoteRunner(image) as runner:
        assert len(str(runner.run_dir / "control")) < 100
        env = runner.make("CartPole-v1")
        assert env.reset(seed=0)[0].shape == (4,)


def test_tcp_requires_the_secret(image):
    with remote.RemoteRunner(image, transport="tcp") as runner:
        env = runner.make("CartPole-v1")
        assert env.reset(seed=0)[0].shape == (4,)  # the runner, with the secret, works
        port = int(runner._ready["control"])
        for handshake in ("hello", {"protocol": PROTOCOL_VERSION, "secret": "0" * 64}):
            proxy = Pyro5.api.Proxy(f"PYRO:runner@127.0.0.1:{port}")
            proxy._pyroSerializer = "msgpack"
            proxy._pyroHandshake = handshake
            proxy._pyroTimeout = 5
            with pytest.raises(Pyro5.errors.CommunicationError, match="rejected"):
                proxy.info()
            proxy._pyroRelease()
        # the env stream refuses a wrong secret too, and closes the connection
        with socket.create_connection(("127.0.0.1", int(runner._ready["stream"])), timeout=5) as s:
            Channel(s).send({"protocol": PROTOCOL_VERSION, "secret": "bad", "env": env.handle})
            status, error = Channel(s).recv()
            assert status == 1 and "authentication failed" in error["message"]
            assert s.recv(1) == b""
        assert env.step(0)[1] == 1.0  # the real client is unaffected
