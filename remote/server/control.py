"""The control object the host calls through Pyro5: create and close envs, versions, experiments."""

from __future__ import annotations

import os
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import Pyro5.server

from ..errors import EnvCreationError, ProtocolError
from ..protocol import codec
from ..protocol.ops import OK, PROTOCOL_VERSION, check_hello, error_reply
from .envs import RemoteEnvironmentServer, create_env, describe_env


class RemoteRunnerServer:
    """The control object: creates and closes environments. Every method the host calls
    (:data:`remote.protocol.ops.CONTROL_METHODS`) returns ``codec.dumps([OK, result])`` or
    ``codec.dumps([ERROR, error])``, never raises."""

    def __init__(self) -> None:
        self.envs: dict[int, RemoteEnvironmentServer] = {}
        self.lock = threading.Lock()
        self.next_id = 1

    def _reply(self, call: Callable[[], Any]) -> bytes:
        try:
            return codec.dumps([OK, call()])
        except Exception as exc:
            return codec.dumps(error_reply(exc))

    @Pyro5.server.expose
    def info(self) -> bytes:
        """Versions inside the container: protocol, remote, python, gymnasium, numpy."""
        return self._reply(server_info)

    @Pyro5.server.expose
    def make(self, env_id: str, kwargs: bytes) -> bytes:
        """Create an env; return its handle and its description (spaces, metadata, spec)."""

        def make() -> dict[str, Any]:
            if not isinstance(env_id, str) or not isinstance(kwargs, bytes):
                raise ProtocolError("make expects (str, bytes)")
            env_kwargs = codec.loads(kwargs)
            if not isinstance(env_kwargs, dict) or not all(isinstance(k, str) for k in env_kwargs):
                raise ProtocolError("env kwargs must be a dict with str keys")
            try:
                env = create_env(env_id, env_kwargs)
                description = describe_env(env)
            except Exception as exc:
                raise EnvCreationError(
                    f"could not create {env_id!r} in the container: {type(exc).__name__}: {exc}"
                ) from exc
            with self.lock:
                handle = self.next_id
                self.next_id += 1
                self.envs[handle] = RemoteEnvironmentServer(env)
            return {"handle": handle, "description": description}

        return self._reply(make)

    @Pyro5.server.expose
    def close_env(self, handle: int) -> bytes:
        """Close an env and forget it; closing an unknown handle is not an error."""

        def close() -> None:
            with self.lock:
                env = self.envs.pop(handle, None)
            if env is not None:
                env.close()

        return self._reply(close)

    @Pyro5.server.expose
    def experiment(self, request: bytes) -> bytes:
        """Start, poll or cancel an experiment loop beside its env (:mod:`.experiment`)."""
        from .experiment import EXPERIMENTS

        return self._reply(lambda: EXPERIMENTS.handle(codec.loads(request), create_env))

    def close_all(self) -> None:
        with self.lock:
            envs, self.envs = list(self.envs.values()), {}
        for env in envs:
            try:
                env.close()
            except Exception:  # closing at exit: report, go on with the others
                traceback.print_exc()


def server_info() -> dict[str, Any]:
    return {
        "protocol": PROTOCOL_VERSION,
        "remote": _remote_version(),
        "python": sys.version.split()[0],
        "gymnasium": gym.__version__,
        "numpy": np.__version__,
        "pid": os.getpid(),
    }


def _remote_version() -> str:
    from .. import __version__

    return __version__


class Daemon(Pyro5.server.Daemon):
    """A Pyro5 daemon that admits only clients with the session secret and our protocol."""

    def __init__(self, secret: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._secret = secret

    def validateHandshake(self, conn: Any, data: Any) -> Any:  # noqa: N802 (Pyro5's name)
        check_hello(data, self._secret)
        return server_info()
