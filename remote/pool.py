"""A warm pool of running containers that hands out environments in about a millisecond.

Starting a container costs a few hundred milliseconds; creating an env in a container
that is already running costs about one. A :class:`Pool` keeps containers running and
hands out envs from them::

    with remote.Pool("gymnasium.sif", min_idle=2, max_size=8, idle_timeout=60) as pool:
        env = pool.make("CartPole-v1")     # from a warm container
        ...
        env.close()                        # the container goes back to the pool

Exclusive mode (the default) gives each env a container of its own; ``shared=True`` puts
up to ``envs_per_container`` envs in one container. Containers start on demand while
``make`` calls wait, up to ``max_size``; idle ones beyond ``min_idle`` stop after
``idle_timeout`` seconds; dead ones are dropped and replaced.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym

from .client import RemoteEnvironmentClient
from .errors import RemoteError, ResourceUnavailable
from .runner import RemoteRunner


@dataclass(eq=False)
class _Member:
    runner: RemoteRunner
    load: int = 0
    idle_since: float = field(default_factory=time.monotonic)
    served: int = 0


class PooledEnv(gym.Wrapper):
    """An env from a :class:`Pool`: closing it returns its container to the pool."""

    def __init__(self, env: RemoteEnvironmentClient, release: Callable[[], None]) -> None:
        super().__init__(env)
        self._release: Callable[[], None] | None = release

    def close(self) -> None:
        release, self._release = self._release, None
        if release is None:
            return
        try:
            self.env.close()
        finally:
            release()


class Pool:
    """Running containers of one image, handing out envs on request.

    Args:
        image: the image every container runs.
        min_idle: containers kept running with no env, ready for the next ``make``.
        max_size: most containers at once; ``make`` waits when all are busy.
        idle_timeout: seconds an idle container beyond ``min_idle`` lives on.
        shared: put several envs in one container (up to ``envs_per_container``).
        envs_per_container: capacity of a container in shared mode.
        wait_timeout: seconds ``make`` waits for a free container before ResourceUnavailable.
        **runner_options: passed to each :class:`RemoteRunner` (transport, timeout, env, ...).
    """

    def __init__(
        self,
        image: str,
        *,
        min_idle: int = 1,
        max_size: int = 4,
        idle_timeout: float = 60.0,
        shared: bool = False,
        envs_per_container: int = 16,
        wait_timeout: float = 120.0,
        **runner_options: Any,
    ) -> None:
        if not 0 <= min_idle <= max_size or max_size < 1:
            raise ValueError(f"need 0 <= min_idle <= max_size and max_size >= 1, got {min_idle}, {max_size}")
        self.image = image
        self.min_idle = min_idle
        self.max_size = max_size
        self.idle_timeout = idle_timeout
        self.capacity = envs_per_container if shared else 1
        self.wait_timeout = wait_timeout
        self._options = runner_options
        self._members: list[_Member] = []
        self._starting = 0
        self._waiting = 0
        self._closed = False
        self._errors: list[str] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._keeper = threading.Thread(target=self._keep, name="remote-pool", daemon=True)
        self._keeper.start()

    # -- handing out -----------------------------------------------------------------------

    def make(self, env_id: str, **kwargs: Any) -> PooledEnv:
        """An env from a running container (started on demand if none has room)."""
        member = self._acquire()
        try:
            env = member.runner.make(env_id, **kwargs)
        except BaseException:
            self._release(member)
            raise
        return PooledEnv(env, lambda: self._release(member))

    def _acquire(self) -> _Member:
        deadline = time.monotonic() + self.wait_timeout
        with self._cond:
            self._waiting += 1
            try:
                while True:
                    if self._closed:
                        raise RemoteError("the pool is closed")
                    member = self._free_member()
                    if member is not None:
                        member.load += 1
                        member.served += 1
                        return member
                    if len(self._members) + self._starting < self.max_size:
                        self._start_async()
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise ResourceUnavailable(
                            f"no container of the pool had room within {self.wait_timeout:g} s "
                            f"({len(self._members)} running, max_size={self.max_size}); raise "
                            "max_size, close envs you no longer need, or use shared=True"
                        )
                    self._cond.wait(min(left, 0.5))
            finally:
                self._waiting -= 1

    def _free_member(self) -> _Member | None:
        """The busiest live container that still has room (packs envs, lets others idle)."""
        room = [m for m in self._members if m.load < self.capacity and m.runner.alive]
        return max(room, key=lambda m: m.load, default=None)

    def _release(self, member: _Member) -> None:
        with self._cond:
            member.load -= 1
            if member.load == 0:
                member.idle_since = time.monotonic()
            self._cond.notify_all()

    # -- keeping the pool ------------------------------------------------------------------

    def _start_async(self) -> None:
        """Start one container in the background (call with the lock held)."""
        self._starting += 1
        threading.Thread(target=self._start_one, name="remote-pool-start", daemon=True).start()

    def _start_one(self) -> None:
        runner = None
        try:
            runner = RemoteRunner(self.image, **self._options)
        except RemoteError as exc:
            self._errors = [*self._errors[-9:], f"{type(exc).__name__}: {exc}"]
        with self._cond:
            self._starting -= 1
            if runner is not None:
                if self._closed:
                    runner.close()
                else:
                    self._members.append(_Member(runner))
            self._cond.notify_all()

    def _keep(self) -> None:
        """Drop dead containers, stop long-idle ones, keep ``min_idle`` warm."""
        while not self._stop.wait(0.05):
            to_close = []
            with self._cond:
                now = time.monotonic()
                for member in list(self._members):
                    dead = not member.runner.alive
                    idle = member.load == 0
                    surplus = sum(m.load == 0 for m in self._members) > self.min_idle
                    if dead or (idle and surplus and now - member.idle_since > self.idle_timeout):
                        if dead and member.load:
                            continue  # its envs will report ContainerDied; dropped on release
                        self._members.remove(member)
                        to_close.append(member.runner)
                idle_count = sum(m.load == 0 for m in self._members) + self._starting
                room = self.max_size - len(self._members) - self._starting
                for _ in range(min(self.min_idle - idle_count, room)):
                    self._start_async()
                if to_close:
                    self._cond.notify_all()
            for runner in to_close:
                runner.close()

    # -- status and end --------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Sizes, queue and per-container load, as JSON-ready data for monitoring."""
        with self._cond:
            now = time.monotonic()
            return {
                "image": self.image,
                "size": len(self._members),
                "starting": self._starting,
                "idle": sum(m.load == 0 for m in self._members),
                "busy": sum(m.load > 0 for m in self._members),
                "queue": self._waiting,
                "max_size": self.max_size,
                "min_idle": self.min_idle,
                "capacity_per_container": self.capacity,
                "containers": [
                    {
                        "pid": m.runner.pid,
                        "envs": m.load,
                        "served": m.served,
                        "alive": m.runner.alive,
                        "idle_s": round(now - m.idle_since, 3) if m.load == 0 else 0.0,
                    }
                    for m in self._members
                ],
                "recent_errors": list(self._errors),
            }

    def close(self) -> None:
        """Stop every container of the pool (their envs become unusable)."""
        with self._cond:
            self._closed = True
            members, self._members = self._members, []
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._starting == 0, timeout=60)  # they close themselves
        self._stop.set()
        self._keeper.join()
        for member in members:
            member.runner.close()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
