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
  are killed, after checking by start time and command line that they are ours; stale run
  folders (of host processes killed with their sweepers) are removed (:mod:`.orphans`).
* A container's output goes to ``logs/<name>-<record id>.log`` beside the record file
  (bounded, see :mod:`remote.runtime.output`), noted on the record and kept after it exits
  (``remote logs``; ``remote gc`` removes old ones).

Its runners are :class:`.sessions.ManagedRunner`; what it does to a container's processes
is in :mod:`.processes`.
"""

from __future__ import annotations

import enum
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from ..client import RemoteEnvironmentClient
from ..errors import ContainerDied, IllegalTransition, UnknownContainer
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
)
from ..runtime.processes import Owner
from . import orphans
from .allocator import Allocation, ResourceAllocator, parse_size
from .orphans import STOP_REQUESTS
from .ports import PortLease, instance_name, lease_ports, release_ports
from .processes import server_pid, signal_tree, started_at, tree_usage
from .record import Record
from .sessions import ManagedRunner

#: Exit status of ``apptainer exec`` when the kernel killed the container (128 + SIGKILL).
KILLED_STATUS = 128 + signal.SIGKILL
#: The folder beside the record file that the containers' output logs go to.
LOGS = "logs"


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
class Container:
    """A :class:`ContainerManager`'s entry for one container: what it was created with,
    where it is, and what it holds (its runner, allocation, port leases)."""

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

    @property
    def paused(self) -> bool:
        return self.state is State.PAUSED

    def oom_reason(self, returncode: int | None) -> str | None:
        """Why the container died if its memory limit killed it, else None.

        With cgroup limits the kernel's OOM killer sends SIGKILL inside the container and
        ``apptainer exec`` exits with status 137.
        """
        memory = parse_size(self.memory)
        if returncode == KILLED_STATUS and self.limits == CGROUP and memory:
            return f"out of memory: killed for passing its memory limit of {memory / 2**20:.0f} MiB"
        return None


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
        self._containers: dict[str, Container] = {}
        self._lock = threading.RLock()
        self._closed = threading.Event()
        self.owner = Owner.current()
        #: Names of the containers the start-up sweep marked lost (see :meth:`sweep_orphans`).
        self.swept = self.sweep_orphans()
        #: The stale run folders the start-up sweep removed (see :func:`.orphans.remove_stale_run_dirs`).
        self.removed_run_dirs = orphans.remove_stale_run_dirs()
        if sample_interval > 0:
            threading.Thread(
                target=self._sample_loop, args=(sample_interval,), name="remote-usage", daemon=True
            ).start()

    # -- states --------------------------------------------------------------------------

    def _get(self, name: str) -> Container:
        try:
            return self._containers[name]
        except KeyError:
            raise UnknownContainer(f"no container named {name!r}; create it first") from None

    def _move(self, container: Container, to: State, reason: str | None = None, action: str = "") -> None:
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
        pid = runner.pid if runner else None
        self.record.update_container(
            container.record_id,
            to.value,
            detail=reason,
            pid=pid,
            pid_started=started_at(pid) if pid else None,
            run_dir=str(runner.run_dir) if runner else None,
            limits=container.limits,
            restarts=container.restarts,
            returncode=container.returncode,
            reason=container.reason,
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
            record_id = self.record.add_container(name, path, State.CREATED.value, self.owner)
            self._containers[name] = Container(
                name,
                path,
                record_id,
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

    def _launch(self, container: Container) -> None:
        """Start a runner for ``container`` (in STARTING) and move it to RUNNING."""
        if container.allocation is None:
            container.allocation = self.allocator.allocate(container.cpus, container.memory, container.gpus)
        if container.transport == "tcp" and not container.leases:
            container.leases = lease_ports(self.record, container.name, 2)
        limited = bool(container.allocation.memory or container.allocation.cpus or container.allocation.gpus)
        container.limits = self.enforcement if limited else NONE
        runtime = LimitedRuntime(self._runtime, container.allocation, self.enforcement)
        ports = tuple(lease.port for lease in container.leases)
        options = {"output_log": self.log_path(container.name), **container.options}
        self.record.set_container_log(container.record_id, options["output_log"])
        runner = ManagedRunner(
            container,
            self.record,
            self._exited,
            image=container.image,
            transport=container.transport,
            runtime=runtime,
            ports=ports or None,  # type: ignore[arg-type]
            **options,
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

    def log_path(self, name: str) -> Path:
        """Where a container's output goes (unless ``output_log=`` was given to :meth:`create`):
        ``logs/<name>-<record id>.log`` in the record file's folder, kept after it exits."""
        container = self._get(name)
        return self.record.path.parent / LOGS / f"{container.name}-{container.record_id}.log"

    def make(self, name: str, env_id: str, **kwargs: Any) -> RemoteEnvironmentClient:
        """Create ``env_id`` in a running container (see :meth:`remote.RemoteRunner.make`)."""
        return self.runner(name).make(env_id, **kwargs)

    def runner(self, name: str) -> RemoteRunner:
        """The current runner of a running or paused container (a new one after a restart)."""
        container = self._get(name)
        if container.state not in _UP or container.runner is None:
            raise IllegalTransition(f"container {name} is {container.state.value}, not RUNNING")
        return container.runner

    def run(self, name: str, agent: Any, episodes: int, **options: Any) -> dict[str, Any]:
        """:meth:`remote.RemoteRunner.run` in a container, through its crashes: when the
        container dies and the manager restarts it, the run resumes from its newest
        checkpoint in the new one (as ``resume=True`` does); it raises ContainerDied only
        when no restart is left."""
        while True:
            try:
                return self.runner(name).run(agent, episodes, **options)
            except ContainerDied:
                if not self._wait_restarted(name):
                    raise
                options["resume"] = True

    def _wait_restarted(self, name: str) -> bool:
        """Wait for a crashed container to be RUNNING again; False if it is not restarted."""
        container = self._get(name)
        while True:
            with self._lock:
                state, runner = container.state, container.runner
            if state in _UP and runner is not None and runner.alive:
                return True
            if state is not State.STARTING or self._closed.is_set():
                return False
            time.sleep(0.05)

    def pause(self, name: str, checkpoint: bool = False, timeout: float | None = None) -> None:
        """Freeze every process of the container; its envs stop advancing until :meth:`resume`.

        With ``checkpoint``, each :meth:`remote.RemoteRunner.run` under way in it checkpoints
        first, at the end of its episode (waiting at most ``timeout`` seconds, default the
        runner's), so that a container that never comes back can be resumed from there.
        """
        container = self._get(name)
        if checkpoint and container.state is State.RUNNING and container.runner is not None:
            reached = container.runner.checkpoint(timeout)
            if reached:
                self.record.add_event(
                    container.record_id, "CHECKPOINT", f"runs checkpointed at episodes {reached}"
                )
        with self._lock:
            self._move(container, State.PAUSED, action="pause")
            signal_tree(container.runner.pid, signal.SIGSTOP)  # type: ignore[union-attr]

    def resume(self, name: str) -> None:
        """Thaw a paused container; its envs continue where they were."""
        container = self._get(name)
        with self._lock:
            self._move(container, State.RUNNING, action="resume")
            signal_tree(container.runner.pid, signal.SIGCONT)  # type: ignore[union-attr]

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
                signal_tree(runner.pid, signal.SIGKILL)
            elif was_paused and runner.pid is not None:
                signal_tree(runner.pid, signal.SIGCONT)  # a frozen server cannot exit
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
            self._retry(container, container.oom_reason(returncode) or _describe_exit(returncode))

    def _stop_requested(self, container: Container) -> str | None:
        """The request, if another process asked to stop this container
        (:func:`.orphans.stop_recorded`)."""
        last = self.record.last_event(container.record_id)
        if last is not None and last["event"] in STOP_REQUESTS:
            return last["detail"]
        return None

    def _retry(self, container: Container, reason: str) -> None:
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
            self.record.add_event(container.record_id, "RESTART", message)
        else:
            self._move(container, State.STARTING, message)
        timer = threading.Timer(delay, self._restart, args=(container,))
        timer.daemon = True
        timer.start()

    def _restart(self, container: Container) -> None:
        if container.state is not State.STARTING or self._closed.is_set():
            return
        try:
            self._launch(container)
        except Exception as exc:
            with self._lock:
                if container.state is State.STARTING:
                    self._retry(container, f"restart failed: {exc}")

    def _release(self, container: Container) -> None:
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
                runner = container.runner
                if runner is None or runner.pid is None:
                    continue
                cpu, rss, container.sampled = tree_usage(runner.pid, container.sampled)
                container.usage = (cpu, rss)
                rows.append((container.record_id, time.time(), cpu, rss))
            if rows:
                try:
                    self.record.add_usage(rows)
                except Exception:  # the record went away (closed at exit): stop sampling
                    return

    # -- orphans -------------------------------------------------------------------------

    def sweep_orphans(self) -> list[str]:
        """Mark containers of dead host processes as lost and kill those still running.

        Returns the names of the containers marked lost (see :func:`.orphans.sweep_orphans`).
        """
        return orphans.sweep_orphans(self.record)


def _describe_exit(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        return f"crashed: killed by signal {signal.Signals(-returncode).name}"
    return f"crashed: exit code {returncode}"
