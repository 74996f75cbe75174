"""A remote env behaves as the local env it mirrors, on every runtime (the conformance suite)."""

from __future__ import annotations

import socket

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import remote
from remote.protocol import ops
from remote.protocol.channel import Channel
from remote.protocol.ops import PROTOCOL_VERSION


@pytest.fixture(scope="module")
def runner(runtime, test_env_options):
    with runtime.runner(**test_env_options) as r:
        yield r


def assert_same(a, b, where="obs"):
    """Bit-identical values: same types, dtypes, shapes and bytes, through nesting."""
    assert type(a) is type(b), f"{where}: {type(a)} vs {type(b)}"
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert a.tobytes() == b.tobytes(), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def test_check_env_cartpole(runner):
    env = runner.make("CartPole-v1")
    check_env(env, skip_render_check=True)
    env.close()


def test_check_env_dict_tuple_spaces(runner):
    env = runner.make("testenvs:DictTupleEnv", render_mode="rgb_array", size=5)
    assert isinstance(env.observation_space, gym.spaces.Dict)
    assert env.observation_space["pos"].shape == (5,)
    assert isinstance(env.action_space, gym.spaces.Tuple)
    check_env(env)
    env.close()


@pytest.mark.parametrize("env_id", ["CartPole-v1", "testenvs:DictTupleEnv"])
def test_trajectory_equals_local(runner, env_id):
    if ":" in env_id:
        import sys

        from conftest import TEST_ENVS

        sys.path.insert(0, str(TEST_ENVS))
        import testenvs

        local = testenvs.DictTupleEnv()
    else:
        local = gym.make(env_id)
    far = runner.make(env_id)
    for seed in (0, 7):
        obs_l, info_l = local.reset(seed=seed)
        obs_r, info_r = far.reset(seed=seed)
        assert_same(obs_r, obs_l)
        local.action_space.seed(seed)
        for t in range(150):
            action = local.action_space.sample()
            result_l = local.step(action)
            result_r = far.step(action)
            assert_same(result_r[:4], result_l[:4], f"step {t}")
            if result_l[2] or result_l[3]:
                break
    far.close()


def test_spec_metadata_and_unwrapped(runner):
    env = runner.make("CartPole-v1")
    assert env.spec is not None and env.spec.id == "CartPole-v1"
    assert env.spec.max_episode_steps == 500
    assert env.metadata["render_fps"] == 50
    assert env.unwrapped is env
    assert env.render_mode is None
    env.close()


def test_render_rgb_array(runner):
    env = runner.make("testenvs:DictTupleEnv", render_mode="rgb_array")
    env.reset(seed=1)
    env.step(env.action_space.sample())
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.shape == (16, 24, 3)
    assert frame[:, :1].min() == 255 and frame[:, 1:].max() == 0
    env.close()


def test_reset_options_reach_the_env(runner):
    env = runner.make("testenvs:DictTupleEnv")
    _, info = env.reset(seed=3, options={"level": (1, 2), "name": "x"})
    assert info == {"options": {"level": (1, 2), "name": "x"}}
    env.close()


def test_wrappers(runner):
    env = runner.make("CartPole-v1")
    wrapped = gym.wrappers.RecordEpisodeStatistics(gym.wrappers.TimeLimit(env, max_episode_steps=10))
    wrapped = gym.wrappers.TransformObservation(wrapped, lambda o: o * 2, env.observation_space)
    wrapped.reset(seed=0)
    for _ in range(10):
        _, _, terminated, truncated, info = wrapped.step(0)
        if terminated or truncated:
            break
    assert "episode" in info and info["episode"]["l"] <= 10
    wrapped.close()


def test_sync_vector_env(runner):
    vec = gym.vector.SyncVectorEnv([lambda: runner.make("CartPole-v1") for _ in range(3)])
    obs, _ = vec.reset(seed=[1, 2, 3])
    assert obs.shape == (3, 4) and obs.dtype == np.float32
    local = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1") for _ in range(3)])
    obs_l, _ = local.reset(seed=[1, 2, 3])
    assert obs.tobytes() == obs_l.tobytes()
    for _ in range(20):
        out = vec.step(np.array([0, 1, 0]))
        out_l = local.step(np.array([0, 1, 0]))
        assert out[0].tobytes() == out_l[0].tobytes()
    vec.close()


def test_bad_action_is_a_distinct_error_and_env_keeps_working(runner):
    env = runner.make("CartPole-v1")
    env.reset(seed=0)
    with pytest.raises(remote.InvalidAction) as caught:
        env.step(7)
    assert "Discrete(2)" in str(caught.value)
    assert "Traceback" in caught.value.remote_traceback
    assert isinstance(caught.value, ValueError)
    obs, reward, *_ = env.step(1)  # still usable
    assert obs.shape == (4,) and reward == 1.0
    with pytest.raises(remote.InvalidAction):
        env.step(object())  # cannot even be encoded
    env.close()


def test_env_exception_arrives_typed_with_remote_traceback(runner):
    env = runner.make("testenvs:FaultyEnv")
    env.reset(seed=0)
    with pytest.raises(ValueError) as caught:
        env.step(2)
    error = caught.value
    assert isinstance(error, remote.RemoteEnvError)
    assert error.remote_type == "builtins.ValueError"
    assert "boom: action 2 is cursed" in str(error)
    assert "testenvs.py" in str(error) and "in step" in error.remote_traceback
    with pytest.raises(KeyError):
        env.step(3)
    obs, *_ = env.step(0)  # the env keeps working
    assert obs[0] == 1.0
    env.close()


def test_closed_env_says_so(runner):
    env = runner.make("CartPole-v1")
    env.close()
    env.close()  # twice is fine
    with pytest.raises(remote.RemoteError, match="closed"):
        env.reset()


def test_make_one_liner_and_versions_from_inside(runtime):
    env = runtime.make("CartPole-v1")
    try:
        info = env.runner.info
        assert info["protocol"] == PROTOCOL_VERSION and info["gymnasium"] and info["numpy"]
        obs, _ = env.reset(seed=0)
        assert obs.shape == (4,)
    finally:
        env.close()
    assert not env.runner.alive


def test_image_without_pyro5_msgpack_or_remote(minimal_image):
    """Any image with Python + gymnasium works: the server code is brought in at start."""
    env = remote.make("CartPole-v1", image=minimal_image)
    try:
        obs, _ = env.reset(seed=0)
        assert obs.dtype == np.float32
        assert env.step(0)[1] == 1.0
    finally:
        env.close()


def test_make_one_liner_with_the_users_own_env_package(image, test_env_options):
    """A user's env package, mounted into the container, through the one-line entry point."""
    env = remote.make("testenvs:DictTupleEnv", image=image, size=4, runner_options=test_env_options)
    try:
        obs, _ = env.reset(seed=0)
        assert obs["pos"].shape == (4,)
    finally:
        env.close()


def _raw_stream(runner: remote.RemoteRunner, **target) -> Channel:
    """An env stream of ``runner``'s container, past the hello, without the client."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(runner._ready["stream"])
    channel = Channel(sock)
    channel.send(ops.hello(runner._secret, **target))
    assert channel.recv() == [ops.OK, None]
    return channel


def test_every_reply_has_the_size_in_the_ops_table(image, test_env_options):
    """ops.REPLY_SIZE is what a real server answers, for one env and for a group of envs; a
    group serves ops.GROUP_OPS and refuses the others."""
    with remote.RemoteRunner(image, **test_env_options) as runner:
        envs = [runner.make("testenvs:DictTupleEnv", render_mode="rgb_array") for _ in range(3)]
        action = envs[0].action_space.sample()
        cases = [
            ({"env": envs[0].handle}, set(ops.REPLY_SIZE), [[0, None], action]),
            ({"envs": [envs[1].handle, envs[2].handle]}, ops.GROUP_OPS, [[[0, 1], None], [action, action]]),
        ]
        for target, served, (reset_args, step_args) in cases:
            requests = {ops.RESET: reset_args, ops.STEP: step_args, ops.RENDER: None, ops.CLOSE: None}
            assert set(requests) == set(ops.REPLY_SIZE)  # every op of the table, close last
            channel = _raw_stream(runner, **target)
            try:
                for op, args in requests.items():
                    channel.send([op, args])
                    reply = channel.recv()
                    if op in served:
                        assert reply[0] == ops.OK and len(reply) == ops.REPLY_SIZE[op], (target, op, reply)
                    else:
                        assert reply[0] == ops.ERROR and "unknown operation" in reply[1]["message"]
            finally:
                channel.close()
