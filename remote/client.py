"""The host-side facade of an environment that lives in a container."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, SupportsFloat

import gymnasium as gym
from gymnasium.envs.registration import EnvSpec

from .errors import InvalidAction, ProtocolError, RemoteError
from .protocol import codec
from .protocol import spaces as space_codec
from .protocol.channel import Channel, polling
from .protocol.ops import (
    CALL_CALLABLE,
    CALL_OBJECT,
    CALL_VALUE,
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

#: The arguments of a remote call, ``(args, kwargs)``; None reads the attribute.
Arguments = tuple[Sequence[Any], dict[str, Any]]
#: Every stream of this process, for :func:`_forked` and :func:`open_streams`.
_streams: weakref.WeakSet[EnvStream] = weakref.WeakSet()


def open_streams() -> int:
    """How many env streams of this process are open."""
    return sum(1 for stream in list(_streams) if stream.open)


#: The entry point of a remote env's spec: a new container like the env's, the same env in it.
SPEC_ENTRY_POINT = "remote.registration:make_registered"


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
        #: What a client's steps through this stream added up to (for the record): here, not on
        #: the client, whose attribute reads are slower (it has a ``__getattr__``).
        self.steps = self.episodes = 0
        self.total_return = 0.0
        _streams.add(self)

    def poll_while(self, busy: int) -> None:
        """Poll for replies only where the CPUs outnumber the ``busy`` peers that run while
        this stream waits (see :func:`remote.protocol.channel.polling`)."""
        if self._channel is not None:
            self._channel.poll_ns = polling(busy=busy)

    @property
    def open(self) -> bool:
        """Usable: not closed, broken, or owed the reply to an interrupted call."""
        return self._channel is not None and not self._owed

    @property
    def unusable(self) -> str:
        """Why the stream cannot be used ("" while it is :attr:`open`)."""
        if self._owed:
            return f"{self.name}: a call was interrupted, so its stream is out of step; create a new env"
        if self._channel is None:
            return self._broken or f"{self.name} is closed; create a new env"
        return ""

    def call(self, op: str, args: Any, size: int) -> list[Any]:
        """Send one request and return its reply, a list of ``size`` items
        (:data:`remote.protocol.ops.REPLY_SIZE`)."""
        self.send(op, args)
        return self.receive(op, size)

    def send(self, op: str, args: Any) -> None:
        """Send a request. TypeError (a value the codec cannot carry) leaves the stream usable."""
        channel = self._channel
        if channel is None or self._owed:  # closed, broken or out of step: no call on the fast path
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

    Spaces, ``metadata`` and ``render_mode`` are rebuilt locally from the remote env, so
    wrappers, vector envs and ``check_env`` work as with a local env. Arrays come back with
    the exact dtype and shape the remote env produced. Created by
    :meth:`remote.RemoteRunner.make` or :func:`remote.make`, not directly.

    ``spec`` is the remote env's (id, ``max_episode_steps``, ``reward_threshold``, ...) with
    an entry point that makes the same env again, with the same kwargs, in a new container
    from the same image with the same runner options: ``env.spec.make(**kwargs)`` and
    ``gymnasium.make(env.spec)`` give a new remote env, whose ``close()`` stops its container.

    What else the env in the container has is reached by name: ``env.unwrapped.<name>``
    (any name this client does not have: ``get_action_meanings()``, ``ale.lives()``,
    ``_frameskip``), ``env.get_wrapper_attr(name)`` and :meth:`call`; ``np_random`` is the
    container env's generator, so draws from it are the ones a local env would make.

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
        wrappers: Sequence[Any] = (),
    ) -> None:
        self.runner = runner
        self.env_id = env_id
        #: The kwargs the env was made with.
        self.kwargs = dict(kwargs or {})
        #: The wrappers made around it in the container (see :meth:`remote.RemoteRunner.open_env`).
        self.wrappers = list(wrappers)
        self.handle = handle
        #: The env's stream to the container (dropped when the env or its runner closes).
        self.stream = stream
        self._owns_runner = owns_runner
        self._methods: dict[str, str] = {}  # path -> type name of the callables read so far
        self.observation_space = space_codec.rebuild(description["observation_space"])
        self.action_space = space_codec.rebuild(description["action_space"])
        self.metadata = dict(description.get("metadata") or {})
        self.render_mode = description.get("render_mode")
        self.spec = remaking_spec(description.get("spec"), self)
        self.first_seed: int | None = None

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset the remote env. Returns ``(observation, info)``."""
        super().reset(seed=seed)  # a local _np_random seeded alike, for check_env's seeding checks
        if self.first_seed is None:
            self.first_seed = seed
        reply = self.stream.call(RESET, [seed, options], RESET_REPLY_SIZE)
        return reply[1], reply[2]

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """Step the remote env. Returns ``(observation, reward, terminated, truncated, info)``."""
        stream = self.stream
        try:
            stream.send(STEP, action)
        except TypeError as exc:  # the codec cannot carry this action (nothing went out)
            raise InvalidAction(f"action cannot be sent: {exc}") from None
        reply = stream.receive(STEP, STEP_REPLY_SIZE)  # the env's own TypeError: a RemoteEnvError
        stream.steps += 1
        stream.total_return += reply[2]
        if reply[3] or reply[4]:
            stream.episodes += 1
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

    @property
    def steps(self) -> int:
        """Steps taken so far (counted on the host, without a call; for the record)."""
        return self.stream.steps

    @property
    def episodes(self) -> int:
        """Episodes ended so far by a step (terminated or truncated)."""
        return self.stream.episodes

    @property
    def total_return(self) -> float:
        """The sum of the rewards of all steps so far."""
        return self.stream.total_return

    # -- the env's attributes in the container --------------------------------------------

    @property
    def np_random(self) -> RemoteAttribute:
        """The generator of the env in the container (its ``unwrapped.np_random``): draws
        (``integers``, ``random``, ``choice``, ...) run there, in step with the env's own."""
        return RemoteAttribute("np_random", "Generator", self._remote)

    @np_random.setter
    def np_random(self, value: Any) -> None:
        raise RemoteError(
            "the generator of a remote env lives in the container and cannot be replaced from the "
            "host; seed it with env.reset(seed=...)"
        )

    @property
    def np_random_seed(self) -> int:
        """The seed of the container env's generator (gymnasium's ``np_random_seed``)."""
        return self._remote("np_random_seed", None)

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the method ``name`` of the env in the container with ``args`` and ``kwargs``,
        or read ``name`` if it is no method. ``name`` may be a dotted path (``"ale.lives"``);
        its first name is looked up through the container's wrappers, as ``get_wrapper_attr``
        does. Names holding ``__`` (dunders, name-mangled) are refused.

        Returns the value, if it can travel (numbers, str, bytes, lists, tuples, dicts, numpy
        arrays); an attribute that is an object comes back as a :class:`RemoteAttribute`,
        whose attributes and methods are reached in the same way. A method's result must
        travel.

        Raises:
            RemoteEnvError: the env raised, or has no such attribute (then also an
                AttributeError), or a result cannot travel (then also a TypeError).
            TypeError: an argument cannot be sent.
        """
        return self._remote(name, (args, kwargs))

    def _remote(self, path: str, arguments: Arguments | None) -> Any:
        """Read the attribute ``path`` of the env in the container (``arguments`` None) or call
        it with ``(args, kwargs)``; see :meth:`call`. That a path is a method is remembered:
        reading it again costs no call."""
        reason = self.stream.unusable
        if reason:
            raise RemoteError(reason)
        if arguments is None:
            known = self._methods.get(path)
            if known is not None:
                return RemoteMethod(path, known, self._remote)
            encoded = None
        else:
            try:
                encoded = codec.dumps([list(arguments[0]), dict(arguments[1])])
            except (TypeError, ValueError, OverflowError) as exc:
                raise TypeError(f"the arguments of {path}() cannot be sent: {exc}") from None
        reply = self.runner.call_env(self.handle, path, encoded)
        if type(reply) is list and len(reply) == 2:
            kind, data = reply
            if kind == CALL_VALUE:
                return data
            if kind == CALL_CALLABLE and type(data) is str:
                self._methods[path] = data
                return RemoteMethod(path, data, self._remote)
            if kind == CALL_OBJECT and type(data) is str:
                return RemoteAttribute(path, data, self._remote)
        raise ProtocolError(f"malformed reply to call {path}: {reply!r:.100}")

    def __getattr__(self, name: str) -> Any:
        """A name this client does not have is the remote env's (see :meth:`call`): its value,
        or a :class:`RemoteAttribute` / :class:`RemoteMethod`. AttributeError if the remote env
        has none, so ``hasattr`` works; dunders never go remote (copy, pickle)."""
        methods = self.__dict__.get("_methods")
        if name.startswith("__") or methods is None:  # a dunder, or not set up (copy, unpickling)
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        reason = self.stream.unusable
        if reason:
            raise AttributeError(f"{name!r} cannot be read from the env in the container: {reason}")
        return self._remote(name, None)

    def __repr__(self) -> str:
        return f"<RemoteEnvironmentClient {self.env_id} in {self.runner.image}>"


class RemoteAttribute:
    """An object of the env in the container (``env.unwrapped.ale``, ``env.np_random``), known
    by its path from the env: its attributes are read, and its methods called, in the
    container; values that can travel come back (see :meth:`RemoteEnvironmentClient.call`).
    The path is looked up anew on every use, so it names whatever the env holds there then."""

    __slots__ = ("_path", "_type", "_remote")

    def __init__(self, path: str, type_name: str, remote: Callable[[str, Arguments | None], Any]) -> None:
        self._path = path
        self._type = type_name
        self._remote = remote

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in RemoteAttribute.__slots__:  # dunders stay local
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return self._remote(f"{self._path}.{name}", None)

    def __repr__(self) -> str:
        return f"<remote {self._type} env.{self._path}>"

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise RemoteError(
            f"{self!r} is an object in the container, which cannot be copied or pickled: read the "
            "values you need from it (its attributes, or env.call(...))"
        )


class RemoteMethod(RemoteAttribute):
    """A method (any callable) of the env in the container: calling it calls it there, with
    arguments and a result that travel."""

    __slots__ = ()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._remote(self._path, (args, kwargs))


def remaking_spec(fields: dict[str, Any] | None, client: RemoteEnvironmentClient) -> EnvSpec | None:
    """The spec of ``client``: the remote env's fields (``spec_from``; for an env without a spec
    of its own, the id it was made by), with the entry point :data:`SPEC_ENTRY_POINT` and
    kwargs that make ``client.env_id`` again with ``client.kwargs`` and ``client.wrappers``, in
    a new container from the same image file (pinned by its sha256) with the same options.

    ``gymnasium.make(spec)`` wraps the new env in a TimeLimit of the spec's
    ``max_episode_steps``, around the container's own of the same limit: episodes end as
    they would locally (``max_episode_steps=`` of make can shorten them, not lengthen them).
    """
    runner = client.runner
    # a new container writes its own output log (two would rotate one file each their way)
    left_out = ("experiment", "experiments", "output_log")
    options = {k: v for k, v in runner.options.items() if k not in left_out}
    if runner.image_sha256:
        options["sha256"] = runner.image_sha256  # the image resolved: the very same file again
    make_args = {k: options.pop(k) for k in ("transport", "timeout", "runtime") if k in options}
    kwargs: dict[str, Any] = {**client.kwargs, "remote_env_id": client.env_id, "image": runner.image}
    kwargs.update(make_args, runner_options=options)
    if client.wrappers:
        kwargs["wrappers"] = list(client.wrappers)
    spec = spec_from(fields)
    if spec is None:
        try:
            spec = EnvSpec(id=client.env_id)
        except Exception:  # an id gymnasium cannot parse: no spec, as for a local env
            return None
    return dataclasses.replace(spec, entry_point=SPEC_ENTRY_POINT, kwargs=kwargs)


def _forked() -> None:
    """In every child forked from this process: its copies of the env streams are the
    parent's connections (a call from the child would answer the parent's requests), so the
    child closes them (without shutting them down, which would cut the parent's)."""
    parent = os.getppid()
    for stream in list(_streams):
        stream.drop(
            f"{stream.name} belongs to process {parent}, which this one was forked from: make the env "
            "in this process (for AsyncVectorEnv: inside its env_fns)"
        )
    _streams.clear()


os.register_at_fork(after_in_child=_forked)


def spec_from(fields: dict[str, Any] | None) -> EnvSpec | None:
    """The remote env's spec, keeping only the fields this gymnasium's EnvSpec knows."""
    if not fields or not fields.get("id"):
        return None
    known = {f.name for f in dataclasses.fields(EnvSpec)}
    return EnvSpec(**{k: v for k, v in fields.items() if k in known and v is not None})
