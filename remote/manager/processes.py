"""A container's processes on the host: its tree, signals to it, its usage, and how we know
it is ours (its start time, and a server in it running on our run folder).

The container process is the supervised runtime command (``apptainer exec`` ...), which
leads its own process group; the env server runs somewhere below it.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import TYPE_CHECKING

import psutil

from ..errors import ContainerDied
from ..runtime.limits import container_cgroups, remove_cgroups
from ..runtime.processes import Owner

if TYPE_CHECKING:
    from ..runner import RemoteRunner


def started_at(pid: int) -> float | None:
    """Start time of process ``pid``, or None if it is gone."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def process_tree(pid: int) -> list[psutil.Process]:
    """Process ``pid`` and all its descendants (empty if it is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def signal_tree(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to the process group led by ``pid`` and to every descendant (an env may
    have started its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    for process in process_tree(pid):
        with contextlib.suppress(psutil.Error):
            process.send_signal(sig)


def tree_usage(pid: int, previous: dict[int, psutil.Process]) -> tuple[float, int, dict[int, psutil.Process]]:
    """CPU % and RSS bytes of the tree of ``pid`` since the last call, and the processes to
    pass as ``previous`` next time (a process's CPU % is measured from its previous call)."""
    cpu, rss, seen = 0.0, 0, {}
    for process in process_tree(pid):
        known = previous.get(process.pid, process)
        try:
            cpu += known.cpu_percent(None)
            rss += known.memory_info().rss
        except psutil.Error:
            continue
        seen[process.pid] = known
    return cpu, rss, seen


def server_in(pid: int, run_dir: str) -> int | None:
    """Host pid of the server under container process ``pid`` whose command line names
    ``run_dir``: how we know a container is ours."""
    for process in process_tree(pid):
        with contextlib.suppress(psutil.Error):
            if run_dir in " ".join(process.cmdline()):
                return process.pid
    return None


def server_pid(runner: RemoteRunner) -> int:
    """Host pid of the server process in a runner's container."""
    found = server_in(runner.pid, str(runner.run_dir)) if runner.pid is not None else None
    if found is None:
        raise ContainerDied(f"the server of {runner.image} is not running")
    return found


def is_ours(pid: int | None, started: float | None, run_dir: str | None) -> bool:
    """True if the container process ``pid`` is the one we recorded: same start time, and
    its tree runs our server on ``run_dir``."""
    if pid is None or started is None or not run_dir or not Owner(pid, started).alive():
        return False
    return server_in(pid, run_dir) is not None


def kill_if_ours(pid: int | None, started: float | None, run_dir: str | None) -> bool:
    """Kill the container process ``pid`` if it is the one we recorded (see :func:`is_ours`)."""
    if not is_ours(pid, started, run_dir):
        return False
    assert pid is not None and run_dir is not None
    tree, cgroups = process_tree(pid), container_cgroups(server_in(pid, run_dir) or pid)
    signal_tree(pid, signal.SIGKILL)
    psutil.wait_procs(tree, timeout=5)
    remove_cgroups(cgroups)
    return True
