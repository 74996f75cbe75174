"""The protocol host and container speak, all of it: version, handshake, requests, replies, errors.

Values are :mod:`.codec`'s (msgpack); ``error`` below is :func:`error_payload`'s map
``{"type": "module.QualName", "message": str, "traceback": str}``, turned back into the
local exception by :func:`remote_error`. The files of the run folder are :mod:`.rundir`'s.

**Env stream** (frames of :mod:`.channel`, one connection per env or group of envs). The
client's first frame is its :func:`hello`, naming what the stream serves: one env
``{"protocol": 2, "secret": str, "env": handle}`` or a group ``{..., "envs": [handle, ...]}``,
and optionally ``"poll_ns": int``: how long the server may poll for this stream's next
request (0 to :data:`.channel.SOLE_REQUEST_POLL_NS`; 0: it sleeps at once; absent:
:data:`.channel.REQUEST_POLL_NS`; see :mod:`.channel`). The server answers ``[OK, None]``, or ``[ERROR,
error]`` and closes the connection. Then each request is ``[op, args]``, answered by one
frame (:data:`REPLY_SIZE` items if OK):

=================================  ===========================================================
request                            reply
=================================  ===========================================================
``[STEP, action]``                 ``[OK, obs, reward, terminated, truncated, info]``
``[RESET, [seed, options]]``       ``[OK, obs, info]``
``[RENDER, None]``                 ``[OK, frame]``
``[CLOSE, None]``                  ``[OK, None]``
=================================  ===========================================================

A group (:data:`GROUP_OPS`: all but ``render``) takes and gives one item per env, in order:
``[STEP, [action, ...]]`` (or an array whose rows are the actions) → ``[OK, observations,
rewards float64, terminations bool, truncations bool, [info, ...]]``; ``[RESET, [[seed, ...],
options]]`` → ``[OK, observations, [info, ...]]``; ``observations`` is one array stacking
them all when they are arrays of one dtype and shape, else their list. An env ended by a
group ``step`` is reset by the next one (reward 0), as gymnasium's ``NEXT_STEP`` autoreset.
Two extensions, neither of which changes a request of the forms above: the step may be
``[STEP, {"actions": [action, ...] (or the array), "autoreset": mode}]``, ``mode``
:data:`AUTORESET_NEXT_STEP` (as the plain form) or :data:`AUTORESET_SAME_STEP`: an env that
ends is reset within this step (unseeded, no options) and its items are those of the new
episode's first observation, with the info ``{**reset_info, "final_obs": last obs,
"final_info": last info}`` (gymnasium's ``SAME_STEP`` autoreset, and SB3's: one round trip
per step); the reset's ``options`` may be a list, one dict or None per env.
Any request that fails is answered ``[ERROR, error]``; a closed env refuses all but ``close``.

**Control** (Pyro5 with the msgpack serializer; the handshake data is :func:`hello` without
a target, answered by the server's versions). Every method returns ``codec.dumps([OK,
result])`` or ``codec.dumps([ERROR, error])``, read by :func:`result`:

* ``INFO()`` → ``{"protocol", "remote", "python", "gymnasium", "numpy", "pid"}``;
* ``MAKE(env_id: str, kwargs: codec bytes of a dict[, wrappers: codec bytes of
  [[entry_point, kwargs], ...]])`` → ``{"handle": int, "description": {"observation_space",
  "action_space", "metadata", "render_mode", "spec"}}`` (spaces as :mod:`.spaces` describes
  them, of the env with ``wrappers`` around it, in order, ``"module:Wrapper"`` each made as
  ``Wrapper(env, **kwargs)``; no ``wrappers``: none);
* ``IMPORTS(modules: codec bytes of [str, ...])`` → ``{module: seconds}`` once all are
  imported, in order (the modules the user named: packages that register env ids, or that
  are slow to import);
* ``CLOSE_ENV(handle: int)`` → ``None`` (an unknown handle is no error);
* ``CALL(handle: int, path: str, arguments: codec bytes of [args, kwargs] | None)``: the
  attribute ``path`` of the env (dotted names, ``"ale.lives"``: the first found through the
  env's wrappers, as ``get_wrapper_attr``, the rest by ``getattr``; no name may hold
  ``__``, nor any step be a module). ``arguments`` None reads it; otherwise it is called
  with them if it is callable (a value that is not is read, if the arguments are empty).
  → ``[CALL_VALUE, value]`` if the value travels (the codec's plain data), else
  ``[CALL_OBJECT, type name]`` for an object read, or ``[CALL_CALLABLE, type name]`` for a
  callable read; a call's result must travel (else TypeError);
* ``EXPERIMENT(request: codec bytes)``: ``{"op": EXPERIMENT_START, "spec": {...}}`` → the
  experiment's id; ``{"op": EXPERIMENT_POLL, "id": int, "wait": seconds}`` → ``{"done":
  bool, "episodes": int, "checkpoint": int | None, "checkpoints": int, "recordings": [path,
  ...], "fps": float | None, "summary": dict | None}`` after ``wait`` seconds or once done
  (or the loop's error): "checkpoint" is the episodes the newest checkpoint covers,
  "checkpoints" how many the loop wrote, "recordings" the episode recordings finished since
  the last poll; ``{"op": EXPERIMENT_CANCEL | EXPERIMENT_STOP | EXPERIMENT_CHECKPOINT, "id":
  int}`` → ``None``: end now; end after the episode under way, with a checkpoint; checkpoint
  after it (see :mod:`remote.protocol.loop`).
"""

from __future__ import annotations

import hmac
import traceback
from typing import Any

from ..errors import ProtocolError, RemoteEnvError, remote_exception

#: Version of the protocol spoken between host and container; checked on every connect.
PROTOCOL_VERSION = 2

#: First item of every reply: the request succeeded, or it raised (then the second item
#: is the error as plain data, see :func:`error_payload`).
OK, ERROR = 0, 1

# -- the env stream ----------------------------------------------------------------------------

STEP, RESET, RENDER, CLOSE = "step", "reset", "render", "close"

#: The env-stream operations: op → items of its OK reply, the status included; the same for
#: one env and for a group of envs.
REPLY_SIZE: dict[str, int] = {STEP: 6, RESET: 3, RENDER: 2, CLOSE: 2}

#: The operations a group of envs serves (one env serves all of :data:`REPLY_SIZE`).
GROUP_OPS = frozenset({STEP, RESET, CLOSE})

#: The autoreset modes of a group ``step`` (see the module's docstring).
AUTORESET_NEXT_STEP, AUTORESET_SAME_STEP = "next_step", "same_step"

# the sizes as constants, for the hot path: no lookup per call
STEP_REPLY_SIZE = REPLY_SIZE[STEP]
RESET_REPLY_SIZE = REPLY_SIZE[RESET]
RENDER_REPLY_SIZE = REPLY_SIZE[RENDER]
CLOSE_REPLY_SIZE = REPLY_SIZE[CLOSE]

# -- control (Pyro5) ---------------------------------------------------------------------------

INFO, MAKE, CLOSE_ENV, EXPERIMENT = "info", "make", "close_env", "experiment"
IMPORTS = "imports"
CALL = "call"

#: The control object's methods, as the host calls them.
CONTROL_METHODS = (INFO, MAKE, CLOSE_ENV, EXPERIMENT, IMPORTS, CALL)

#: The first item of a ``CALL`` result: what its second item is (see the module's docstring).
CALL_VALUE, CALL_OBJECT, CALL_CALLABLE = "value", "object", "callable"

#: The ``op`` of an experiment request.
EXPERIMENT_START, EXPERIMENT_POLL, EXPERIMENT_CANCEL = "start", "poll", "cancel"
EXPERIMENT_STOP, EXPERIMENT_CHECKPOINT = "stop", "checkpoint"

# -- handshake ---------------------------------------------------------------------------------


def hello(secret: str, **target: Any) -> dict[str, Any]:
    """A client's first message: ``{"protocol": PROTOCOL_VERSION, "secret": secret, **target}``;
    ``target`` names what an env stream serves (``env=handle`` or ``envs=[handle, ...]``)."""
    return {"protocol": PROTOCOL_VERSION, "secret": secret, **target}


def check_hello(hello: Any, secret: str) -> None:
    """Check a client's first message: ``{"protocol": int, "secret": str, ...}``."""
    if not isinstance(hello, dict):
        raise ProtocolError("handshake must be a map")
    if hello.get("protocol") != PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version mismatch: client speaks {hello.get('protocol')!r}, "
            f"server speaks {PROTOCOL_VERSION}"
        )
    given = hello.get("secret")
    if not isinstance(given, str) or not hmac.compare_digest(given.encode(), secret.encode()):
        raise ProtocolError("authentication failed: wrong or missing session secret")


# -- errors ------------------------------------------------------------------------------------

#: The keys of an error payload; each value is a str.
ERROR_FIELDS = ("type", "message", "traceback")


#: The most characters of an error's message (and, four times that, of its traceback) a
#: reply carries: an env's message may quote its kwargs whole (gymnasium's does), tens of KB.
MAX_ERROR_CHARS = 4000


def shorten(text: str, limit: int) -> str:
    """``text`` with its middle cut out if it is longer than ``limit`` characters."""
    if len(text) <= limit:
        return text
    head, tail = limit * 3 // 4, limit // 4
    return f"{text[:head]} [... {len(text) - head - tail} characters cut ...] {text[-tail:]}"


def error_payload(exc: BaseException) -> dict[str, str]:
    """An exception as plain data: qualified type name, message and formatted traceback,
    each at most :data:`MAX_ERROR_CHARS` long (the traceback four times that)."""
    cls = type(exc)
    lines = traceback.format_exception(cls, exc, exc.__traceback__)
    return {
        "type": f"{cls.__module__}.{cls.__qualname__}",
        "message": shorten(str(exc), MAX_ERROR_CHARS),
        "traceback": shorten("".join(shorten(line, MAX_ERROR_CHARS) for line in lines), 4 * MAX_ERROR_CHARS),
    }


def error_reply(exc: BaseException) -> list[Any]:
    """The reply to a request that raised ``exc``: ``[ERROR, error_payload(exc)]``."""
    return [ERROR, error_payload(exc)]


def remote_error(payload: Any, base: type[RemoteEnvError] = RemoteEnvError) -> RemoteEnvError:
    """The local exception for the error of an ``[ERROR, payload]`` reply: a ``base``, of
    the remote's own class if that is one of remote's errors under ``base``, and also of the
    built-in type raised (see :func:`remote.errors.remote_exception`).

    Raises:
        ProtocolError: ``payload`` is not an error as :func:`error_payload` makes it.
    """
    if type(payload) is not dict or any(type(payload.get(key)) is not str for key in ERROR_FIELDS):
        raise ProtocolError(f"malformed error in a reply: {payload!r:.100}")
    return remote_exception(payload["type"], payload["message"], payload["traceback"], base)


def result(reply: Any, base: type[RemoteEnvError] = RemoteEnvError) -> Any:
    """The value of an ``[OK, value]`` reply; for ``[ERROR, error]`` raise its
    :func:`remote_error` (a ``base``); ProtocolError for anything else."""
    if type(reply) is list and len(reply) == 2:
        if reply[0] == OK:
            return reply[1]
        if reply[0] == ERROR:
            raise remote_error(reply[1], base)
    raise ProtocolError(f"malformed reply: {reply!r:.100}")
