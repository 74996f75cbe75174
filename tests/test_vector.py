"""remote.make_vec: batched envs over several containers, equal to SyncVectorEnv."""

from __future__ import annotations

from copy import deepcopy

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import remote
from remote.protocol import ops
from remote.vector import RemoteVectorEnv, merged_numbers


def _local_test_env(name: str) -> type:
    import importlib
    import sys

    from conftest import TEST_ENVS

    if str(TEST_ENVS) not in sys.path:
        sys.path.insert(0, str(TEST_ENVS))
    return getattr(importlib.import_module("testenvs"), name)


def _same(a, b) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _same(a[key], b[key])
    elif isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _same(x, y)
    else:
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()


def _compare(remote_envs, local_envs, steps: int, seed) -> int:
    """Step both with the same actions; return how many autoresets happened."""
    got = remote_envs.reset(seed=seed)
    _same(got[0], local_envs.reset(seed=seed)[0])
    local_envs.action_space.seed(1)
    autoresets = 0
    for _ in range(steps):
        kept, as_kept = got[0], deepcopy(got[0])
        actions = local_envs.action_space.sample()
        got, want = remote_envs.step(actions), local_envs.step(actions)
        _same(got[0], want[0])
        _same(kept, as_kept)  # the observations handed out before are not overwritten
        for g, w in zip(got[1:4], want[1:4], strict=True):
            assert g.dtype == w.dtype and np.array_equal(g, w)
        assert got[4].keys() == want[4].keys()
        autoresets += int(np.sum(want[2] | want[3]))
    return autoresets


def test_cartpole_trajectories_equal_sync_vector_env_across_autoresets(image):
    envs = remote.make_vec("CartPole-v1", 5, image=image, envs_per_container=2)
    local = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 5)
    try:
        assert isinstance(envs, gym.vector.VectorEnv) and envs.group_sizes == [2, 2, 1]
        assert envs.num_envs == 5 and envs.observation_space == local.observation_space
        assert envs.action_space == local.action_space
        assert envs.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
        assert len({r.info["pid"] for r in envs._runners}) == 3 or len(envs._runners) == 3
        assert _compare(envs, local, 150, seed=7) > 5  # several episodes ended and restarted
        assert _compare(envs, local, 30, seed=[11, 12, 13, 14, 15]) >= 0
    finally:
        envs.close()
        local.close()
    assert all(not r.alive for r in envs._runners)


@pytest.mark.parametrize("per", [3, 2])
def test_observations_of_another_dtype_than_the_space_are_cast_as_gymnasium_casts_them(
    image, test_env_options, per
):
    envs = remote.make_vec(
        "testenvs:WideObservationEnv", 3, image=image, envs_per_container=per, runner_options=test_env_options
    )
    local = gym.vector.SyncVectorEnv([_local_test_env("WideObservationEnv")] * 3)
    try:
        assert envs.observation_space.dtype == np.float32
        _compare(envs, local, 5, seed=0)  # float64 from the env, float32 in the batch, as SyncVectorEnv
    finally:
        envs.close()
        local.close()


def test_dict_tuple_spaces_batched_as_gymnasium_does(image, test_env_options):
    envs = remote.make_vec(
        "testenvs:DictTupleEnv", 3, image=image, envs_per_container=2, runner_options=test_env_options
    )
    local = gym.vector.SyncVectorEnv([_local_test_env("DictTupleEnv")] * 3)
    try:
        assert envs.observation_space == local.observation_space
        assert _compare(envs, local, 45, seed=3) == 6  # each env ends at t=20 and t=40
    finally:
        envs.close()
        local.close()


def test_errors_keep_every_stream_in_step(image, test_env_options):
    with pytest.raises(remote.EnvCreationError):
        remote.make_vec("NoSuchEnv-v0", 2, image=image, envs_per_container=1)
    envs = remote.make_vec(
        "testenvs:FaultyEnv", 3, image=image, envs_per_container=2, runner_options=test_env_options
    )
    try:
        envs.reset(seed=0)
        with pytest.raises(ValueError, match="cursed"):
            envs.step(np.array([0, 0, 2]))
        with pytest.raises(remote.InvalidAction):
            envs.step(np.array([0, 7, 0]))  # refused before any env of that container moves
        obs, rewards, *_ = envs.step(np.array([1, 1, 1]))
        # env 2 failed on action 2, then moved on 0 and 1; envs 0, 1 moved on 0, not on 7, then on 1
        assert obs[:, 0].tolist() == [2.0, 2.0, 2.0] and rewards.tolist() == [1.0, 1.0, 1.0]
        with pytest.raises(ValueError, match="5 envs|3 envs"):
            envs.reset(seed=[1, 2])
    finally:
        envs.close()
    with pytest.raises(remote.RemoteError):
        envs._streams[0].call(ops.STEP, [0, 0], ops.STEP_REPLY_SIZE)


def test_close_is_idempotent_and_repr(image):
    envs = remote.make_vec("CartPole-v1", 2, image=image)
    assert isinstance(envs, RemoteVectorEnv) and "2 envs in 1 containers" in repr(envs)
    envs.close()
    envs.close()
    assert not envs._runners[0].alive


def test_a_dead_container_raises_container_died_and_the_rest_closes(image):
    import os
    import signal

    envs = remote.make_vec("CartPole-v1", 4, image=image, envs_per_container=2)
    try:
        envs.reset(seed=0)
        os.kill(envs._runners[1]._process.pid, signal.SIGKILL)
        with pytest.raises(remote.ContainerDied):
            for _ in range(100):  # the first step may be answered before the kill lands
                envs.step(np.zeros(4, dtype=np.int64))
    finally:
        envs.close()
    assert not any(r.alive for r in envs._runners)


def test_the_host_polls_only_for_replies_the_cpus_can_wait_for_beside_the_containers(image):
    """Reply ``g`` of ``k`` is polled for only where the CPUs outnumber the ``k - g``
    containers that may still be stepping (on 2 CPUs and 2 containers: the last one only);
    the containers were told not to poll (checked on the server side in test_wire.py)."""
    from remote.protocol import channel

    envs = remote.make_vec("CartPole-v1", 2, image=image, envs_per_container=1)
    try:
        polls = [stream._channel.poll_ns for stream in envs.groups.streams]
        assert polls == [channel.polling(busy=2), channel.polling(busy=1)]
        envs.reset(seed=0)
        envs.step(np.zeros(2, dtype=np.int64))  # the streams serve as before
    finally:
        envs.close()


#: A fresh process that makes two envs, one after the other, and prints their polls.
SOLE_STREAM_SCRIPT = """
import json, sys
import remote
from remote.client import open_streams
from remote.protocol import channel
assert open_streams() == 0
first = remote.make("CartPole-v1", image=sys.argv[1])
second = remote.make("CartPole-v1", image=sys.argv[1])
polls = [env.stream._channel.poll_ns for env in (first, second)]
for env in (first, second):
    env.reset(seed=0)
    env.step(0)
second.close()
first.close()
print(json.dumps({"polls": polls, "sole": channel.polling(channel.SOLE_POLL_NS),
                  "default": channel.polling(), "open": open_streams()}))
"""


def test_the_one_stream_of_a_process_polls_longer_and_the_next_ones_as_before(image):
    """The first env of a process with no other open stream polls for its replies for
    SOLE_POLL_NS (its container, asked in the hello, for SOLE_REQUEST_POLL_NS: checked on the
    server side in test_wire.py); an env made beside it polls as before. In a fresh process:
    this one's other tests may hold streams."""
    import json
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", SOLE_STREAM_SCRIPT, str(image)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["polls"] == [out["sole"], out["default"]] and out["open"] == 0


# -- infos merged at once, as gymnasium's _add_info merges them one by one ----------------------

NUMBERS = st.one_of(
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True),
    st.booleans(),
    st.sampled_from([np.float64, np.float32, np.int64, np.int32, np.uint8, np.bool_]).flatmap(
        lambda kind: st.integers(0, 200).map(kind)
    ),
)


class _Batcher(RemoteVectorEnv):
    """A RemoteVectorEnv with no containers: its info merging alone."""

    def __init__(self, num_envs: int) -> None:
        self.num_envs = num_envs


def _infos(keys: list[str]) -> st.SearchStrategy[list[dict]]:
    """1-5 infos with ``keys`` in that order (as one env's infos come), values of any number type."""
    info = st.tuples(*[NUMBERS] * len(keys)).map(lambda values: dict(zip(keys, values, strict=True)))
    return st.lists(info, min_size=1, max_size=5)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=3), max_size=4, unique=True).flatmap(_infos))
def test_infos_of_numbers_merge_as_gymnasium_merges_them(each):
    batcher = _Batcher(len(each))
    by_gymnasium: dict = {}
    try:
        for i, info in enumerate(each):
            by_gymnasium = gym.vector.VectorEnv._add_info(batcher, by_gymnasium, info, i)
    except (OverflowError, ValueError) as exc:  # a number that does not fit the first's type
        with pytest.raises(type(exc)):
            batcher._merged(each)
        return
    merged = batcher._merged(each)
    assert list(merged) == list(by_gymnasium)
    for key, array in by_gymnasium.items():
        assert merged[key].dtype == array.dtype, key
        if array.dtype != object:
            assert merged[key].tobytes() == array.tobytes(), key
        else:
            assert all(
                type(a) is type(b) and (a == b or a != a) for a, b in zip(merged[key], array, strict=True)
            )


def test_infos_of_other_values_are_left_to_gymnasium():
    mujoco = {"x_position": np.float64(0.1), "reward_ctrl": np.float32(-0.2), "steps": 3, "ok": True}
    assert merged_numbers([mujoco, mujoco]) is not None
    assert merged_numbers([{"a": 1}, {"b": 1}]) is None  # other keys
    assert merged_numbers([{"a": 1, "b": 2}, {"b": 2, "a": 1}]) is None  # another order
    assert merged_numbers([{"a": np.zeros(2)}]) is None and merged_numbers([{"a": "x"}]) is None
    assert merged_numbers([{"a": {"b": 1}}]) is None
