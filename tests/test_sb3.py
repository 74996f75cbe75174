"""Stable-Baselines3 PPO (CPU torch) learns on a CartPole that lives in a container."""

from __future__ import annotations

import numpy as np
import pytest

import remote

sb3 = pytest.importorskip("stable_baselines3", reason="scripts/setup.sh installs stable-baselines3")
from stable_baselines3.common.evaluation import evaluate_policy  # noqa: E402


@pytest.mark.slow
def test_ppo_trains_on_a_remote_cartpole(image):
    env = remote.make("CartPole-v1", image=image)
    try:
        model = sb3.PPO(
            "MlpPolicy", env, n_steps=512, batch_size=64, learning_rate=1e-3, seed=0, device="cpu", verbose=0
        )
        before, _ = evaluate_policy(model, env, n_eval_episodes=20, deterministic=False)
        model.learn(total_timesteps=6000)
        after, _ = evaluate_policy(model, env, n_eval_episodes=20, deterministic=False)
        print(f"PPO on a remote CartPole: mean return {before:.1f} before, {after:.1f} after 6000 steps")
        assert np.isfinite(after) and after > before + 20, (before, after)
        assert env.steps >= 6000  # the steps really went through the container
    finally:
        env.close()
