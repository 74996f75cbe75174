"""A compliance check an image author runs: does this env honour gymnasium's contracts
when served from this image?

    results = remote.check_image("gymnasium.sif", "CartPole-v1")
    for r in results: print(r)

Each contract is checked on a fresh env from the image and reported by name: spaces
round-trip, reset and step return types, seeding determinism, render, close, and
gymnasium's own ``check_env``. The CLI's ``remote check IMAGE ENV_ID`` prints the same.
"""

from __future__ import annotations

import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from .client import RemoteEnvironmentClient
from .errors import RemoteEnvError
from .protocol import codec
from .protocol import spaces as space_codec
from .runner import RemoteRunner


@dataclass(frozen=True)
class CheckResult:
    """One contract: its name, whether it held, and what was seen if it did not."""

    name: str
    passed: bool
    detail: str = ""

    def __str__(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'}  {self.name}" + (
            f": {self.detail}" if self.detail else ""
        )


class CheckResults(list[CheckResult]):
    """:func:`check_image`'s results, in order, and what the image's server reported."""

    def __init__(self, results: list[CheckResult], server: dict[str, Any]) -> None:
        super().__init__(results)
        #: The server's ``INFO`` (``runner.info``): versions in the container and its ``codec``.
        self.server = server


class ContractBroken(AssertionError):
    """Raised inside a check when a contract does not hold."""


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise ContractBroken(message)


def _same(a: Any, b: Any) -> bool:
    """Bit-identical values (through nesting), as the wire codec sees them."""
    return codec.dumps(a) == codec.dumps(b)


def check_spaces(env: RemoteEnvironmentClient) -> None:
    for name in ("observation_space", "action_space"):
        space = getattr(env, name)
        _expect(isinstance(space, gym.spaces.Space), f"{name} is {type(space).__name__}, not a Space")
        again = space_codec.rebuild(codec.loads(codec.dumps(space_codec.describe(space))))
        _expect(again == space, f"{name} {space} does not survive the round trip")
    obs, _ = env.reset(seed=0)
    _expect(
        env.observation_space.contains(obs),
        f"reset observation {obs!r:.80} is outside {env.observation_space}",
    )


def check_reset_contract(env: RemoteEnvironmentClient) -> None:
    result = env.reset(seed=1, options={})
    _expect(isinstance(result, tuple) and len(result) == 2, "reset must return (obs, info)")
    _expect(isinstance(result[1], dict), f"reset info is {type(result[1]).__name__}, not dict")


def check_step_contract(env: RemoteEnvironmentClient) -> None:
    env.reset(seed=2)
    env.action_space.seed(2)
    for t in range(50):
        result = env.step(env.action_space.sample())
        _expect(isinstance(result, tuple) and len(result) == 5, "step must return a 5-tuple")
        obs, reward, terminated, truncated, info = result
        _expect(env.observation_space.contains(obs), f"step {t}: observation outside the space")
        _expect(
            isinstance(reward, (int, float, np.integer, np.floating)), f"step {t}: reward is {type(reward)}"
        )
        _expect(
            isinstance(terminated, bool) and isinstance(truncated, bool),
            f"step {t}: terminated/truncated must be bool",
        )
        _expect(isinstance(info, dict), f"step {t}: info is {type(info).__name__}, not dict")
        if terminated or truncated:
            env.reset()


def check_seeding(env: RemoteEnvironmentClient) -> None:
    def rollout(seed: int) -> list[Any]:
        obs, _ = env.reset(seed=seed)
        env.action_space.seed(seed)
        trajectory = [obs]
        for _ in range(30):
            obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            trajectory.append((obs, reward, terminated, truncated))
            if terminated or truncated:
                break
        return trajectory

    first, second = rollout(123), rollout(123)
    _expect(
        _same(first[0], second[0]), "reset(seed=123) twice gave different observations: the seed is ignored"
    )
    _expect(_same(first, second), "the same seed and actions gave different trajectories")


def check_render(env: RemoteEnvironmentClient) -> None:
    """The frame the render mode promises: ``rgb_array`` a uint8 (H, W, 3) array, ``ansi`` a
    str. An env made without a render mode promises none (Atari's raises if asked), and a
    ``human`` one draws on a screen, returning nothing to check."""
    if env.render_mode not in ("rgb_array", "ansi"):
        return
    env.reset(seed=0)
    frame = env.render()
    if env.render_mode == "rgb_array":
        _expect(
            isinstance(frame, np.ndarray)
            and frame.ndim == 3
            and frame.shape[2] == 3
            and frame.dtype == np.uint8,
            f"rgb_array frame is {type(frame).__name__} "
            f"{getattr(frame, 'shape', '')} {getattr(frame, 'dtype', '')}, not uint8 (H, W, 3)",
        )
    elif env.render_mode == "ansi":
        _expect(isinstance(frame, str), "ansi render must return a str")


def check_close(env: RemoteEnvironmentClient) -> None:
    env.close()
    env.close()


def check_gymnasium_env_checker(env: RemoteEnvironmentClient) -> None:
    """gymnasium's own checker. Its render check makes the env in every render mode the env
    lists, ``human`` too, which needs a screen (MuJoCo's aborts without one, in the image's
    own Python as well): the render contract checks the mode the env was made with instead."""
    from gymnasium.utils.env_checker import check_env

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(env, skip_render_check=True)


CHECKS: list[tuple[str, Callable[[RemoteEnvironmentClient], None]]] = [
    ("spaces round-trip", check_spaces),
    ("reset contract", check_reset_contract),
    ("step contract", check_step_contract),
    ("seeding determinism", check_seeding),
    ("render", check_render),
    ("gymnasium check_env", check_gymnasium_env_checker),
    ("close", check_close),
]


def check_image(
    image: str, env_id: str, env_kwargs: dict[str, Any] | None = None, **runner_options: Any
) -> CheckResults:
    """Run every contract check on ``env_id`` served from ``image``, a fresh env for each.

    ``env_kwargs`` go to the env; ``runner_options`` to :class:`RemoteRunner`.
    """
    results = []
    with RemoteRunner(image, **runner_options) as runner:
        for name, check in CHECKS:
            try:
                env = runner.make(env_id, **(env_kwargs or {}))
            except Exception as exc:  # no env, no contract to check: say so once
                message = exc.remote_message if isinstance(exc, RemoteEnvError) else str(exc)
                return CheckResults([CheckResult("create the env", False, message)], runner.info)
            try:
                check(env)
                results.append(CheckResult(name, True))
            except ContractBroken as exc:
                results.append(CheckResult(name, False, str(exc)))
            except RemoteEnvError as exc:  # the env raised in the container
                results.append(CheckResult(name, False, f"{exc.remote_type}: {exc.remote_message}"[:500]))
            except Exception as exc:
                last = traceback.format_exception_only(type(exc), exc)[-1].strip()
                results.append(CheckResult(name, False, last[:500]))
            finally:
                env.close()
    return CheckResults(results, runner.info)
