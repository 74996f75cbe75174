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


class Walker:
    """Acts from its own random generator, its state: ``save``/``load`` keep it, so a resumed
    run acts as an uninterrupted one. Made in the container as a factory (``Walker(env,
    ...)``) or on the host as an object (``Walker(seed=...)``)."""

    def __init__(self, env: gym.Env | None = None, seed: int = 0, delay: float = 0.0) -> None:
        import numpy as np

        self.rng = np.random.default_rng(seed)
        self.delay = delay
        self.steps = 0

    def act(self, obs: Any) -> int:
        if self.delay:
            time.sleep(self.delay)
        self.steps += 1
        return int(self.rng.integers(2))

    def save(self, path: str) -> None:
        import json
        from pathlib import Path

        Path(path).write_text(json.dumps({"rng": self.rng.bit_generator.state, "steps": self.steps}))

    def load(self, path: str) -> None:
        import json
        from pathlib import Path

        state = json.loads(Path(path).read_text())
        self.rng.bit_generator.state = state["rng"]
        self.steps = state["steps"]


class Learner:
    """A bandit over the two actions that learns in ``observe``; its state is a state_dict
    (a numpy array and its generator's state)."""

    def __init__(self, env: gym.Env | None = None, seed: int = 0) -> None:
        import numpy as np

        self.q = np.zeros(2)
        self.rng = np.random.default_rng(seed)

    def act(self, obs: Any) -> int:
        if self.rng.random() < 0.3:
            return int(self.rng.integers(2))
        return int(self.q.argmax())

    def observe(self, obs, action, reward, next_obs, terminated, truncated, info) -> None:
        self.q[action] += 0.1 * ((0.0 if terminated else float(reward)) - self.q[action])

    def state_dict(self) -> dict:
        return {"q": self.q, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.q = state["q"].copy()
        self.rng.bit_generator.state = state["rng"]


def pushes_left(env: gym.Env):
    """Always pushes left: CartPole episodes of ~10 steps."""
    return lambda obs: 0
