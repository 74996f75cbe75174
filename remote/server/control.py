"""The control object the host calls through Pyro5: create and close envs, versions, experiments."""

from __future__ import annotations

import contextlib
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
from . import attributes
from .envs import RemoteEnvironmentServer, create_env, describe_env, import_modules


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
        """Versions inside the container: protocol, remote, python, gymnasium, numpy, codec."""
        return self._reply(server_info)

    @Pyro5.server.expose
    def make(self, env_id: str, kwargs: bytes, wrappers: bytes | None = None) -> bytes:
        """Create an env (with ``wrappers`` around it, codec bytes of ``[[entry_point, kwargs],
        ...]``); return its handle and its description (spaces, metadata, spec)."""

        def make() -> dict[str, Any]:
            if not isinstance(env_id, str) or not isinstance(kwargs, bytes):
                raise ProtocolError("make expects (str, bytes)")
            env_kwargs = codec.loads(kwargs)
            if not isinstance(env_kwargs, dict) or not all(isinstance(k, str) for k in env_kwargs):
                raise ProtocolError("env kwargs must be a dict with str keys")
            wrapper_list = _wrappers(wrappers)
            try:
                env = create_env(env_id, env_kwargs, wrapper_list)
            except EnvCreationError as exc:
                raise EnvCreationError(f"could not create {env_id!r} in the container: {exc}") from exc
            except Exception as exc:
                raise EnvCreationError(
                    f"could not create {env_id!r} in the container: {type(exc).__name__}: {exc}"
                ) from exc
            try:
                description = describe_env(env)
            except Exception as exc:
                with contextlib.suppress(Exception):
                    env.close()
                raise EnvCreationError(
                    f"{env_id!r} was created in the container, but cannot be mirrored on the host: {exc}; "
                    "convert that space and its values to gymnasium spaces and plain data with a "
                    "wrapper (wrappers=[('module:Wrapper', {...})])"
                ) from exc
            with self.lock:
                handle = self.next_id
                self.next_id += 1
                self.envs[handle] = RemoteEnvironmentServer(env)
            return {"handle": handle, "description": description}

        return self._reply(make)

    @Pyro5.server.expose
    def imports(self, modules: bytes) -> bytes:
        """Import the modules (codec bytes of ``[name, ...]``), in order; return the seconds
        each took."""

        def run() -> dict[str, float]:
            names = codec.loads(modules) if isinstance(modules, bytes) else None
            if not isinstance(names, list):
                raise ProtocolError("imports expects codec bytes of a list of module names")
            return import_modules(names)

        return self._reply(run)

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
    def call(self, handle: int, path: str, arguments: bytes | None = None) -> bytes:
        """Read the attribute ``path`` of an env (``arguments`` None) or call it with ``arguments``
        (codec bytes of ``[args, kwargs]``), under the env's lock (see :mod:`.attributes`)."""
        with self.lock:
            served = self.envs.get(handle) if type(handle) is int else None
        if served is None:
            gone = RuntimeError(f"no env {handle!r:.20} in the container: it was closed; make a new one")
            return codec.dumps(error_reply(gone))
        with served.lock:
            if served.closed:
                return codec.dumps(error_reply(RuntimeError("the environment is closed")))
            return attributes.call(served.env, path, arguments)

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


def _wrappers(data: bytes | None) -> list[tuple[str, dict[str, Any]]]:
    """The wrappers of a make request: ``[[entry_point, kwargs], ...]`` as codec bytes."""
    if data is None:
        return []
    items = codec.loads(data) if isinstance(data, bytes) else None
    if not isinstance(items, list) or not all(
        isinstance(item, list)
        and len(item) == 2
        and isinstance(item[0], str)
        and isinstance(item[1], dict)
        and all(isinstance(k, str) for k in item[1])
        for item in items
    ):
        raise ProtocolError("wrappers must be codec bytes of [[entry_point, kwargs], ...]")
    return [(entry_point, kwargs) for entry_point, kwargs in items]


def server_info() -> dict[str, Any]:
    return {
        "protocol": PROTOCOL_VERSION,
        "remote": _remote_version(),
        "python": sys.version.split()[0],
        "gymnasium": gym.__version__,
        "numpy": np.__version__,
        "codec": codec.MSGPACK,
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
