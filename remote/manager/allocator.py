"""Resource accounting: CPUs, memory and GPUs handed to containers, across processes.

The machine's capacity is detected once (CPUs this process may run on, memory, GPUs from
``CUDA_VISIBLE_DEVICES`` or ``nvidia-smi -L``); allocations are rows in the shared record,
so two training scripts on one host (or one Slurm allocation) cannot promise the same
CPU twice. Allocations of a dead process are reclaimed at the next request.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from ..errors import ResourceUnavailable
from ..runtime.processes import Owner
from .record import Record

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)


def parse_size(size: int | str) -> int:
    """Bytes from ``1073741824``, ``"512M"``, ``"2G"``, ``"1.5GiB"`` (powers of 1024)."""
    if isinstance(size, int):
        return size
    match = _SIZE.match(size)
    if match is None:
        raise ValueError(f"memory size {size!r}: expected bytes or a number with K, M, G or T")
    return int(float(match[1]) * 1024 ** " KMGT".index((match[2] or " ").upper()))


def detect_gpus() -> list[str]:
    """GPUs this process may use: ``$CUDA_VISIBLE_DEVICES`` if set, else ``nvidia-smi -L``."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return re.findall(r"^GPU (\d+):", out, re.MULTILINE)


def detect_memory() -> int:
    """Bytes of memory: the machine's, or this process's cgroup limit if lower."""
    total = psutil.virtual_memory().total
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            limit_file = Path("/sys/fs/cgroup/memory") / path.lstrip("/") / "memory.limit_in_bytes"
        elif controllers == "":
            limit_file = Path("/sys/fs/cgroup") / path.lstrip("/") / "memory.max"
        else:
            continue
        try:
            text = limit_file.read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


@dataclass(frozen=True)
class Allocation:
    """Resources promised to one container: ``cpus`` (may be fractional) on the cores
    ``cpu_ids``, ``memory`` bytes, and the GPU ids ``gpus``."""

    id: int
    cpus: float
    cpu_ids: tuple[int, ...]
    memory: int
    gpus: tuple[str, ...]


class ResourceAllocator:
    """Hands out CPUs, memory and GPUs of this host; safe across processes.

    Args:
        record: the shared record; default: the user's record file.
        cpus: CPU ids to hand out; default: those this process may run on.
        memory: bytes to hand out; default: the machine's memory (or cgroup limit).
        gpus: GPU ids to hand out; default: :func:`detect_gpus` (inject a list to test).

    Example::

        allocator = ResourceAllocator()
        allocation = allocator.allocate(cpus=1, memory="2G")
        ...
        allocator.deallocate(allocation)
    """

    def __init__(
        self,
        record: Record | None = None,
        *,
        cpus: Sequence[int] | None = None,
        memory: int | str | None = None,
        gpus: Sequence[str] | None = None,
    ) -> None:
        self.record = record or Record()
        self.cpu_ids = tuple(sorted(cpus if cpus is not None else os.sched_getaffinity(0)))
        self.memory = parse_size(memory) if memory is not None else detect_memory()
        self.gpus = tuple(str(g) for g in (gpus if gpus is not None else detect_gpus()))

    def _used(self) -> tuple[dict[int, float], int, set[str]]:
        """Load of each core, bytes and GPU ids allocated now (inside a transaction)."""
        core_load = {cpu: 0.0 for cpu in self.cpu_ids}
        memory = 0
        gpus: set[str] = set()
        for row in self.record.allocations():
            ids = row["cpu_ids"]
            for cpu in ids:
                if cpu in core_load:
                    core_load[cpu] += row["cpus"] / len(ids)
            memory += row["memory"]
            gpus.update(row["gpus"])
        return core_load, memory, gpus

    def _shortfall(self, cpus: float, memory: int, gpus: int) -> list[str]:
        core_load, used_memory, used_gpus = self._used()
        free_cpus = len(self.cpu_ids) - sum(core_load.values())
        short = []
        if cpus > free_cpus + 1e-9:
            short.append(f"CPUs: {cpus:g} asked, {free_cpus:g} of {len(self.cpu_ids)} free")
        if memory > self.memory - used_memory:
            short.append(
                f"memory: {_mib(memory)} asked, {_mib(self.memory - used_memory)} of {_mib(self.memory)} free"
            )
        if gpus > len(self.gpus) - len(used_gpus):
            short.append(f"GPUs: {gpus} asked, {len(self.gpus) - len(used_gpus)} of {len(self.gpus)} free")
        return short

    def can_allocate(self, cpus: float = 0, memory: int | str = 0, gpus: int = 0) -> bool:
        """True if ``allocate`` with these arguments would succeed now."""
        with self.record.transaction():
            self.record.reclaim_dead_owners("allocations")
            return not self._shortfall(cpus, parse_size(memory), gpus)

    def allocate(self, cpus: float = 0, memory: int | str = 0, gpus: int = 0) -> Allocation:
        """Promise ``cpus`` CPUs, ``memory`` and ``gpus`` GPUs to the caller.

        Raises:
            ResourceUnavailable: something is short; the message says what and how much.
        """
        size = parse_size(memory)
        if cpus < 0 or size < 0 or gpus < 0:
            raise ValueError("cpus, memory and gpus must not be negative")
        owner = Owner.current()
        with self.record.transaction():  # one: no other process allocates in between
            self.record.reclaim_dead_owners("allocations")
            short = self._shortfall(cpus, size, gpus)
            if short:
                raise ResourceUnavailable(
                    "not enough free resources: " + "; ".join(short) + ". Wait for other containers to "
                    "stop, ask for less, or see ResourceAllocator.utilisation()"
                )
            core_load, _, used_gpus = self._used()
            cores = sorted(self.cpu_ids, key=lambda cpu: (core_load[cpu], cpu))[: max(1, math.ceil(cpus))]
            chosen_gpus = [g for g in self.gpus if g not in used_gpus][:gpus]
            allocation_id = self.record.add_allocation(owner, cpus, sorted(cores), size, chosen_gpus)
        return Allocation(allocation_id, cpus, tuple(sorted(cores)), size, tuple(chosen_gpus))

    def deallocate(self, allocation: Allocation) -> None:
        """Give an allocation back. Safe to call more than once."""
        self.record.remove_allocation(allocation.id)

    def utilisation(self) -> dict[str, float]:
        """Fraction of each resource allocated now: ``{"cpus", "memory", "gpus"}`` in [0, 1]."""
        with self.record.transaction():
            self.record.reclaim_dead_owners("allocations")
            core_load, memory, gpus = self._used()
        return {
            "cpus": sum(core_load.values()) / len(self.cpu_ids) if self.cpu_ids else 0.0,
            "memory": memory / self.memory if self.memory else 0.0,
            "gpus": len(gpus) / len(self.gpus) if self.gpus else 0.0,
        }


def _mib(size: int) -> str:
    return f"{size / 2**20:.0f} MiB"
