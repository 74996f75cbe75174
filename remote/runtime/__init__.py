"""Runtimes: how the server is started, and the supervised process it runs as.

A :class:`Runtime` turns "run this Python, in this image, with these folders and
variables" into an argv; the image argument means what the runtime expects (a ``.sif``
for Apptainer, an interpreter for :class:`Process`, an image name for Podman/Docker).
:class:`ServerProcess` starts that argv and supervises it, the same for every runtime.
Each runtime module registers its names (:func:`register`); :func:`get_runtime` looks
them up. Resource limits come from each runtime's :meth:`Runtime.limit_flags`.

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
from .base import FACTORIES, Bind, Runtime, register
from .oci import Docker, OciRuntime, Podman
from .process import Process
from .supervisor import ServerProcess

__all__ = [
    "RUNTIMES",
    "Apptainer",
    "Bind",
    "Docker",
    "OciRuntime",
    "Podman",
    "Process",
    "Runtime",
    "ServerProcess",
    "get_runtime",
    "register",
]

#: The names ``runtime=`` and ``$REMOTE_RUNTIME`` accept (those the runtime modules register).
RUNTIMES = tuple(FACTORIES)


def get_runtime(runtime: str | Runtime | None = None) -> Runtime:
    """The runtime for ``runtime``: an instance, a registered name (:data:`RUNTIMES`, or one
    given to :func:`register`), or None for ``$REMOTE_RUNTIME`` (default ``"apptainer"``)."""
    if isinstance(runtime, Runtime):
        return runtime
    wanted = runtime or runtime_name()
    factory = FACTORIES.get(wanted)
    if factory is None:
        raise ValueError(f"runtime must be one of {', '.join(FACTORIES)} or a Runtime, not {wanted!r}")
    return factory()
