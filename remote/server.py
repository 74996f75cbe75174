"""The server that runs inside the container.

``main(run_dir)`` is what the container executes. It reads ``config.json`` and the
session secret from ``run_dir`` (a host folder bound into the container), then serves
on two endpoints, unix sockets in ``run_dir`` or TCP ports on 127.0.0.1:

* **control** (Pyro5, msgpack serializer): :class:`RemoteRunnerServer` creates and closes
  environments and reports versions. Every connection must pass the handshake: protocol
  version and session secret.
* **env stream** (length-prefixed msgpack frames, see :mod:`remote.wire`): one connection
  per environment, the lean path for ``reset``/``step``/``render``. The first frame must
  name the environment and carry the secret.

When ready it writes ``ready.json`` (atomically). It exits, closing every environment and
removing ``run_dir``, when its stdin reaches end of file: the host holds the other end of
that pipe, so the server never outlives the host process, even after ``kill -9``.

Nothing received is executed or unpickled: requests are plain msgpack data, checked
against a fixed set of operations and the environment's action space.
"""

from __future__ import annotations

import contextlib
import hmac
import importlib
import json
import os
import shutil
import signal
import socket
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import Pyro5.api
import Pyro5.errors
import Pyro5.serializers

from . import spaces as space_codec
from . import wire
from .errors import EnvCreationError, InvalidAction, ProtocolError

OK, ERROR = 0, 1


def error_payload(exc: BaseException) -> dict[str, str]:
    """An exception as plain data: qualified type name, message and formatted traceback."""
    cls = type(exc)
    return {
        "type": f"{cls.__module__}.{cls.__qualname__}",
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(cls, exc, exc.__traceback__)),
    }


def check_action(space: gym.Space, action: Any) -> None:
    """Raise InvalidAction unless ``action`` fits ``space``.

    Box actions are checked for shape and a numeric dtype only: many envs accept and clip
    actions outside the bounds, and so does a local gymnasium env.
    """
    if isinstance(space, gym.spaces.Box):
        array = np.asarray(action)
        if array.shape != space.shape or array.dtype.kind not in "biuf":
            raise InvalidAction(
                f"action {action!r:.100} (shape {array.shape}, dtype {array.dtype}) does not fit "
                f"{space}: expected shape {space.shape}, numeric dtype"
            )
        return
    if isinstance(space, gym.spaces.Tuple) and isinstance(action, (tuple, list)):
        if len(action) == len(space.spaces):
            for sub, value in zip(space.spaces, action, strict=False):
                check_action(sub, value)
            return
    elif isinstance(space, gym.spaces.Dict) and isinstance(action, dict):
        if action.keys() == space.spaces.keys():
            for key, sub in space.spaces.items():
                check_action(sub, action[key])
            return
    elif space.contains(action):
        return
    raise InvalidAction(f"action {action!r:.100} is not an element of the action space {space}")


def create_env(env_id: str, kwargs: dict[str, Any]) -> gym.Env:
    """Create an env from a gymnasium id (``"CartPole-v1"``, ``"pkg.module:Env-v0"``) or an
    entry point ``"pkg.module:EnvClass"``; ``kwargs`` go to its constructor."""
    module_name, sep, attr = env_id.partition(":")
    if sep:
        module = importlib.import_module(module_name)
        factory = getattr(module, attr, None)
        if isinstance(factory, type) and issubclass(factory, gym.Env):
            return factory(**kwargs)
    return gym.make(env_id, **kwargs)


def describe_env(env: gym.Env) -> dict[str, Any]:
    """What the host needs to mirror ``env``: spaces, metadata, render mode and spec."""
    spec = env.spec
    spec_fields = None
    if spec is not None:
        spec_fields = {
            "id": spec.id,
            "entry_point": spec.entry_point if isinstance(spec.entry_point, str) else None,
            "reward_threshold": spec.reward_threshold,
            "nondeterministic": spec.nondeterministic,
            "max_episode_steps": spec.max_episode_steps,
            "order_enforce": spec.order_enforce,
            "disable_env_checker": spec.disable_env_checker,
        }
    metadata = {}
    for key, value in dict(env.metadata).items():
        try:
            wire.dumps(value)
        except TypeError:
            continue  # a value only meaningful in the container (a function, a class)
        metadata[key] = value
    return {
        "observation_space": space_codec.describe(env.observation_space),
        "action_space": space_codec.describe(env.action_space),
        "metadata": metadata,
        "render_mode": env.render_mode,
        "spec": spec_fields,
    }


def action_checker(space: gym.Space) -> Callable[[Any], None]:
    """:func:`check_action` for one space, with a fast path for the common actions
    (a plain int for Discrete, an ndarray of the right shape for Box)."""
    if type(space) is gym.spaces.Discrete:
        low, high = int(space.start), int(space.start + space.n)

        def check_discrete(action: Any) -> None:
            if not ((type(action) is int or isinstance(action, np.integer)) and low <= action < high):
                check_action(space, action)

        return check_discrete
    if type(space) is gym.spaces.Box:
        shape = space.shape

        def check_box(action: Any) -> None:
            if type(action) is not np.ndarray or action.shape != shape or action.dtype.kind not in "biuf":
                check_action(space, action)

        return check_box
    return lambda action: check_action(space, action)


def dispatch(ops: dict[str, Callable[[Any], list[Any]]], op: Any, args: Any, closed: str) -> list[Any]:
    """Run request ``op`` with ``args`` through ``ops`` and return the reply frame; an
    exception becomes ``[ERROR, error]``. ``closed``, if set, refuses all but ``close``."""
    try:
        method = ops.get(op) if type(op) is str else None
        if method is None:
            raise ProtocolError(f"unknown operation {op!r:.40}")
        if closed and op != "close":
            raise RuntimeError(closed)
        return method(args)
    except Exception as exc:
        return [ERROR, error_payload(exc)]


class RemoteEnvironmentServer:
    """One environment in the container and the operations the host may ask of it.

    Each operation returns the whole reply frame: ``[OK, obs, reward, terminated,
    truncated, info]`` for ``step``, ``[OK, obs, info]`` for ``reset``, ``[OK, value]``
    for the others; :meth:`handle` turns an exception into ``[ERROR, error]``.
    """

    def __init__(self, env: gym.Env) -> None:
        self.env = env
        self.lock = threading.Lock()
        self.closed = False
        self.check = action_checker(env.action_space)
        self.ops: dict[str, Callable[[Any], list[Any]]] = {
            "step": self.step,
            "reset": self.reset,
            "render": self.render,
            "close": self.close,
        }

    def step(self, action: Any) -> list[Any]:
        self.check(action)
        obs, reward, terminated, truncated, info = self.env.step(action)
        return [OK, obs, reward, bool(terminated), bool(truncated), info]

    def reset(self, args: Any) -> list[Any]:
        if not (isinstance(args, list) and len(args) == 2):
            raise ProtocolError("reset expects [seed, options]")
        seed, options = args
        if seed is not None and not isinstance(seed, int):
            raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
        if options is not None and not isinstance(options, dict):
            raise TypeError(f"options must be a dict or None, got {type(options).__name__}")
        obs, info = self.env.reset(seed=seed, options=options)
        return [OK, obs, info]

    def render(self, _: Any = None) -> list[Any]:
        return [OK, self.env.render()]

    def close(self, _: Any = None) -> list[Any]:
        if not self.closed:
            self.closed = True
            self.env.close()
        return [OK, None]

    def handle(self, op: Any, args: Any) -> list[Any]:
        """Run one request and return its reply frame."""
        with self.lock:
            return dispatch(self.ops, op, args, "the environment is closed" if self.closed else "")


class EnvGroupServer:
    """Several envs of the container stepped by one request: the server side of
    :class:`remote.vector.RemoteVectorEnv`, autoreset as gymnasium's ``NEXT_STEP`` mode
    (an env that ended is reset by the next ``step``, which returns reward 0).

    ``step`` takes a list of actions, or an array whose rows are the actions (as gymnasium's
    ``iterate`` splits a batched Box/MultiDiscrete/MultiBinary action). Replies: ``step`` →
    ``[OK, observations, rewards float64, terminations bool, truncations bool, [info...]]``;
    ``reset`` (args ``[[seed...], options]``) → ``[OK, observations, [info...]]``, where
    ``observations`` is one array stacking them all when every observation is an array of
    the same dtype and shape, else the list of observations.
    """

    def __init__(self, envs: list[RemoteEnvironmentServer]) -> None:
        self.envs = envs
        self.autoreset = [False] * len(envs)
        self.ops: dict[str, Callable[[Any], list[Any]]] = {
            "step": self.step,
            "reset": self.reset,
            "close": self.close,
        }

    def step(self, actions: Any) -> list[Any]:
        envs = self.envs
        if type(actions) is np.ndarray and actions.ndim > 0:
            actions = list(actions)
        if type(actions) is not list or len(actions) != len(envs):
            raise ProtocolError(f"step expects {len(envs)} actions")
        observations, rewards, terminations, truncations, infos = [], [], [], [], []
        autoreset = self.autoreset
        for env, action, skip in zip(envs, actions, autoreset, strict=True):
            if not skip:  # all actions are checked before any env moves
                env.check(action)
        for i, (env, action) in enumerate(zip(envs, actions, strict=True)):
            if autoreset[i]:
                obs, info = env.env.reset()
                reward, terminated, truncated = 0.0, False, False
            else:
                obs, reward, terminated, truncated, info = env.env.step(action)
            observations.append(obs)
            rewards.append(reward)
            terminations.append(terminated)
            truncations.append(truncated)
            infos.append(info)
            autoreset[i] = bool(terminated or truncated)
        return [
            OK,
            _stacked(observations),
            np.array(rewards, dtype=np.float64),
            np.array(terminations, dtype=np.bool_),
            np.array(truncations, dtype=np.bool_),
            infos,
        ]

    def reset(self, args: Any) -> list[Any]:
        if not (
            type(args) is list and len(args) == 2 and type(args[0]) is list and len(args[0]) == len(self.envs)
        ):
            raise ProtocolError(f"reset expects [[seed] * {len(self.envs)}, options]")
        seeds, options = args
        observations, infos = [], []
        for env, seed in zip(self.envs, seeds, strict=True):
            _, obs, info = env.reset([seed, options])
            observations.append(obs)
            infos.append(info)
        self.autoreset = [False] * len(self.envs)
        return [OK, _stacked(observations), infos]

    def close(self, _: Any = None) -> list[Any]:
        for env in self.envs:
            env.close()
        return [OK, None]

    def handle(self, op: Any, args: Any) -> list[Any]:
        """Run one request and return its reply frame."""
        closed = any(env.closed for env in self.envs)
        return dispatch(self.ops, op, args, "an environment of this group is closed" if closed else "")


def _stacked(observations: list[Any]) -> np.ndarray | list[Any]:
    """One array if every observation is an array of the same dtype and shape (one frame
    item instead of many), else the list."""
    first = observations[0]
    if type(first) is not np.ndarray:
        return observations
    dtype, shape = first.dtype, first.shape
    for obs in observations:
        if type(obs) is not np.ndarray or obs.dtype != dtype or obs.shape != shape:
            return observations
    return np.stack(observations)


@Pyro5.api.expose
class RemoteRunnerServer:
    """The control object: creates and closes environments. Every method returns
    ``wire.dumps([OK, result])`` or ``wire.dumps([ERROR, error])``, never raises."""

    def __init__(self) -> None:
        self.envs: dict[int, RemoteEnvironmentServer] = {}
        self.lock = threading.Lock()
        self.next_id = 1

    def _reply(self, call: Callable[[], Any]) -> bytes:
        try:
            return wire.dumps([OK, call()])
        except Exception as exc:
            return wire.dumps([ERROR, error_payload(exc)])

    def info(self) -> bytes:
        """Versions inside the container: protocol, remote, python, gymnasium, numpy."""
        return self._reply(server_info)

    def make(self, env_id: str, kwargs: bytes) -> bytes:
        """Create an env; return its handle and its description (spaces, metadata, spec)."""

        def make() -> dict[str, Any]:
            if not isinstance(env_id, str) or not isinstance(kwargs, bytes):
                raise ProtocolError("make expects (str, bytes)")
            env_kwargs = wire.loads(kwargs)
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

    def close_env(self, handle: int) -> bytes:
        """Close an env and forget it; closing an unknown handle is not an error."""

        def close() -> None:
            with self.lock:
                env = self.envs.pop(handle, None)
            if env is not None:
                env.close()

        return self._reply(close)

    def experiment(self, request: bytes) -> bytes:
        """Start, poll or cancel an experiment loop beside its env (:mod:`remote.experiment_loop`)."""
        from .experiment_loop import EXPERIMENTS

        return self._reply(lambda: EXPERIMENTS.handle(wire.loads(request), create_env))

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
        "protocol": wire.PROTOCOL_VERSION,
        "remote": _remote_version(),
        "python": sys.version.split()[0],
        "gymnasium": gym.__version__,
        "numpy": np.__version__,
        "pid": os.getpid(),
    }


def _remote_version() -> str:
    from . import __version__

    return __version__


class _Daemon(Pyro5.api.Daemon):
    """A Pyro5 daemon that admits only clients with the session secret and our protocol."""

    def __init__(self, secret: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._secret = secret

    def validateHandshake(self, conn: Any, data: Any) -> Any:  # noqa: N802 (Pyro5's name)
        check_hello(data, self._secret)
        return server_info()


def check_hello(hello: Any, secret: str) -> None:
    """Check a client's first message: ``{"protocol": int, "secret": str, ...}``."""
    if not isinstance(hello, dict):
        raise ProtocolError("handshake must be a map")
    if hello.get("protocol") != wire.PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version mismatch: client speaks {hello.get('protocol')!r}, "
            f"server speaks {wire.PROTOCOL_VERSION}"
        )
    given = hello.get("secret")
    if not isinstance(given, str) or not hmac.compare_digest(given.encode(), secret.encode()):
        raise ProtocolError("authentication failed: wrong or missing session secret")


class EnvStreamServer:
    """Accepts env-stream connections and serves each on its own thread."""

    def __init__(self, listener: socket.socket, runner: RemoteRunnerServer, secret: str) -> None:
        self.listener = listener
        self.runner = runner
        self.secret = secret
        self.connections: set[socket.socket] = set()
        self.lock = threading.Lock()

    def stop(self) -> None:
        """Cut every connection before the envs are closed at shutdown: a request in flight
        then ends in a lost connection (the client reports the container's exit), never in
        an answer from an env already closed."""
        with self.lock:
            connections, self.connections = list(self.connections), set()
        for sock in [self.listener, *connections]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def serve_forever(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn: socket.socket) -> None:
        channel = wire.Channel(conn)
        with self.lock:
            self.connections.add(conn)
        try:
            with conn:
                target = self._accept(channel)
                if target is None:
                    return
                recv, send, handle = channel.recv, channel.send, target.handle
                while True:
                    request = recv()
                    if type(request) is list and len(request) == 2:
                        response = handle(request[0], request[1])
                    else:
                        response = [ERROR, error_payload(ProtocolError("a request is [op, args]"))]
                    try:
                        send(response)
                    except TypeError as exc:  # a result the codec cannot carry
                        send([ERROR, error_payload(exc)])
        except (ConnectionError, OSError, ProtocolError):
            return  # client went away or spoke garbage: drop the connection
        except Exception:  # a bug of ours: say so, keep serving the others
            traceback.print_exc()
        finally:
            with self.lock:
                self.connections.discard(conn)

    def _accept(self, channel: wire.Channel) -> RemoteEnvironmentServer | EnvGroupServer | None:
        channel.settimeout(10.0)  # a client must say hello promptly
        try:
            hello = channel.recv()
            check_hello(hello, self.secret)
            target = self._target(hello)
        except (ProtocolError, TimeoutError) as exc:
            with contextlib.suppress(OSError):
                channel.send([ERROR, error_payload(exc)])
            return None
        channel.settimeout(None)
        channel.send([OK, None])
        return target

    def _target(self, hello: dict[str, Any]) -> RemoteEnvironmentServer | EnvGroupServer:
        """The env (``"env": handle``) or group (``"envs": [handle, ...]``) a stream serves."""
        envs = self.runner.envs
        handles = hello.get("envs", [hello.get("env")])
        found = [envs.get(h) if type(h) is int else None for h in handles] if type(handles) is list else []
        if not found or None in found:
            raise ProtocolError(f"no environment with handle {handles!r:.40}")
        if "envs" in hello:
            return EnvGroupServer(found)  # type: ignore[arg-type]
        return found[0]  # type: ignore[return-value]


def _only_msgpack() -> None:
    """Make every Pyro5 serializer id decode as msgpack: no marshal/serpent from the wire."""
    msgpack_serializer = Pyro5.serializers.serializers["msgpack"]
    for serializer_id in list(Pyro5.serializers.serializers_by_id):
        Pyro5.serializers.serializers_by_id[serializer_id] = msgpack_serializer


def _listen(config: dict[str, Any], run_dir: Path, name: str, port: int) -> socket.socket:
    if config["transport"] == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        path = run_dir / name
        sock.bind(str(path))
        os.chmod(path, 0o600)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", port))
    sock.listen(64)
    return sock


def main(run_dir: str) -> None:
    """Serve until stdin closes. ``run_dir`` holds config.json and the secret."""
    os.umask(0o077)
    root = Path(run_dir)
    config = json.loads((root / "config.json").read_text())
    secret = (root / "secret").read_text().strip()
    _only_msgpack()
    Pyro5.config.SERIALIZER = "msgpack"
    runner = RemoteRunnerServer()
    ports = config.get("ports") or (0, 0)  # leased by the host, or picked here

    if config["transport"] == "unix":
        daemon = _Daemon(secret, unixsocket=str(root / "control"))
        os.chmod(root / "control", 0o600)
        control: Any = str(root / "control")
    else:
        daemon = _Daemon(secret, host="127.0.0.1", port=ports[0])
        control = daemon.locationStr.rpartition(":")[2]
        control = int(control)
    daemon.register(runner, "runner")
    listener = _listen(config, root, "envs", ports[1])
    stream: Any = str(root / "envs") if config["transport"] == "unix" else listener.getsockname()[1]
    streams = EnvStreamServer(listener, runner, secret)
    threading.Thread(target=streams.serve_forever, daemon=True).start()

    def shutdown(*_: Any) -> None:
        streams.stop()
        runner.close_all()
        shutil.rmtree(root, ignore_errors=True)
        os._exit(0)

    signal.signal(signal.SIGTERM, shutdown)
    threading.Thread(target=_wait_for_eof, args=(shutdown,), daemon=True).start()

    ready = root / "ready.json.tmp"
    ready.write_text(
        json.dumps(
            {"pid": os.getpid(), "control": control, "stream": stream, "protocol": wire.PROTOCOL_VERSION}
        )
    )
    os.rename(ready, root / "ready.json")
    daemon.requestLoop()


def _wait_for_eof(then: Callable[[], None]) -> None:
    try:
        while sys.stdin.buffer.read(65536):
            pass
    except OSError:
        pass
    then()
