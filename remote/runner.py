"""The host side: start a container with the server in it, and hand out its environments."""

from __future__ import annotations

import atexit
import contextlib
import inspect
import logging
import os
import secrets
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil
import Pyro5.api
import Pyro5.errors

from . import config, runs
from .client import EnvStream, RemoteEnvironmentClient, open_streams
from .errors import (
    AuthenticationError,
    CallTimeout,
    ContainerDied,
    ContainerStartError,
    EnvCreationError,
    ExperimentError,
    ProtocolError,
    RemoteEnvError,
    RemoteError,
    VersionMismatch,
)
from .experiments import resolve as resolve_experiment
from .images.codecs import fallback_advice
from .images.payload import BOOTSTRAP, payload_dir
from .images.sources import Image
from .protocol import codec, ops, rundir
from .protocol.channel import SOLE_POLL_NS, SOLE_REQUEST_POLL_NS, Channel, polling
from .runtime import Bind, Runtime, ServerProcess, get_runtime
from .runtime.output import ContainerOutput
from .runtime.processes import Owner

#: Seconds a call may take before :class:`CallTimeout`; ``$REMOTE_TIMEOUT`` overrides it.
DEFAULT_TIMEOUT = config.timeout()
#: Seconds the container may take to answer its first request.
DEFAULT_START_TIMEOUT = config.start_timeout()
#: Longest unix socket path accepted (the kernel's limit is 107 bytes).
MAX_SOCKET_PATH = 100
#: The container's output log in the run folder, unless ``output_log=`` puts it elsewhere.
OUTPUT_LOG = "output.log"

log = logging.getLogger("remote")
_SLOW_CODEC_WARNED: list[str] = []  # the image of the one warning per process about a slow codec

#: A wrapper made in the container: ``"module:Wrapper"`` or ``("module:Wrapper", kwargs)``.
WrapperSpec = str | tuple[str, Mapping[str, Any]]

_live: set[RemoteRunner] = set()
_live_lock = threading.RLock()  # re-entrant: the SIGTERM handler may run while it is held


class RemoteRunner:
    """A container running the remote server, and the environments created in it.

    Args:
        image: what the runtime runs, with Python, numpy and gymnasium (what the server needs
            beyond that is brought in at start). For Apptainer: a ``.sif`` path or sandbox
            folder, an ``https://`` URL with its sha256, a ``docker://``/``oras://``/
            ``library://`` reference, or a ``.def`` recipe (see :func:`remote.images.resolve_image`);
            for ``"process"`` a Python executable (``.venv/bin/python``); for Podman and Docker
            an image name.
        experiment: instead of ``image``, an experiment id pinned in the experiments lock
            file (see :mod:`remote.experiments`); its image must have the pinned sha256.
        experiments: the lock file for ``experiment`` (default ``$REMOTE_EXPERIMENTS`` or
            ``./remote-experiments.json``).
        sha256: the expected sha256 of ``image``.
        transport: ``"unix"`` (default): unix sockets in an owner-only folder; ``"tcp"``:
            ports on 127.0.0.1, allocated by the server. Both require the session secret.
        python: the Python executable inside the image.
        timeout: seconds any call may take before :class:`remote.CallTimeout`.
        start_timeout: seconds the container may take to start and answer.
        make_timeout: seconds creating an env (and importing ``imports``/``preload``) may
            take, which may import for seconds; default ``start_timeout``.
        imports: modules imported in the container before any env is made: the packages that
            register env ids (gymnasium 1.x loads no plugins), e.g. ``["ale_py"]``.
        preload: modules imported in the container while it starts, so that the first
            :meth:`make` is fast (a package that takes seconds to import, e.g.
            ``["dacbench"]``); the runner is ready once they are imported.
        env: variables set in the container (the host's environment is not passed in).
        binds: more folders for the container, ``"src"`` or ``"src:dest[:ro]"``.
        runtime: ``"apptainer"`` (default), ``"singularity"``, ``"process"``, ``"podman"``,
            ``"docker"`` or a :class:`remote.runtime.Runtime`; default ``$REMOTE_RUNTIME``.
        ports: with ``transport="tcp"``, the (control, stream) ports to serve on (e.g. leased
            with :func:`remote.ports.lease_ports`); default: ports the server picks.
        output_log: the file the container's stdout and stderr go to, bounded: rotated to
            ``<output_log>.1`` at half of ``$REMOTE_OUTPUT_MAX_BYTES`` (10 MiB together) and kept
            after the container exits. Default: ``output.log`` in the run folder, which goes
            with the container (even after ``kill -9`` of this process), so nothing is left.
        forward_output: also log each line the container prints to the logger
            ``remote.container`` (INFO, as ``"<name>: <line>"``).

    The server is one supervised process (``apptainer exec``, ``podman run``, or the Python
    itself for ``"process"``; see :mod:`remote.runtime`).
    ``close()`` (or leaving the ``with`` block, or interpreter exit) stops it and removes its
    sockets; if the host process is killed, the server sees its stdin close and exits.

    Example::

        with remote.RemoteRunner("gymnasium.sif") as runner:
            env = runner.make("CartPole-v1")
            obs, info = env.reset(seed=0)
    """

    def __init__(
        self,
        image: str | os.PathLike[str] | None = None,
        *,
        experiment: str | None = None,
        experiments: str | os.PathLike[str] | None = None,
        sha256: str | None = None,
        transport: str = "unix",
        python: str = "python3",
        timeout: float = DEFAULT_TIMEOUT,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        env: Mapping[str, str] | None = None,
        binds: Sequence[str] = (),
        runtime: str | Runtime | None = None,
        ports: tuple[int, int] | None = None,
        make_timeout: float | None = None,
        imports: Sequence[str] = (),
        preload: Sequence[str] = (),
        output_log: str | os.PathLike[str] | None = None,
        forward_output: bool = False,
    ) -> None:
        _check_arguments(image, experiment, transport, ports, timeout, start_timeout)
        if make_timeout is not None and not make_timeout > 0:
            raise ValueError("make_timeout must be a positive number of seconds")
        for names in (imports, preload):
            if isinstance(names, str) or not all(isinstance(name, str) for name in names):
                raise TypeError(f"imports= and preload= take a list of module names, not {names!r:.60}")
        #: What this runner was made with, to start another one like it (an env's spec does).
        self.options: dict[str, Any] = {
            "experiment": experiment,
            "experiments": experiments,
            "sha256": sha256,
            "transport": transport,
            "python": python,
            "timeout": timeout,
            "start_timeout": start_timeout,
            "env": dict(env or {}),
            "binds": list(binds),
            "runtime": runtime,
            "make_timeout": make_timeout,
            "imports": list(imports),
            "preload": list(preload),
            "output_log": None if output_log is None else os.fspath(output_log),
            "forward_output": forward_output,
        }
        self._runtime = get_runtime(runtime)
        resolved = self._resolve_image(image, experiment, experiments, sha256)
        self.image = resolved.path
        #: sha256 of the image file (None where the runtime has no image file).
        self.image_sha256 = resolved.sha256
        self.transport = transport
        self.timeout = float(timeout)
        #: Seconds a make (or the imports of ``imports``/``preload``) may take.
        self.make_timeout = float(start_timeout if make_timeout is None else make_timeout)
        #: The extra folders the container sees: (host path, container path, mode).
        self.binds = [parse_bind(b) for b in binds]
        self._clients: set[RemoteEnvironmentClient] = set()
        #: The :meth:`run` calls under way (see :meth:`checkpoint`).
        self.active_runs: set[Any] = set()
        self._lock = threading.RLock()
        self._closed = False
        #: The last lines the container printed, kept when it exits (for error messages).
        self.log_tail = ""
        self._proxy: Pyro5.api.Proxy | None = None
        self._process: ServerProcess | None = None
        self.run_dir = _make_run_dir()
        #: Where the container's output goes (see ``output_log=``; :func:`remote.runtime.output.tail`).
        self.output_log = self.run_dir / OUTPUT_LOG
        if output_log is not None:
            self.output_log = Path(os.path.abspath(output_log))
        self.info: dict[str, Any] = {}
        try:  # from here on, close() undoes whatever was done
            self._secret = secrets.token_hex(32)
            self._write_run_dir(ports)
            name = f"remote-{self.run_dir.name}"
            self._start(self._command(python, env, name), name, forward_output)
            self._connect(self._wait_ready(start_timeout))
            if imports or preload:  # before the runner is handed out: then make is fast
                took = self._slow_control(
                    ops.IMPORTS, codec.dumps([*imports, *preload]), base=EnvCreationError
                )
                log.info(
                    "imported in the container: %s", ", ".join(f"{m} ({s:.2f} s)" for m, s in took.items())
                )
        except BaseException:
            self.close()
            raise

    # -- start -------------------------------------------------------------------------------

    def _resolve_image(
        self,
        image: str | os.PathLike[str] | None,
        experiment: str | None,
        experiments: str | os.PathLike[str] | None,
        sha256: str | None,
    ) -> Image:
        """The image to run: an experiment's pinned image, or ``image`` as the runtime takes it."""
        if experiment is not None:
            return resolve_experiment(experiment, experiments)
        assert image is not None  # _check_arguments: exactly one of them
        return self._runtime.resolve_image(image, sha256=sha256)

    def _write_run_dir(self, ports: tuple[int, int] | None) -> None:
        """The secret and the config for the server, owner-only; the owner lets ``remote gc``
        tell a stale run folder from a live one."""
        rundir.write_secret(self.run_dir, self._secret)
        owner = Owner.current()
        rundir.write_config(self.run_dir, self.transport, ports, (owner.pid, owner.started))

    def _command(self, python: str, env: Mapping[str, str] | None, name: str) -> list[str]:
        """The runtime's argv that runs the server of the payload on the run folder."""
        payload = str(payload_dir())
        binds, variables = server_binds_env(payload, self.binds, env, run_dir=str(self.run_dir))
        return self._runtime.command(
            self.image, python, ["-c", BOOTSTRAP, payload, str(self.run_dir)], binds, variables, name=name
        )

    def _start(self, argv: list[str], name: str, forward_output: bool) -> None:
        """Start the supervised server process, its output pumped into :attr:`output_log`;
        from now on close() and SIGTERM stop it."""
        try:
            output = ContainerOutput(self.output_log, name=self.name, forward=forward_output)
        except OSError as exc:
            raise ContainerStartError(
                f"cannot write the container's output to {self.output_log} ({exc.strerror}): give "
                "output_log= a file in a writable folder"
            ) from None
        with _live_lock:
            _live.add(self)
        _install_sigterm_handler()
        self._process = ServerProcess(
            argv,
            output,
            on_exit=self.on_exit,
            remove_on_exit=self.run_dir,
            cleanup=lambda: self._runtime.cleanup(name),
        )

    def _wait_ready(self, start_timeout: float) -> dict[str, Any]:
        """Where the server serves, once it says so in the run folder (``ready.json``)."""
        assert self._process is not None
        deadline = time.monotonic() + start_timeout
        while (ready := rundir.read_ready(self.run_dir)) is None:
            if self._process.exited.wait(0.005):
                raise ContainerStartError(
                    f"the server in {self.image} exited during start-up with code "
                    f"{self._process.returncode}; check that the image has Python 3.10+ with "
                    "numpy and gymnasium (the container's output is below)",
                    self.log_tail,  # kept by on_exit: the run folder, and its log, may be gone
                )
            if time.monotonic() > deadline:
                raise ContainerStartError(
                    f"the server in {self.image} did not start within {start_timeout:g} s "
                    "(raise start_timeout= for slow file systems)",
                    self._process.log_tail(),
                )
        return ready

    def _address(self, ready: dict[str, Any], key: str) -> tuple[int, Any]:
        if self.transport == "unix":
            return socket.AF_UNIX, ready[key]
        return socket.AF_INET, ("127.0.0.1", int(ready[key]))

    def _connect(self, ready: dict[str, Any]) -> None:
        self._ready = ready
        if self.transport == "unix":
            uri = f"PYRO:runner@./u:{ready['control']}"
        else:
            uri = f"PYRO:runner@127.0.0.1:{int(ready['control'])}"
        self._uri = uri
        self._proxy = _control_proxy(uri, self.timeout, ops.hello(self._secret))
        self.info = self._control(ops.INFO)  # the readiness probe: a real request, answered
        log.info(
            "container up: image %s sha256 %s; inside: remote %s, gymnasium %s, numpy %s, python %s",
            self.image,
            self.image_sha256,
            *(self.info.get(k) for k in ("remote", "gymnasium", "numpy", "python")),
        )
        if self.info.get("codec") == "pure-python" and not _SLOW_CODEC_WARNED:
            _SLOW_CODEC_WARNED.append(self.image)
            log.warning(
                "%s runs msgpack's pure-Python fallback (its Python is %s): its steps take ~1.2-1.3x "
                "as long; %s",
                self.image,
                self.info.get("python"),
                fallback_advice(self.info.get("python")),
            )

    # -- control calls (Pyro5) ---------------------------------------------------------------

    def _control(self, method: str, *args: Any, base: type[RemoteEnvError] = RemoteEnvError) -> Any:
        """Call ``method`` (one of :data:`remote.protocol.ops.CONTROL_METHODS`) and return its
        result; an error in the container is raised as a ``base``."""
        return self._call(self._proxy, self._lock, method, args, base)

    def _call(
        self,
        proxy: Pyro5.api.Proxy | None,
        lock: Any,
        method: str,
        args: Sequence[Any],
        base: type[RemoteEnvError],
    ) -> Any:
        """:meth:`_control` through ``proxy``, which ``lock`` guards."""
        with lock:
            if self._closed or proxy is None:
                raise self._closed_error()
            _claim(proxy)  # a proxy is tied to a thread; runners are not
            try:
                reply = getattr(proxy, method)(*args)
            except Pyro5.errors.TimeoutError:
                raise self.timeout_error(f"{method} on {self.image}") from None
            except Pyro5.errors.CommunicationError as exc:
                if self._closed:  # closed by another thread while this call waited
                    raise self._closed_error() from None
                raise self._refused_or_lost(exc, method) from None
            except Pyro5.errors.PyroError as exc:
                raise ProtocolError(f"{method}: {type(exc).__name__}: {exc}") from None
        try:
            return ops.result(codec.loads(reply), base)
        except ProtocolError as exc:  # malformed (an error of the container's is a ``base``)
            raise ProtocolError(f"{method}: {exc}") from None

    def _slow_control(self, method: str, *args: Any, base: type[RemoteEnvError] = RemoteEnvError) -> Any:
        """:meth:`_control` bounded by :attr:`make_timeout` instead of :attr:`timeout`: creating
        an env (or importing its package) may import for seconds."""
        with self._lock:
            proxy = self._proxy
            if proxy is not None:
                proxy._pyroTimeout = self.make_timeout  # noqa: SLF001 (Pyro5's public proxy API)
            try:
                return self._control(method, *args, base=base)
            except CallTimeout:
                raise CallTimeout(
                    f"{method} on {self.image} got no answer within {self.make_timeout:g} s (set "
                    "make_timeout= on the runner if the env is this slow to create)"
                ) from None
            finally:
                if proxy is not None:
                    proxy._pyroTimeout = self.timeout  # noqa: SLF001

    def _closed_error(self) -> RemoteError:
        return RemoteError(f"the runner for {self.image} is closed")

    def _refused_or_lost(self, exc: Exception, what: str) -> RemoteError:
        """VersionMismatch or AuthenticationError if the server refused us, else
        :meth:`connection_lost`."""
        text = exc.remote_message if isinstance(exc, RemoteEnvError) else str(exc)
        if "protocol version mismatch" in text:
            return VersionMismatch(f"{text}; use the same version of remote on both sides")
        if "authentication failed" in text:
            return AuthenticationError(text)
        return self.connection_lost(exc, what)

    def connection_lost(self, exc: BaseException, what: str) -> RemoteError:
        """The error for a connection that broke during ``what``: ContainerDied if the
        container has exited (waits briefly to find out), else ProtocolError."""
        process = self._process
        if process is not None and process.exited.wait(2.0):
            return self.death_error(process.returncode, what)
        return ProtocolError(f"lost the connection to the server during {what}: {exc}")

    def death_error(self, code: int | None, what: str) -> ContainerDied:
        """The error for calls to this runner after its container exited with ``code``."""
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        return ContainerDied(
            f"the container running {self.image} died ({how}) during {what}; its "
            "environments are lost: start a new runner (remote.make / RemoteRunner)",
            code,
            self.log_tail,
        )

    def timeout_error(self, what: str) -> CallTimeout:
        """The error for ``what`` getting no answer within the timeout."""
        return CallTimeout(
            f"{what} got no answer within {self.timeout:g} s (set timeout= on the runner if the "
            "env is this slow; a container stopped or overloaded does this too)"
        )

    def on_exit(self, returncode: int) -> None:
        """Called by the watcher thread when the container exits, however it exits (with the
        exit code, ``-N`` for signal N); subclasses extend it."""
        self.log_tail = self._process.log_tail() if self._process else ""
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def on_env_open(self, client: RemoteEnvironmentClient) -> None:
        """Called when an env of this runner has been made; subclasses extend it."""

    def on_env_close(self, client: RemoteEnvironmentClient) -> None:
        """Called when an env of this runner closes (before its slot in the container is
        freed); subclasses extend it."""

    # -- environments ------------------------------------------------------------------------

    def make(self, env_id: str, **kwargs: Any) -> RemoteEnvironmentClient:
        """Create an environment in the container.

        Args:
            env_id: a gymnasium id registered in the image (``"CartPole-v1"``,
                ``"ALE/Breakout-v5"``, ``"pkg.module:Env-v0"``), an env class
                ``"pkg.module:EnvClass"`` or a function that returns an env
                ``"pkg.module:make_env"`` (or ``"pkg.module:Benchmark.method"``, called on
                ``Benchmark()``). An id of a well-known package (Atari's ``ALE/``, MiniGrid,
                DACBench, ...) is registered by importing that package when gymnasium does
                not know it; others need ``imports=`` on the runner or ``"pkg:Id"``.
            **kwargs: passed to the env's constructor (e.g. ``render_mode="rgb_array"``);
                wrappers made in the container are :meth:`open_env`'s ``wrappers=``.

        Raises:
            EnvCreationError: the container could not create it (unknown id, bad kwargs).
        """
        return self.open_env(env_id, kwargs)

    def open_env(
        self,
        env_id: str,
        kwargs: Mapping[str, Any],
        *,
        owns_runner: bool = False,
        wrappers: Sequence[WrapperSpec] = (),
    ) -> RemoteEnvironmentClient:
        """:meth:`make` with the env's kwargs as a mapping; ``owns_runner``: closing the env
        closes this runner too (as :func:`remote.make` does). ``wrappers`` are applied to the
        env inside the container, in order, each ``"module:Wrapper"`` or ``("module:Wrapper",
        kwargs)`` made as ``Wrapper(env, **kwargs)`` (for wrappers that need the env's
        internals, or that shrink what travels: ``AtariPreprocessing``); the client's spaces
        are those of the wrapped env."""
        wrapper_list = _wrapper_list(wrappers)
        made = self._create(env_id, _encode_kwargs(env_id, kwargs), _encode_wrappers(wrapper_list))
        stream = self._open_stream({"env": made["handle"]}, env_id)
        client = RemoteEnvironmentClient(
            self,
            env_id,
            made["handle"],
            made["description"],
            stream,
            dict(kwargs),
            owns_runner=owns_runner,
            wrappers=wrapper_list,
        )
        with self._lock:
            self._clients.add(client)
        self.on_env_open(client)
        return client

    def open_group(
        self,
        env_id: str,
        count: int,
        kwargs: Mapping[str, Any],
        wrappers: Sequence[WrapperSpec] = (),
        *,
        server_poll_ns: int | None = None,
    ) -> tuple[list[int], dict[str, Any], EnvStream]:
        """Create ``count`` envs served together on one stream (see :mod:`remote.vector`),
        each with ``wrappers`` (as :meth:`open_env`'s): their handles (for :meth:`call_env`),
        the first env's description and the group's stream. ``server_poll_ns``: how long the
        server polls for the stream's next request (0: it sleeps at once, for one of several
        containers stepped together on few CPUs; None: as for one env, see :meth:`_open_stream`)."""
        encoded = _encode_kwargs(env_id, kwargs)
        encoded_wrappers = _encode_wrappers(_wrapper_list(wrappers))
        handles, description = [], {}
        for _ in range(count):
            made = self._create(env_id, encoded, encoded_wrappers)
            handles.append(made["handle"])
            description = made["description"]
        return (
            handles,
            description,
            self._open_stream({"envs": handles}, f"{env_id} x{count}", server_poll_ns),
        )

    def _create(
        self, env_id: str, encoded_kwargs: bytes, encoded_wrappers: bytes | None = None
    ) -> dict[str, Any]:
        """Create an env in the container: ``{"handle": int, "description": dict}``; bounded
        by :attr:`make_timeout`."""
        wrappers = () if encoded_wrappers is None else (encoded_wrappers,)  # none: the request as before
        try:
            return self._slow_control(ops.MAKE, env_id, encoded_kwargs, *wrappers)
        except EnvCreationError as exc:
            if not exc.remote_message.startswith("could not create "):
                raise  # made, but not mirrored: the server's message says what to do
            raise EnvCreationError(
                f"{exc.remote_message.rstrip('.')}. Check the env id and kwargs, and that the image has "
                "the package that registers the env: have it imported with imports=['pkg'] (on the "
                "runner, or in runner_options), or name it in the id as 'pkg:Id'; an env class or a "
                "function that returns an env is named 'module:Class' or 'module:factory'",
                exc.remote_type,
                exc.remote_traceback,
            ) from None

    def _open_stream(self, target: dict[str, Any], name: str, server_poll_ns: int | None = None) -> EnvStream:
        """Connect to the env stream and name the env (``{"env": handle}``) or the group
        (``{"envs": [handle, ...]}``) it serves. The one stream of a process that has no other
        polls longer on both sides (:data:`~remote.protocol.channel.SOLE_POLL_NS`), unless
        ``server_poll_ns`` says how long the server polls."""
        sole = server_poll_ns is None and not open_streams()
        if sole:
            server_poll_ns = SOLE_REQUEST_POLL_NS
        if server_poll_ns is not None:
            target = {**target, "poll_ns": server_poll_ns}
        family, address = self._address(self._ready, "stream")
        sock = socket.socket(family, socket.SOCK_STREAM)
        channel = Channel(sock)
        try:
            try:
                sock.settimeout(self.timeout)
                sock.connect(address)
                if family == socket.AF_INET:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                channel.settimeout(self.timeout)
                channel.send(ops.hello(self._secret, **target))
                reply = channel.recv()
            except OSError as exc:
                raise self.connection_lost(exc, "opening an env stream") from None
            try:
                ops.result(reply)
            except RemoteEnvError as exc:  # the server refused the hello
                raise self._refused_or_lost(exc, "opening an env stream") from None
        except BaseException:
            sock.close()
            raise
        if sole:
            channel.poll_ns = polling(SOLE_POLL_NS)
        return EnvStream(self, channel, name)

    # -- experiments -------------------------------------------------------------------------

    #: See :func:`remote.runs.run`.
    run = runs.run

    @contextlib.contextmanager
    def experiment_connection(self) -> Iterator[Callable[[bytes], Any]]:
        """A function that sends one :data:`remote.protocol.ops.EXPERIMENT` request (codec
        bytes) and returns its reply, on a control connection of its own, for one run: its
        polls wait in the container for up to :data:`remote.runs.POLL_PERIOD`, and on the
        shared connection each would hold the control lock that long and take it again at
        once, keeping every other control call of this runner (a ``make`` from another
        thread, another run's polls) waiting for seconds."""
        with self._lock:
            if self._closed or self._proxy is None:
                raise self._closed_error()
            proxy = _control_proxy(self._uri, self.timeout, ops.hello(self._secret))
        lock = threading.Lock()
        try:
            yield lambda request: self._call(proxy, lock, ops.EXPERIMENT, (request,), ExperimentError)
        finally:
            with lock:
                _claim(proxy)
                proxy._pyroRelease()  # noqa: SLF001 (Pyro5's public proxy API)

    def checkpoint(self, timeout: float | None = None) -> list[int]:
        """Checkpoint every :meth:`run` under way at the end of its episode; wait (at most
        ``timeout`` seconds, default the runner's ``timeout``) until each has. Returns the
        episodes each checkpoint covers.

        Raises:
            CallTimeout: a run did not checkpoint in time (an episode longer than that).
        """
        # no lock: runs add and discard themselves without one, and a copy of the set is
        # atomic under the GIL
        runs = list(self.active_runs)
        for active in runs:
            active.request()
        wait = self.timeout if timeout is None else timeout
        return [active.wait(wait, f"a checkpoint of the run in {self.image}") for active in runs]

    @property
    def paused(self) -> bool:
        """True while the container is frozen (by a manager): a run's polls wait for it."""
        return False

    def container_path(self, path: Path) -> str:
        """Where the container sees the host path ``path``: through a bind, or at the same path."""
        for src, dest, _ in reversed(self.binds):
            if path.is_relative_to(src):
                return str(Path(dest) / path.relative_to(src))
        return str(path)

    def call_env(self, handle: int, path: str, arguments: bytes | None) -> Any:
        """Read (``arguments`` None) or call (codec bytes of ``[args, kwargs]``) the attribute
        ``path`` of env ``handle`` in the container: ``[kind, value or type name]``, as
        :data:`remote.protocol.ops.CALL` answers; the env's own error is raised as RemoteEnvError."""
        return self._control(ops.CALL, handle, path, arguments)

    def forget(self, client: RemoteEnvironmentClient) -> None:
        """Called by a client on close: free the env's slot in the container."""
        self.on_env_close(client)
        with self._lock:
            self._clients.discard(client)
        if not self._closed and self._process is not None and not self._process.exited.is_set():
            with contextlib.suppress(RemoteError):
                self._control(ops.CLOSE_ENV, client.handle)

    # -- end ---------------------------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> None:
        """Stop the container and remove its sockets; kill it if it has not exited after
        ``timeout`` seconds. Safe to call more than once."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            clients, self._clients = list(self._clients), set()
            if self._proxy is not None:
                _claim(self._proxy)
                self._proxy._pyroRelease()  # noqa: SLF001 (Pyro5's public proxy API)
        for client in clients:
            client.stream.drop(f"{client.env_id}: its runner was closed")
        if self._process is not None:
            self._process.stop(timeout)
            self._process.output.close()  # drained (the watcher waited for it), or given up on
        shutil.rmtree(self.run_dir, ignore_errors=True)
        with _live_lock:
            _live.discard(self)

    def forked(self) -> None:
        """Called in a child forked from the process that started this runner: the container
        is the parent's, so the child closes its copy of the control connection (without
        shutting it down, which would cut the parent's) and counts the runner closed: it can
        neither use nor stop it. (The child's copy of the lifeline is closed by
        :mod:`remote.runtime.supervisor`, the env streams' by :mod:`remote.client`.)"""
        self._lock = threading.RLock()  # it may have been held by a thread the child does not have
        self._closed = True
        self._clients = set()
        proxy, self._proxy = self._proxy, None
        connection = proxy._pyroConnection if proxy is not None else None  # noqa: SLF001 (Pyro5's)
        if connection is not None:
            proxy._pyroConnection = None  # noqa: SLF001 (its __del__ would shut the socket down)
            connection.sock.close()

    @property
    def name(self) -> str:
        """The container's name in its forwarded output (``remote-rmt-...``, as the runtime
        names it; a managed container's is its manager's name)."""
        return f"remote-{self.run_dir.name}"

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has been called."""
        return self._closed

    @property
    def pid(self) -> int | None:
        """Host pid of the supervised container process (the leader of its process group)."""
        return self._process.pid if self._process is not None else None

    @property
    def alive(self) -> bool:
        """True while the container is running."""
        return self._process is not None and not self._process.exited.is_set()

    def __enter__(self) -> RemoteRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("running" if self.alive else "dead")
        return f"<RemoteRunner {self.image} {self.transport} {state}>"


def make(
    env_id: str,
    *,
    image: str | os.PathLike[str] | None = None,
    experiment: str | None = None,
    transport: str = "unix",
    timeout: float = DEFAULT_TIMEOUT,
    runtime: str | Runtime | None = None,
    runner_options: Mapping[str, Any] | None = None,
    wrappers: Sequence[WrapperSpec] = (),
    **env_kwargs: Any,
) -> RemoteEnvironmentClient:
    """Start a container from ``image`` and create ``env_id`` in it: one line, one env.

    Closing the env stops its container. ``runtime`` is as for :class:`RemoteRunner`;
    ``runner_options`` are more of its arguments (``binds``, ``env``, ``sha256``,
    ``imports``, ``preload``, ``make_timeout``, ...); ``wrappers`` are applied inside the
    container (see :meth:`RemoteRunner.open_env`); ``env_kwargs`` go to the env's constructor.

    Example::

        env = remote.make("CartPole-v1", image="gymnasium.sif")
        env = remote.make("my_envs:Maze", image="base.sif", size=9,
                          runner_options={"binds": ["./my_envs"], "env": {"PYTHONPATH": "..."}})
        env = remote.make("ALE/Breakout-v5", image="envs.sif", frameskip=1, wrappers=[
            ("gymnasium.wrappers:AtariPreprocessing", {"frame_skip": 4}),
            ("gymnasium.wrappers:FrameStackObservation", {"stack_size": 4})])
    """
    runner = RemoteRunner(
        image,
        experiment=experiment,
        transport=transport,
        timeout=timeout,
        runtime=runtime,
        **(runner_options or {}),
    )
    try:
        return runner.open_env(env_id, env_kwargs, owns_runner=True, wrappers=wrappers)
    except EnvCreationError as exc:
        runner.close()
        misplaced = [name for name in env_kwargs if name in _RUNNER_PARAMETERS and repr(name) in str(exc)]
        if not misplaced:
            raise
        hint = ", ".join(f"{name!r}: ..." for name in misplaced)
        what = "is a runner option" if len(misplaced) == 1 else "are runner options"
        raise type(exc)(
            f"{exc.remote_message}\n(remote.make passes its keyword arguments to the env's constructor; "
            f"{', '.join(misplaced)} {what}: pass runner_options={{{hint}}})",
            exc.remote_type,
            exc.remote_traceback,
        ) from None
    except BaseException:
        runner.close()
        raise


#: What :class:`RemoteRunner` takes beyond the image: a hint when one lands among env kwargs.
_RUNNER_PARAMETERS = frozenset(inspect.signature(RemoteRunner.__init__).parameters) - {"self", "image"}


def _wrapper_list(wrappers: Sequence[WrapperSpec]) -> list[tuple[str, dict[str, Any]]]:
    """``wrappers`` as ``[(entry_point, kwargs), ...]``; TypeError for anything else."""
    if isinstance(wrappers, str):
        raise TypeError(f"wrappers= takes a list of wrappers, not the str {wrappers!r:.80}")
    items = []
    for wrapper in wrappers:
        entry_point, kwargs = (wrapper, {}) if isinstance(wrapper, str) else (None, None)
        if isinstance(wrapper, (tuple, list)) and len(wrapper) == 2:
            entry_point, kwargs = wrapper
        if not (isinstance(entry_point, str) and ":" in entry_point and isinstance(kwargs, Mapping)):
            raise TypeError(
                f"a wrapper is 'module:Wrapper' or ('module:Wrapper', {{kwargs}}), not {wrapper!r:.80} "
                "(wrappers= takes a list of them)"
            )
        items.append((entry_point, dict(kwargs)))
    return items


def _encode_wrappers(wrappers: list[tuple[str, dict[str, Any]]]) -> bytes | None:
    """``[[entry_point, kwargs], ...]`` as codec bytes; None for no wrappers (the request of a
    plain make is then the one it always was)."""
    if not wrappers:
        return None
    try:
        return codec.dumps([list(wrapper) for wrapper in wrappers])
    except TypeError as exc:
        raise TypeError(f"wrapper kwargs cannot be sent: {exc}") from None


def _encode_kwargs(env_id: str, kwargs: Mapping[str, Any]) -> bytes:
    try:
        return codec.dumps(kwargs)
    except TypeError as exc:
        raise TypeError(f"env kwargs for {env_id!r} cannot be sent: {exc}") from None


def _check_arguments(
    image: str | os.PathLike[str] | None,
    experiment: str | None,
    transport: str,
    ports: tuple[int, int] | None,
    timeout: float,
    start_timeout: float,
) -> None:
    """Refuse bad arguments of :class:`RemoteRunner` before anything starts."""
    if transport not in ("unix", "tcp"):
        raise ValueError(f"transport must be 'unix' or 'tcp', not {transport!r}")
    if ports is not None and (transport != "tcp" or len(ports) != 2):
        raise ValueError("ports= takes (control, stream) and needs transport='tcp'")
    if not timeout > 0 or not start_timeout > 0:
        raise ValueError("timeout and start_timeout must be positive numbers of seconds")
    if (image is None) == (experiment is None):
        raise ValueError("give exactly one of image= and experiment=")


# Pyro5's proxy settings and calls are its ``_pyro*`` attributes: its public API.


def _control_proxy(uri: str, timeout: float, hello: dict[str, Any]) -> Pyro5.api.Proxy:
    """A Pyro5 proxy of the control object: msgpack, ``timeout`` on every call, ``hello``
    as its handshake."""
    proxy = Pyro5.api.Proxy(uri)
    proxy._pyroSerializer = "msgpack"  # noqa: SLF001
    proxy._pyroTimeout = timeout  # noqa: SLF001
    proxy._pyroHandshake = hello  # noqa: SLF001
    return proxy


def _claim(proxy: Pyro5.api.Proxy) -> None:
    """Let this thread use ``proxy`` (a Pyro5 proxy belongs to the thread that last claimed it)."""
    proxy._pyroClaimOwnership()  # noqa: SLF001


def _run_dir_prefix() -> str:
    """``rmt-<pid>-``: a run folder is named after its host process, which tells whether it
    is stale once the server has emptied it (config.json, which names the owner, goes too)."""
    return f"rmt-{os.getpid()}-"


def _run_dir_bases() -> list[str]:
    """Where run folders may go: existing folders with paths short enough for unix sockets."""
    longest = len(f"/{_run_dir_prefix()}XXXXXXXX/{max(rundir.SOCKETS, key=len)}")
    candidates = [os.environ.get("XDG_RUNTIME_DIR"), os.environ.get("TMPDIR"), "/tmp"]
    return [
        base for base in candidates if base and os.path.isdir(base) and len(base) + longest < MAX_SOCKET_PATH
    ]


def _make_run_dir() -> Path:
    """An owner-only folder for the sockets, short enough for unix socket paths."""
    for base in _run_dir_bases():
        try:
            return Path(tempfile.mkdtemp(prefix=_run_dir_prefix(), dir=base))
        except OSError:
            continue
    raise RemoteError("no writable folder with a short enough path for unix sockets; set TMPDIR")


def _stale(path: Path) -> bool:
    """True if the host process of a run folder is dead: the owner in its config.json, else
    (a folder the server emptied as it exited) the pid in its name; False if it cannot tell
    (an alive pid may be a later process with that pid: in doubt a folder stays)."""
    try:
        return not Owner(*rundir.read_owner(path)).alive()
    except (OSError, ValueError):
        pid = path.name.split("-")[1]
        return pid.isdigit() and not psutil.pid_exists(int(pid))


def stale_run_dirs() -> list[Path]:
    """This user's run folders (``rmt-*``) whose host process is dead. Normally a run folder
    goes with its container; one stays only if its sweeper was killed too (``kill -9`` of the
    whole process group). A folder whose owner cannot be told is left alone."""
    stale = []
    for base in dict.fromkeys(_run_dir_bases()):
        for path in Path(base).glob("rmt-*"):
            try:
                if path.stat().st_uid != os.getuid():
                    continue
            except OSError:
                continue
            if _stale(path):
                stale.append(path)
    return stale


def server_binds_env(
    payload: str, binds: Sequence[Bind] = (), env: Mapping[str, str] | None = None, run_dir: str | None = None
) -> tuple[list[Bind], dict[str, str]]:
    """The folders and variables the server's container gets: its run folder (read-write,
    if any) and the ``payload`` folder (read-only), then ``binds``; PYTHONUNBUFFERED and
    PYTHONDONTWRITEBYTECODE, then ``env``. ``remote shell`` and ``remote inspect`` use it too."""
    mounts: list[Bind] = [(run_dir, run_dir, "rw")] if run_dir is not None else []
    mounts += [(payload, payload, "ro"), *binds]
    return mounts, {"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}


def parse_bind(spec: str) -> Bind:
    """``"src"``, ``"src:dest"`` or ``"src:dest:ro|rw"`` as (absolute src, dest, mode)."""
    parts = spec.split(":")
    if not 1 <= len(parts) <= 3 or parts[-1] == "":
        raise ValueError(f"bind {spec!r}: expected 'src', 'src:dest' or 'src:dest:ro|rw'")
    src = os.path.abspath(parts[0])
    dest = parts[1] if len(parts) > 1 else src
    mode = parts[2] if len(parts) > 2 else "rw"
    if mode not in ("ro", "rw"):
        raise ValueError(f"bind {spec!r}: mode must be 'ro' or 'rw'")
    return src, dest, mode


@atexit.register
def close_all() -> None:
    """Stop every container this process started. Runs at interpreter exit and on SIGTERM;
    call it from your own SIGTERM handler if you install one."""
    with _live_lock:
        runners = list(_live)
    for runner in runners:
        runner.close()


def _on_sigterm(signum: int, frame: object) -> None:
    """Stop our containers, then die of SIGTERM as the process would have (a cancelled
    Slurm job gets SIGTERM, then SIGKILL after a grace period)."""
    close_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _forked() -> None:
    """In every child forked from this process: the parent's runners are not the child's
    (see :meth:`RemoteRunner.forked`); at exit or on SIGTERM the child stops none of them."""
    global _live_lock
    _live_lock = threading.RLock()  # it may have been held by a thread the child does not have
    runners = list(_live)
    _live.clear()
    for runner in runners:
        runner.forked()


os.register_at_fork(after_in_child=_forked)


def _install_sigterm_handler() -> None:
    """Take SIGTERM for :func:`close_all`, unless the program handles it already or this
    is not the main thread (where Python cannot set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)
