"""Runtimes: selection, the command lines they build, their errors, and the process runtime
serving from two Python environments with conflicting numpy versions side by side."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import VENVS, _need

import remote
from remote.manager.allocator import Allocation
from remote.runtime import RUNTIMES, Apptainer, Docker, Podman, Process, get_runtime, register
from remote.runtime.base import FACTORIES
from remote.runtime.limits import CGROUP, NONE, RLIMIT, LimitedRuntime

BINDS = [("/run/dir", "/run/dir", "rw"), ("/pay", "/pay", "ro")]
ENV = {"PYTHONUNBUFFERED": "1"}


def oci(cls, executable):
    """A Podman/Docker runtime without its availability probe, to test its command lines
    on machines where it cannot run."""
    runtime = cls.__new__(cls)
    runtime.executable, runtime.extra_args = executable, []
    return runtime


def test_podman_command_line():
    podman = oci(Podman, "/usr/bin/podman")
    argv = podman.command("remote-test:latest", "python3", ["-c", "x"], BINDS, ENV, "n1")
    assert argv[:6] == ["/usr/bin/podman", "run", "--rm", "-i", "--init", "--network"]
    assert argv[6] == "host"
    assert ("--userns=keep-id" in argv) == (os.geteuid() != 0)  # rootless: run as the host user
    assert argv[argv.index("--name") + 1] == "n1"
    volumes = [a for i, a in enumerate(argv) if a == "-v" or argv[i - 1] == "-v"]
    assert volumes == ["-v", "/run/dir:/run/dir:rw", "-v", "/pay:/pay:ro"]
    assert argv[argv.index("-e") + 1] == "PYTHONUNBUFFERED=1"
    assert argv[-4:] == ["remote-test:latest", "python3", "-c", "x"]


def test_docker_command_line_runs_as_the_host_user():
    argv = oci(Docker, "/usr/bin/docker").command("img:1", "python3", ["-c", "x"], BINDS, ENV, "n2")
    assert argv[:5] == ["/usr/bin/docker", "run", "--rm", "-i", "--init"]
    assert argv[argv.index("--user") + 1] == f"{os.getuid()}:{os.getgid()}"
    assert "--userns=keep-id" not in argv
    assert argv[-4:] == ["img:1", "python3", "-c", "x"]


def test_process_command_line_has_a_clean_environment(tmp_path):
    argv = Process().command("/venv/bin/python", "python3", ["-c", "x"], BINDS, {"A": "1"})
    assert argv[:2] == ["env", "-i"]
    assert "A=1" in argv and argv[-3:] == ["/venv/bin/python", "-c", "x"]
    assert next(a for a in argv if a.startswith("PATH=")).startswith("PATH=/venv/bin:")
    assert not any(a.startswith("REMOTE_") or a.startswith("PYTEST") for a in argv)
    with pytest.raises(ValueError, match="no container to mount into"):
        Process().command("/venv/bin/python", "python3", [], [("/a", "/b", "ro")])


def test_apptainer_command_line(apptainer):
    argv = Apptainer().command("/i.sif", "python3", ["-c", "x"], BINDS, ENV)
    assert argv[1:4] == ["exec", "--cleanenv", "--pid"]
    assert argv[-4:] == ["/i.sif", "python3", "-c", "x"]
    assert "--bind" in argv and "/pay:/pay:ro" in argv


def test_runtime_selection(monkeypatch, apptainer):
    monkeypatch.delenv("REMOTE_RUNTIME", raising=False)
    assert isinstance(get_runtime(None), Apptainer)
    monkeypatch.setenv("REMOTE_RUNTIME", "process")
    assert isinstance(get_runtime(None), Process)
    assert isinstance(get_runtime("apptainer"), Apptainer)
    mine = Process()
    assert get_runtime(mine) is mine
    with pytest.raises(ValueError, match="runtime must be one of"):
        get_runtime("lxc")


def test_singularity_is_accepted_as_the_executable(tmp_path, monkeypatch, apptainer):
    (tmp_path / "singularity").symlink_to(apptainer)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("REMOTE_APPTAINER", raising=False)
    assert get_runtime("singularity").executable == str(tmp_path / "singularity")
    assert Apptainer().executable == str(tmp_path / "singularity")


@pytest.mark.parametrize("name", ["podman", "docker"])
def test_missing_oci_runtime_says_how_to_fix(name, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(remote.RuntimeNotAvailable, match=f"'{name}' is not on PATH; install"):
        remote.RemoteRunner("remote-test:latest", runtime=name)


def test_process_runtime_needs_an_interpreter(tmp_path):
    with pytest.raises(remote.ImageNotFound, match="no Python interpreter at"):
        remote.make("CartPole-v1", image=tmp_path / "nope" / "python", runtime="process")


def test_two_venvs_with_conflicting_numpy_side_by_side():
    """Acceptance: envA has numpy 1.x, envB numpy 2.x; both serve at once, each reporting
    its own numpy from inside, and both give the same CartPole trajectory as the host."""
    pythons = {name: VENVS / name / "bin" / "python" for name in ("envA", "envB")}
    for python in pythons.values():
        _need(f"venv {python} (scripts/setup.sh)", python.exists())
    with (
        remote.RemoteRunner(pythons["envA"], runtime="process") as a,
        remote.RemoteRunner(pythons["envB"], runtime="process") as b,
    ):
        assert a.info["numpy"].startswith("1.") and b.info["numpy"].startswith("2."), (a.info, b.info)
        print(f"\nenvA numpy {a.info['numpy']}, envB numpy {b.info['numpy']}, host numpy {np.__version__}")
        env_a, env_b = a.make("CartPole-v1"), b.make("CartPole-v1")
        obs_a, _ = env_a.reset(seed=3)
        obs_b, _ = env_b.reset(seed=3)
        assert obs_a.tobytes() == obs_b.tobytes()
        for _ in range(20):
            assert env_a.step(1)[0].tobytes() == env_b.step(1)[0].tobytes()


ALLOCATION = Allocation(id=1, cpus=1.5, cpu_ids=(0, 2), memory=256 * 2**20, gpus=("1", "2"))
BARE = Allocation(id=2, cpus=0, cpu_ids=(3,), memory=0, gpus=())
CUDA = ["CUDA_VISIBLE_DEVICES=1,2"]


def _limited_argv(runtime, allocation, enforcement):
    image = "/venv/bin/python" if runtime.name == "process" else "img"
    limited = LimitedRuntime(runtime, allocation, enforcement)
    binds = [("/run/dir", "/run/dir", "rw")]
    return limited.command(image, "python3", ["-c", "pass"], binds, {"A": "1"}, "n1")


def _expected_argv(kind, allocation, enforcement):
    """The argv the LimitedRuntime built before runtimes got their limit_flags hook (by hand)."""
    gpus = bool(allocation.gpus)
    prefix = ["taskset", "-c", ",".join(map(str, allocation.cpu_ids))]
    cgroup = []
    if enforcement == CGROUP and allocation.cpus:
        cgroup += ["--cpus", f"{allocation.cpus:g}"]
    if enforcement == CGROUP and allocation.memory:
        cgroup += ["--memory", str(allocation.memory)]
    env = ["A=1", *(CUDA if gpus else [])]
    if kind == "process":
        home = os.path.expanduser("~")
        variables = [f"PATH=/venv/bin:{os.defpath.lstrip(':')}", f"HOME={home}", *env]
        return [*prefix, "env", "-i", *variables, "/venv/bin/python", "-c", "pass"]
    if kind in ("apptainer", "singularity"):
        flags = [*(["--nv"] if gpus else []), *cgroup]
        envs = [a for value in env for a in ("--env", value)]
        tail = ["--cleanenv", "--pid", "--userns", "--bind", "/run/dir:/run/dir:rw", *envs]
        return [*prefix, f"/x/{kind}", "exec", *flags, *tail, "img", "python3", "-c", "pass"]
    user = (["--userns=keep-id"] if os.geteuid() != 0 else []) if kind == "podman" else []
    if kind == "docker":
        user = ["--user", f"{os.getuid()}:{os.getgid()}"]
    envs = [a for value in env for a in ("-e", value)]
    head = [f"/x/{kind}", "run", *cgroup, "--rm", "-i", "--init", "--network", "host", *user]
    tail = ["--name", "n1", "-v", "/run/dir:/run/dir:rw", *envs, "--foo"]
    return [*prefix, *head, *tail, "img", "python3", "-c", "pass"]


def _bare_runtime(kind):
    """A runtime of ``kind`` without its executable lookup or availability probe."""
    if kind == "process":
        return Process()
    cls = {"apptainer": Apptainer, "singularity": Apptainer, "podman": Podman, "docker": Docker}[kind]
    runtime = cls.__new__(cls)
    runtime.executable = f"/x/{kind}"
    runtime.extra_args = ["--userns"] if cls is Apptainer else ["--foo"]
    return runtime


@pytest.mark.parametrize("enforcement", [CGROUP, RLIMIT, NONE])
@pytest.mark.parametrize("kind", ["apptainer", "singularity", "process", "podman", "docker"])
@pytest.mark.parametrize("allocation", [ALLOCATION, BARE], ids=["gpus", "bare"])
def test_limited_argv_is_the_same_for_every_runtime_and_enforcement(kind, enforcement, allocation):
    runtime = _bare_runtime(kind)
    assert _limited_argv(runtime, allocation, enforcement) == _expected_argv(kind, allocation, enforcement)


def test_limited_argv_literally():
    """Two of the cases above, written out: the flags go right after ``exec``/``run``."""
    apptainer = _limited_argv(_bare_runtime("apptainer"), ALLOCATION, CGROUP)
    assert apptainer[:11] == [
        "taskset", "-c", "0,2", "/x/apptainer", "exec",
        "--nv", "--cpus", "1.5", "--memory", "268435456", "--cleanenv",
    ]  # fmt: skip
    docker = _limited_argv(_bare_runtime("docker"), ALLOCATION, RLIMIT)
    assert docker[:6] == ["taskset", "-c", "0,2", "/x/docker", "run", "--rm"] and "--nv" not in docker
    assert docker[-7:] == ["-e", "CUDA_VISIBLE_DEVICES=1,2", "--foo", "img", "python3", "-c", "pass"]


def test_runtimes_are_registered_by_name(monkeypatch):
    assert set(RUNTIMES) == {"apptainer", "singularity", "process", "podman", "docker"}
    with pytest.raises(ValueError, match="must be one of apptainer, singularity, .*process.*, not 'mine'"):
        get_runtime("mine")
    monkeypatch.setitem(FACTORIES, "mine", Process)  # removed again after the test
    register("mine", Process)
    assert isinstance(get_runtime("mine"), Process)
