"""Runtimes: how the server is started, and the supervised process it runs as.

A :class:`Runtime` turns "run this Python, in this image, with these folders and
variables" into an argv; the image argument means what the runtime expects (a ``.sif``
for Apptainer, an interpreter for :class:`Process`, an image name for Podman/Docker).
:class:`ServerProcess` starts that argv and supervises it, the same for every runtime.

Why a supervised ``apptainer exec`` and not ``apptainer instance start``: the server is
one child process of the host, so its death is seen at once (a watcher thread waits on
it), killing its process group leaves nothing behind, and no instance name can be
orphaned. ``instance stop`` also takes 3-4 s here, an ``exec`` stops in milliseconds.
``--pid`` gives the container its own PID namespace: when the server exits, every
process the environment started goes with it.
"""

from __future__ import annotations

from ..config import runtime_name
from .apptainer import Apptainer
from .base import Bind, Runtime
from .oci import Docker, Podman
from .process import Process
from .supervisor import ServerProcess

__all__ = [
    "RUNTIMES",
    "Apptainer",
    "Bind",
    "Docker",
    "Podman",
    "Process",
    "Runtime",
    "ServerProcess",
    "get_runtime",
]

#: The names ``runtime=`` and ``$REMOTE_RUNTIME`` accept.
RUNTIMES = ("apptainer", "singularity", "process", "podman", "docker")


def get_runtime(runtime: str | Runtime | None = None) -> Runtime:
    """The runtime for ``runtime``: an instance, a name in :data:`RUNTIMES`, or None for
    ``$REMOTE_RUNTIME`` (default ``"apptainer"``)."""
    if isinstance(runtime, Runtime):
        return runtime
    wanted = runtime or runtime_name()
    if wanted == "apptainer":
        return Apptainer()
    if wanted == "singularity":
        return Apptainer("singularity")
    if wanted == "process":
        return Process()
    if wanted == "podman":
        return Podman()
    if wanted == "docker":
        return Docker()
    raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)} or a Runtime, not {wanted!r}")
