"""The host-side facade of an environment that lives in a container."""

from __future__ import annotations

import contextlib
import dataclasses
import socket
from typing import TYPE_CHECKING, Any, SupportsFloat

import gymnasium as gym
from gymnasium.envs.registration import EnvSpec

from . import spaces as space_codec
from . import wire
from .errors import InvalidAction, ProtocolError, RemoteError, remote_exception

if TYPE_CHECKING:
    from .runner import RemoteRunner

OK = 0


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
        stream: socket.socket,
        owns_runner: bool = False,
    ) -> None:
        self.runner = runner
        self.env_id = env_id
        self.handle = handle
        self._stream: socket.socket | None = stream
        self._owns_runner = owns_runner
        self._broken: str | None = None
        self.observation_space = space_codec.rebuild(description["observation_space"])
        self.action_space = space_codec.rebuild(description["action_space"])
        self.metadata = dict(description.get("metadata") or {})
        self.render_mode = description.get("render_mode")
        self.spec = _spec(description.get("spec"))
        self.steps = self.episodes = 0  # totals for the record, counted without a call
        self.total_return = 0.0
        self.first_seed: int | None = None

    def _call(self, op: str, args: Any = None) -> Any:
        stream = self._stream
        if stream is None:
            raise RemoteError(self._broken or f"{self.env_id} is closed; create a new env with runner.make()")
        try:
            wire.send_frame(stream, [op, args])
            response = wire.recv_frame(stream)
        except TimeoutError:
            self._drop(
                f"{self.env_id}: a call timed out earlier, so its stream is out of step; create a new env"
            )
            raise self.runner.timeout_error(f"{op} on {self.env_id}") from None
        except ProtocolError:
            self._drop(f"{self.env_id}: the connection broke the protocol; create a new env")
            raise
        except OSError as exc:  # EOF, reset, broken pipe: the server or container is gone
            self._drop(f"{self.env_id}: the connection to the container was lost")
            raise self.runner.connection_lost(exc, f"{op} on {self.env_id}") from None
        if not (isinstance(response, list) and len(response) == 2):
            raise ProtocolError(f"malformed response to {op}: {response!r:.100}")
        status, payload = response
        if status == OK:
            return payload
        if not isinstance(payload, dict):
            raise ProtocolError(f"malformed error response to {op}: {payload!r:.100}")
        raise remote_exception(
            str(payload.get("type")), str(payload.get("message")), str(payload.get("traceback"))
        )

    def _drop(self, reason: str) -> None:
        stream, self._stream = self._stream, None
        self._broken = reason
        if stream is not None:
            stream.close()

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset the remote env. Returns ``(observation, info)``."""
        super().reset(seed=seed)  # keeps self.np_random consistent with a local env
        if self.first_seed is None:
            self.first_seed = seed
        result = self._call("reset", [seed, options])
        if not (isinstance(result, tuple) and len(result) == 2):
            raise ProtocolError(f"reset returned {type(result).__name__}, not (obs, info)")
        return result

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """Step the remote env. Returns ``(observation, reward, terminated, truncated, info)``."""
        try:
            result = self._call("step", action)
        except TypeError as exc:  # the codec cannot carry this action
            raise InvalidAction(f"action cannot be sent: {exc}") from None
        if not (isinstance(result, tuple) and len(result) == 5):
            raise ProtocolError(f"step returned {type(result).__name__}, not a 5-tuple")
        self.steps += 1
        self.total_return += result[1]
        if result[2] or result[3]:
            self.episodes += 1
        return result

    def render(self) -> Any:
        """Render remotely; ``rgb_array`` frames come back as ``uint8`` arrays (H, W, 3)."""
        return self._call("render")

    def close(self) -> None:
        """Close the remote env (and its container, if :func:`remote.make` started it).
        Safe to call more than once."""
        if self._stream is not None:
            with contextlib.suppress(RemoteError):  # gone or broken: nothing left to close
                self._call("close")
            self._drop(f"{self.env_id} is closed")
            self.runner.forget(self)
        if self._owns_runner:
            self.runner.close()

    def __repr__(self) -> str:
        return f"<RemoteEnvironmentClient {self.env_id} in {self.runner.image}>"


def _spec(fields: dict[str, Any] | None) -> EnvSpec | None:
    """The remote env's spec, keeping only the fields this gymnasium's EnvSpec knows."""
    if not fields or not fields.get("id"):
        return None
    known = {f.name for f in dataclasses.fields(EnvSpec)}
    return EnvSpec(**{k: v for k, v in fields.items() if k in known and v is not None})
