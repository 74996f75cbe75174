"""Port leases: TCP ports on 127.0.0.1 that no two workers on this host get at once.

A lease is a row in the record, taken in one transaction after a bind proved the port
free; it is released on stop and reclaimed when its owner process is gone. Ports come
from ``REMOTE_PORT_RANGE`` (see :func:`remote.config.port_range`).
"""

from __future__ import annotations

import random
import re
import socket
from dataclasses import dataclass

from ..config import port_range
from ..errors import ResourceUnavailable
from ..runtime.processes import Owner
from .record import Record

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def instance_name(prefix: str, worker_id: int | str) -> str:
    """``<prefix>-<worker_id>``: the name of a worker's container, ports and files."""
    name = f"{prefix}-{worker_id}"
    if not _NAME.match(name):
        raise ValueError(f"instance name {name!r}: use letters, digits, '_', '.', '-' (at most 63)")
    return name


def is_free(port: int) -> bool:
    """True if nothing is bound to ``port`` on 127.0.0.1 (checked by binding it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass(frozen=True)
class PortLease:
    """A leased port; ``name`` says whose it is (an :func:`instance_name`)."""

    port: int
    name: str


def lease_ports(record: Record, name: str, count: int = 1) -> list[PortLease]:
    """Lease ``count`` ports for ``name``, owned by this process until :func:`release_ports`.

    Raises:
        ResourceUnavailable: the range has fewer than ``count`` free ports.
    """
    low, high = port_range()
    owner = Owner.current()
    with record.transaction():  # one: no other process leases in between
        record.reclaim_dead_owners("port_leases")
        leased = record.leased_ports()
        start = random.randint(low, high)
        found: list[int] = []
        for offset in range(high - low + 1):
            port = low + (start - low + offset) % (high - low + 1)
            if port not in leased and is_free(port):
                found.append(port)
                if len(found) == count:
                    break
        if len(found) < count:
            raise ResourceUnavailable(
                f"not enough free ports: {count} wanted, {len(found)} free in {low}-{high} "
                f"({len(leased)} leased); stop idle workers or widen REMOTE_PORT_RANGE"
            )
        record.add_leases(found, name, owner)
    return [PortLease(port, name) for port in found]


def release_ports(record: Record, leases: list[PortLease]) -> None:
    """Give leased ports back."""
    record.remove_leases([(lease.port, lease.name) for lease in leases])
