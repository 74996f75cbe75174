"""The field's real environments as drop-ins, with none of their packages on the host.

Each env comes from an image without remote in it (recipes/envs.def: ale-py, minigrid,
Box2D, MuJoCo; recipes/dacbench.def: DACBench) and is made by its id as its docs type it.
The reference is the same env stepped by the image's own Python, without remote
(tests/envs/reference.py): the remote env replays the reference's actions and must give
bit-identical results (values, dtypes, types, flags, infos, resets, render frames).
Checks per env: gymnasium's check_env (its render check included where the env renders,
and its close check, which makes a second env through ``env.spec``) says of the remote env
what it says of the local one, the trajectory, ``remote check`` (every contract), and
make_vec against a SyncVectorEnv in the image.

DACBench's envs break their own observation spaces (a reset observation outside the Box),
in the image's own Python too: check_env fails there as it does remotely, and ``remote
check`` reports the contracts that need observations inside the space as broken (and, for
FunctionApproximation, whose every reset moves on to its next instance, seeding).
"""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass, field
from typing import Any

import pytest
from envs.reference import fingerprint, from_json, rollout, vector_rollout
from gymnasium.utils.env_checker import check_env
from helpers import image_reference

import remote


@dataclass(frozen=True)
class Case:
    env_id: str
    image: str  # the .sif in the test images folder
    imports: tuple[str, ...] = ()  # what the reference imports (the package that registers the id)
    kwargs: dict[str, Any] = field(default_factory=dict)
    steps: int = 60
    #: contracts of `remote check` the env itself breaks (shown by check_env in the image)
    broken: tuple[str, ...] = ()
    #: gymnasium's render check opens every render mode the env lists; MuJoCo's "human"
    #: needs a screen (GLFW aborts the process without one, in the image's own Python too)
    render_check: bool = True

    def __str__(self) -> str:
        return self.env_id


RGB = {"render_mode": "rgb_array"}
OUTSIDE_ITS_SPACE = ("spaces round-trip", "step contract", "gymnasium check_env")
CASES = [
    Case("ALE/Breakout-v5", "envs.sif", ("ale_py",), RGB),
    Case("ALE/Pong-v5", "envs.sif", ("ale_py",)),
    Case("MiniGrid-DoorKey-5x5-v0", "envs.sif", ("minigrid",), RGB),
    Case("MiniGrid-GoToDoor-5x5-v0", "envs.sif", ("minigrid",)),  # its mission text varies
    Case("LunarLander-v3", "envs.sif", (), RGB),
    Case("BipedalWalker-v3", "envs.sif"),
    Case("CarRacing-v3", "envs.sif", (), RGB, steps=30),
    Case("Hopper-v5", "envs.sif", (), RGB, render_check=False),
    Case("HalfCheetah-v5", "envs.sif"),
    Case("FrozenLake-v1", "envs.sif", (), RGB),
    # a reset moves on to its next instance, seed or not (locally too)
    Case(
        "FunctionApproximation-v0",
        "dacbench.sif",
        ("dacbench",),
        broken=(*OUTSIDE_ITS_SPACE, "seeding determinism"),
    ),
    Case("Luby-v0", "dacbench.sif", ("dacbench",), broken=OUTSIDE_ITS_SPACE),
]
#: The host must not have what the envs need: that is the user's situation.
ENV_PACKAGES = ["ale_py", "minigrid", "Box2D", "mujoco", "dacbench"]

_references: dict[tuple[str, str], dict[str, Any]] = {}


@pytest.fixture
def image(request: pytest.FixtureRequest, case: Case) -> str:
    """The case's image (the envs_image or dacbench_image fixture)."""
    return request.getfixturevalue(case.image.removesuffix(".sif") + "_image")


def reference(case: Case, image: str, what: str = "rollout") -> dict[str, Any]:
    """The case stepped (``"rollout"``, ``"vector"``) or checked (``"check_env"``) by the
    image's own Python, without remote; cached per session."""
    key = (case.env_id, what)
    if key not in _references:
        request = {
            "env_id": case.env_id,
            "imports": list(case.imports),
            "kwargs": {} if what == "vector" else case.kwargs,
            "seed": 0,
            "steps": 20 if what == "vector" else case.steps,
            "vector": 3 if what == "vector" else 0,
            "check_env": what == "check_env",
            "render_check": case.render_check,
        }
        _references[key] = image_reference(image, request)
    return _references[key]


def test_the_host_has_none_of_the_envs_packages():
    assert [p for p in ENV_PACKAGES if importlib.util.find_spec(p) is not None] == []


@pytest.mark.parametrize("case", CASES, ids=str)
def test_trajectory_equals_the_images_own_python(image, case):
    expected = reference(case, image)
    with remote.make(case.env_id, image=image, **case.kwargs) as env:
        got = rollout(env, 0, case.steps, expected["actions"])
    first_difference = next(
        (i for i, (a, b) in enumerate(zip(got["prints"], expected["prints"], strict=False)) if a != b), None
    )
    assert first_difference is None, f"result {first_difference} differs from the local env's"
    assert len(got["prints"]) == len(expected["prints"])  # the same resets
    assert got["render"] == expected["render"]  # frames bit-identical (None: does not render)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_gymnasium_check_env_says_what_it_says_locally(image, case):
    local = reference(case, image, "check_env")["check_env"]
    assert (local == "passed") == (not case.broken), f"locally, check_env says {local}"
    with remote.make(case.env_id, image=image, **case.kwargs) as env, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert env.spec is not None and env.spec.id == case.env_id
        try:
            check_env(env, skip_render_check=env.render_mode is None or not case.render_check)
            said = "passed"
        except Exception as exc:
            said = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    assert said == local


@pytest.mark.parametrize("case", CASES, ids=str)
def test_remote_check_holds_every_contract_the_env_keeps(image, case):
    results = remote.check_image(image, case.env_id, case.kwargs)
    assert len(results) == 7, results
    assert sorted(r.name for r in results if not r.passed) == sorted(case.broken), results


@pytest.mark.parametrize("case", CASES, ids=str)
def test_make_vec_equals_a_sync_vector_env(image, case):
    expected = reference(case, image, "vector")
    envs = remote.make_vec(case.env_id, 3, image=image, envs_per_container=2)
    try:
        got = vector_rollout(envs, 0, len(expected["actions"]), expected["actions"])
    finally:
        envs.close()
    assert got["prints"] == expected["prints"]


def test_the_fingerprints_tell_apart_what_differs():
    """The fingerprints can fail: one bit, one dtype or one type changed is another print."""
    import numpy as np

    base = {"obs": np.zeros(3, np.float32), "r": 1.0, "flag": True}
    prints = {
        fingerprint(base),
        fingerprint({**base, "obs": np.zeros(3, np.float64)}),
        fingerprint({**base, "r": 1}),
        fingerprint({**base, "obs": np.array([0, 0, 1e-45], np.float32)}),
        fingerprint({**base, "flag": np.bool_(True)}),
    }
    assert len(prints) == 5
    assert (
        from_json({"np": "<i8", "v": 3}) == np.int64(3) and type(from_json({"np": "<i8", "v": 3})) is np.int64
    )


def test_minigrid_image_observations_with_its_own_wrapper(envs_image):
    """MiniGrid's ImgObsWrapper (minigrid.wrappers, not on the host) made in the container:
    image observations, bit-identical to the same wrapper on the local env."""
    wrappers = [["minigrid.wrappers:ImgObsWrapper", {}]]
    case = Case("MiniGrid-DoorKey-5x5-v0", "envs.sif", ("minigrid",))
    request = {"env_id": case.env_id, "imports": ["minigrid"], "seed": 3, "steps": 40, "wrappers": wrappers}
    expected = image_reference(envs_image, request)
    with remote.make(case.env_id, image=envs_image, wrappers=[tuple(w) for w in wrappers]) as env:
        assert env.observation_space.shape == (7, 7, 3) and env.observation_space.dtype.name == "uint8"
        got = rollout(env, 3, 40, expected["actions"])
    assert got["prints"] == expected["prints"]
