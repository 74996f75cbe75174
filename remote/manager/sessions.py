"""The runner of a managed container: a :class:`remote.RemoteRunner` that reports to its
manager (exits), to the record (sessions) and to its caller (OOM kills, paused containers).

A *session* is an env opened in the container, or one :meth:`ManagedRunner.run`: a row on
the record from its start to its end, with its steps, episodes and return.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ..client import RemoteEnvironmentClient
from ..errors import CallTimeout, ContainerDied, OutOfMemory
from ..runner import RemoteRunner
from ..runtime.limits import remove_cgroups
from .record import Record


class ManagedContainer(Protocol):
    """What a :class:`ManagedRunner` reads of its manager's entry for the container."""

    name: str
    record_id: int

    @property
    def paused(self) -> bool: ...

    def oom_reason(self, returncode: int | None) -> str | None: ...


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
        self._end_sessions()
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

    def on_env_open(self, client: RemoteEnvironmentClient) -> None:
        session = self._record.open_session(self.container.record_id, client.env_id, self.image_sha256)
        with self._sessions_lock:
            self._sessions[client] = session

    def run(self, agent: str, episodes: int, *, env_id: str, seed: int = 0, **options: Any) -> dict[str, Any]:
        """:meth:`RemoteRunner.run`, as a session on the record."""
        session = self._record.open_session(self.container.record_id, env_id, self.image_sha256, seed)
        summary: dict[str, Any] = {}
        try:
            summary = super().run(agent, episodes, env_id=env_id, seed=seed, **options)
            return summary
        finally:
            self._record.end_session(
                session,
                seed=seed,
                steps=summary.get("steps", 0),
                episodes=summary.get("episodes", 0),
                total_return=(summary.get("mean_return") or 0.0) * summary.get("episodes", 0),
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
        self._record.end_session(
            session,
            seed=client.first_seed,
            steps=client.steps,
            episodes=client.episodes,
            total_return=float(client.total_return),
        )
