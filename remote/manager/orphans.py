"""Containers on the record that their manager cannot look after: the orphan sweep, and
stopping or checkpointing a container from another process of its user (``remote stop``,
``remote kill``, ``remote checkpoint``).

A container's host process (its manager) may die without stopping it. :func:`sweep_orphans`
marks the containers on the record whose host process is dead as lost, and kills the ones
still running (paused ones cannot see their host die), after checking by start time and
command line that they are ours (:func:`remote.manager.processes.is_ours`).
:func:`remove_stale_run_dirs` removes the run folders such a host left in ``/tmp`` (when
its sweeper died with it); :func:`remove_logs` the output logs of containers long ended.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from pathlib import Path

import psutil

from ..errors import UnknownContainer
from ..runner import stale_run_dirs
from ..runtime.limits import container_cgroups, remove_cgroups
from ..runtime.output import rotated
from ..runtime.processes import Owner
from .processes import is_ours, kill_if_ours, process_tree, server_in, signal_tree
from .record import Record, Row

#: Events by which another process asks a container's manager not to restart it: the
#: first for a stop, the second for a kill.
STOP_REQUESTS = ("STOP_REQUESTED", "KILL_REQUESTED")


def sweep_orphans(record: Record) -> list[str]:
    """Mark the containers of dead host processes as lost and kill those still running, in
    one transaction. Returns the names of the containers marked lost."""
    lost = []
    with record.transaction():
        for row in record.live_containers():
            if Owner(row["owner_pid"], row["owner_started"]).alive():
                continue
            killed = kill_if_ours(row["pid"], row["pid_started"], row["run_dir"])
            reason = f"lost: host process {row['owner_pid']} died" + (
                "; its container was still running and was killed" if killed else ""
            )
            record.mark_lost(row["id"], reason)
            lost.append(row["name"])
    return lost


def remove_stale_run_dirs() -> list[Path]:
    """Remove this user's run folders whose host process is dead (with the output logs in
    them; see :func:`remote.runner.stale_run_dirs`); returns them."""
    folders = stale_run_dirs()
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    return folders


def remove_logs(record: Record, older_than: float | None) -> list[str]:
    """Remove the output logs (and their rotated ``.1``) of the containers on the record that
    ended more than ``older_than`` seconds ago (None: every ended container), and forget
    them on the record; returns their paths."""
    before = None if older_than is None else time.time() - older_than
    removed = []
    for row in record.ended_logs(before):
        for path in (Path(row["log"]), rotated(row["log"])):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        record.set_container_log(row["id"], None)
        removed.append(row["log"])
    return removed


def stop_recorded(record: Record, target: str, *, kill: bool = False, timeout: float = 10.0) -> str:
    """Stop (or ``kill``) a running container on the record from any process of its user.

    ``target`` is a container name or the pid of its container process. Stopping sends
    SIGTERM (the server closes its envs and exits), then SIGKILL after ``timeout`` seconds;
    killing sends SIGKILL to the whole tree. The request is noted on the record first, so
    the container's manager marks it STOPPED instead of restarting it. Returns its name.

    Raises:
        UnknownContainer: no running container on the record is called (or has the pid)
            ``target`` (a KeyError too).
    """
    rows = record.find_running(target)
    row = next((r for r in rows if is_ours(r["pid"], r["pid_started"], r["run_dir"])), None)
    if row is None:
        raise UnknownContainer(f"no running container named {target!r} (or with that pid); see `remote ps`")
    action = "kill" if kill else "stop"
    record.add_event(row["id"], STOP_REQUESTS[kill], f"{action} requested by process {os.getpid()}")
    pid = row["pid"]
    tree, cgroups = process_tree(pid), container_cgroups(server_in(pid, row["run_dir"]) or pid)
    if row["state"] == "PAUSED":  # (State.PAUSED) a frozen server cannot exit
        signal_tree(pid, signal.SIGCONT)
    signal_tree(pid, signal.SIGKILL if kill else signal.SIGTERM)
    _, alive = psutil.wait_procs(tree, timeout=0.0 if kill else timeout)
    if alive:
        signal_tree(pid, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=5)
    remove_cgroups(cgroups)
    return row["name"]


def checkpoint_recorded(record: Record, target: str) -> Row:
    """Ask the runs in a running container on the record to checkpoint at the end of their
    episode (SIGUSR1 to its server, from any process of its user); returns its record row.

    Raises:
        UnknownContainer: no running container on the record is called (or has the pid)
            ``target`` (a KeyError too).
    """
    row = next(
        (r for r in record.find_running(target) if is_ours(r["pid"], r["pid_started"], r["run_dir"])), None
    )
    server = server_in(row["pid"], row["run_dir"]) if row is not None else None
    if row is None or server is None:
        raise UnknownContainer(f"no running container named {target!r} (or with that pid); see `remote ps`")
    record.add_event(row["id"], "CHECKPOINT_REQUESTED", f"by process {os.getpid()}")
    os.kill(server, signal.SIGUSR1)
    return row
