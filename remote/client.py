"""The host-side facade of an environment that lives in a container."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import TYPE_CHECKING, Any, SupportsFloat

import gymnasium as gym
from gymnasium.envs.registration import EnvSpec

from .errors import InvalidAction, ProtocolError, RemoteError
from .protocol import spaces as space_codec
from .protocol.channel import Channel
from .protocol.ops import (
    CLOSE,
    CLOSE_REPLY_SIZE,
    OK,
    RENDER,
    RENDER_REPLY_SIZE,
    RESET,
    RESET_REPLY_SIZE,
    STEP,
    STEP_REPLY_SIZE,
    result,
)

if TYPE_CHECKING:
    from .runner import RemoteRunner


class EnvStream:
    """The stream of one env (or one group of envs) in a container: requests go out as
    ``[op, args]``, replies come back as ``[OK, value, ...]`` or ``[ERROR, error]`` (the
    operations and their reply sizes are :mod:`remote.protocol.ops`'s).

    A failure maps to one of remote's errors and leaves the stream unusable (its next
    frame could be the answer to an older request): :class:`remote.CallTimeout`,
    :class:`remote.ContainerDied` or :class:`remote.ProtocolError`. So does a call
    interrupted by Ctrl-C or a signal handler's exception (raised as it is): the next
    call says so.
    """

    def __init__(self, runner: RemoteRunner, channel: Channel, name: str) -> None:
        self.runner = runner
        self.name = name
        self._channel: Channel | None = channel
        self._broken: str | None = None
        self._owed = False  # a request went out and its reply has not been read

    @property
    def open(self) -> bool:
        """Usable: not closed, broken, or owed the reply to an interrupted call."""
        return self._channel is not None and not self._owed

    def call(self, op: str, args: Any, size: int) -> list[Any]:
        """Send one request and return its reply, a list of ``size`` items
        (:data:`remote.protocol.ops.REPLY_SIZE`)."""
        self.send(op, args)
        return self.receive(op, size)

    def send(self, op: str, args: Any) -> None:
        """Send a request. TypeError (a value the codec cannot carry) leaves the stream usable."""
        channel = self._usable()
        self._owed = True
        try:
            channel.send([op, args])
        except (TypeError, ProtocolError):  # the codec refused the value: nothing went out
            self._owed = False
            raise
        except OSError as exc:
            raise self._failed(exc, op) from None

    def receive(self, op: str, size: int) -> list[Any]:
        """Receive the reply to ``op``: ``[OK, ...]`` with ``size`` items, or raise its error."""
        channel = self._channel
        if channel is None:
            raise RemoteError(self._broken or f"{self.name} is closed; create a new env")
        try:
            reply = channel.recv()
        except (OSError, ProtocolError) as exc:
            raise self._failed(exc, op) from None
        self._owed = False
        if type(reply) is list and len(reply) == size and reply[0] == OK:
            return reply
        with contextlib.suppress(ProtocolError):  # not a reply of the protocol: as below
            result(reply)  # the error of an [ERROR, error] reply is raised here
        self.drop(f"{self.name}: the connection broke the protocol; create a new env")
        raise ProtocolError(f"malformed reply to {op}: {reply!r:.100}")

    def _usable(self) -> Channel:
        """The channel, or RemoteError if the stream is closed or broken. A call interrupted
        (Ctrl-C, an exception from a signal handler) between its request and the end of its
        reply leaves the stream out of step: it is dropped here, not read out of turn."""
        if self._owed:
            self.drop(f"{self.name}: a call was interrupted, so its stream is out of step; create a new env")
        if self._channel is None:
            raise RemoteError(self._broken or f"{self.name} is closed; create a new env")
        return self._channel

    def _failed(self, exc: Exception, op: str) -> RemoteError:
        if isinstance(exc, TimeoutError):
            self.drop(
                f"{self.name}: a call timed out earlier, so its stream is out of step; create a new env"
            )
            return self.runner.timeout_error(f"{op} on {self.name}")
        if isinstance(exc, ProtocolError):
            self.drop(f"{self.name}: the connection broke the protocol; create a new env")
            return exc
        # EOF, reset, broken pipe: the server or container is gone
        self.drop(f"{self.name}: the connection to the container was lost")
        return self.runner.connection_lost(exc, f"{op} on {self.name}")

    def drop(self, reason: str) -> None:
        """Close the socket; later calls raise RemoteError(reason)."""
        channel, self._channel = self._channel, None
        self._broken, self._owed = reason, False
        if channel is not None:
            channel.close()


class RemoteEnvironmentClient(gym.Env):
    """A ``gymnasium.Env`` whose ``reset``/``step``/``render``/``close`` run in a container.

    Spaces, ``metadata``, ``render_mode`` and ``spec`` are rebuilt locally from the remote
    env, so wrappers, vector envs and ``check_env`` work as with a local env. Arrays come
    back with the exact dtype and shape the remote env produced. Created by
    :meth:`remote.RemoteRunner.make` or :func:`remote.make`, not directly.

    Errors: an exception raised by the env arrives as :class:`remote.RemoteEnvError`
    (also an instance of the original built-in type, e.g. ``ValueError``), an action
    outside the action space as :class:`remote.InvalidAction`; a dead container as
    :class:`remote.ContainerDied`; no answer within the runner's timeout as
    :class:`remote.CallTimeout`, after which this env is unusable.
    """

    def __init__(
        self,
        runner: RemoteRunner,
        env_id: str,
        handle: int,
        description: dict[str, Any],
        stream: EnvStream,
        kwargs: dict[str, Any] | None = None,
        owns_runner: bool = False,
    ) -> None:
        self.runner = runner
        self.env_id = env_id
        #: The kwargs the env was made with.
        self.kwargs = dict(kwargs or {})
        self.handle = handle
        #: The env's stream to the container (dropped when the env or its runner closes).
        self.stream = stream
        self._owns_runner = owns_runner
        self.observation_space = space_codec.rebuild(description["observation_space"])
        self.action_space = space_codec.rebuild(description["action_space"])
        self.metadata = dict(description.get("metadata") or {})
        self.render_mode = description.get("render_mode")
        self.spec = spec_from(description.get("spec"))
        self.steps = self.episodes = 0  # totals for the record, counted without a call
        self.total_return = 0.0
        self.first_seed: int | None = None

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset the remote env. Returns ``(observation, info)``."""
        super().reset(seed=seed)  # keeps self.np_random consistent with a local env
        if self.first_seed is None:
            self.first_seed = seed
        reply = self.stream.call(RESET, [seed, options], RESET_REPLY_SIZE)
        return reply[1], reply[2]

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """Step the remote env. Returns ``(observation, reward, terminated, truncated, info)``."""
        try:
            reply = self.stream.call(STEP, action, STEP_REPLY_SIZE)
        except TypeError as exc:  # the codec cannot carry this action
            raise InvalidAction(f"action cannot be sent: {exc}") from None
        self.steps += 1
        self.total_return += reply[2]
        if reply[3] or reply[4]:
            self.episodes += 1
        return reply[1], reply[2], reply[3], reply[4], reply[5]

    def render(self) -> Any:
        """Render remotely; ``rgb_array`` frames come back as ``uint8`` arrays (H, W, 3)."""
        return self.stream.call(RENDER, None, RENDER_REPLY_SIZE)[1]

    def close(self) -> None:
        """Close the remote env (and its container, if :func:`remote.make` started it).
        Safe to call more than once."""
        if self.stream.open:  # not broken, nor owed the reply to an interrupted call
            with contextlib.suppress(RemoteError):  # gone or broken: nothing left to close
                self.stream.call(CLOSE, None, CLOSE_REPLY_SIZE)
            self.runner.forget(self)
        self.stream.drop(f"{self.env_id} is closed")
        if self._owns_runner:
            self.runner.close()

    def __repr__(self) -> str:
        return f"<RemoteEnvironmentClient {self.env_id} in {self.runner.image}>"


def spec_from(fields: dict[str, Any] | None) -> EnvSpec | None:
    """The remote env's spec, keeping only the fields this gymnasium's EnvSpec knows."""
    if not fields or not fields.get("id"):
        return None
    known = {f.name for f in dataclasses.fields(EnvSpec)}
    return EnvSpec(**{k: v for k, v in fields.items() if k in known and v is not None})
