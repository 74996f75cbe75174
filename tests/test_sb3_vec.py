"""remote.sb3.make_vec: an SB3 VecEnv over containers, equal to make_vec_env's DummyVecEnv."""

from __future__ import annotations

import hashlib
import importlib
import sys

import numpy as np
import pytest
from conftest import IN_CI
from helpers import server_pid, wait_gone

import remote

try:
    import stable_baselines3 as sb3
except ImportError:
    if IN_CI:
        raise
    pytest.skip(reason="stable-baselines3 is missing (pip install 'remote[rl]')", allow_module_level=True)

from stable_baselines3.common.env_util import make_vec_env  # noqa: E402
from stable_baselines3.common.monitor import Monitor  # noqa: E402
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv  # noqa: E402

import remote.sb3  # noqa: E402

PPO_KWARGS = dict(n_steps=128, batch_size=64, n_epochs=2, seed=0, device="cpu", verbose=0)


def _digest(model) -> str:
    """sha256 of the policy's parameters and buffers, concatenated in state_dict order."""
    h = hashlib.sha256()
    for name, tensor in model.policy.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _rollout(model) -> dict[str, bytes]:
    buffer = model.rollout_buffer
    names = ("observations", "actions", "rewards", "returns", "episode_starts", "values", "log_probs")
    return {name: getattr(buffer, name).tobytes() for name in (*names, "advantages")}


@pytest.mark.slow
def test_ppo_on_remote_envs_is_bit_identical_to_ppo_on_make_vec_env(image):
    envs = remote.sb3.make_vec("CartPole-v1", 4, image=image, envs_per_container=2, seed=0)
    local = make_vec_env("CartPole-v1", n_envs=4, seed=0)
    try:
        assert isinstance(envs, VecEnv) and isinstance(local, DummyVecEnv)
        models = [sb3.PPO("MlpPolicy", e, **PPO_KWARGS).learn(total_timesteps=2048) for e in (envs, local)]
        got, want = ([(ep["r"], ep["l"]) for ep in m.ep_info_buffer] for m in models)
        assert len(want) > 20 and got == want  # the same episodes, in the same order
        assert models[0].num_timesteps == models[1].num_timesteps == 2048
        assert _rollout(models[0]) == _rollout(models[1])
        assert _digest(models[0]) == _digest(models[1])
        assert sum(r.info["pid"] > 0 for r in envs.runners) == 2  # it did run in 2 containers
    finally:
        envs.close()
        local.close()


def _same_obs(a, b) -> None:
    if isinstance(b, dict):
        assert a.keys() == b.keys()
        for key in b:
            _same_obs(a[key], b[key])
        return
    assert type(a) is np.ndarray and a.dtype == b.dtype and a.shape == b.shape, (a, b)
    assert a.tobytes() == b.tobytes()


def _same_info(got: dict, want: dict) -> None:
    assert list(got) == list(want), (got, want)  # the same keys, in the same order
    for key, value in want.items():
        if key == "terminal_observation":
            _same_obs(got[key], value)
        elif key == "episode":
            assert (got[key]["r"], got[key]["l"]) == (value["r"], value["l"]) and got[key]["t"] >= 0
        else:
            assert got[key] == value and type(got[key]) is type(value), key


def _compare(envs, local, steps: int, seed: int) -> dict[str, int]:
    """Step both with the same random actions; count what happened."""
    assert envs.seed(seed) == local.seed(seed) == [seed + i for i in range(envs.num_envs)]
    obs = envs.reset()
    _same_obs(obs, local.reset())
    assert envs.reset_infos == local.reset_infos
    space = local.action_space
    space.seed(seed)
    counts = {"terminated": 0, "truncated": 0, "episodes": 0}
    for _ in range(steps):
        kept, as_kept = obs, obs.copy()
        actions = np.stack([space.sample() for _ in range(local.num_envs)])
        (obs, rewards, dones, infos), (l_obs, l_rewards, l_dones, l_infos) = (
            envs.step(actions),
            local.step(actions),
        )
        _same_obs(obs, l_obs)
        _same_obs(kept, as_kept)  # the observations handed out before are not overwritten
        assert rewards.dtype == l_rewards.dtype == np.float32 and rewards.tobytes() == l_rewards.tobytes()
        assert dones.dtype == l_dones.dtype == np.bool_ and np.array_equal(dones, l_dones)
        assert len(infos) == len(l_infos) == envs.num_envs
        for got, want in zip(infos, l_infos, strict=True):
            _same_info(got, want)
            counts["truncated"] += want["TimeLimit.truncated"]
            counts["terminated"] += "terminal_observation" in want and not want["TimeLimit.truncated"]
            counts["episodes"] += "episode" in want
        assert envs.reset_infos == local.reset_infos
    return counts


@pytest.mark.parametrize("per", [1, 2, 4])
def test_steps_infos_and_seeds_equal_dummy_vec_env(image, per):
    envs = remote.sb3.make_vec("CartPole-v1", 4, image=image, envs_per_container=per, seed=3)
    local = make_vec_env("CartPole-v1", n_envs=4, seed=3)
    try:
        assert len(envs.runners) == 4 // per and envs.num_envs == 4
        assert envs.observation_space == local.observation_space and envs.action_space == local.action_space
        assert envs.render_mode == local.render_mode == "rgb_array" and envs.metadata == local.metadata
        _same_obs(envs.reset(), local.reset())  # make_vec's seed=3: envs reset with 3, 4, 5, 6
        counts = _compare(envs, local, 300, seed=11)
        assert counts["terminated"] > 10 and counts["episodes"] == counts["terminated"]
    finally:
        envs.close()
        local.close()


def test_box_env_truncations_and_terminal_observations_equal_dummy_vec_env(image):
    envs = remote.sb3.make_vec("Pendulum-v1", 3, image=image, envs_per_container=2, seed=0)
    local = make_vec_env("Pendulum-v1", n_envs=3, seed=0)
    try:
        counts = _compare(envs, local, 450, seed=5)
        assert counts["truncated"] == 6 and counts["terminated"] == 0 and counts["episodes"] == 6
    finally:
        envs.close()
        local.close()


def test_monitor_false_leaves_episode_infos_out(image):
    envs = remote.sb3.make_vec("Pendulum-v1", 2, image=image, monitor=False, seed=0)
    try:
        envs.reset()
        for _ in range(200):
            _, _, dones, infos = envs.step(np.zeros((2, 1), dtype=np.float32))
        assert dones.all() and all("episode" not in i and i["TimeLimit.truncated"] for i in infos)
        assert envs.env_is_wrapped(Monitor) == [False, False]
    finally:
        envs.close()


def test_attributes_methods_seed_and_close(image):
    envs = remote.sb3.make_vec("CartPole-v1", 3, image=image, envs_per_container=2, seed=0)
    local = make_vec_env("CartPole-v1", n_envs=3, seed=0)
    pids = [server_pid(r) for r in envs.runners]
    try:
        assert envs.get_attr("render_mode") == local.get_attr("render_mode") == ["rgb_array"] * 3
        spec, local_spec = envs.get_attr("spec", indices=[2])[0], local.get_attr("spec")[0]
        assert (spec.id, spec.max_episode_steps) == (local_spec.id, local_spec.max_episode_steps)
        assert envs.get_attr("observation_space") == local.get_attr("observation_space")
        assert envs.get_attr("gravity") == local.get_attr("gravity") == [9.8] * 3
        envs.set_attr("gravity", 3.5, indices=[1, 2])
        assert envs.get_attr("gravity") == [9.8, 3.5, 3.5]
        assert envs.env_method("get_wrapper_attr", "gravity", indices=2) == [3.5]
        assert envs.has_attr("gravity") and not envs.has_attr("no_such_attribute")
        with pytest.raises(AttributeError, match="no_such_attribute"):
            envs.get_attr("no_such_attribute")
        envs.reset()
        assert envs.get_attr("np_random_seed") == [0, 1, 2]  # make_vec(seed=0): reset with 0, 1, 2
        envs.seed(7), local.seed(7), envs.reset(), local.reset()
        draws = envs.env_method("np_random.integers", 1000)
        assert [int(d) for d in draws] == [int(g.integers(1000)) for g in local.get_attr("np_random")]
        assert envs.env_is_wrapped(Monitor) == local.env_is_wrapped(Monitor) == [True] * 3
        from gymnasium.wrappers import RecordEpisodeStatistics, TimeLimit

        assert envs.env_is_wrapped(TimeLimit) == local.env_is_wrapped(TimeLimit) == [True] * 3
        assert envs.env_is_wrapped(RecordEpisodeStatistics) == [False] * 3
        assert envs.seed(100) == [100, 101, 102]
        envs.reset()
        assert envs.get_attr("np_random_seed") == [100, 101, 102]
        envs.reset()  # seeds are used once
        assert envs.get_attr("np_random_seed") == [100, 101, 102] and envs._seeds == [None] * 3
        envs.set_options({"low": -0.01, "high": 0.01})
        obs = envs.reset()
        assert np.abs(obs).max() <= 0.01
        assert "3 envs in 2 containers" in repr(envs)
    finally:
        envs.close()
        local.close()
    assert wait_gone(pids) == [] and not any(r.alive for r in envs.runners)
    envs.close()  # twice is fine
    with pytest.raises(remote.RemoteError):
        envs.step(np.zeros(3, dtype=np.int64))


def test_render_tiles_the_envs_frames_if_the_image_can_render(image):
    envs = remote.sb3.make_vec("CartPole-v1", 2, image=image, seed=0)
    try:
        envs.reset()
        try:
            frames = envs.get_images()
        except remote.RemoteEnvError as exc:  # no pygame in the image
            assert "pygame" in str(exc)
            return
        assert [f.shape for f in frames] == [(400, 600, 3)] * 2
        assert envs.render().shape == (400, 1200, 3)
    finally:
        envs.close()


def test_missing_sb3_raises_a_remote_error_that_says_what_to_install(monkeypatch):
    for name in ("stable_baselines3", "stable_baselines3.common.monitor", "stable_baselines3.common.vec_env"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "remote.sb3")
    with pytest.raises(remote.RemoteError, match=r"pip install 'remote\[rl\]'") as caught:
        importlib.import_module("remote.sb3")
    assert isinstance(caught.value, ImportError) and type(caught.value).__name__ == "MissingDependency"
