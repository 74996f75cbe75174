"""Several envs of the container stepped by one request (the server of a vector env)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import ProtocolError
from ..protocol.ops import CLOSE, OK, RESET, STEP
from .envs import RemoteEnvironmentServer, dispatch


class EnvGroupServer:
    """Several envs of the container stepped by one request: the server side of
    :class:`remote.vector.RemoteVectorEnv`, autoreset as gymnasium's ``NEXT_STEP`` mode
    (an env that ended is reset by the next ``step``, which returns reward 0).

    ``step`` takes a list of actions, or an array whose rows are the actions (as gymnasium's
    ``iterate`` splits a batched Box/MultiDiscrete/MultiBinary action). The requests and
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

    def step(self, actions: Any) -> list[Any]:
        envs = self.envs
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
            observations.append(obs)
            rewards.append(reward)
            terminations.append(terminated)
            truncations.append(truncated)
            infos.append(info)
            autoreset[i] = bool(terminated or truncated)
        return [
            OK,
            _stacked(observations),
            np.array(rewards, dtype=np.float64),
            np.array(terminations, dtype=np.bool_),
            np.array(truncations, dtype=np.bool_),
            infos,
        ]

    def reset(self, args: Any) -> list[Any]:
        if not (
            type(args) is list and len(args) == 2 and type(args[0]) is list and len(args[0]) == len(self.envs)
        ):
            raise ProtocolError(f"reset expects [[seed] * {len(self.envs)}, options]")
        seeds, options = args
        observations, infos = [], []
        for env, seed in zip(self.envs, seeds, strict=True):
            _, obs, info = env.reset([seed, options])
            observations.append(obs)
            infos.append(info)
        self.autoreset = [False] * len(self.envs)
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
    return np.stack(observations)
