"""SB3 PPO (CnnPolicy) on a remote Breakout preprocessed in its container learns exactly as on
the same env and wrappers made locally.

The host has no ale-py, so "locally" is the image's own Python: gymnasium makes the env and
the wrappers there, without remote, and SB3 trains on it there too. The image has no torch or
SB3; its Python is 3.11 like the host venv's, so the venv's site-packages is bound into the
container read-only and appended to ``sys.path`` *after* the image's own dist-packages: the
image's numpy, gymnasium, ale-py and OpenCV make the trajectories (the test checks which copies
were imported), and only torch and SB3 (pure Python over torch) come from the venv. Both sides
run the same function, :func:`train` (the container gets its source), with the same seed.

SB3's AtariWrapper applied on the host to a remote Breakout is in tests/test_host_fidelity.py.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sysconfig
import textwrap
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import remote

pytest.importorskip("stable_baselines3", reason="scripts/setup.sh installs stable-baselines3")
pytest.importorskip("cv2", reason="scripts/setup.sh installs opencv-python-headless")

#: The host venv's site-packages (torch and SB3 for the container's reference run).
SITE = sysconfig.get_paths()["purelib"]
ENV_ID = "ALE/Breakout-v5"
#: As gymnasium's AtariPreprocessing documents: a base env of frameskip=1, its own skip of 4.
ENV_KWARGS = {"frameskip": 1}
WRAPPERS = [
    ("gymnasium.wrappers:AtariPreprocessing", {"frame_skip": 4}),
    ("gymnasium.wrappers:FrameStackObservation", {"stack_size": 4}),
]
SEED = 0
STEPS = 2048

#: What the image's Python runs: the env and wrappers made by gymnasium, then :func:`train`.
REFERENCE = """from __future__ import annotations
import importlib, json, sys
sys.path.append({site!r})  # after the image's dist-packages: its numpy, gymnasium, ale-py, cv2 win
import ale_py, cv2, gymnasium, numpy, stable_baselines3, torch

{train}

env = gymnasium.make({env_id!r}, **{env_kwargs!r})
for entry_point, kwargs in {wrappers!r}:
    module, _, name = entry_point.partition(":")
    env = getattr(importlib.import_module(module), name)(env, **kwargs)
result = train(env, {seed!r}, {steps!r})
env.close()
result["modules"] = {{m.__name__: [m.__version__, m.__file__] for m in (numpy, gymnasium, ale_py, cv2, torch,
                                                                      stable_baselines3)}}
print(json.dumps(result))
"""


def train(env: Any, seed: int, steps: int) -> dict[str, Any]:
    """PPO CnnPolicy on ``env`` for ``steps`` steps: the episodes it saw, a digest of every
    rollout (observations, actions, rewards, episode starts, values, log-probs, returns) and
    of the final policy parameters. Self-contained: the container runs this source."""
    import hashlib

    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback

    def digest(*arrays: Any) -> str:
        out = hashlib.sha256()
        for array in arrays:
            out.update(f"{array.dtype.str}{array.shape}".encode())
            out.update(array.tobytes())
        return out.hexdigest()[:16]

    class Rollouts(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.digests: list[str] = []

        def _on_step(self) -> bool:
            return True

        def _on_rollout_end(self) -> None:
            b = self.model.rollout_buffer
            fields = (b.observations, b.actions, b.rewards, b.episode_starts, b.values, b.log_probs)
            self.digests.append(digest(*fields, b.returns))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = PPO("CnnPolicy", env, n_steps=256, batch_size=64, n_epochs=2, seed=seed, device="cpu")
        rollouts = Rollouts()
        model.learn(total_timesteps=steps, callback=rollouts)
    finally:
        torch.set_num_threads(threads)
    parameters = hashlib.sha256()
    tensors = {}
    for name, tensor in model.policy.state_dict().items():
        data = tensor.detach().cpu().contiguous().numpy()
        parameters.update(name.encode())
        parameters.update(data.tobytes())
        tensors[name] = digest(data)
    return {
        "timesteps": model.num_timesteps,
        "episodes": [[float(info["r"]), int(info["l"])] for info in model.ep_info_buffer],
        "rollouts": rollouts.digests,
        "parameters": parameters.hexdigest(),
        "tensors": tensors,
    }


def reference_in_the_image(image: str) -> subprocess.Popen:
    """:data:`REFERENCE` started in ``image`` (read its JSON from stdout when it ends)."""
    script = REFERENCE.format(
        site=SITE,
        train=textwrap.dedent(inspect.getsource(train)),
        env_id=ENV_ID,
        env_kwargs=ENV_KWARGS,
        wrappers=[list(w) for w in WRAPPERS],
        seed=SEED,
        steps=STEPS,
    )
    return subprocess.Popen(
        ["apptainer", "exec", "--cleanenv", "--bind", f"{SITE}:{SITE}:ro", image]
        + ["python3", "-W", "ignore", "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_ppo_cnn_policy_on_server_side_preprocessing_learns_as_the_same_wrappers_locally(envs_image):
    local = reference_in_the_image(envs_image)  # runs alongside the remote run (2 CPUs)
    try:
        with remote.make(ENV_ID, image=envs_image, wrappers=WRAPPERS, **ENV_KWARGS) as env:
            assert env.observation_space == gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
            got = train(env, SEED, STEPS)
            assert env.steps >= STEPS  # the frames came from the container
        out, err = local.communicate(timeout=240)
    finally:
        local.kill()
        local.wait()
    assert local.returncode == 0, err[-3000:]
    expected = json.loads(out.strip().splitlines()[-1])

    modules = expected.pop("modules")
    print("the reference's modules:", json.dumps(modules, indent=1))
    image_own = "/usr/local/lib/python3.11/dist-packages/"
    for name in ("numpy", "gymnasium", "ale_py", "cv2"):  # the trajectories are the image's
        assert modules[name][1].startswith(image_own), modules[name]
    for name in ("torch", "stable_baselines3"):
        assert modules[name][1].startswith(SITE + "/"), modules[name]

    print(f"episodes (return, length): {got['episodes']}")
    assert got["timesteps"] == expected["timesteps"] == STEPS
    assert len(expected["episodes"]) >= 3, expected["episodes"]  # the comparison covers episodes
    assert got["episodes"] == expected["episodes"]
    assert got["rollouts"] == expected["rollouts"]
    differing = [name for name, d in got["tensors"].items() if expected["tensors"].get(name) != d]
    assert got["parameters"] == expected["parameters"], f"parameters differ: {differing}"
