"""gymnasium.make / make_vec with remote ids (real containers)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import remote


def test_gymnasium_make_remote_id(image):
    env = gym.make("remote/CartPole-v1", image=image)
    try:
        assert env.spec.id == "remote/CartPole-v1"
        assert isinstance(env.unwrapped, remote.RemoteEnvironmentClient)
        obs, _ = env.reset(seed=0)
        local, _ = gym.make("CartPole-v1").reset(seed=0)
        assert obs.tobytes() == local.tobytes()
    finally:
        env.close()
    assert not env.unwrapped.runner.alive


def test_gymnasium_make_vec_remote_id(image):
    vec = gym.make_vec("remote/CartPole-v1", num_envs=2, vectorization_mode="sync", image=image)
    try:
        obs, _ = vec.reset(seed=3)
        assert obs.shape == (2, 4)
        _, rewards, *_ = vec.step(np.array([0, 1]))
        assert rewards.tolist() == [1.0, 1.0]
    finally:
        vec.close()


def test_register_with_a_default_image(image, monkeypatch):
    monkeypatch.delenv("REMOTE_IMAGE", raising=False)
    with pytest.raises(ValueError, match="needs an image"):
        gym.make("remote/Acrobot-v1")
    env_id = remote.register("Acrobot-v1", image=image)
    try:
        env = gym.make(env_id)
        assert env.reset(seed=1)[0].shape == (6,)
        env.close()
    finally:
        remote.register("Acrobot-v1")  # back to no default image
    with pytest.raises(ValueError, match="namespace"):
        remote.register("phys2d/CartPole-v0")
