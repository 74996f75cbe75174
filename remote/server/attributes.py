"""Attributes of an env in the container, read or called by name from the host (``CALL``).

A path is dotted names from the env (``"get_action_meanings"``, ``"ale.lives"``,
``"np_random.integers"``): the first is looked up through the env's wrappers as gymnasium's
``get_wrapper_attr`` does, each next one by ``getattr`` on the value before. Only names reach
anything: no name may hold ``__`` (no dunders, nothing name-mangled), no step may be a
module, and the arguments are the codec's plain data; nothing is unpickled or evaluated.
The reply is :mod:`remote.protocol.ops`'s ``CALL`` result, encoded here so that a value is
packed once.
"""

from __future__ import annotations

import types
from typing import Any

import gymnasium as gym

from ..protocol import codec
from ..protocol.ops import CALL_CALLABLE, CALL_OBJECT, CALL_VALUE, OK, error_reply

#: The most names a path may have.
MAX_DEPTH = 16
#: What codec.dumps raises for a value it cannot carry (an object, a too large int, a cycle).
NOT_PLAIN = (TypeError, ValueError, OverflowError)


def check_path(path: Any) -> list[str]:
    """The names of ``path``; AttributeError unless each is an identifier without ``__``."""
    if not isinstance(path, str):
        raise TypeError(f"an attribute path is a str, not {type(path).__name__}")
    names = path.split(".")
    if len(names) > MAX_DEPTH:
        raise AttributeError(f"attribute path {path!r:.80} is longer than {MAX_DEPTH} names")
    for name in names:
        if not name.isidentifier() or "__" in name:
            where = f" (in {path!r:.80})" if len(names) > 1 else ""
            raise AttributeError(
                f"{name!r:.60}{where} cannot be reached from the host: only public or single-underscore "
                "names of the env and of what it holds are (no dunder, nothing name-mangled)"
            )
    return names


def resolve(env: gym.Env, path: str) -> Any:
    """The value at ``path`` from ``env`` (see the module's docstring)."""
    names = check_path(path)
    value: Any = env
    for i, name in enumerate(names):
        try:
            value = _first(env, name) if i == 0 else getattr(value, name)
        except AttributeError as exc:
            base = type(getattr(env, "unwrapped", env)).__name__
            raise AttributeError(
                f"{path!r} not found in the env in the container ({base} and its wrappers): {exc}"
            ) from None
        if isinstance(value, types.ModuleType):
            raise AttributeError(
                f"{path!r} leads to the module {value.__name__!r}, which the host may not reach; "
                "read the env's own attributes and call its own methods"
            )
    return value


def _first(env: gym.Env, name: str) -> Any:
    """``env.get_wrapper_attr(name)`` (gymnasium >= 0.29), else ``getattr``."""
    lookup = getattr(env, "get_wrapper_attr", None)
    return lookup(name) if lookup is not None else getattr(env, name)


def decode_arguments(arguments: Any) -> tuple[list[Any], dict[str, Any]] | None:
    """``(args, kwargs)`` from codec bytes of ``[args, kwargs]``; None for ``None`` (a read)."""
    if arguments is None:
        return None
    decoded = codec.loads(arguments) if isinstance(arguments, bytes) else None
    if not (
        type(decoded) is list
        and len(decoded) == 2
        and type(decoded[0]) is list
        and type(decoded[1]) is dict
        and all(isinstance(key, str) for key in decoded[1])
    ):
        raise TypeError("call arguments are codec bytes of [args, kwargs] (a list, a dict with str keys)")
    return decoded[0], decoded[1]


def call(env: gym.Env, path: str, arguments: bytes | None) -> bytes:
    """Read ``path`` (``arguments`` None) or call it with ``arguments``: the whole reply,
    ``codec.dumps([OK, [kind, data]])`` or ``codec.dumps([ERROR, error])``."""
    try:
        args = decode_arguments(arguments)
        value = resolve(env, path)
        called = args is not None and callable(value)
        if called:
            value = value(*args[0], **args[1])
        elif args is not None and (args[0] or args[1]):
            raise TypeError(f"{path!r} is a {type(value).__name__}, not callable: read it without arguments")
        try:
            return codec.dumps([OK, [CALL_VALUE, value]])
        except NOT_PLAIN:
            if called:
                raise TypeError(
                    f"{path}() returned a {type(value).__name__}, which cannot travel to the host (numbers, "
                    "str, bytes, lists, tuples, dicts and numpy arrays can): call a method that returns "
                    "plain data, or read the attributes of an object one by one"
                ) from None
        kind = CALL_CALLABLE if callable(value) else CALL_OBJECT
        return codec.dumps([OK, [kind, type(value).__name__]])
    except Exception as exc:
        return codec.dumps(error_reply(exc))
