"""Containers with a lifecycle: named, limited, paused, restarted, and on the record.

:class:`ContainerManager` runs many containers (one :class:`remote.RemoteRunner` each) for
the workers of a training job. Each container has a :class:`State` and moves only along
:data:`TRANSITIONS`; asking for anything else raises :class:`remote.IllegalTransition`.

* Resources come from a :class:`remote.allocator.ResourceAllocator` and are enforced on
  the container (:mod:`remote.limits`); TCP containers serve on leased ports.
* PAUSE/RESUME freeze and thaw the container's whole process tree (SIGSTOP/SIGCONT to its
  process group, which the supervised ``apptainer exec`` leads, and to every descendant).
* A container that exits on its own is restarted after ``backoff * 2**n`` seconds, at most
  ``max_restarts`` times; then its state is ERROR. Every step is an event on the record.
* A manager starts with an orphan sweep: containers on the record whose host process is
  dead are marked lost, and the ones still running (paused ones cannot see their host die)
  are killed, after checking by start time and command line that they are ours.
"""

from __future__ import annotations

import contextlib
import enum
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from ..client import RemoteEnvironmentClient
from ..errors import CallTimeout, ContainerDied, IllegalTransition, OutOfMemory, UnknownContainer
from ..runner import RemoteRunner
from ..runtime import Runtime, get_runtime
from ..runtime.limits import (
    CGROUP,
    NONE,
    RLIMIT,
    LimitedRuntime,
    choose_enforcement,
    container_cgroups,
    limit_address_space,
    remove_cgroups,
)
from ..runtime.processes import Owner
from .allocator import Allocation, ResourceAllocator, parse_size
from .ports import PortLease, instance_name, lease_ports, release_ports
from .record import Record

#: Exit status of ``apptainer exec`` when the kernel killed the container (128 + SIGKILL).
KILLED_STATUS = 128 + signal.SIGKILL


class State(str, enum.Enum):
    """Where a container is in its life."""

    CREATED = "CREATED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    ERROR = "ERROR"
    DELETED = "DELETED"


S = State
#: The legal moves. RUNNING/PAUSED → STARTING is the automatic restart after a crash.
TRANSITIONS: dict[State, frozenset[State]] = {
    S.CREATED: frozenset({S.STARTING, S.DELETED}),
    S.STARTING: frozenset({S.RUNNING, S.STOPPING, S.ERROR}),
    S.RUNNING: frozenset({S.PAUSED, S.STOPPING, S.STARTING, S.ERROR}),
    S.PAUSED: frozenset({S.RUNNING, S.STOPPING, S.STARTING, S.ERROR}),
    S.STOPPING: frozenset({S.STOPPED, S.ERROR}),
    S.STOPPED: frozenset({S.STARTING, S.DELETED}),
    S.ERROR: frozenset({S.STARTING, S.DELETED}),
    S.DELETED: frozenset(),
}
_UP = (S.RUNNING, S.PAUSED)
#: Events by which another process asks a container's manager not to restart it.
STOP_REQUESTS = ("STOP_REQUESTED", "KILL_REQUESTED")


@dataclass(frozen=True)
class ContainerStatus:
    """A container as :meth:`ContainerManager.status` sees it.

    ``limits`` says how its resource limits are enforced: ``"cgroup"``,
    ``"affinity+rlimit"`` or ``"none"``; ``cpu_percent``/``rss`` are the last usage sample.
    """

    name: str
    state: State
    image: str
    pid: int | None
    restarts: int
    limits: str
    allocation: Allocation | None
    ports: tuple[int, ...]
    reason: str | None
    returncode: int | None
    cpu_percent: float | None
    rss: int | None


@dataclass(eq=False)
class _Container:
    name: str
    image: str
    record_id: int
    cpus: float
    memory: int | str
    gpus: int
    transport: str
    options: dict[str, Any]
    state: State = State.CREATED
    runner: RemoteRunner | None = None
    allocation: Allocation | None = None
    leases: list[PortLease] = field(default_factory=list)
    limits: str = NONE
    restarts: int = 0
    reason: str | None = None
    returncode: int | None = None
    usage: tuple[float, int] | None = None
    sampled: dict[int, psutil.Process] = field(default_factory=dict)


class ManagedRunner(RemoteRunner):
    """A :class:`RemoteRunner` that reports to its manager: exits, sessions, OOM kills and
    paused containers (its errors say so)."""

    def __init__(
        self,
        container: _Container,
        record: Record,
        exited: Callable[[ManagedRunner, int, bool], None],
        **kwargs: Any,
    ) -> None:
        #: The manager's entry for this container.
        self.container = container
        self._record = record
        self._exited = exited
        self._sessions: dict[RemoteEnvironmentClient, int] = {}
        self._sessions_lock = threading.Lock()
        self.cgroups: list[Path] = []  # set by the manager: removed when the container exits
        super().__init__(**kwargs)

    def on_exit(self, returncode: int) -> None:
        super().on_exit(returncode)
        if self.cgroups:  # its processes may take a moment to leave them
            threading.Thread(target=remove_cgroups, args=(self.cgroups,), daemon=True).start()
        self._end_sessions()
        self._exited(self, returncode, self.closed)

    def death_error(self, code: int | None, what: str) -> ContainerDied:
        reason = oom_reason(code, self.container)
        if reason is None:
            return super().death_error(code, what)
        return OutOfMemory(
            f"{self.container.name} ({self.image}) was stopped during {what}: {reason}. Give it more "
            "memory (memory= in ContainerManager.create) or make the env use less",
            code,
            self.log_tail,
        )

    def timeout_error(self, what: str) -> CallTimeout:
        if self.container.state is State.PAUSED:
            return CallTimeout(
                f"{what} got no answer within {self.timeout:g} s because container "
                f"{self.container.name} is PAUSED: resume it (ContainerManager.resume) first"
            )
        return super().timeout_error(what)

    def on_env_open(self, client: RemoteEnvironmentClient) -> None:
        env_id = client.env_id
        with self._record.transaction() as db:
            cursor = db.execute(
                "INSERT INTO sessions (container_id, env_id, image_sha256, started) VALUES (?, ?, ?, ?)",
                (self.container.record_id, env_id, self.image_sha256, time.time()),
            )
        with self._sessions_lock:
            self._sessions[client] = cursor.lastrowid  # type: ignore[assignment]

    def run(self, agent: str, episodes: int, *, env_id: str, seed: int = 0, **options: Any) -> dict[str, Any]:
        """:meth:`RemoteRunner.run`, as a session on the record."""
        with self._record.transaction() as db:
            session = db.execute(
                "INSERT INTO sessions (container_id, env_id, seed, image_sha256, started) "
                "VALUES (?, ?, ?, ?, ?)",
                (self.container.record_id, env_id, seed, self.image_sha256, time.time()),
            ).lastrowid
        summary: dict[str, Any] = {}
        try:
            summary = super().run(agent, episodes, env_id=env_id, seed=seed, **options)
            return summary
        finally:
            with self._record.transaction() as db:
                db.execute(
                    "UPDATE sessions SET ended = ?, steps = ?, episodes = ?, total_return = ? WHERE id = ?",
                    (
                        time.time(),
                        summary.get("steps", 0),
                        summary.get("episodes", 0),
                        (summary.get("mean_return") or 0.0) * summary.get("episodes", 0),
                        session,
                    ),
                )

    def on_env_close(self, client: RemoteEnvironmentClient) -> None:
        self._end_session(client)

    def close(self, timeout: float = 5.0) -> None:
        self._end_sessions()
        super().close(timeout)

    def _end_sessions(self) -> None:
        with self._sessions_lock:
            clients = list(self._sessions)
        for client in clients:
            self._end_session(client)

    def _end_session(self, client: RemoteEnvironmentClient) -> None:
        with self._sessions_lock:
            session = self._sessions.pop(client, None)
        if session is None:
            return
        with self._record.transaction() as db:
            db.execute(
                "UPDATE sessions SET ended = ?, seed = ?, steps = ?, episodes = ?, total_return = ? "
                "WHERE id = ?",
                (
                    time.time(),
                    client.first_seed,
                    client.steps,
                    client.episodes,
                    float(client.total_return),
                    session,
                ),
            )


class ContainerManager:
    """Creates, starts, pauses, restarts and stops named containers, on the record.

    Args:
        record: the shared record; default: the user's record file in the cache folder.
        allocator: where resources come from; default: this host's, on ``record``.
        prefix: container names are ``<prefix>-<worker_id>``.
        max_restarts: restarts of a crashed container before it is left in ERROR.
        backoff: seconds before the first restart; doubled for each next one.
        max_backoff: the longest wait between restarts.
        sample_interval: seconds between usage samples (CPU %, RSS); ``0`` turns them off.
        limits: ``"auto"``, ``"cgroup"`` or ``"affinity+rlimit"`` (see :mod:`remote.limits`).
        runtime: the runtime name or instance (see :func:`remote.runtime.get_runtime`).

    Example::

        manager = ContainerManager(prefix="ppo")
        name = manager.create(0, "gymnasium.sif", cpus=1, memory="2G")
        manager.start(name)
        env = manager.make(name, "CartPole-v1")
    """

    def __init__(
        self,
        record: Record | None = None,
        allocator: ResourceAllocator | None = None,
        *,
        prefix: str = "remote",
        max_restarts: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        sample_interval: float = 1.0,
        limits: str = "auto",
        runtime: str | Runtime | None = None,
    ) -> None:
        self.record = record or (allocator.record if allocator else Record())
        self.allocator = allocator or ResourceAllocator(self.record)
        self.prefix = prefix
        self.max_restarts = max_restarts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.enforcement = choose_enforcement(limits)
        self._runtime = get_runtime(runtime)
        self._containers: dict[str, _Container] = {}
        self._lock = threading.RLock()
        self._closed = threading.Event()
        self.owner = Owner.current()
        #: Names of the containers the start-up sweep marked lost (see :meth:`sweep_orphans`).
        self.swept = self.sweep_orphans()
        if sample_interval > 0:
            threading.Thread(
                target=self._sample_loop, args=(sample_interval,), name="remote-usage", daemon=True
            ).start()

    # -- states --------------------------------------------------------------------------

    def _get(self, name: str) -> _Container:
        try:
            return self._containers[name]
        except KeyError:
            raise UnknownContainer(f"no container named {name!r}; create it first") from None

    def _move(self, container: _Container, to: State, reason: str | None = None, action: str = "") -> None:
        """Change state (under the lock), or raise IllegalTransition."""
        if to not in TRANSITIONS[container.state]:
            doing = action or f"move to {to.value}"
            raise IllegalTransition(
                f"cannot {doing} container {container.name}: it is {container.state.value}, and from "
                f"there it can only go to {', '.join(sorted(s.value for s in TRANSITIONS[container.state]))}"
            )
        container.state = to
        if reason is not None:
            container.reason = reason
        runner = container.runner
        with self.record.transaction() as db:
            db.execute(
                "UPDATE containers SET state = ?, pid = ?, pid_started = ?, run_dir = ?, limits = ?, "
                "restarts = ?, returncode = ?, reason = ?, updated = ? WHERE id = ?",
                (
                    to.value,
                    runner.pid if runner else None,
                    _started(runner.pid) if runner and runner.pid else None,
                    str(runner.run_dir) if runner else None,
                    container.limits,
                    container.restarts,
                    container.returncode,
                    container.reason,
                    time.time(),
                    container.record_id,
                ),
            )
            db.execute(
                "INSERT INTO events (container_id, time, event, detail) VALUES (?, ?, ?, ?)",
                (container.record_id, time.time(), to.value, reason),
            )

    # -- commands ------------------------------------------------------------------------

    def create(
        self,
        worker_id: int | str,
        image: str | os.PathLike[str],
        *,
        cpus: float = 1,
        memory: int | str = 0,
        gpus: int = 0,
        transport: str = "unix",
        **runner_options: Any,
    ) -> str:
        """Register a container for worker ``worker_id``; returns its name ``<prefix>-<id>``.

        Args:
            cpus: CPUs to allocate (may be fractional); memory: bytes or ``"2G"`` (0: no
                limit); gpus: how many GPUs.
            transport: ``"unix"`` or ``"tcp"`` (on leased ports).
            **runner_options: more :class:`remote.RemoteRunner` options (timeout, env, binds...).
        """
        name = instance_name(self.prefix, worker_id)
        path = self._runtime.resolve_image(image, sha256=runner_options.pop("sha256", None)).path
        with self._lock:
            if name in self._containers and self._containers[name].state is not State.DELETED:
                raise IllegalTransition(
                    f"container {name} exists already; delete it or use another worker id"
                )
            now = time.time()
            with self.record.transaction() as db:
                cursor = db.execute(
                    "INSERT INTO containers (name, image, state, owner_pid, owner_started, created, updated) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (name, path, State.CREATED.value, self.owner.pid, self.owner.started, now, now),
                )
            self._containers[name] = _Container(
                name,
                path,
                cursor.lastrowid,
                cpus,
                memory,
                gpus,
                transport,
                runner_options,  # type: ignore[arg-type]
            )
        return name

    def start(self, name: str) -> None:
        """Allocate the container's resources and start it; returns when it answers.

        Raises:
            ResourceUnavailable: not enough CPUs, memory, GPUs or ports are free.
            ContainerStartError: the container did not come up (state ERROR).
        """
        container = self._get(name)
        with self._lock:
            self._move(container, State.STARTING, action="start")
            container.restarts = 0
        try:
            self._launch(container)
        except BaseException as exc:
            self._release(container)
            with self._lock:
                container.runner = None
                self._move(container, State.ERROR, f"start failed: {exc}")
            raise

    def _launch(self, container: _Container) -> None:
        """Start a runner for ``container`` (in STARTING) and move it to RUNNING."""
        if container.allocation is None:
            container.allocation = self.allocator.allocate(container.cpus, container.memory, container.gpus)
        if container.transport == "tcp" and not container.leases:
            container.leases = lease_ports(self.record, container.name, 2)
        limited = bool(container.allocation.memory or container.allocation.cpus or container.allocation.gpus)
        container.limits = self.enforcement if limited else NONE
        runtime = LimitedRuntime(self._runtime, container.allocation, self.enforcement)
        ports = tuple(lease.port for lease in container.leases)
        runner = ManagedRunner(
            container,
            self.record,
            self._exited,
            image=container.image,
            transport=container.transport,
            runtime=runtime,
            ports=ports or None,  # type: ignore[arg-type]
            **container.options,
        )
        try:
            server = server_pid(runner)
            if self.enforcement == RLIMIT and container.allocation.memory:
                limit_address_space(server, container.allocation.memory)
            runner.cgroups = container_cgroups(server) if self.enforcement == CGROUP else []
        except BaseException:
            runner.close()
            raise
        with self._lock:
            if container.state is State.STARTING and runner.alive:
                container.runner = runner
                container.returncode = None
                container.sampled = {}
                self._move(container, State.RUNNING)
                return
            stopped = container.state is not State.STARTING
        runner.close()
        if stopped:  # by stop() during a restart: what this launch took goes back too
            self._release(container)
        else:
            raise ContainerDied(f"{container.name} exited right after it started")

    def make(self, name: str, env_id: str, **kwargs: Any) -> RemoteEnvironmentClient:
        """Create ``env_id`` in a running container (see :meth:`remote.RemoteRunner.make`)."""
        return self.runner(name).make(env_id, **kwargs)

    def runner(self, name: str) -> RemoteRunner:
        """The current runner of a running or paused container (a new one after a restart)."""
        container = self._get(name)
        if container.state not in _UP or container.runner is None:
            raise IllegalTransition(f"container {name} is {container.state.value}, not RUNNING")
        return container.runner

    def pause(self, name: str) -> None:
        """Freeze every process of the container; its envs stop advancing until :meth:`resume`."""
        container = self._get(name)
        with self._lock:
            self._move(container, State.PAUSED, action="pause")
            _signal_tree(container.runner.pid, signal.SIGSTOP)  # type: ignore[union-attr]

    def resume(self, name: str) -> None:
        """Thaw a paused container; its envs continue where they were."""
        container = self._get(name)
        with self._lock:
            self._move(container, State.RUNNING, action="resume")
            _signal_tree(container.runner.pid, signal.SIGCONT)  # type: ignore[union-attr]

    def stop(self, name: str, timeout: float = 10.0) -> None:
        """Stop gracefully (the server closes its envs); kill it after ``timeout`` seconds."""
        self._stop(name, timeout, "stop")

    def kill(self, name: str) -> None:
        """Kill the container at once (SIGKILL to its whole process tree)."""
        self._stop(name, 0.0, "kill")

    def _stop(self, name: str, timeout: float, action: str) -> None:
        container = self._get(name)
        with self._lock:
            was_paused = container.state is State.PAUSED
            self._move(container, State.STOPPING, action=action)
            runner, container.runner = container.runner, None
        if runner is not None:
            if action == "kill" and runner.pid is not None:
                _signal_tree(runner.pid, signal.SIGKILL)
            elif was_paused and runner.pid is not None:
                _signal_tree(runner.pid, signal.SIGCONT)  # a frozen server cannot exit
            runner.close(timeout)
        self._release(container)
        with self._lock:
            self._move(container, State.STOPPED, f"{action} requested")

    def delete(self, name: str) -> None:
        """Forget a stopped (or never started, or failed) container."""
        container = self._get(name)
        with self._lock:
            self._move(container, State.DELETED, action="delete")
            del self._containers[name]

    def status(self, name: str) -> ContainerStatus:
        """State, pid, restarts, limits and last usage of a container."""
        container = self._get(name)
        runner = container.runner
        usage = container.usage
        return ContainerStatus(
            name=container.name,
            state=container.state,
            image=container.image,
            pid=runner.pid if runner is not None else None,
            restarts=container.restarts,
            limits=container.limits,
            allocation=container.allocation,
            ports=tuple(lease.port for lease in container.leases),
            reason=container.reason,
            returncode=container.returncode,
            cpu_percent=usage[0] if usage else None,
            rss=usage[1] if usage else None,
        )

    def list(self) -> list[ContainerStatus]:
        """The status of every container of this manager."""
        with self._lock:
            names = list(self._containers)
        return [self.status(name) for name in names]

    def close(self) -> None:
        """Stop every container of this manager."""
        self._closed.set()
        for status in self.list():
            if status.state in (*_UP, State.STARTING):
                self.stop(status.name)

    def __enter__(self) -> ContainerManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- crashes and restarts ------------------------------------------------------------

    def _exited(self, runner: ManagedRunner, returncode: int, closed: bool) -> None:
        """The watcher thread of ``runner`` saw its container exit; ``closed``: because the
        runner was closed (e.g. at interpreter exit), not by a crash."""
        container = runner.container
        with self._lock:
            if container.runner is not runner or container.state not in _UP:
                return  # stopping on request, or not started through us
            container.returncode = returncode
            requested = self._stop_requested(container)
            if closed or requested:
                container.runner = None
                self._move(container, State.STOPPING)
                self._release(container)
                self._move(container, State.STOPPED, requested or "its runner was closed")
                return
            container.runner = None
            self._retry(container, oom_reason(returncode, container) or _describe_exit(returncode))

    def _stop_requested(self, container: _Container) -> str | None:
        """The request, if another process asked to stop this container (:func:`stop_recorded`)."""
        rows = self.record.query(
            "SELECT event, detail FROM events WHERE container_id = ? ORDER BY rowid DESC LIMIT 1",
            (container.record_id,),
        )
        if rows and rows[0]["event"] in STOP_REQUESTS:
            return rows[0]["detail"]
        return None

    def _retry(self, container: _Container, reason: str) -> None:
        """After a crash (under the lock): restart with backoff, or give up in ERROR."""
        if container.restarts >= self.max_restarts or self._closed.is_set():
            self._move(container, State.ERROR, f"{reason}; gave up after {container.restarts} restarts")
            self._release(container)
            return
        if container.leases:  # the dead server's ports may linger in TIME_WAIT: take fresh ones
            release_ports(self.record, container.leases)
            container.leases = []
        delay = min(self.max_backoff, self.backoff * 2**container.restarts)
        container.restarts += 1
        message = f"{reason}; restart {container.restarts} of {self.max_restarts} in {delay:g} s"
        if container.state is State.STARTING:  # a restart that failed: stay STARTING, try again
            container.reason = message
            self.record.event(container.record_id, "RESTART", message)
        else:
            self._move(container, State.STARTING, message)
        timer = threading.Timer(delay, self._restart, args=(container,))
        timer.daemon = True
        timer.start()

    def _restart(self, container: _Container) -> None:
        if container.state is not State.STARTING or self._closed.is_set():
            return
        try:
            self._launch(container)
        except Exception as exc:
            with self._lock:
                if container.state is State.STARTING:
                    self._retry(container, f"restart failed: {exc}")

    def _release(self, container: _Container) -> None:
        if container.leases:
            release_ports(self.record, container.leases)
            container.leases = []
        if container.allocation is not None:
            self.allocator.deallocate(container.allocation)
            container.allocation = None

    # -- usage ---------------------------------------------------------------------------

    def _sample_loop(self, interval: float) -> None:
        while not self._closed.wait(interval):
            with self._lock:
                running = [c for c in self._containers.values() if c.state in _UP and c.runner]
            rows = []
            for container in running:
                sample = _usage(container)
                if sample is not None:
                    container.usage = sample
                    rows.append((container.record_id, time.time(), *sample))
            if rows:
                try:
                    with self.record.transaction() as db:
                        db.executemany(
                            "INSERT INTO usage (container_id, time, cpu_percent, rss) VALUES (?, ?, ?, ?)",
                            rows,
                        )
                except Exception:  # the record went away (closed at exit): stop sampling
                    return

    # -- orphans -------------------------------------------------------------------------

    def sweep_orphans(self) -> list[str]:
        """Mark containers of dead host processes as lost and kill those still running.

        Returns the names of the containers marked lost.
        """
        lost = []
        with self.record.transaction() as db:
            rows = db.execute(
                "SELECT id, name, owner_pid, owner_started, pid, pid_started, run_dir FROM containers "
                "WHERE lost = 0 AND state NOT IN ('STOPPED', 'ERROR', 'DELETED')"
            ).fetchall()
            for row in rows:
                if Owner(row["owner_pid"], row["owner_started"]).alive():
                    continue
                killed = _kill_if_ours(row["pid"], row["pid_started"], row["run_dir"])
                now = time.time()
                reason = f"lost: host process {row['owner_pid']} died" + (
                    "; its container was still running and was killed" if killed else ""
                )
                db.execute(
                    "UPDATE containers SET state = 'STOPPED', lost = 1, reason = ?, updated = ? WHERE id = ?",
                    (reason, now, row["id"]),
                )
                db.execute(
                    "INSERT INTO events (container_id, time, event, detail) VALUES (?, ?, 'LOST', ?)",
                    (row["id"], now, reason),
                )
                db.execute(
                    "UPDATE sessions SET lost = 1, ended = ? WHERE container_id = ? AND ended IS NULL",
                    (now, row["id"]),
                )
                lost.append(row["name"])
        return lost


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
    rows = record.query(
        "SELECT id, name, state, pid, pid_started, run_dir FROM containers WHERE lost = 0 AND "
        "state IN ('STARTING', 'RUNNING', 'PAUSED') AND (name = ? OR pid = ?) ORDER BY id DESC",
        (target, int(target) if target.isdigit() else -1),
    )
    row = next((r for r in rows if _ours(r["pid"], r["pid_started"], r["run_dir"])), None)
    if row is None:
        raise UnknownContainer(f"no running container named {target!r} (or with that pid); see `remote ps`")
    action = "kill" if kill else "stop"
    record.event(row["id"], STOP_REQUESTS[kill], f"{action} requested by process {os.getpid()}")
    pid = row["pid"]
    tree, cgroups = process_tree(pid), container_cgroups(_server_in(pid, row["run_dir"]) or pid)
    if row["state"] == State.PAUSED.value:
        _signal_tree(pid, signal.SIGCONT)  # a frozen server cannot exit
    _signal_tree(pid, signal.SIGKILL if kill else signal.SIGTERM)
    _, alive = psutil.wait_procs(tree, timeout=0.0 if kill else timeout)
    if alive:
        _signal_tree(pid, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=5)
    remove_cgroups(cgroups)
    return row["name"]


def oom_reason(returncode: int | None, container: _Container) -> str | None:
    """Why the container died if its memory limit killed it, else None.

    With cgroup limits the kernel's OOM killer sends SIGKILL inside the container and
    ``apptainer exec`` exits with status 137.
    """
    memory = parse_size(container.memory)
    if returncode == KILLED_STATUS and container.limits == CGROUP and memory:
        return f"out of memory: killed for passing its memory limit of {memory / 2**20:.0f} MiB"
    return None


def _describe_exit(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        return f"crashed: killed by signal {signal.Signals(-returncode).name}"
    return f"crashed: exit code {returncode}"


def _started(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def process_tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _signal_tree(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to the process group led by ``pid`` and to every descendant (an env may
    have started its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    for process in process_tree(pid):
        with contextlib.suppress(psutil.Error):
            process.send_signal(sig)


def _usage(container: _Container) -> tuple[float, int] | None:
    """(CPU %, RSS bytes) of the container's process tree since the last sample."""
    runner = container.runner
    if runner is None or runner.pid is None:
        return None
    cpu, rss, seen = 0.0, 0, {}
    for process in process_tree(runner.pid):
        known = container.sampled.get(process.pid, process)
        try:
            cpu += known.cpu_percent(None)
            rss += known.memory_info().rss
        except psutil.Error:
            continue
        seen[process.pid] = known
    container.sampled = seen
    return cpu, rss


def _server_in(pid: int, run_dir: str) -> int | None:
    """Host pid of the server under container process ``pid`` whose command line names
    ``run_dir``: how we know a container is ours."""
    for process in process_tree(pid):
        with contextlib.suppress(psutil.Error):
            if run_dir in " ".join(process.cmdline()):
                return process.pid
    return None


def server_pid(runner: RemoteRunner) -> int:
    """Host pid of the server process in a runner's container."""
    found = _server_in(runner.pid, str(runner.run_dir)) if runner.pid is not None else None
    if found is None:
        raise ContainerDied(f"the server of {runner.image} is not running")
    return found


def _ours(pid: int | None, started: float | None, run_dir: str | None) -> bool:
    """True if the container process ``pid`` is the one we recorded: same start time, and
    its tree runs our server on ``run_dir``."""
    if pid is None or started is None or not run_dir or not Owner(pid, started).alive():
        return False
    return _server_in(pid, run_dir) is not None


def _kill_if_ours(pid: int | None, started: float | None, run_dir: str | None) -> bool:
    """Kill the container process ``pid`` if it is the one we recorded (see :func:`_ours`)."""
    if not _ours(pid, started, run_dir):
        return False
    assert pid is not None and run_dir is not None
    tree, cgroups = process_tree(pid), container_cgroups(_server_in(pid, run_dir) or pid)
    _signal_tree(pid, signal.SIGKILL)
    psutil.wait_procs(tree, timeout=5)
    remove_cgroups(cgroups)
    return True
