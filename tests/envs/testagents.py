"""Agents for the experiment-loop tests; imported inside the container as "testagents:name"."""

from __future__ import annotations

import time
from typing import Any

import gymnasium as gym


class Balancer:
    """Pushes the cart toward where the pole falls; counts what ``observe`` sees."""

    def __init__(self, env: gym.Env, delay: float = 0.0) -> None:
        self.delay = delay
        self.observed = 0

    def act(self, obs: Any) -> int:
        if self.delay:
            time.sleep(self.delay)
        return int(obs[2] + obs[3] > 0)

    def observe(self, obs, action, reward, next_obs, terminated, truncated, info) -> None:
        self.observed += 1
        if self.observed > 100_000:
            raise AssertionError("observe was not called once per step")


def random_policy(env: gym.Env):
    """A plain callable policy: samples the (seeded) action space."""
    return lambda obs: env.action_space.sample()


def crashing(env: gym.Env, after: int = 25):
    """Pushes left (episodes of ~10 steps) and raises on its ``after``-th action."""
    calls = []

    def policy(obs: Any) -> int:
        calls.append(1)
        if len(calls) >= after:
            raise RuntimeError("agent exploded")
        return 0

    return policy
