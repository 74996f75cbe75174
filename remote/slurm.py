"""Slurm array jobs: each task its own container, ports, sockets, seed and log.

The pattern, with submitit as the Python entry point (the same code runs under
``submitit.LocalExecutor`` on one machine)::

    def rollout(task_id: int) -> float:
        with remote.slurm.array_task(task_id, log_dir="logs") as task:
            env = task.make("CartPole-v1", image="https://example.org/gym.sif", sha256="...")
            obs, info = env.reset(seed=task.seed)
            ...

    executor = submitit.AutoExecutor(folder="submitit-logs")
    executor.update_parameters(timeout_min=60, slurm_array_parallelism=8)
    jobs = executor.map_array(rollout, range(8))

A plain ``sbatch --array=0-7`` script calls ``array_task()`` without an id: it is read from
``$SLURM_ARRAY_TASK_ID``.

What each task gets:

* a container named ``slurm-<job>-<task>`` (unique on the node's record), on ports leased
  from that record (``transport="tcp"``) or unix sockets in its own owner-only folder;
* ``seed = base_seed + task_id``;
* a log file ``<log_dir>/slurm-<job>-<task>.log`` with what remote did (image, container,
  ports, the end), flushed and closed however the task ends;
* on ``scancel`` (or the time limit) Slurm sends SIGTERM, then SIGKILL after ``KillWait``
  (30 s by default): SIGTERM raises :class:`Cancelled` in the task, which stops the
  container and flushes the log on its way out. Were SIGKILL to come first, the container
  still exits: it watches a pipe from the task (its lifeline).

Shared filesystems: the image cache (``$REMOTE_CACHE``) may be on NFS or Lustre; its
downloads are locked with ``flock``, which Linux maps to POSIX locks on NFS, so that one task
downloads and the others wait. The record (SQLite, per node: its pids and ports are the
node's) must not be there: WAL mode needs shared memory that network filesystems lack. Set
``$REMOTE_RECORD`` to node-local storage, or let :func:`record_path` pick ``/tmp``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from .client import RemoteEnvironmentClient
from .config import record_file
from .errors import NotInArrayJob
from .images.cache import cache_dir
from .manager.ports import instance_name

#: Filesystem types on which the record must not live (see :func:`record_path`).
NETWORK_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "lustre", "gpfs", "beegfs", "cifs", "smb3", "ceph", "fuse.sshfs"}
)

logger = logging.getLogger("remote.slurm")


class Cancelled(SystemExit):
    """The task got SIGTERM (``scancel``, preemption, time limit): it exits with 128 + 15."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


def task_id(default: int | None = None) -> int:
    """``$SLURM_ARRAY_TASK_ID``, else ``default``.

    Raises:
        NotInArrayJob: neither is there (not in a Slurm array job, and no default).
    """
    text = os.environ.get("SLURM_ARRAY_TASK_ID")
    if text is not None:
        return int(text)
    if default is None:
        raise NotInArrayJob("not in a Slurm array job (no SLURM_ARRAY_TASK_ID): pass the task id")
    return default


def job_id() -> str:
    """The Slurm array job id (``$SLURM_ARRAY_JOB_ID`` or ``$SLURM_JOB_ID``), else ``pid<N>``."""
    return os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID") or f"pid{os.getpid()}"


def filesystem_type(path: str | os.PathLike[str]) -> str:
    """The type (``ext4``, ``nfs4``, ``lustre``...) of the mount holding ``path``."""
    target = os.path.realpath(path)
    while not os.path.exists(target):
        target = os.path.dirname(target)
    best, kind = "", ""
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            point = fields[1].replace("\\040", " ")
            inside = target == point or target.startswith(point.rstrip("/") + "/")
            if inside and len(point) > len(best):
                best, kind = point, fields[2]
    return kind


def record_path() -> Path:
    """Where this node's record goes: ``$REMOTE_RECORD``; else the cache's record, unless the
    cache is on a network filesystem, then ``/tmp/remote-<user>/record.sqlite``."""
    explicit = record_file()
    if explicit is not None:
        return explicit
    if filesystem_type(cache_dir()) in NETWORK_FILESYSTEMS:
        return Path("/tmp") / f"remote-{os.getuid()}" / "record.sqlite"
    return cache_dir() / "record.sqlite"


class ArrayTask:
    """One task of an array job: its id, seed, log, and (on first :meth:`make`) its container."""

    def __init__(self, task: int, seed: int, log_path: Path, runtime: Any = None) -> None:
        from .manager import ContainerManager
        from .manager.record import Record

        self.task_id = task
        self.seed = seed
        self.log_path = log_path
        #: The container's name on the record, ``slurm-<job>-<task>``.
        self.container = instance_name("slurm", f"{job_id()}-{task}")
        self.manager = ContainerManager(
            Record(record_path()), prefix="slurm", max_restarts=0, sample_interval=0, runtime=runtime
        )
        self._image: str | None = None

    def make(
        self, env_id: str, *, image: str, transport: str = "tcp", **options: Any
    ) -> RemoteEnvironmentClient:
        """An env in this task's container, started from ``image`` on first use.

        ``transport="tcp"`` serves on ports leased from the node's record; ``options`` go
        to :meth:`remote.ContainerManager.create` (``sha256``, ``env``, ...); keyword
        arguments for the env itself go in ``env_kwargs``. ``cpus`` defaults to 0 (no
        allocation of remote's own): Slurm has given the task its CPUs already.
        """
        env_kwargs = options.pop("env_kwargs", {})
        self._start(image, transport, options)
        return self.manager.make(self.container, env_id, **env_kwargs)

    def run(
        self,
        agent: Any,
        episodes: int,
        *,
        env_id: str,
        image: str,
        log: str | os.PathLike[str] | None = None,
        seed: int | None = None,
        resume: bool = True,
        container_options: dict[str, Any] | None = None,
        **run_options: Any,
    ) -> dict[str, Any]:
        """:meth:`remote.RemoteRunner.run` in this task's container, resumable: a task that is
        requeued (``scontrol requeue``, preemption with requeue, submitit's checkpointing)
        continues from the checkpoint its previous attempt made when SIGTERM came.

        Args:
            log: the run's log; default ``<log_dir>/run-<job>-<task>.jsonl`` (the same for
                every attempt of the task).
            seed: episode ``i`` is reset with ``seed + i``; default the task's :attr:`seed`.
            resume: continue from the log's checkpoint if it has one (a first attempt has none).
            container_options: for the container, as :meth:`make`'s ``options``
                (``transport``, ``sha256``, ``env``, ``binds``...); the log's folder is bound in.
            **run_options: more :meth:`remote.RemoteRunner.run` options (``agent_kwargs``,
                ``checkpoint_every``, ``video_every``...).
        """
        path = (
            Path(log) if log is not None else self.log_path.with_name(f"run-{job_id()}-{self.task_id}.jsonl")
        )
        path = path.absolute()
        path.parent.mkdir(parents=True, exist_ok=True)
        options = dict(container_options or {})
        options["binds"] = [*options.get("binds", ()), f"{path.parent}:{path.parent}:rw"]
        self._start(image, options.pop("transport", "tcp"), options)
        restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
        logger.info(
            "task %d: run %s on %s (attempt %d), log %s", self.task_id, agent, env_id, int(restarts) + 1, path
        )
        return self.manager.run(
            self.container,
            agent,
            episodes,
            env_id=env_id,
            log=path,
            seed=self.seed if seed is None else seed,
            resume=resume,
            **run_options,
        )

    def _start(self, image: str, transport: str, options: dict[str, Any]) -> None:
        """Start the task's container from ``image`` unless it runs already."""
        options.setdefault("cpus", 0)
        if self._image is None:
            self.manager.create(f"{job_id()}-{self.task_id}", image, transport=transport, **options)
            self.manager.start(self.container)
            self._image = image
            status = self.manager.status(self.container)
            logger.info(
                "container %s: image %s, ports %s, run dir %s",
                self.container,
                image,
                list(status.ports),
                self.run_dir,
            )
        elif image != self._image:
            raise ValueError(f"task {self.task_id} runs {self._image}; one container (one image) per task")

    @property
    def ports(self) -> tuple[int, ...]:
        """The container's leased (control, stream) ports; empty with unix sockets."""
        return self.manager.status(self.container).ports

    @property
    def run_dir(self) -> Path:
        """The container's owner-only folder (its unix sockets, its secret)."""
        return self.manager.runner(self.container).run_dir


@contextlib.contextmanager
def array_task(
    task: int | None = None,
    *,
    base_seed: int = 0,
    log_dir: str | os.PathLike[str] = ".",
    runtime: Any = None,
) -> Iterator[ArrayTask]:
    """Run one array task: its container is stopped and its log closed however it ends.

    Args:
        task: the task id; default ``$SLURM_ARRAY_TASK_ID``.
        base_seed: the task's seed is ``base_seed + task``.
        log_dir: where the task's log file goes (shared storage, to read it afterwards).
        runtime: the container runtime (see :func:`remote.runtime.get_runtime`).

    Raises:
        Cancelled: SIGTERM arrived (in the main thread; the block is left at once).
    """
    number = task_id(task)
    folder = Path(log_dir)
    folder.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(folder / f"slurm-{job_id()}-{number}.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    remote_logger = logging.getLogger("remote")
    remote_logger.addHandler(handler)
    level = remote_logger.level
    if not remote_logger.isEnabledFor(logging.INFO):
        remote_logger.setLevel(logging.INFO)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise Cancelled()

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_sigterm) if main else None
    job: ArrayTask | None = None
    try:
        host = socket.gethostname()
        logger.info("task %d of job %s on %s: seed %d", number, job_id(), host, base_seed + number)
        job = ArrayTask(number, base_seed + number, Path(handler.baseFilename), runtime)
        yield job
        logger.info("task %d done", number)
    except Cancelled:
        logger.warning(
            "task %d got SIGTERM (scancel, preemption or time limit): stopping its container", number
        )
        raise
    except BaseException as exc:
        logger.error("task %d failed: %s: %s", number, type(exc).__name__, exc)
        raise
    finally:
        if main:  # a second SIGTERM must not cut the clean-up short
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            if job is not None:
                job.manager.close()
                job.manager.record.close()
            logger.info("task %d: container stopped", number)
        finally:
            if main:
                signal.signal(signal.SIGTERM, previous)
            remote_logger.removeHandler(handler)
            remote_logger.setLevel(level)
            handler.close()
