"""What a runtime is: how the server is started from an image, as an argv; and the registry
of runtimes by name, which each runtime module fills with :func:`register`."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar

from ..images.sources import Image, resolve_image

#: A folder made visible to the server: (host path, path seen by the server, "ro"|"rw").
Bind = tuple[str, str, str]

#: How an allocation's limits are enforced (see :mod:`remote.runtime.limits`): the runtime's
#: own cgroup flags, CPU affinity and an address-space rlimit, or nothing.
CGROUP = "cgroup"
RLIMIT = "affinity+rlimit"
NONE = "none"


def cgroup_flags(cpus: float, memory: int, enforcement: str) -> list[str]:
    """``--cpus``/``--memory`` for a ``"cgroup"`` enforcement (0 means no limit), else none."""
    if enforcement != CGROUP:
        return []
    flags = ["--cpus", f"{cpus:g}"] if cpus else []
    return flags + (["--memory", str(memory)] if memory else [])


class Runtime(ABC):
    """How the server is started. Subclasses say what an image is and build the argv;
    :class:`ServerProcess` runs and supervises that argv for all of them."""

    name: ClassVar[str]

    def resolve_image(self, image: str | os.PathLike[str], sha256: str | None = None) -> Image:
        """The image as the runtime will be given it, fetched or built into the cache if need
        be; raises ImageNotFound if there is none, ChecksumMismatch if ``sha256`` differs."""
        return resolve_image(image, sha256=sha256)

    @abstractmethod
    def command(
        self,
        image: str,
        python: str,
        args: Sequence[str],
        binds: Sequence[Bind] = (),
        env: Mapping[str, str] | None = None,
        name: str = "",
        flags: Sequence[str] = (),
    ) -> list[str]:
        """The argv that runs ``python *args`` from ``image`` with ``binds``, and only the
        variables in ``env`` (the host's environment is not passed in). ``name`` names the
        container where the runtime has names; ``flags`` (from :meth:`limit_flags`) go first
        after the runtime's own ``run``/``exec`` subcommand."""

    def limit_flags(self, cpus: float, memory: int, gpus: Sequence[str], enforcement: str) -> list[str]:
        """The ``flags`` of :meth:`command` that put ``cpus``, ``memory`` bytes (0: no limit) and
        the GPU ids ``gpus`` on a container under ``enforcement``. By default none: then only CPU
        affinity, the rlimit and ``CUDA_VISIBLE_DEVICES`` limit it (:mod:`remote.runtime.limits`)."""
        return []

    def cleanup(self, name: str) -> None:
        """Remove what may outlive the started process (called once it has exited); by
        default nothing does."""
        return None


#: Runtime name → a factory of that runtime with its defaults, in the order registered.
FACTORIES: dict[str, Callable[[], Runtime]] = {}


def register(name: str, factory: Callable[[], Runtime]) -> None:
    """Make ``name`` a value of ``runtime=`` and ``$REMOTE_RUNTIME``, started by ``factory()``."""
    FACTORIES[name] = factory
