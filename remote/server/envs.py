"""One environment in the container: how it is created, described and stepped."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from ..errors import EnvCreationError, InvalidAction, ProtocolError
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


#: Where well-known env ids come from: an id that starts with one of these (a namespace
#: such as ``"ALE/"`` or the start of a name such as ``"MiniGrid-"``) is registered by
#: importing the package beside it. gymnasium 1.x loads no plugins, so :func:`make_env`
#: imports it when gymnasium does not know the id yet, before giving up.
KNOWN_PACKAGES: tuple[tuple[str, str], ...] = (
    ("ALE/", "ale_py"),
    ("MiniGrid-", "minigrid"),
    ("BabyAI-", "minigrid"),
    ("MiniWorld-", "miniworld"),
    *(
        (f"{name}-v", "dacbench")
        for name in ("FunctionApproximation", "Luby", "Theory", "ToySGD", "CMAES", "SGD", "DACBO")
    ),
    *(
        (f"{name}-v", "highway_env")
        for name in ("highway", "highway-fast", "merge", "roundabout", "parking", "intersection", "racetrack")
    ),
    *((name, "gymnasium_robotics") for name in ("Fetch", "HandManipulate", "HandReach", "AdroitHand")),
    *((name, "gymnasium_robotics") for name in ("PointMaze_", "AntMaze_", "FrankaKitchen-")),
    ("Panda", "panda_gym"),
    ("Safety", "safety_gymnasium"),
    ("mo-", "mo_gymnasium"),
    ("FlappyBird-", "flappy_bird_gymnasium"),
    ("dm_control/", "shimmy"),
)


def known_package(env_id: str) -> str | None:
    """The package of :data:`KNOWN_PACKAGES` that registers ``env_id``, if any."""
    for prefix, package in KNOWN_PACKAGES:
        if env_id.startswith(prefix):
            return package
    return None


def create_env(
    env_id: str, kwargs: dict[str, Any], wrappers: Sequence[tuple[str, dict[str, Any]]] = ()
) -> gym.Env:
    """:func:`make_env`, then each of ``wrappers`` (``("module:Wrapper", kwargs)``) around it,
    in order, as ``Wrapper(env, **kwargs)``."""
    env = make_env(env_id, kwargs)
    try:
        for entry_point, wrapper_kwargs in wrappers:
            env = wrap(env, entry_point, wrapper_kwargs)
    except BaseException:
        with contextlib.suppress(Exception):
            env.close()
        raise
    return env


def make_env(env_id: str, kwargs: dict[str, Any]) -> gym.Env:
    """Create an env from a gymnasium id (``"CartPole-v1"``, ``"ALE/Breakout-v5"``,
    ``"pkg.module:Env-v0"``), an env class ``"module:Class"``, or a function that returns an
    env ``"module:factory"`` (or a benchmark's method ``"module:Class.method"``, called on
    ``Class()``); ``kwargs`` go to the constructor or function.

    An id gymnasium does not know is retried after importing its package, when
    :data:`KNOWN_PACKAGES` names one that is not imported yet.

    Raises:
        EnvCreationError: a ``module:callable`` that returned no env, or an id that is
            neither an attribute of its module nor registered.
    """
    module_name, sep, attr = env_id.partition(":")
    if sep and _is_attribute_path(attr):
        maker = resolve(module_name, attr)
        if maker is not None:
            return _call_maker(env_id, maker, kwargs)
    try:
        return gym.make(env_id, **kwargs)
    except gym.error.UnregisteredEnv as exc:
        if sep:
            if _is_attribute_path(attr):
                raise EnvCreationError(
                    f"module {module_name!r} has no attribute {attr!r}, and no env {attr!r} is "
                    f"registered after importing it ({type(exc).__name__}: {exc})"
                ) from exc
            raise
        package = known_package(env_id)
        if package is None or package in sys.modules:
            raise
        try:
            importlib.import_module(package)
        except ImportError as import_error:
            raise EnvCreationError(
                f"{env_id!r} is not registered; ids like it come from {package!r}, which cannot be "
                f"imported in the image ({type(import_error).__name__}: {import_error}): install it in "
                "the image, or import the package that registers this id"
            ) from exc
    return gym.make(env_id, **kwargs)


def wrap(env: gym.Env, entry_point: str, kwargs: dict[str, Any]) -> gym.Env:
    """``Wrapper(env, **kwargs)`` for the wrapper named ``"module:Wrapper"``."""
    module_name, sep, attr = entry_point.partition(":")
    if not (sep and _is_attribute_path(attr)):
        raise EnvCreationError(
            f"wrapper {entry_point!r}: name a wrapper as 'module:Wrapper' "
            "(e.g. 'gymnasium.wrappers:FrameStackObservation')"
        )
    wrapper = resolve(module_name, attr)
    if wrapper is None or not callable(wrapper):
        raise EnvCreationError(f"wrapper {entry_point!r}: module {module_name!r} has no callable {attr!r}")
    wrapped = wrapper(env, **kwargs)
    if not isinstance(wrapped, gym.Env):
        raise EnvCreationError(
            f"wrapper {entry_point!r} returned a {_qualname(wrapped)}, not a gymnasium.Env"
        )
    return wrapped


def resolve(module_name: str, path: str) -> Any:
    """The attribute ``path`` (``"Name"`` or ``"Class.method"``) of the module, imported;
    None if it has no such attribute. A method defined on a class (not a class or static
    method) is returned bound to a new instance, ``Class()``."""
    target: Any = importlib.import_module(module_name)
    owner: Any = None
    name = ""
    for name in path.split("."):
        owner, target = target, getattr(target, name, _MISSING)
        if target is _MISSING:
            return None
    if isinstance(owner, type) and inspect.isfunction(inspect.getattr_static(owner, name)):
        return getattr(owner(), name)
    return target


def _call_maker(env_id: str, maker: Any, kwargs: dict[str, Any]) -> gym.Env:
    """``maker(**kwargs)``: an env class, or a callable that must return an env."""
    if isinstance(maker, type) and issubclass(maker, gym.Env):
        return maker(**kwargs)
    if not callable(maker):
        raise EnvCreationError(
            f"{env_id!r} is a {_qualname(maker)}: name a gymnasium.Env class or a function that returns one"
        )
    env = maker(**kwargs)
    if not isinstance(env, gym.Env):
        hint = ""
        if isinstance(maker, type):
            hint = f" (for a benchmark class, name the method that makes its env: '{env_id}.<method>')"
        raise EnvCreationError(f"{env_id!r} returned a {_qualname(env)}, not a gymnasium.Env{hint}")
    return env


def import_modules(modules: list[str]) -> dict[str, float]:
    """Import the modules the user named (a runner's ``imports=`` and ``preload=``), in
    order; the seconds each took.

    Raises:
        EnvCreationError: a name that is not a module path, or an import that failed.
    """
    took = {}
    for name in modules:
        if not (isinstance(name, str) and _is_attribute_path(name)):
            raise EnvCreationError(f"{name!r:.80} is not a module name (e.g. 'ale_py')")
        start = time.perf_counter()
        try:
            importlib.import_module(name)
        except Exception as exc:
            raise EnvCreationError(
                f"could not import {name!r} in the container: {type(exc).__name__}: {exc}; check the "
                "module name and that the image has its package"
            ) from exc
        took[name] = time.perf_counter() - start
    return took


def _is_attribute_path(text: str) -> bool:
    """``"Name"`` or ``"Class.method"``: Python identifiers joined by dots."""
    return all(part.isidentifier() for part in text.split("."))


def _qualname(value: Any) -> str:
    cls = type(value)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


_MISSING: Any = object()


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
        "observation_space": space_codec.describe(env.observation_space, "observation_space"),
        "action_space": space_codec.describe(env.action_space, "action_space"),
        "metadata": metadata,
        "render_mode": env.render_mode,
        "spec": spec_fields,
    }


def action_checker(space: gym.Space) -> Callable[[Any], None]:
    """:func:`check_action` for one space, with a fast path for the common actions (a plain
    int for Discrete, an ndarray of the right shape for Box, and so on inside Dict and Tuple)."""
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
    if type(space) is gym.spaces.Dict:
        keys, checks = space.spaces.keys(), [(key, action_checker(sub)) for key, sub in space.spaces.items()]

        def check_dict(action: Any) -> None:
            if type(action) is not dict or action.keys() != keys:
                check_action(space, action)
            for key, check in checks:
                check(action[key])

        return check_dict
    if type(space) is gym.spaces.Tuple:
        parts = [action_checker(sub) for sub in space.spaces]

        def check_tuple(action: Any) -> None:
            if type(action) not in (tuple, list) or len(action) != len(parts):
                check_action(space, action)
            for check, value in zip(parts, action, strict=True):
                check(value)

        return check_tuple
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
