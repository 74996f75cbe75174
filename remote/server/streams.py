"""The env streams: one connection per env or group, the lean path for reset and step."""

from __future__ import annotations

import contextlib
import socket
import threading
import traceback
from typing import Any

from ..errors import ProtocolError
from ..protocol.channel import REQUEST_POLL_NS, SOLE_REQUEST_POLL_NS, Channel, polling
from ..protocol.ops import OK, check_hello, error_reply
from .control import RemoteRunnerServer
from .envs import RemoteEnvironmentServer
from .groups import EnvGroupServer


class EnvStreamServer:
    """Accepts env-stream connections and serves each on its own thread.

    A stream alone in the container polls for its next request before it sleeps (see
    :class:`~remote.protocol.channel.Channel`); with more than one, none polls, or a polling
    thread would hold the GIL another stream's thread needs to answer. A hello's
    ``"poll_ns"`` sets how long (at most :data:`~remote.protocol.channel.SOLE_REQUEST_POLL_NS`;
    0: not at all, for a client that steps more containers at once than the CPUs could hold
    spinning; longer, for the one stream of its process).
    """

    def __init__(self, listener: socket.socket, runner: RemoteRunnerServer, secret: str) -> None:
        self.listener = listener
        self.runner = runner
        self.secret = secret
        self.connections: dict[socket.socket, Channel] = {}
        self.polls: dict[Channel, int] = {}  # how long each stream's hello asked it to poll
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
                self.polls.pop(channel, None)
                self._poll()

    def _poll(self) -> None:
        """Let the stream poll, as long as its hello asked, if it is alone (under :attr:`lock`)."""
        alone = len(self.connections) == 1
        for channel in self.connections.values():
            channel.poll_ns = polling(self.polls.get(channel, REQUEST_POLL_NS)) if alone else 0

    def _accept(self, channel: Channel) -> RemoteEnvironmentServer | EnvGroupServer | None:
        channel.settimeout(10.0)  # a client must say hello promptly
        try:
            hello = channel.recv()
            check_hello(hello, self.secret)
            target = self._target(hello)
            if "poll_ns" in hello:
                poll = hello["poll_ns"]
                if type(poll) is not int or not 0 <= poll <= SOLE_REQUEST_POLL_NS:
                    raise ProtocolError(f"poll_ns must be an int from 0 to {SOLE_REQUEST_POLL_NS}")
                with self.lock:
                    self.polls[channel] = poll
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
