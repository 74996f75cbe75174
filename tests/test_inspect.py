"""`remote inspect` and `remote shell` against real containers: what an image has, seen from
inside it, and a shell that sees what the server sees."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest
from helpers import cli

import remote
from remote.images.inspect import shell_command
from remote.images.payload import payload_dir

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def envs_report(envs_image) -> dict:
    done = cli("inspect", envs_image, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _group(report: dict, package: str) -> dict:
    (group,) = [g for g in report["packages"] if g["package"] == package]
    return group


# -- inspect -------------------------------------------------------------------------------------


def test_inspect_lists_the_ids_each_package_registers(envs_report, envs_image):
    assert "ALE/Breakout-v5" in _group(envs_report, "ale_py")["ids"]  # only once ale_py is imported
    assert "MiniGrid-DoorKey-5x5-v0" in _group(envs_report, "minigrid")["ids"]
    assert "LunarLander-v3" in _group(envs_report, "gymnasium")["ids"]
    assert not _group(envs_report, "gymnasium")["imported"] and _group(envs_report, "ale_py")["imported"]
    assert {"ALE/Breakout-v5", "LunarLander-v3"} <= set(envs_report["ids"])
    assert "dacbench" in envs_report["absent"]  # a well-known package the image lacks
    assert envs_report["python"].startswith("3.11.")
    assert envs_report["codec"] == "compiled"
    assert envs_report["numpy"] and envs_report["gymnasium"] and envs_report["server_error"] is None
    assert envs_report["sha256"] == hashlib.sha256(Path(envs_image).read_bytes()).hexdigest()
    assert envs_report["size"] == os.path.getsize(envs_image)
    assert isinstance(envs_report["labels"], dict)


def test_inspect_image_in_python(dacbench_image):
    report = remote.inspect_image(dacbench_image)
    assert isinstance(report, remote.ImageReport)
    assert "FunctionApproximation-v0" in report.ids_of("dacbench")
    assert "FunctionApproximation-v0" in report.ids and "CartPole-v1" in report.ids_of("gymnasium")


def test_inspect_prints_a_header_and_the_ids_by_package(envs_image, envs_report):
    done = cli("inspect", envs_image)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for name in ("sha256", "size", "python", "numpy", "gymnasium", "codec"):
        assert any(line.split()[:1] == [name] for line in lines), name
    assert f"sha256     {envs_report['sha256']}" in lines
    assert any(line.startswith("codec") and "compiled" in line for line in lines)
    for package in ("gymnasium", "ale_py", "minigrid"):
        count = len(_group(envs_report, package)["ids"])
        assert any(line.startswith(f"{package} ") and f"({count} ids" in line for line in lines), package
    ale = _group(envs_report, "ale_py")["ids"]
    assert "--ids lists all" in done.stdout and not all(i in done.stdout.split() for i in ale)  # 3 lines
    every = cli("inspect", envs_image, "--ids")
    assert all(i in every.stdout.split() for i in ale) and "--ids lists all" not in every.stdout
    if envs_report["labels"]:
        assert any(line.startswith("labels") for line in lines)


def test_inspect_imports_a_module_and_reports_failed_imports(minimal_image, tmp_path):
    (tmp_path / "my_envs.py").write_text(
        "import gymnasium as gym\n"
        "print('noise on stdout')\n"  # the report still parses: imports print to stderr
        "gym.register('Inspected-v0', entry_point='gymnasium.envs.classic_control:CartPoleEnv')\n"
    )
    (tmp_path / "broken_envs.py").write_text("raise RuntimeError('cannot import me')\n")
    imports = ["--import", "my_envs", "--import", "broken_envs", "--import", "no_such_module"]
    done = cli("inspect", minimal_image, "--json", "--pythonpath", str(tmp_path), *imports)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert _group(report, "my_envs")["ids"] == ["Inspected-v0"]
    assert "RuntimeError: cannot import me" in _group(report, "broken_envs")["error"]
    assert "ModuleNotFoundError" in _group(report, "no_such_module")["error"]
    # no msgpack in the image: the server would use the payload's copy of the host's
    assert report["msgpack_from"] == "payload" and report["server_error"] is None


def test_a_missing_image_exits_3(tmp_path):
    for command in ("inspect", "shell"):
        done = cli(command, str(tmp_path / "nope.sif"))
        assert done.returncode == 3, done.stderr
        assert "remote: error: no image at" in done.stderr and "nope.sif" in done.stderr
    with pytest.raises(remote.ImageNotFound):
        remote.inspect_image(tmp_path / "nope.sif")


# -- shell ---------------------------------------------------------------------------------------


def test_shell_sees_the_servers_payload_and_env(image, tmp_path):
    code = "import os, remote.server; print(os.environ['FOO'])"
    done = cli("shell", image, "--env", "FOO=bar", "--", "python3", "-c", code, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "bar"


def test_shell_cleans_the_environment_and_passes_the_exit_status(minimal_image, tmp_path):
    code = (
        "import os, sys, remote.server; "
        "print(remote.server.__file__, os.environ.get('HOST_ONLY'), os.environ['PYTHONUNBUFFERED']); "
        "sys.exit(7)"
    )
    # not from the checkout: `python3 -c` puts the current folder first on sys.path
    done = cli("shell", minimal_image, "--", "python3", "-c", code, cwd=tmp_path, HOST_ONLY="1")
    assert done.returncode == 7, done.stderr
    where, host_only, unbuffered = done.stdout.split()
    assert where.startswith(str(payload_dir())) and host_only == "None" and unbuffered == "1"


def test_shell_runs_the_servers_exec_flags(image, tmp_path):
    argv = shell_command(image, ["true"], binds=[f"{tmp_path}:/data:ro"], env={"PYTHONPATH": "/data"})
    payload = str(payload_dir())
    assert argv[1:5] == ["exec", "--cleanenv", "--pid", "--bind"]
    assert f"{payload}:{payload}:ro" in argv and f"{tmp_path}:/data:ro" in argv
    assert f"PYTHONPATH={payload}/top:/data:{payload}/deps" in argv
    interactive = shell_command(image)
    assert interactive[1] == "shell" and interactive[-1] == str(Path(image).resolve())
    with pytest.raises(ValueError, match="Apptainer"):
        shell_command(sys.executable, runtime="process")
