"""What host-side code asks of an env beyond reset/step works on a remote one, with none of the
env's packages on the host: a spec that makes the env again (gymnasium's check_env, its render
and close checks), the env's own attributes and methods (``get_action_meanings()``,
``unwrapped.ale.lives()``, ``call``), its generator (``np_random``, drawn in the container),
SB3's AtariWrapper and PPO on top of all that, forks that leave the container to its host, and
the env's own TypeError reported as the env's.
"""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
import types
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from helpers import alive, wait_gone

import remote
from remote.client import RemoteAttribute
from remote.protocol import codec
from remote.protocol.ops import CALL_CALLABLE, CALL_OBJECT, CALL_VALUE, OK
from remote.server import attributes

BREAKOUT = "ale_py:ALE/Breakout-v5"


def apptainer_python(image: str, script: str) -> object:
    """What ``script`` prints last, as JSON, run by the image's own Python (no remote in it)."""
    done = subprocess.run(
        ["apptainer", "exec", "--cleanenv", image, "python3", "-W", "ignore", "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def breakout(envs_image):
    with remote.make(BREAKOUT, image=envs_image) as env:
        yield env


def test_the_host_has_none_of_the_envs_packages():
    assert [m for m in ("ale_py", "Box2D", "mujoco", "minigrid") if importlib.util.find_spec(m)] == []


# -- a spec that makes the env again -------------------------------------------------------------


def test_check_env_on_lunar_lander_with_its_render_check(envs_image):
    """The render check makes a new env per render mode through env.spec, the close check one
    more: each a remote env (Box2D is not on the host)."""
    with remote.make("LunarLander-v3", image=envs_image, render_mode="rgb_array") as env:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            check_env(env)
        assert env.spec.id == "LunarLander-v3" and env.spec.reward_threshold == 200


def test_check_env_on_hopper(envs_image):
    """MuJoCo is not on the host either (where it would abort, not raise)."""
    with remote.make("Hopper-v5", image=envs_image) as env:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            check_env(env, skip_render_check=True)  # its human mode needs a window
        assert env.spec.id == "Hopper-v5" and env.spec.max_episode_steps == 1000


def test_spec_make_gives_a_new_remote_env_with_the_same_kwargs(envs_image):
    with remote.make("LunarLander-v3", image=envs_image, continuous=True) as env:
        spec = env.spec
        assert spec.entry_point == "remote.registration:make_registered"
        assert spec.kwargs["continuous"] is True and spec.kwargs["image"] == env.runner.image
        assert spec.kwargs["runner_options"]["sha256"] == env.runner.image_sha256  # the same image
        again = spec.make(render_mode="rgb_array")
        try:
            inner = again.unwrapped
            assert isinstance(inner, remote.RemoteEnvironmentClient) and inner.runner is not env.runner
            assert inner.kwargs == {"continuous": True, "render_mode": "rgb_array"}
            assert isinstance(again.action_space, gym.spaces.Box)  # continuous: the kwarg arrived
            again.reset(seed=0)
            assert again.step(again.action_space.sample())[0].shape == (8,)
            assert again.render().shape == (400, 600, 3)
            runner = inner.runner
        finally:
            again.close()
        assert runner.closed and not runner.alive, "closing the new env stops its container"


def test_gymnasium_make_of_the_spec_ends_episodes_as_a_local_env(image):
    """gymnasium.make(spec) adds a TimeLimit on the host around the container's own: both of
    the same limit, so episodes end where a local env's do; make's own limit shortens them."""
    with remote.make("CartPole-v1", image=image, max_episode_steps=7) as env:
        assert env.spec.max_episode_steps == 7
        for limit in (None, 4):
            remote_env = gym.make(env.spec, max_episode_steps=limit)
            local_env = gym.make("CartPole-v1", max_episode_steps=limit or 7)
            try:
                results = []
                for e in (remote_env, local_env):
                    e.reset(seed=3)
                    steps = [e.step(t % 2)[1:4] for t in range(limit or 7)]
                    results.append(steps)
                assert results[0] == results[1]
                assert results[0][-1][2] is True and not any(s[2] for s in results[0][:-1])
            finally:
                remote_env.close()
                local_env.close()


# -- the env's attributes and methods ------------------------------------------------------------


def test_methods_and_attributes_of_the_env_in_the_container(breakout):
    env = breakout
    env.reset(seed=0)
    assert env.unwrapped.get_action_meanings() == ["NOOP", "FIRE", "RIGHT", "LEFT"]
    assert env.get_wrapper_attr("get_action_meanings")() == ["NOOP", "FIRE", "RIGHT", "LEFT"]
    assert env.unwrapped.ale.lives() == 5
    assert env.unwrapped._frameskip == 4  # what gymnasium's AtariPreprocessing reads
    assert env.call("ale.lives") == 5 and env.call("get_action_meanings")[1] == "FIRE"
    assert env.call("_frameskip") == 4  # not callable: its value
    screen = env.call("ale.getScreenRGB")
    assert screen.dtype == np.uint8 and screen.shape == (210, 160, 3)
    assert isinstance(env.unwrapped.ale, RemoteAttribute)
    assert hasattr(env, "ale") and not hasattr(env, "no_such_attribute")
    with pytest.raises(AttributeError) as missing:
        _ = env.unwrapped.no_such_attribute
    assert isinstance(missing.value, remote.RemoteEnvError) and "no_such_attribute" in str(missing.value)


def test_what_cannot_be_reached_or_cannot_travel(breakout):
    env = breakout
    with pytest.raises(AttributeError):
        _ = env.__no_such_dunder__  # never asked remotely
    for path in ("__class__", "ale.__class__", "reset.__globals__", "_AtariEnv__x"):
        with pytest.raises(remote.RemoteEnvError, match="cannot be reached") as refused:
            env.call(path)
        assert isinstance(refused.value, AttributeError)
    with pytest.raises(TypeError, match="cannot travel") as caught:
        env.call("unwrapped.ale.cloneState")  # returns an ALEState: an object, not data
    assert isinstance(caught.value, remote.RemoteEnvError)
    with pytest.raises(TypeError, match="cannot be sent"):
        env.call("ale.lives", object())
    assert env.unwrapped.ale.lives() == 5  # all of that left the env usable


def test_attribute_calls_of_the_server_side():
    """The server's half, on a local env: values, objects and callables; modules refused."""

    class Holder(gym.Env):
        observation_space = action_space = gym.spaces.Discrete(2)

        def __init__(self) -> None:
            self.os = os
            self.inner = types.SimpleNamespace(value=3, numbers=np.arange(3), tools=os.path)

        def double(self, x, *, times=2):
            return x * times

    env = gym.wrappers.TimeLimit(Holder(), 10)

    def ask(path, *call):
        return codec.loads(attributes.call(env, path, codec.dumps(list(call)) if call else None))

    assert ask("double", [4], {"times": 3}) == [OK, [CALL_VALUE, 12]]
    assert ask("_max_episode_steps") == [OK, [CALL_VALUE, 10]]  # found on the wrapper
    assert ask("inner.value") == [OK, [CALL_VALUE, 3]]
    assert ask("inner") == [OK, [CALL_OBJECT, "SimpleNamespace"]]
    assert ask("double") == [OK, [CALL_CALLABLE, "method"]]
    assert ask("inner.numbers")[1][1].tolist() == [0, 1, 2]
    for path in ("os", "os.system", "inner.tools.join"):
        status, error = ask(path)
        assert status != OK and "module" in error["message"], path


def test_np_random_draws_in_the_container_as_the_images_own_python_does(breakout, envs_image):
    expected = apptainer_python(
        envs_image,
        textwrap.dedent("""
            import json, ale_py, gymnasium as gym
            env = gym.make("ALE/Breakout-v5")
            env.reset(seed=0)
            rng = env.unwrapped.np_random
            draws = [int(rng.integers(1, 31)), float(rng.random()), int(rng.choice(4))]
            env.step(0)
            draws.append(int(rng.integers(1, 31)))
            print(json.dumps(draws))
        """),
    )
    env = breakout
    env.reset(seed=0)
    rng = env.unwrapped.np_random
    draws = [int(rng.integers(1, 31)), float(rng.random()), int(rng.choice(4))]
    env.step(0)
    draws.append(int(rng.integers(1, 31)))
    assert draws == expected
    assert env.np_random_seed == apptainer_python(
        envs_image,
        'import ale_py, gymnasium as gym; e = gym.make("ALE/Breakout-v5"); e.reset(seed=0); '
        "print(e.unwrapped.np_random_seed)",
    )
    with pytest.raises(remote.RemoteError, match="reset"):
        env.unwrapped.np_random = np.random.default_rng(0)


# -- SB3 on a remote Atari env -------------------------------------------------------------------


@pytest.mark.slow
def test_sb3_atari_wrapper_and_ppo_cnn_policy(envs_image):
    sb3 = pytest.importorskip("stable_baselines3", reason="scripts/setup.sh installs stable-baselines3")
    pytest.importorskip("cv2", reason="scripts/setup.sh installs opencv-python-headless")
    from stable_baselines3.common.atari_wrappers import AtariWrapper

    env = remote.make(BREAKOUT, image=envs_image)
    try:
        wrapped = AtariWrapper(env)  # NoopReset, MaxAndSkip, EpisodicLife, FireReset, WarpFrame
        obs, _ = wrapped.reset(seed=0)
        assert obs.shape == (84, 84, 1) and obs.dtype == np.uint8
        model = sb3.PPO(
            "CnnPolicy", wrapped, n_steps=128, batch_size=64, n_epochs=1, seed=0, device="cpu", verbose=0
        )
        model.learn(total_timesteps=256)
        assert model.num_timesteps >= 256
        assert env.steps >= 256  # the frames really came from the container
    finally:
        env.close()


# -- forks ---------------------------------------------------------------------------------------


def _timed_close(env) -> float:
    started = time.monotonic()
    env.close()
    return time.monotonic() - started


def test_close_is_fast_while_forked_workers_live(image):
    """AsyncVectorEnv's workers (forked) once kept the container's stdin open: close() waited
    5 s for them, then killed the container."""
    alone = _timed_close(remote.make("CartPole-v1", image=image))
    env = remote.make("CartPole-v1", image=image)
    env.reset(seed=0)
    workers = gym.vector.AsyncVectorEnv([lambda: gym.make("CartPole-v1")] * 2, context="fork")
    try:
        workers.reset(seed=0)
        with_workers = _timed_close(env)
    finally:
        workers.close()
    env = remote.make("CartPole-v1", image=image)
    gym.vector.AsyncVectorEnv([lambda: gym.make("CartPole-v1")] * 2, context="fork").close()
    after_workers = _timed_close(env)
    print(f"close(): {alone * 1e3:.0f} ms alone, {with_workers * 1e3:.0f} ms with forked workers alive")
    assert with_workers <= max(0.1, 3 * alone) and after_workers <= max(0.1, 3 * alone)


def _use_the_parents_env(env, report) -> None:
    """A forked child: the parent's env is not its to use, nor to close."""
    try:
        env.step(0)
        report.put("stepped")
    except remote.RemoteError as exc:
        report.put(str(exc))
    env.close()


def test_a_forked_child_can_neither_use_nor_stop_the_parents_env(image):
    env = remote.make("CartPole-v1", image=image)
    try:
        env.reset(seed=0)
        context = multiprocessing.get_context("fork")
        report = context.Queue()
        child = context.Process(target=_use_the_parents_env, args=(env, report))
        child.start()
        child.join(30)
        assert "forked from" in report.get(timeout=5)
        assert env.runner.alive and env.step(0)[1] == 1.0  # the parent's stream is intact
        assert env.unwrapped.x_threshold == 2.4  # and its control connection
    finally:
        env.close()


HOST_WITH_FORKED_CHILDREN = """
import json, multiprocessing, sys, time, remote
sys.path.insert(0, {tests!r})
from helpers import children, server_pid
env = remote.make("CartPole-v1", image={image!r})
env.reset(seed=0)
runner = env.unwrapped.runner
server = server_pid(runner)
pids = [runner.pid, server, *children(runner.pid), *children(server)]
context = multiprocessing.get_context("fork")
forked = [context.Process(target=time.sleep, args=(120,)) for _ in range(2)]
for process in forked:
    process.start()
state = {{"pids": pids, "forked": [p.pid for p in forked], "run_dir": str(runner.run_dir)}}
print(json.dumps(state), flush=True)
time.sleep(120)
"""


def test_kill_9_of_a_host_with_live_forked_children_leaves_no_container(image):
    script = HOST_WITH_FORKED_CHILDREN.format(tests=str(Path(__file__).parent), image=image)
    host = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    forked: list[int] = []
    try:
        state = json.loads(host.stdout.readline())
        forked = state["forked"]
        assert all(alive(pid) for pid in state["pids"] + forked)
        host.kill()
        host.wait()
        assert all(alive(pid) for pid in forked), "the forked children outlive their host"
        assert wait_gone(state["pids"]) == [], "the container outlived its host"
        deadline = time.monotonic() + 5
        while Path(state["run_dir"]).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(state["run_dir"]).exists(), "sockets left behind"
    finally:
        host.kill()
        for pid in forked:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


# -- the env's own TypeError ---------------------------------------------------------------------


def test_the_envs_own_type_error_is_not_an_invalid_action(image, test_env_options):
    with remote.RemoteRunner(image, **test_env_options) as runner:
        env = runner.make("testenvs:TypeErrorEnv")
        env.reset(seed=0)
        with pytest.raises(TypeError) as caught:
            env.step(0)
        error = caught.value
        assert isinstance(error, remote.RemoteEnvError) and not isinstance(error, remote.InvalidAction)
        assert "unsupported operand" in str(error) and "cannot be sent" not in str(error)
        assert "testenvs.py" in error.remote_traceback
        with pytest.raises(remote.InvalidAction, match="action cannot be sent"):
            env.step(object())  # a TypeError of the codec: that one is about the action
        assert env.reset(seed=0)[0].shape == (1,)  # the env is still usable
