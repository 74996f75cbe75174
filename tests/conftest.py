"""Shared fixtures. Tests that need Apptainer and the test images skip on a machine
without them, and fail instead when CI=true: in CI they must run."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IMAGES = Path(os.environ.get("REMOTE_TEST_IMAGES", ROOT / ".images"))
TEST_ENVS = Path(__file__).resolve().parent / "envs"
IN_CI = os.environ.get("CI", "").lower() == "true"


def _need(what: str, ok: bool) -> None:
    if ok:
        return
    message = f"{what} is missing (run scripts/build-test-images.sh; see README)"
    if IN_CI:
        pytest.fail(f"CI=true: {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def apptainer() -> str:
    found = shutil.which("apptainer") or shutil.which("singularity")
    _need("Apptainer", found is not None)
    return found


@pytest.fixture(scope="session")
def image(apptainer: str) -> str:
    """The test image: Python + numpy + gymnasium + Pyro5 + msgpack + remote."""
    path = IMAGES / "gymnasium.sif"
    _need(f"test image {path}", path.exists())
    return str(path)


@pytest.fixture(scope="session")
def minimal_image(apptainer: str) -> str:
    """An image with only Python, numpy and gymnasium: no Pyro5, msgpack or remote."""
    path = IMAGES / "minimal.sif"
    _need(f"test image {path}", path.exists())
    return str(path)


@pytest.fixture(scope="session")
def legacy_image(apptainer: str) -> str:
    """numpy 1.26 + gymnasium 0.29.1 (recipes/legacy.def): cannot coexist with ``image``'s stack."""
    path = IMAGES / "legacy.sif"
    _need(f"test image {path}", path.exists())
    return str(path)


@pytest.fixture(scope="session")
def test_env_options() -> dict:
    """RemoteRunner options that make tests/envs importable inside the container."""
    return {"binds": [f"{TEST_ENVS}:/opt/testenvs:ro"], "env": {"PYTHONPATH": "/opt/testenvs"}}
