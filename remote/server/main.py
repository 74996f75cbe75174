"""The server's entry point: ``main(run_dir)``, run by the bootstrap in the container."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import Pyro5
import Pyro5.serializers
import Pyro5.server

from ..protocol import rundir
from .control import Daemon, RemoteRunnerServer
from .streams import EnvStreamServer


def _only_msgpack() -> None:
    """Make every Pyro5 serializer id decode as msgpack: no marshal/serpent from the wire."""
    msgpack_serializer = Pyro5.serializers.serializers["msgpack"]
    for serializer_id in list(Pyro5.serializers.serializers_by_id):
        Pyro5.serializers.serializers_by_id[serializer_id] = msgpack_serializer


def _listen(config: dict[str, Any], run_dir: Path, name: str, port: int) -> socket.socket:
    if config["transport"] == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        path = run_dir / name
        sock.bind(str(path))
        os.chmod(path, 0o600)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", port))
    sock.listen(64)
    return sock


def main(run_dir: str) -> None:
    """Serve until stdin closes. ``run_dir`` holds config.json and the secret (see
    :mod:`remote.protocol.rundir`)."""
    os.umask(0o077)
    root = Path(run_dir)
    config = rundir.read_config(root)
    secret = rundir.read_secret(root)
    _only_msgpack()
    Pyro5.config.SERIALIZER = "msgpack"
    runner = RemoteRunnerServer()
    ports = config.get("ports") or (0, 0)  # leased by the host, or picked here

    unix = config["transport"] == "unix"
    if unix:
        control_path = root / rundir.CONTROL_SOCKET
        daemon = Daemon(secret, unixsocket=str(control_path))
        os.chmod(control_path, 0o600)
        control: Any = str(control_path)
    else:
        daemon = Daemon(secret, host="127.0.0.1", port=ports[0])
        control = daemon.locationStr.rpartition(":")[2]
        control = int(control)
    daemon.register(runner, "runner")
    listener = _listen(config, root, rundir.STREAM_SOCKET, ports[1])
    stream: Any = str(root / rundir.STREAM_SOCKET) if unix else listener.getsockname()[1]
    streams = EnvStreamServer(listener, runner, secret)
    threading.Thread(target=streams.serve_forever, daemon=True).start()

    def shutdown(*_: Any) -> None:
        streams.stop()
        runner.close_all()
        shutil.rmtree(root, ignore_errors=True)
        os._exit(0)

    stopping = threading.Event()

    def stop_experiments_then_shutdown(*_: Any) -> None:
        from .experiment import EXPERIMENTS, STOP_GRACE

        if stopping.is_set():  # a second SIGTERM (Slurm's and the one Apptainer forwards)
            return
        stopping.set()
        EXPERIMENTS.stop_all(STOP_GRACE)  # each at the end of its episode, with a checkpoint
        shutdown()

    def checkpoint_experiments(*_: Any) -> None:
        from .experiment import EXPERIMENTS

        EXPERIMENTS.checkpoint_all()

    # SIGTERM (``remote stop``, Slurm's scancel, preemption): experiments checkpoint first.
    signal.signal(
        signal.SIGTERM,
        lambda *_: threading.Thread(target=stop_experiments_then_shutdown, daemon=True).start(),
    )
    signal.signal(signal.SIGUSR1, checkpoint_experiments)
    threading.Thread(target=_wait_for_eof, args=(shutdown,), daemon=True).start()

    rundir.write_ready(root, os.getpid(), control, stream)
    daemon.requestLoop()


def _wait_for_eof(then: Callable[[], None]) -> None:
    try:
        while sys.stdin.buffer.read(65536):
            pass
    except OSError:
        pass
    then()
