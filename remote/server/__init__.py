"""The server: what runs inside the container, on the image's own Python.

``main(run_dir)`` is what the container executes. It reads ``config.json`` and the
session secret from ``run_dir`` (a host folder bound into the container), then serves
on two endpoints, unix sockets in ``run_dir`` or TCP ports on 127.0.0.1:

* **control** (Pyro5, msgpack serializer): :class:`RemoteRunnerServer` creates and closes
  environments and reports versions. Every connection must pass the handshake: protocol
  version and session secret.
* **env stream** (length-prefixed msgpack frames, see :mod:`remote.protocol.channel`): one connection
  per environment, the lean path for ``reset``/``step``/``render``. The first frame must
  name the environment and carry the secret.

When ready it writes ``ready.json`` (atomically). It exits, closing every environment and
removing ``run_dir``, when its stdin reaches end of file: the host holds the other end of
that pipe, so the server never outlives the host process, even after ``kill -9``.

Nothing received is executed or unpickled: requests are plain msgpack data, checked
against a fixed set of operations and the environment's action space. The requests and
replies are listed in :mod:`remote.protocol.ops`, the run folder's files in
:mod:`remote.protocol.rundir`.
"""

from .control import RemoteRunnerServer
from .envs import RemoteEnvironmentServer
from .main import main

__all__ = ["RemoteEnvironmentServer", "RemoteRunnerServer", "main"]
