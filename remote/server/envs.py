"""One environment in the container: how it is created, described and stepped."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

from ..errors import InvalidAction, ProtocolError
from ..protocol import codec
from ..protocol import spaces as space_codec
from ..protocol.ops import CLOSE, OK, RENDER, RESET, STEP, error_reply


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
            codec.dumps(value)
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
        if closed and op != CLOSE:
            raise RuntimeError(closed)
        return method(args)
    except Exception as exc:
        return error_reply(exc)


class RemoteEnvironmentServer:
    """One environment in the container and the operations the host may ask of it.

    Each operation returns the whole reply frame, as :mod:`remote.protocol.ops` lists them;
    :meth:`handle` turns an exception into ``[ERROR, error]``.
    """

    def __init__(self, env: gym.Env) -> None:
        self.env = env
        self.lock = threading.Lock()
        self.closed = False
        self.check = action_checker(env.action_space)
        self.ops: dict[str, Callable[[Any], list[Any]]] = {
            STEP: self.step,
            RESET: self.reset,
            RENDER: self.render,
            CLOSE: self.close,
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
