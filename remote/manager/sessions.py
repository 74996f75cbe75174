"""The runner of a managed container: a :class:`remote.RemoteRunner` that reports to its
manager (exits), to the record (sessions) and to its caller (OOM kills, paused containers).

A *session* is an env opened in the container, or one :meth:`ManagedRunner.run`: a row on
the record from its start to its end, with what it was (agent, config), what it did (steps,
episodes, returns) and how it ended (``status``: finished, cancelled, failed, interrupted, or
lost with its host process). The container's output goes to a log beside the record
(``output_log=``, set by the manager).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ..client import RemoteEnvironmentClient
from ..errors import CallTimeout, ContainerDied, OutOfMemory
from ..protocol.runlog import read_log
from ..runner import RemoteRunner
from ..runs import agent_name
from ..runtime.limits import remove_cgroups
from .record import Record


class ManagedContainer(Protocol):
    """What a :class:`ManagedRunner` reads of its manager's entry for the container."""

    name: str
    record_id: int

    @property
    def paused(self) -> bool: ...

    def oom_reason(self, returncode: int | None) -> str | None: ...


#: The run options a session's config keeps, when given (with episodes, seed, log and kwargs).
CONFIG = ("resume", "checkpoint_every", "checkpoint_every_sec", "video_every")


class ManagedRunner(RemoteRunner):
    """A :class:`RemoteRunner` that reports to its manager: exits, sessions, OOM kills and
    paused containers (its errors say so).

    Args:
        container: the manager's entry for this container.
        record: where its sessions go.
        exited: called from the watcher thread when the container exits, with this runner,
            the exit status and whether the runner was closed (not a crash).
        **kwargs: :class:`RemoteRunner` options.
    """

    def __init__(
        self,
        container: ManagedContainer,
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
        self._end_sessions("finished" if self.closed else "failed")
        self._exited(self, returncode, self.closed)

    def death_error(self, code: int | None, what: str) -> ContainerDied:
        reason = self.container.oom_reason(code)
        if reason is None:
            return super().death_error(code, what)
        return OutOfMemory(
            f"{self.container.name} ({self.image}) was stopped during {what}: {reason}. Give it more "
            "memory (memory= in ContainerManager.create) or make the env use less",
            code,
            self.log_tail,
        )

    @property
    def paused(self) -> bool:
        return self.container.paused

    def timeout_error(self, what: str) -> CallTimeout:
        if self.container.paused:
            return CallTimeout(
                f"{what} got no answer within {self.timeout:g} s because container "
                f"{self.container.name} is PAUSED: resume it (ContainerManager.resume) first"
            )
        return super().timeout_error(what)

    @property
    def name(self) -> str:
        return self.container.name

    def on_env_open(self, client: RemoteEnvironmentClient) -> None:
        session = self._record.open_session(
            self.container.record_id, client.env_id, self.image_sha256, config={"env_kwargs": client.kwargs}
        )
        with self._sessions_lock:
            self._sessions[client] = session

    def run(self, agent: Any, episodes: int, *, env_id: str, seed: int = 0, **options: Any) -> dict[str, Any]:
        """:meth:`RemoteRunner.run`, as a session on the record: its agent and config, the
        checkpoints it reaches, then its end: ``finished`` (or ``cancelled``), ``failed`` if
        it raised, ``interrupted`` on KeyboardInterrupt or SystemExit (SIGTERM); a run that
        did not finish counts the episodes its log holds."""
        log = os.path.abspath(options["log"]) if options.get("log") is not None else None
        config = {
            "episodes": episodes,
            "seed": seed,
            "log": log,
            "env_kwargs": dict(options.get("env_kwargs") or {}),
            "agent_kwargs": dict(options.get("agent_kwargs") or {}),
            **{key: options[key] for key in CONFIG if options.get(key) is not None},
        }
        session = self._record.open_session(
            self.container.record_id, env_id, self.image_sha256, seed, agent=agent_name(agent), config=config
        )
        then = options.pop("on_checkpoint", None)

        def on_checkpoint(covered: int) -> None:
            self._record.update_session(session, checkpoint=covered)
            if then is not None:
                then(covered)

        summary: dict[str, Any] = {}
        status = "interrupted"
        try:
            summary = super().run(
                agent, episodes, env_id=env_id, seed=seed, on_checkpoint=on_checkpoint, **options
            )
            status = (
                "cancelled"
                if summary.get("cancelled")
                else "interrupted"
                if summary.get("stopped")
                else "finished"
            )
            return summary
        except Exception:
            status = "failed"
            raise
        finally:
            self._end_run(session, seed, summary, status, log)

    def _end_run(
        self, session: int, seed: int, summary: dict[str, Any], status: str, log: str | None
    ) -> None:
        """End a run's session from its summary, or (a run that raised) from its log."""
        if not summary and log is not None:
            with contextlib.suppress(OSError, ValueError):
                returns = [float(line["return"]) for line in read_log(log)]
                lengths = [int(line["length"]) for line in read_log(log)]
                if returns:
                    summary = {
                        "episodes": len(returns),
                        "steps": sum(lengths),
                        "mean_return": sum(returns) / len(returns),
                        "final_return": returns[-1],
                    }
        episodes = summary.get("episodes", 0)
        mean = summary.get("mean_return")
        self._record.end_session(
            session,
            seed=seed,
            steps=summary.get("steps", 0),
            episodes=episodes,
            total_return=(mean or 0.0) * episodes,
            status=status,
            final_return=summary.get("final_return"),
            mean_return=mean,
            checkpoint=summary.get("checkpoint"),
            videos=summary.get("videos") or None,
        )

    def on_env_close(self, client: RemoteEnvironmentClient) -> None:
        self._end_session(client)

    def close(self, timeout: float = 5.0) -> None:
        self._end_sessions("finished")
        super().close(timeout)

    def _end_sessions(self, status: str) -> None:
        with self._sessions_lock:
            clients = list(self._sessions)
        for client in clients:
            self._end_session(client, status)

    def _end_session(self, client: RemoteEnvironmentClient, status: str = "finished") -> None:
        """End an env's session: ``finished`` when it closes, ``failed`` when its container died."""
        with self._sessions_lock:
            session = self._sessions.pop(client, None)
        if session is None:
            return
        self._record.end_session(
            session,
            seed=client.first_seed,
            steps=client.steps,
            episodes=client.episodes,
            total_return=float(client.total_return),
            status=status,
        )
