"""Several envs of the container stepped by one request (the server of a vector env)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import ProtocolError
from ..protocol.ops import AUTORESET_NEXT_STEP, AUTORESET_SAME_STEP, CLOSE, OK, RESET, STEP
from .envs import RemoteEnvironmentServer, dispatch


class EnvGroupServer:
    """Several envs of the container stepped by one request: the server side of
    :class:`remote.vector.RemoteVectorEnv`, autoreset as gymnasium's ``NEXT_STEP`` mode
    (an env that ended is reset by the next ``step``, which returns reward 0).

    ``step`` takes a list of actions, or an array whose rows are the actions (as gymnasium's
    ``iterate`` splits a batched Box/MultiDiscrete/MultiBinary action), or either in a map
    that also names the autoreset mode (``"same_step"``: an env that ended is reset within
    the step, as SB3's vector envs do). The requests and
    replies are those of :data:`remote.protocol.ops.GROUP_OPS`, listed in :mod:`remote.protocol.ops`.
    """

    def __init__(self, envs: list[RemoteEnvironmentServer]) -> None:
        self.envs = envs
        self.autoreset = [False] * len(envs)
        self.ops: dict[str, Callable[[Any], list[Any]]] = {
            STEP: self.step,
            RESET: self.reset,
            CLOSE: self.close,
        }

    def step(self, args: Any) -> list[Any]:
        envs = self.envs
        actions, same_step = args, False
        if type(args) is dict:  # {"actions": ..., "autoreset": mode}
            actions, mode = args.get("actions"), args.get("autoreset", AUTORESET_NEXT_STEP)
            if mode not in (AUTORESET_NEXT_STEP, AUTORESET_SAME_STEP):
                raise ProtocolError(f"autoreset must be {AUTORESET_NEXT_STEP!r} or {AUTORESET_SAME_STEP!r}")
            same_step = mode == AUTORESET_SAME_STEP
        if type(actions) is np.ndarray and actions.ndim > 0:
            actions = list(actions)
        if type(actions) is not list or len(actions) != len(envs):
            raise ProtocolError(f"step expects {len(envs)} actions")
        observations, rewards, terminations, truncations, infos = [], [], [], [], []
        autoreset = self.autoreset
        for env, action, skip in zip(envs, actions, autoreset, strict=True):
            if not skip:  # all actions are checked before any env moves
                env.check(action)
        for i, (env, action) in enumerate(zip(envs, actions, strict=True)):
            if autoreset[i]:
                obs, info = env.env.reset()
                reward, terminated, truncated = 0.0, False, False
            else:
                obs, reward, terminated, truncated, info = env.env.step(action)
            ended = bool(terminated or truncated)
            if ended and same_step:
                final_obs, final_info = obs, info
                obs, info = env.env.reset()
                info = {**info, "final_obs": final_obs, "final_info": final_info}
                ended = False
            observations.append(obs)
            rewards.append(reward)
            terminations.append(terminated)
            truncations.append(truncated)
            infos.append(info)
            autoreset[i] = ended
        return [
            OK,
            _stacked(observations),
            np.array(rewards, dtype=np.float64),
            np.array(terminations, dtype=np.bool_),
            np.array(truncations, dtype=np.bool_),
            infos,
        ]

    def reset(self, args: Any) -> list[Any]:
        count = len(self.envs)
        if not (type(args) is list and len(args) == 2 and type(args[0]) is list and len(args[0]) == count):
            raise ProtocolError(f"reset expects [[seed] * {count}, options or [options] * {count}]")
        seeds, options = args
        each = options if type(options) is list else [options] * count
        if len(each) != count:
            raise ProtocolError(f"reset expects [[seed] * {count}, options or [options] * {count}]")
        observations, infos = [], []
        for env, seed, env_options in zip(self.envs, seeds, each, strict=True):
            _, obs, info = env.reset([seed, env_options])
            observations.append(obs)
            infos.append(info)
        self.autoreset = [False] * count
        return [OK, _stacked(observations), infos]

    def close(self, _: Any = None) -> list[Any]:
        for env in self.envs:
            env.close()
        return [OK, None]

    def handle(self, op: Any, args: Any) -> list[Any]:
        """Run one request and return its reply frame."""
        closed = any(env.closed for env in self.envs)
        return dispatch(self.ops, op, args, "an environment of this group is closed" if closed else "")


def _stacked(observations: list[Any]) -> np.ndarray | list[Any]:
    """One array if every observation is an array of the same dtype and shape (one frame
    item instead of many), else the list."""
    first = observations[0]
    if type(first) is not np.ndarray:
        return observations
    dtype, shape = first.dtype, first.shape
    for obs in observations:
        if type(obs) is not np.ndarray or obs.dtype != dtype or obs.shape != shape:
            return observations
    if dtype.hasobject:  # np.array would look into the objects
        return np.stack(observations)
    return np.array(observations, dtype)  # np.stack's result, in a quarter of its time
