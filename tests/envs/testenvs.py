"""Small environments used by the tests; imported inside the container as "testenvs:Name"."""

from __future__ import annotations

import time
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class DictTupleEnv(gym.Env):
    """Nested Dict/Tuple observations, a Tuple action space, rgb_array rendering."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, render_mode: str | None = None, size: int = 3) -> None:
        self.render_mode = render_mode
        self.size = size
        self.observation_space = spaces.Dict(
            {
                "pos": spaces.Box(-1.0, 1.0, (size,), np.float32),
                "flags": spaces.MultiBinary(4),
                "pair": spaces.Tuple((spaces.Discrete(5), spaces.Box(0.0, 1.0, (2,), np.float64))),
                "grid": spaces.MultiDiscrete([3, 4]),
            }
        )
        self.action_space = spaces.Tuple((spaces.Discrete(3), spaces.Box(-1.0, 1.0, (2,), np.float32)))
        self.t = 0

    def _obs(self) -> dict[str, Any]:
        rng = self.np_random
        return {
            "pos": rng.uniform(-1, 1, self.size).astype(np.float32),
            "flags": rng.integers(0, 2, 4).astype(np.int8),
            "pair": (int(rng.integers(0, 5)), rng.uniform(0, 1, 2)),
            "grid": np.array([rng.integers(0, 3), rng.integers(0, 4)], dtype=np.int64),
        }

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {"options": options}

    def step(self, action):
        self.t += 1
        reward = float(action[0]) + float(np.sum(action[1]))
        return self._obs(), reward, self.t >= 20, False, {"t": self.t}

    def render(self):
        frame = np.zeros((16, 24, 3), dtype=np.uint8)
        frame[:, : self.t % 24] = 255
        return frame


class FaultyEnv(gym.Env):
    """Raises ValueError on action 2, KeyError on action 3, and keeps working after."""

    def __init__(self) -> None:
        self.observation_space = spaces.Box(0.0, 100.0, (1,), np.float32)
        self.action_space = spaces.Discrete(4)
        self.count = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.count = 0
        return np.array([0.0], dtype=np.float32), {}

    def step(self, action):
        if action == 2:
            raise ValueError("boom: action 2 is cursed")
        if action == 3:
            raise KeyError("missing")
        self.count += 1
        return np.array([self.count], dtype=np.float32), 1.0, False, False, {}


class WideObservationEnv(gym.Env):
    """Observations of float64 in a float32 space (as DACBench's): a vector env casts them."""

    def __init__(self) -> None:
        self.observation_space = spaces.Box(0.0, np.inf, (2,), np.float32)
        self.action_space = spaces.Discrete(2)
        self.count = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.count = 0
        return np.array([seed or 0, 0.1], dtype=np.float64), {}

    def step(self, action):
        self.count += 1
        return np.array([self.count, 0.1 * int(action)], dtype=np.float64), 1.0, self.count == 3, False, {}


class SeedIgnoringEnv(gym.Env):
    """Broken on purpose: reset ignores its seed (draws from an unseeded generator)."""

    def __init__(self) -> None:
        self.observation_space = spaces.Box(0.0, 1.0, (2,), np.float64)
        self.action_space = spaces.Discrete(2)
        self._rng = np.random.default_rng()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        return self._rng.uniform(0, 1, 2), {}

    def step(self, action):
        return self._rng.uniform(0, 1, 2), 0.0, False, False, {}


class HopperLikeEnv(gym.Env):
    """A near-free env with Hopper-v5's reply shape: 11 float64 observations and an info of six
    numpy float64 scalars (the per-step cost of a MuJoCo-like reply, without MuJoCo)."""

    observation_space = spaces.Box(-np.inf, np.inf, (11,), np.float64)
    action_space = spaces.Box(-1.0, 1.0, (3,), np.float32)
    KEYS = (
        "x_position",
        "z_distance_from_origin",
        "x_velocity",
        "reward_forward",
        "reward_ctrl",
        "reward_survive",
    )

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._obs = self.np_random.normal(size=11)
        return self._obs, {}

    def step(self, action):
        self._obs = self._obs + 0.01
        info = {key: np.float64(self._obs[i]) for i, key in enumerate(self.KEYS)}
        return self._obs, float(self._obs[0]), False, False, info


class MemoryHog(gym.Env):
    """Allocates (and touches) ``megabytes`` MB more on every step with action 1."""

    def __init__(self, megabytes: int = 64) -> None:
        self.observation_space = spaces.Box(0.0, np.inf, (1,), np.float32)
        self.action_space = spaces.Discrete(2)
        self.megabytes = megabytes
        self.held: list[np.ndarray] = []

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        return np.array([0.0], dtype=np.float32), {}

    def step(self, action):
        if action == 1:
            self.held.append(np.ones(self.megabytes * 2**20, dtype=np.uint8))
        held = float(sum(block.nbytes for block in self.held) / 2**20)
        return np.array([held], dtype=np.float32), 0.0, False, False, {}


class SpawningEnv(gym.Env):
    """Starts a long-lived child process (as some simulators do): it must not outlive the server."""

    observation_space = spaces.Box(0.0, 1.0, (1,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self) -> None:
        import subprocess

        self.child = subprocess.Popen(["sleep", "300"])

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        return np.zeros(1, np.float32), 0.0, False, False, {}


class EchoEnv(gym.Env):
    """uint8 observations of ``nbytes`` (seeded noise); ``reset(options={"echo": x})``
    returns ``x`` in its info, so arrays travel host → container → host."""

    def __init__(self, nbytes: int = 1024) -> None:
        self.observation_space = spaces.Box(0, 255, (nbytes,), np.uint8)
        self.action_space = spaces.Discrete(2)
        self.nbytes = nbytes

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        return self._obs(), {"echo": (options or {}).get("echo")}

    def step(self, action):
        return self._obs(), float(action), False, False, {}

    def _obs(self) -> np.ndarray:
        return self.np_random.integers(0, 256, self.nbytes, dtype=np.uint8)


class SlowEnv(gym.Env):
    """Each ``step`` takes ``seconds``."""

    observation_space = spaces.Box(0, 1, (3,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self, seconds: float = 30.0) -> None:
        self.seconds = seconds

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        return np.zeros(3, np.float32), {}

    def step(self, action):
        time.sleep(self.seconds)
        return np.zeros(3, np.float32), 0.0, False, False, {}


class TypeErrorEnv(gym.Env):
    """A buggy env: ``step`` raises its own TypeError (it adds a str to a number); ``reset`` works."""

    observation_space = spaces.Box(0.0, 1.0, (1,), np.float32)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.position = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.position = self.position + "1"  # the bug: TypeError, raised by the env itself
        return np.zeros(1, np.float32), 0.0, False, False, {}


class ChattyEnv(gym.Env):
    """Prints a line of ``nbytes`` to stdout on every step (``chatty <episode>:<step> xxx...``),
    and truncates its episodes after ``length`` steps: an env that talks a lot."""

    observation_space = spaces.Box(0.0, 1.0, (1,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self, nbytes: int = 10240, length: int = 1000) -> None:
        self.padding = "x" * nbytes
        self.length = length
        self.episode = -1
        self.t = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.episode += 1
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        print(f"chatty {self.episode}:{self.t} {self.padding}")
        return np.zeros(1, np.float32), 1.0, False, self.t >= self.length, {}


def make_echo(nbytes: int = 8, max_steps: int = 5) -> gym.Env:
    """A factory function ("testenvs:make_echo"): an EchoEnv that ends after ``max_steps``."""
    return gym.wrappers.TimeLimit(EchoEnv(nbytes), max_episode_steps=max_steps)


def make_slowly(seconds: float = 3.0) -> gym.Env:
    """A factory that takes ``seconds`` (as an env package that imports for seconds)."""
    time.sleep(seconds)
    return EchoEnv(4)


def make_loudly(size: int = 100_000) -> gym.Env:
    """Broken on purpose: fails with a message of ``size`` characters (gymnasium quotes kwargs whole)."""
    raise ValueError("x" * size)


def make_nothing(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Broken on purpose: a "factory" (or wrapper) that returns no env."""
    return {"not": "an env", **kwargs}


class EchoBenchmark:
    """A benchmark class as DACBench has them: ``"testenvs:EchoBenchmark.get_environment"``."""

    def __init__(self) -> None:
        self.nbytes = 6

    def get_environment(self, nbytes: int | None = None) -> gym.Env:
        return EchoEnv(nbytes or self.nbytes)


class LegacySpace:
    """Not a gymnasium space (as the spaces of an env written for the old gym package)."""

    shape = (1,)


class LegacySpaceEnv(gym.Env):
    """Broken on purpose: one of its observation spaces is no gymnasium space."""

    def __init__(self) -> None:
        self.observation_space = spaces.Dict({"pos": spaces.Box(0.0, 1.0, (2,), np.float32)})
        self.observation_space.spaces["legacy"] = LegacySpace()  # type: ignore[assignment]
        self.action_space = spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        return {"pos": np.zeros(2, np.float32), "legacy": 0}, {}

    def step(self, action):
        return {"pos": np.zeros(2, np.float32), "legacy": 0}, 0.0, False, False, {}


class AtariGray84(gym.ObservationWrapper):
    """An Atari env's screen in grey, sampled down to 84×84 (numpy only: what
    ``AtariPreprocessing`` does without OpenCV); it reads the emulator, an internal of the env."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.observation_space = spaces.Box(0, 255, (84, 84), np.uint8)
        height, width = env.observation_space.shape[:2]
        self.rows = np.linspace(0, height - 1, 84).round().astype(np.intp)
        self.cols = np.linspace(0, width - 1, 84).round().astype(np.intp)

    def observation(self, observation: Any) -> np.ndarray:
        screen = self.env.unwrapped.ale.getScreenGrayscale()
        return np.ascontiguousarray(screen[np.ix_(self.rows, self.cols)])
