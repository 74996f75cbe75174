"""Creating envs as their users type them (real containers; the host has none of their packages).

Ids of packages gymnasium 1.x does not load by itself (``ALE/``, ``MiniGrid-``, DACBench),
custom spaces (minigrid's ``MissionSpace``), namespaced ids under ``remote/``, factory
functions, wrappers made in the container, and a make that may import for seconds.
"""

from __future__ import annotations

import subprocess
import time

import gymnasium as gym
import numpy as np
import pytest
from envs.reference import rollout
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array, iterate
from helpers import image_reference

import remote
from remote.protocol.spaces import RemoteSpace

#: Server-side preprocessing that reads the emulator (an internal of the env), then a stack.
GRAY84 = [("testenvs:AtariGray84", {}), ("gymnasium.wrappers:FrameStackObservation", {"stack_size": 4})]
ATARI_PREPROCESSING = [
    ("gymnasium.wrappers:AtariPreprocessing", {"frame_skip": 1}),
    ("gymnasium.wrappers:FrameStackObservation", {"stack_size": 4}),
]


def has_module(image: str, module: str) -> bool:
    done = subprocess.run(["apptainer", "exec", "--cleanenv", image, "python3", "-c", f"import {module}"])
    return done.returncode == 0


# -- ids as the user types them, and the spaces they come with ----------------------------------


def test_minigrid_as_typed_with_its_mission_space(envs_image):
    with remote.make("MiniGrid-DoorKey-5x5-v0", image=envs_image) as env:
        space = env.observation_space
        mission = space["mission"]
        assert isinstance(mission, RemoteSpace) and "minigrid.core.mission.MissionSpace" in repr(mission)
        obs, _ = env.reset(seed=0)
        assert isinstance(obs["mission"], str) and space.contains(obs)
        for action in (0, 1, 2):
            obs, *_ = env.step(action)
            assert space.contains(obs)
        assert mission.contains(mission.sample()) and not mission.contains(3)

        batched = batch_space(space, 3)  # as gymnasium does for a custom space: a Tuple of copies
        assert isinstance(batched["mission"], gym.spaces.Tuple) and len(batched["mission"]) == 3
        out = concatenate(space, [obs, obs, obs], create_empty_array(space, 3))
        assert out["mission"] == (obs["mission"],) * 3 and out["image"].shape == (3, 7, 7, 3)
        assert batched.contains(out)
        assert [o["mission"] for o in iterate(batched, out)] == [obs["mission"]] * 3


def test_make_vec_batches_the_mission_as_gymnasium_does(envs_image):
    envs = remote.make_vec("MiniGrid-DoorKey-5x5-v0", 2, image=envs_image)
    try:
        obs, _ = envs.reset(seed=0)
        assert isinstance(obs["mission"], tuple) and len(obs["mission"]) == 2
        assert envs.observation_space.contains(obs)
    finally:
        envs.close()


def test_atari_as_typed_and_the_other_forms(envs_image):
    with remote.make("ALE/Breakout-v5", image=envs_image) as env:
        assert env.observation_space == gym.spaces.Box(0, 255, (210, 160, 3), np.uint8)
        assert env.reset(seed=0)[0].shape == (210, 160, 3)
    with remote.RemoteRunner(envs_image, imports=["ale_py"]) as runner:
        assert runner.make("ALE/Pong-v5").action_space == gym.spaces.Discrete(6)
        assert runner.make("ale_py:ALE/Breakout-v5").spec.id == "ALE/Breakout-v5"  # "pkg:Id"


def test_imports_of_a_missing_module_fail_at_start(image):
    with pytest.raises(remote.EnvCreationError, match="could not import 'no_such_package'"):
        remote.RemoteRunner(image, imports=["no_such_package"])


def test_the_creation_error_names_every_form(image):
    with remote.RemoteRunner(image) as runner, pytest.raises(remote.EnvCreationError) as caught:
        runner.make("NoSuchEnv-v0")
    message = str(caught.value)
    assert "Check the env id" in message
    for form in ("imports=['pkg']", "'pkg:Id'", "'module:Class'", "'module:factory'"):
        assert form in message


def test_a_runner_option_among_env_kwargs_is_named(image, test_env_options):
    with pytest.raises(remote.EnvCreationError, match="unexpected keyword argument 'preload'") as caught:
        remote.make("testenvs:make_echo", image=image, preload=["json"], runner_options=test_env_options)
    assert "pass runner_options={'preload': ...}" in str(caught.value)


def test_a_huge_error_message_arrives_shortened(image, test_env_options):
    with remote.RemoteRunner(image, **test_env_options) as runner:
        with pytest.raises(remote.EnvCreationError) as caught:
            runner.make("testenvs:make_loudly", size=200_000)
        error = caught.value
        assert "ValueError: xxxx" in error.remote_message and "characters cut" in error.remote_message
        assert len(error.remote_message) < 5_000 and len(error.remote_traceback) < 17_000
        assert runner.make("testenvs:make_echo").reset(seed=0)[0].shape == (8,)  # the runner goes on


def test_gymnasium_make_of_a_namespaced_remote_id(envs_image):
    env_id = remote.register("ALE.Breakout-v5")
    assert env_id == "remote/ALE.Breakout-v5"
    try:
        env = gym.make(env_id, image=envs_image)
        try:
            assert env.unwrapped.env_id == "ALE/Breakout-v5"
            assert env.reset(seed=0)[0].shape == (210, 160, 3)
        finally:
            env.close()
    finally:
        gym.registry.pop(env_id)
    with pytest.raises(ValueError, match=r"register it as 'ALE\.Breakout-v5'"):
        remote.register("ALE/Breakout-v5")


# -- factories -----------------------------------------------------------------------------------


def test_a_factory_function_makes_the_env(image, test_env_options):
    with remote.RemoteRunner(image, **test_env_options) as runner:
        env = runner.make("testenvs:make_echo", nbytes=8, max_steps=2)
        assert env.reset(seed=0)[0].shape == (8,)
        assert env.step(0)[3] is False and env.step(1)[3] is True  # its TimeLimit truncates
        bench = runner.make("testenvs:EchoBenchmark.get_environment", nbytes=5)  # a bound method
        assert bench.observation_space.shape == (5,)
        assert runner.make("testenvs:EchoEnv", nbytes=3).observation_space.shape == (3,)  # a class

        with pytest.raises(remote.EnvCreationError, match="returned a dict, not a gymnasium.Env"):
            runner.make("testenvs:make_nothing")
        with pytest.raises(remote.EnvCreationError, match="has no attribute 'no_such_factory'"):
            runner.make("testenvs:no_such_factory")
        # the factory's own TypeError (a kwarg it does not take) is reported as it is
        with pytest.raises(remote.EnvCreationError, match="TypeError: make_echo.. got an unexpected") as bad:
            runner.make("testenvs:make_echo", colour="red")
        assert "Check the env id and kwargs" in str(bad.value)
        assert runner.make("testenvs:make_echo").reset(seed=1)[0].shape == (8,)  # the runner goes on


def test_a_space_that_cannot_travel_is_named(image, test_env_options):
    with remote.RemoteRunner(image, **test_env_options) as runner:
        with pytest.raises(remote.EnvCreationError) as caught:
            runner.make("testenvs:LegacySpaceEnv")
        message = str(caught.value).split("\n--- remote traceback")[0]
        assert (
            "observation_space['legacy'] is a testenvs.LegacySpace, not a gymnasium.spaces.Space" in message
        )
        assert "was created in the container" in message and "Check the env id" not in message
        assert runner.make("testenvs:EchoEnv").reset(seed=0)[0].shape == (1024,)


# -- make's own timeout, and preloading ---------------------------------------------------------


def test_make_is_bounded_by_make_timeout_not_the_call_timeout(image, test_env_options):
    with remote.RemoteRunner(image, timeout=0.5, **test_env_options) as runner:
        assert runner.make_timeout == runner.options["start_timeout"]  # the default
        assert runner.make("testenvs:make_slowly", seconds=1.5).reset(seed=0)[0].shape == (4,)
    runner = remote.RemoteRunner(image, make_timeout=0.5, **test_env_options)
    with runner, pytest.raises(remote.CallTimeout, match="make_timeout="):
        runner.make("testenvs:make_slowly", seconds=3)


def test_dacbench_is_made_with_a_short_call_timeout(dacbench_image):
    with remote.RemoteRunner(dacbench_image, timeout=2) as runner:
        env = runner.make("FunctionApproximation-v0")  # imports dacbench: seconds
        obs, _ = env.reset(seed=0)
        assert obs.shape == env.observation_space.shape


def test_preload_makes_the_first_make_fast(dacbench_image):
    def make_to_first_reset(**options) -> float:
        with remote.RemoteRunner(dacbench_image, timeout=2, **options) as runner:
            start = time.perf_counter()
            runner.make("FunctionApproximation-v0").reset(seed=0)
            return time.perf_counter() - start

    cold = make_to_first_reset()
    warm = make_to_first_reset(preload=["dacbench"])
    assert warm < 0.5 * cold, f"make to first reset: {warm:.3f} s preloaded, {cold:.3f} s without"


# -- wrappers made in the container -------------------------------------------------------------


@pytest.mark.parametrize("wrappers", [GRAY84, ATARI_PREPROCESSING], ids=["gray84", "AtariPreprocessing"])
def test_server_side_wrappers_equal_the_same_wrappers_in_the_image(envs_image, test_env_options, wrappers):
    assert has_module(envs_image, "cv2"), "envs.sif has no OpenCV: rebuild it from recipes/envs.def"
    steps = 40
    request = {"env_id": "ALE/Breakout-v5", "imports": ["ale_py"], "seed": 0, "steps": steps}
    expected = image_reference(envs_image, {**request, "wrappers": [list(w) for w in wrappers]})
    with remote.make(
        "ALE/Breakout-v5", image=envs_image, wrappers=wrappers, runner_options=test_env_options
    ) as env:
        assert env.observation_space == gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
        obs, _ = env.reset(seed=0)
        assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
        got = rollout(env, 0, steps, expected["actions"])
    assert got["prints"] == expected["prints"]


def test_make_vec_wraps_every_env_in_its_container(envs_image, test_env_options):
    envs = remote.make_vec(
        "ALE/Breakout-v5", 2, image=envs_image, wrappers=GRAY84, runner_options=test_env_options
    )
    try:
        assert envs.single_observation_space.shape == (4, 84, 84)
        assert envs.reset(seed=0)[0].shape == (2, 4, 84, 84)
    finally:
        envs.close()


def test_bad_wrappers_are_refused(image, test_env_options):
    with pytest.raises(TypeError, match="takes a list of wrappers"):
        remote.make("CartPole-v1", image=image, wrappers="gymnasium.wrappers:TimeLimit")
    with remote.RemoteRunner(image, **test_env_options) as runner:
        with pytest.raises(remote.EnvCreationError, match="has no callable 'NoSuchWrapper'"):
            runner.open_env("CartPole-v1", {}, wrappers=["gymnasium.wrappers:NoSuchWrapper"])
        with pytest.raises(remote.EnvCreationError, match="returned a dict, not a gymnasium.Env"):
            runner.open_env("CartPole-v1", {}, wrappers=["testenvs:make_nothing"])
        limit = [("gymnasium.wrappers:TimeLimit", {"max_episode_steps": 2})]
        env = runner.open_env("CartPole-v1", {}, wrappers=limit)
        env.reset(seed=0)
        assert env.step(0)[3] is False and env.step(0)[3] is True
