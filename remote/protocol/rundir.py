"""The run folder: the files through which the host starts a server, read on both sides.

The host makes an owner-only folder, bound into the container at the same path, and
writes into it, owner-only (:func:`write_secret`, :func:`write_config`):

* ``secret``: the session secret (text), which every connection must present;
* ``config.json``: ``{"transport": "unix" | "tcp", "ports": [control, stream] | null,
  "owner": [pid, start time]}``; ``ports`` are leased by the host (null: the server picks),
  ``owner`` is the host process, so that a folder left behind tells whether it is stale.

The server reads both (:func:`read_config`, :func:`read_secret`), listens (unix sockets
:data:`CONTROL_SOCKET` and :data:`STREAM_SOCKET` in the folder, or TCP ports on 127.0.0.1)
and, when it serves, writes ``ready.json`` atomically (:func:`write_ready`):
``{"pid": int, "control": path | port, "stream": path | port, "protocol": int}``, which the
host polls for (:func:`read_ready`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import ProtocolError
from .ops import PROTOCOL_VERSION

SECRET = "secret"
CONFIG = "config.json"
READY = "ready.json"
#: The unix sockets of a server in its run folder: the control object (Pyro5), the env streams.
CONTROL_SOCKET = "control"
STREAM_SOCKET = "envs"
SOCKETS = (CONTROL_SOCKET, STREAM_SOCKET)


def _write_private(path: Path, text: str) -> None:
    """Create ``path`` (it must not exist) readable by its owner alone, holding ``text``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def write_secret(run_dir: Path, secret: str) -> None:
    """The host's side: the session secret, owner-only."""
    _write_private(run_dir / SECRET, secret)


def write_config(
    run_dir: Path, transport: str, ports: tuple[int, int] | None, owner: tuple[int, float]
) -> None:
    """The host's side: how the server listens, and which process owns the folder; owner-only."""
    config = {"transport": transport, "ports": ports, "owner": list(owner)}
    _write_private(run_dir / CONFIG, json.dumps(config))


def read_secret(run_dir: Path) -> str:
    return (run_dir / SECRET).read_text().strip()


def read_config(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / CONFIG).read_text())


def read_owner(run_dir: Path) -> tuple[int, float]:
    """``(pid, start time)`` of the host process that made the folder. Raises OSError if
    config.json cannot be read, ValueError if it has no owner."""
    try:
        pid, started = read_config(run_dir)["owner"]
        return int(pid), float(started)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{run_dir / CONFIG} names no owner: {exc!r}") from None


def write_ready(run_dir: Path, pid: int, control: str | int, stream: str | int) -> None:
    """The server's side: where it serves, written atomically (a temporary file renamed)."""
    temporary = run_dir / f"{READY}.tmp"
    temporary.write_text(
        json.dumps({"pid": pid, "control": control, "stream": stream, "protocol": PROTOCOL_VERSION})
    )
    os.rename(temporary, run_dir / READY)


def read_ready(run_dir: Path) -> dict[str, Any] | None:
    """What :func:`write_ready` wrote, or None while the server has not written it yet.
    Raises ProtocolError if it is not such a file."""
    try:
        text = (run_dir / READY).read_text()
    except FileNotFoundError:
        return None
    try:
        ready = json.loads(text)
    except ValueError:
        ready = None
    if not (isinstance(ready, dict) and "control" in ready and "stream" in ready):
        raise ProtocolError(f"malformed {run_dir / READY}: {text[:100]!r}")
    return ready
