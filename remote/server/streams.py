"""The env streams: one connection per env or group, the lean path for reset and step."""

from __future__ import annotations

import contextlib
import socket
import threading
import traceback
from typing import Any

from ..errors import ProtocolError
from ..protocol.channel import Channel, polling
from ..protocol.ops import OK, check_hello, error_reply
from .control import RemoteRunnerServer
from .envs import RemoteEnvironmentServer
from .groups import EnvGroupServer

#: How long a lone stream polls for its next request before it sleeps (ns): longer than a
#: client's poll for its reply, as the next request follows the agent's own work (a policy's
#: forward pass: 0.2-0.5 ms for an MLP, 2-3 ms for SB3's CnnPolicy on one thread). SB3 PPO
#: on 4 CartPoles, 20k steps: learn time 1.35x local with 0.2 ms, 1.01-1.14x with 1-2 ms;
#: CnnPolicy on Breakout: step_wait 1.63-1.96 s with 1 ms, 1.28-1.44 s with 5 ms (and a
#: client poll of 2 ms), as a container that slept steps its env slower after.
REQUEST_POLL_NS = 5_000_000


class EnvStreamServer:
    """Accepts env-stream connections and serves each on its own thread.

    A stream alone in the container polls for its next request before it sleeps (see
    :class:`~remote.protocol.channel.Channel`); with more than one, none polls, or a polling
    thread would hold the GIL another stream's thread needs to answer. Nor does one whose
    hello says ``"poll": false``: its client steps more containers at once than the CPUs
    could hold spinning (a container that spins takes the CPU another one needs to step).
    """

    def __init__(self, listener: socket.socket, runner: RemoteRunnerServer, secret: str) -> None:
        self.listener = listener
        self.runner = runner
        self.secret = secret
        self.connections: dict[socket.socket, Channel] = {}
        self.sleepers: set[Channel] = set()  # streams whose hello asked for no polling
        self.lock = threading.Lock()

    def stop(self) -> None:
        """Cut every connection before the envs are closed at shutdown: a request in flight
        then ends in a lost connection (the client reports the container's exit), never in
        an answer from an env already closed."""
        with self.lock:
            connections, self.connections = list(self.connections), {}
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
        channel = Channel(conn)
        with self.lock:
            self.connections[conn] = channel
            self._poll()
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
                        response = error_reply(ProtocolError("a request is [op, args]"))
                    try:
                        send(response)
                    except TypeError as exc:  # a result the codec cannot carry
                        send(error_reply(exc))
        except (ConnectionError, OSError, ProtocolError):
            return  # client went away or spoke garbage: drop the connection
        except Exception:  # a bug of ours: say so, keep serving the others
            traceback.print_exc()
        finally:
            with self.lock:
                self.connections.pop(conn, None)
                self.sleepers.discard(channel)
                self._poll()

    def _poll(self) -> None:
        """Let the stream poll if it is alone and its hello did not say ``"poll": false``
        (under :attr:`lock`)."""
        poll = polling(REQUEST_POLL_NS) if len(self.connections) == 1 else 0
        for channel in self.connections.values():
            channel.poll_ns = 0 if channel in self.sleepers else poll

    def _accept(self, channel: Channel) -> RemoteEnvironmentServer | EnvGroupServer | None:
        channel.settimeout(10.0)  # a client must say hello promptly
        try:
            hello = channel.recv()
            check_hello(hello, self.secret)
            target = self._target(hello)
            if hello.get("poll", True) is not True:
                with self.lock:
                    self.sleepers.add(channel)
                    self._poll()
        except (ProtocolError, TimeoutError) as exc:
            with contextlib.suppress(OSError):
                channel.send(error_reply(exc))
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
