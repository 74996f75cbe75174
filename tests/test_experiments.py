"""Experiment ids pinned in a lock file; the run log names the image and the versions inside;
two images with conflicting Python stacks side by side."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

import remote
from remote.images.cache import sha256_file
from remote.protocol.ops import PROTOCOL_VERSION

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def cache_root(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("REMOTE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def write_lock(path: Path, **entry) -> None:
    path.write_text(json.dumps({"version": 1, "experiments": {"exp:0.01": entry}}))


def test_pin_then_run_by_experiment_id_logs_image_and_versions(image, tmp_path, monkeypatch, caplog):
    lock = tmp_path / "remote-experiments.json"
    pinned = remote.experiments.pin("exp:0.01", image, path=lock)
    assert pinned.sha256 == sha256_file(Path(image)) and pinned.protocol == PROTOCOL_VERSION
    stored = json.loads(lock.read_text())["experiments"]["exp:0.01"]
    assert stored["sha256"] == pinned.sha256 and stored["image"] == image  # absolute: not beside the lock

    monkeypatch.chdir(tmp_path)  # found as ./remote-experiments.json
    caplog.set_level(logging.INFO, logger="remote")
    with remote.RemoteRunner(experiment="exp:0.01") as runner:
        env = runner.make("CartPole-v1")
        env.reset(seed=0)
        assert runner.image_sha256 == pinned.sha256
        info = runner.info
    (record,) = [r for r in caplog.records if r.name == "remote" and "sha256" in r.getMessage()]
    message = record.getMessage()
    assert pinned.sha256 in message
    for key in ("remote", "gymnasium", "numpy"):
        assert f"{key} {info[key]}" in message


def test_mismatching_digest_is_refused_before_start(image, tmp_path, monkeypatch):
    lock = tmp_path / "pins.json"
    write_lock(lock, image=image, sha256="0" * 64, protocol=PROTOCOL_VERSION)
    monkeypatch.setenv("REMOTE_EXPERIMENTS", str(lock))
    with pytest.raises(remote.ChecksumMismatch, match="0" * 64):
        remote.RemoteRunner(experiment="exp:0.01")
    with pytest.raises(remote.ChecksumMismatch):
        remote.make("CartPole-v1", experiment="exp:0.01")


def test_other_protocol_and_unknown_ids_are_refused(image, tmp_path):
    lock = tmp_path / "pins.json"
    write_lock(lock, image=image, sha256=sha256_file(Path(image)), protocol=PROTOCOL_VERSION + 1)
    with pytest.raises(remote.VersionMismatch, match="protocol"):
        remote.RemoteRunner(experiment="exp:0.01", experiments=lock)
    with pytest.raises(remote.UnknownExperiment, match="exp:9"):
        remote.RemoteRunner(experiment="exp:9", experiments=lock)
    with pytest.raises(remote.UnknownExperiment, match="no experiment"):
        remote.experiments.load("exp:0.01", tmp_path / "absent.json")
    with pytest.raises(ValueError, match="exactly one"):
        remote.RemoteRunner(image, experiment="exp:0.01")


def test_local_image_with_wrong_sha256_argument(image):
    with pytest.raises(remote.ChecksumMismatch):
        remote.resolve_image(image, sha256="f" * 64)
    assert remote.resolve_image(image).sha256 == sha256_file(Path(image))


def test_side_by_side_example_reports_each_images_versions(image, legacy_image):
    """Acceptance 3: numpy 2.x + gymnasium 1.x and numpy 1.26 + gymnasium 0.29 in one host process."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "side_by_side.py"), image, legacy_image],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{os.path.realpath(image)}: numpy 2.") and ", gymnasium 1." in lines[0]
    assert (
        lines[1].startswith(f"{os.path.realpath(legacy_image)}: numpy 1.26.")
        and ", gymnasium 0.29.1," in lines[1]
    )
    assert all("100 steps" in line for line in lines)
