"""A local reference trajectory, stepped by an image's own Python without remote.

    python3 reference.py '{"env_id": "ALE/Breakout-v5", "kwargs": {}, "imports": ["ale_py"],
                           "seed": 0, "steps": 50}'

prints one JSON object: the actions taken (seeded ``action_space.sample()``, as JSON), and a
fingerprint of every reset and step result (see :func:`fingerprint`). The tests replay the
actions through a remote env and compare fingerprints: equal means bit-identical values of
the same types. Plain standard library + numpy, so any image with gymnasium runs it; the
host imports :func:`fingerprint` and :func:`to_json`/:func:`from_json` from here too.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import sys
from typing import Any

import numpy as np


def _canonical(value: Any, out: list[str]) -> None:
    if isinstance(value, np.ndarray) and value.dtype.hasobject:  # by element, not by pointer
        out.append(f"nd-object:{value.shape}[")
        for item in value.ravel():
            _canonical(item, out)
        out.append("]")
    elif isinstance(value, np.ndarray):
        out.append(
            f"nd:{value.dtype.str}:{value.shape}:{hashlib.sha256(np.ascontiguousarray(value)).hexdigest()}"
        )
    elif isinstance(value, np.generic):
        out.append(f"np:{value.dtype.str}:{np.asarray(value).tobytes().hex()}")
    elif isinstance(value, dict):
        out.append(f"dict{len(value)}{{")
        for key in sorted(value, key=repr):
            out.append(repr(key))
            _canonical(value[key], out)
        out.append("}")
    elif isinstance(value, (list, tuple)):
        out.append(f"{type(value).__name__}{len(value)}[")
        for item in value:
            _canonical(item, out)
        out.append("]")
    elif isinstance(value, float):
        out.append(f"float:{value.hex()}")
    elif isinstance(value, (bool, int, str, bytes, type(None))):
        out.append(f"{type(value).__name__}:{value!r}")
    else:
        out.append(f"other:{type(value).__module__}.{type(value).__qualname__}")


def fingerprint(value: Any) -> str:
    """A digest of ``value`` that differs if any type, dtype, shape or bit differs."""
    out: list[str] = []
    _canonical(value, out)
    return hashlib.sha256("\n".join(out).encode()).hexdigest()[:32]


def to_json(action: Any) -> Any:
    """An action as JSON with its dtype, so :func:`from_json` rebuilds it exactly."""
    if isinstance(action, np.ndarray):
        return {"nd": action.dtype.str, "shape": list(action.shape), "v": action.ravel().tolist()}
    if isinstance(action, np.generic):
        return {"np": action.dtype.str, "v": action.item()}
    if isinstance(action, dict):
        return {"dict": {k: to_json(v) for k, v in action.items()}}
    if isinstance(action, tuple):
        return {"tuple": [to_json(v) for v in action]}
    return action


def from_json(data: Any) -> Any:
    if isinstance(data, dict):
        if "nd" in data:
            return np.array(data["v"], dtype=np.dtype(data["nd"])).reshape(data["shape"])
        if "np" in data:
            return np.dtype(data["np"]).type(data["v"])
        if "dict" in data:
            return {k: from_json(v) for k, v in data["dict"].items()}
        if "tuple" in data:
            return tuple(from_json(v) for v in data["tuple"])
    return data


def rollout(env: Any, seed: int, steps: int, actions: list[Any] | None = None) -> dict[str, Any]:
    """Reset with ``seed``, take ``steps`` steps (the given actions, or seeded samples),
    resetting (unseeded) when an episode ends; fingerprint every result."""
    if actions is None:
        env.action_space.seed(seed)
    prints, taken = [fingerprint(env.reset(seed=seed))], []
    for t in range(steps):
        action = env.action_space.sample() if actions is None else from_json(actions[t])
        taken.append(to_json(action))
        result = env.step(action)
        prints.append(fingerprint(result))
        if result[2] or result[3]:
            prints.append(fingerprint(env.reset()))
    frame = env.render() if env.render_mode == "rgb_array" else None
    return {"actions": taken, "prints": prints, "render": None if frame is None else fingerprint(frame)}


def vector_rollout(envs: Any, seed: int, steps: int, actions: list[Any] | None = None) -> dict[str, Any]:
    """:func:`rollout` of a vector env (gymnasium's NEXT_STEP autoreset: no resets here)."""
    if actions is None:
        envs.action_space.seed(seed)
    prints, taken = [fingerprint(envs.reset(seed=seed))], []
    for t in range(steps):
        action = envs.action_space.sample() if actions is None else from_json(actions[t])
        taken.append(to_json(action))
        prints.append(fingerprint(envs.step(action)))
    return {"actions": taken, "prints": prints}


def wrapped(env: Any, wrappers: list[list[Any]]) -> Any:
    """``env`` inside each of ``wrappers`` (``[["module:Wrapper", kwargs], ...]``), in order."""
    for entry_point, kwargs in wrappers:
        module, _, name = entry_point.partition(":")
        env = getattr(importlib.import_module(module), name)(env, **kwargs)
    return env


def checked(env: Any, render_check: bool = True) -> str:
    """What gymnasium's check_env says of ``env``: "passed", or its error's type and message."""
    import warnings

    from gymnasium.utils.env_checker import check_env

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            check_env(env, skip_render_check=env.render_mode is None or not render_check)
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    finally:
        env.close()
    return "passed"


def main(request: dict[str, Any]) -> dict[str, Any]:
    """The reference for ``request``: ``env_id``, ``kwargs``, ``imports``, ``seed``, ``steps``,
    ``wrappers`` (``[["module:Wrapper", kwargs], ...]`` around the env, in order; default
    none), and ``vector`` (a number of envs in a SyncVectorEnv) or ``check_env`` (what
    gymnasium's checker says of the env) or neither (a rollout)."""
    import gymnasium as gym

    for module in request.get("imports", []):
        importlib.import_module(module)
    seed, steps, kwargs = request.get("seed", 0), request.get("steps", 50), request.get("kwargs", {})
    wrappers = request.get("wrappers", [])
    if request.get("check_env"):
        env = wrapped(gym.make(request["env_id"], **kwargs), wrappers)
        return {"check_env": checked(env, request.get("render_check", True))}
    if request.get("vector"):
        envs = gym.vector.SyncVectorEnv(
            [lambda: wrapped(gym.make(request["env_id"], **kwargs), wrappers)] * request["vector"]
        )
        try:
            return vector_rollout(envs, seed, steps)
        finally:
            envs.close()
    env = wrapped(gym.make(request["env_id"], **kwargs), wrappers)
    try:
        return rollout(env, seed, steps)
    finally:
        env.close()


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
