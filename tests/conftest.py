"""Shared fixtures. Tests that need Apptainer and the test images skip on a machine
without them, and fail instead when CI=true: in CI they must run.

``runtime`` parametrises a test over every runtime. ``apptainer`` and ``process`` must run
in CI; ``podman`` and ``docker`` are skipped, with the reason, where they cannot run, unless
named in ``$REMOTE_TEST_REQUIRE`` (comma-separated; .ci/run requires podman)."""

from __future__ import annotations

import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import remote
from remote.runtime import get_runtime

ROOT = Path(__file__).resolve().parent.parent
IMAGES = Path(os.environ.get("REMOTE_TEST_IMAGES", ROOT / ".images"))
TEST_ENVS = Path(__file__).resolve().parent / "envs"
IN_CI = os.environ.get("CI", "").lower() == "true"
#: Virtual environments for the process runtime (scripts/setup.sh makes them).
VENVS = Path(os.environ.get("REMOTE_TEST_VENVS", ROOT / ".venvs"))
#: The OCI test image for podman/docker (scripts/build-oci-image.sh).
OCI_IMAGE = "remote-test:latest"
RUNTIMES = ["apptainer", "process", "podman", "docker"]
REQUIRED = {"apptainer", "process", *filter(None, os.environ.get("REMOTE_TEST_REQUIRE", "").split(","))}


def _need(what: str, ok: bool) -> None:
    if ok:
        return
    message = f"{what} is missing (run scripts/build-test-images.sh; see README)"
    if IN_CI:
        pytest.fail(f"CI=true: {message}", pytrace=False)
    pytest.skip(reason=message)


@pytest.fixture(scope="session")
def apptainer() -> str:
    found = shutil.which("apptainer") or shutil.which("singularity")
    _need("Apptainer", found is not None)
    return found


def _test_image(name: str) -> str:
    """Path of a test image in ``IMAGES`` (built by scripts/build-test-images.sh)."""
    path = IMAGES / name
    _need(f"test image {path}", path.exists())
    return str(path)


@pytest.fixture(scope="session")
def image(apptainer: str) -> str:
    """The test image: Python + numpy + gymnasium + Pyro5 + msgpack + remote."""
    return _test_image("gymnasium.sif")


@pytest.fixture(scope="session")
def minimal_image(apptainer: str) -> str:
    """An image with only Python, numpy and gymnasium: no Pyro5, msgpack or remote."""
    return _test_image("minimal.sif")


@pytest.fixture(scope="session")
def legacy_image(apptainer: str) -> str:
    """numpy 1.26 + gymnasium 0.29.1 (recipes/legacy.def): cannot coexist with ``image``'s stack."""
    return _test_image("legacy.sif")


@pytest.fixture(scope="session")
def python313_image(apptainer: str) -> str:
    """Debian 13's Python 3.13, not the host's (recipes/python313.def): numpy + gymnasium only."""
    return _test_image("python313.sif")


@pytest.fixture(scope="session")
def envs_image(apptainer: str) -> str:
    """The field's real envs (recipes/envs.def): ale-py, minigrid, Box2D, MuJoCo; no remote."""
    return _test_image("envs.sif")


@pytest.fixture(scope="session")
def dacbench_image(apptainer: str) -> str:
    """DACBench and its dependencies (recipes/dacbench.def); no remote."""
    return _test_image("dacbench.sif")


@pytest.fixture(scope="session")
def test_env_options() -> dict:
    """RemoteRunner options that make tests/envs importable by the server (at the same
    path as on the host, which every runtime, the process runtime too, can do)."""
    return {"binds": [f"{TEST_ENVS}:{TEST_ENVS}:ro"], "env": {"PYTHONPATH": str(TEST_ENVS)}}


@dataclass(frozen=True)
class Target:
    """A runtime and the test image it runs."""

    runtime: str
    image: str

    def runner(self, **options: Any) -> remote.RemoteRunner:
        return remote.RemoteRunner(self.image, runtime=self.runtime, **options)

    def make(self, env_id: str, **kwargs: Any) -> remote.RemoteEnvironmentClient:
        return remote.make(env_id, image=self.image, runtime=self.runtime, **kwargs)


TEST_IMAGES = {
    "apptainer": str(IMAGES / "gymnasium.sif"),
    "process": str(VENVS / "envA" / "bin" / "python"),
    "podman": OCI_IMAGE,
    "docker": OCI_IMAGE,
}


@pytest.fixture(scope="session", params=RUNTIMES)
def runtime(request) -> Target:
    """Each runtime with its test image; see the module docstring for when one is skipped."""
    name = request.param
    try:
        image = get_runtime(name).resolve_image(TEST_IMAGES[name]).path
    except remote.RemoteError as exc:
        reason = f"{name} runtime not available: {exc}"
        if isinstance(exc, remote.ImageNotFound):
            reason += " (scripts/setup.sh prepares the test images)"
        if name in REQUIRED and IN_CI:
            pytest.fail(f"CI=true: {reason}", pytrace=False)
        pytest.skip(reason=reason)
    return Target(name, image)


@pytest.fixture(autouse=True)
def _sb3_logs_in_tmp_path(tmp_path, monkeypatch) -> None:
    """SB3's learn() makes a log folder in /tmp unless told where (SB3_LOGDIR): the tests
    leave nothing behind."""
    monkeypatch.setenv("SB3_LOGDIR", str(tmp_path / "sb3-logs"))


# A background job without job control starts with SIGINT ignored, and Python then leaves it
# so: the tests that press Ctrl-C (os.kill(pid, SIGINT)) need Python's own handler.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
