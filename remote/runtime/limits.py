"""Putting an allocation's limits on a container, the strongest way the machine allows.

* ``"cgroup"``: the runtime's own ``--cpus``/``--memory`` (:meth:`Runtime.limit_flags`):
  the kernel throttles CPU time and kills the container when it passes its memory limit.
  Needs root, or cgroups v2 with delegation to the user.
* ``"affinity+rlimit"``: the fallback: the container runs on its CPU cores only
  (``taskset``) and the server's address space is capped (``RLIMIT_AS``, set on the running
  server process, so Apptainer's own Go runtime, which reserves much address space, is
  not; processes the env starts inherit it): allocating past the limit fails with
  ``MemoryError`` inside the env instead of killing the container.

Both pin the container to the allocation's cores; GPUs are passed with
``CUDA_VISIBLE_DEVICES`` (and Apptainer's ``--nv``). A container killed with SIGKILL leaves
its (empty) cgroups behind, Apptainer being killed too: :func:`remove_cgroups` removes them.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from ..errors import RuntimeNotAvailable
from ..images.sources import Image
from .base import CGROUP, NONE, RLIMIT, Bind, Runtime

if TYPE_CHECKING:
    from ..manager.allocator import Allocation

__all__ = [
    "CGROUP",
    "NONE",
    "RLIMIT",
    "LimitedRuntime",
    "choose_enforcement",
    "cgroup_limits_available",
    "container_cgroups",
    "limit_address_space",
    "remove_cgroups",
]


def cgroup_limits_available() -> bool:
    """True if Apptainer can put ``--cpus``/``--memory`` on a container here: as root, or
    as a user with cgroups v2 (unified) and a systemd user session to delegate from."""
    if os.geteuid() == 0:
        return True
    unified = Path("/sys/fs/cgroup/cgroup.controllers").exists()
    return unified and bool(os.environ.get("DBUS_SESSION_BUS_ADDRESS") or os.environ.get("XDG_RUNTIME_DIR"))


def choose_enforcement(wanted: str = "auto") -> str:
    """``"cgroup"`` or ``"affinity+rlimit"``: ``wanted``, or for ``"auto"`` the best available."""
    if wanted == "auto":
        return CGROUP if cgroup_limits_available() else RLIMIT
    if wanted not in (CGROUP, RLIMIT):
        raise ValueError(f"limits must be 'auto', {CGROUP!r} or {RLIMIT!r}, not {wanted!r}")
    return wanted


class LimitedRuntime(Runtime):
    """A runtime that starts containers inside an allocation's limits.

    Args:
        base: the runtime to wrap.
        allocation: what the container may use; memory 0 means no memory limit.
        enforcement: ``"cgroup"`` or ``"affinity+rlimit"`` (see the module docstring); the
            ``process`` runtime has no cgroup flags, so it is always pinned and rlimited.
    """

    def __init__(self, base: Runtime, allocation: Allocation, enforcement: str) -> None:
        if shutil.which("taskset") is None:
            raise RuntimeNotAvailable("taskset is not on PATH; install util-linux to limit containers")
        self.base = base
        self.name = base.name  # type: ignore[misc]
        self.allocation = allocation
        self.enforcement = enforcement

    def resolve_image(self, image: str | os.PathLike[str], sha256: str | None = None) -> Image:
        return self.base.resolve_image(image, sha256)

    def cleanup(self, name: str) -> None:
        self.base.cleanup(name)

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
        """The base runtime's argv with its :meth:`~Runtime.limit_flags`, on the allocation's
        cores (``taskset``) and GPUs (``CUDA_VISIBLE_DEVICES``)."""
        allocation = self.allocation
        env = dict(env or {})
        if allocation.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(allocation.gpus)
        limits = self.base.limit_flags(allocation.cpus, allocation.memory, allocation.gpus, self.enforcement)
        extra = [*limits, *flags]
        if extra:
            cmd = self.base.command(image, python, args, binds, env, name, flags=extra)
        else:  # a runtime without flags (process, or one of the user's) need not take any
            cmd = self.base.command(image, python, args, binds, env, name)
        return ["taskset", "-c", ",".join(map(str, allocation.cpu_ids)), *cmd]


def limit_address_space(pid: int, memory: int) -> None:
    """Cap the address space of process ``pid`` (a container's server; what it starts
    inherits the cap) at ``memory`` bytes: ``RLIMIT_AS``, as ``prlimit --as`` does."""
    psutil.Process(pid).rlimit(psutil.RLIMIT_AS, (memory, memory))


def _cgroups(pid: int | str) -> dict[str, Path]:
    """Controller → cgroup folder of a process, from ``/proc/<pid>/cgroup``."""
    found = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        base = Path("/sys/fs/cgroup", controllers.removeprefix("name="))  # v2: controllers == ""
        found[controllers] = base / path.lstrip("/")
    return found


def container_cgroups(pid: int) -> list[Path]:
    """The cgroup folders a container process is in that this process is not in (read
    while it runs, for :func:`remove_cgroups` after it ends)."""
    try:
        theirs, ours = _cgroups(pid), _cgroups("self")
    except OSError:
        return []
    return [path for key, path in theirs.items() if path != ours.get(key) and path.is_dir()]


def remove_cgroups(paths: list[Path], wait: float = 5.0) -> list[Path]:
    """Remove the cgroup folders of an exited container, waiting up to ``wait`` seconds for
    its last processes to leave them (the kernel refuses to remove a cgroup with processes
    in it, so this never touches a live container). Returns those left."""
    deadline = time.monotonic() + wait
    left = list(paths)
    while left:
        for path in list(left):
            try:
                path.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                continue
            left.remove(path)
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    return left
