"""Building images: a base plus pip/apt packages and files (`remote build --from`), a Dockerfile
(`remote build Dockerfile`), run for real as an unprivileged user (`--fakeroot`), and the parts
that need no container: the recipes written, the host settings handed over, what a Dockerfile
that does not convert is told."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import remote
from remote.images import build
from remote.images.dockerfile import convert

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() == "true"
USER = "remote-test-user"
PYTHON = ROOT / ".venv" / "bin" / "python"


@pytest.fixture
def cache_root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("REMOTE_CACHE", str(root))
    return root


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- no container: the recipes, the host settings, the conversion --------------------------------


def test_a_derived_recipe_says_what_went_in_and_holds_nothing_of_the_host(tmp_path):
    (tmp_path / "agent.py").write_text("print('hi')\n")
    base = build.Base("localimage", "/images/base.sif", "ab" * 32, "base.sif")
    text = build.derived_recipe(base, ["tabulate", "numpy<2"], ["tree"], [f"{tmp_path}/agent.py:/opt/a.py"])
    assert text.splitlines()[1:3] == ["Bootstrap: localimage", "From: /images/base.sif"]
    assert f"    {tmp_path}/agent.py /opt/a.py" in text.splitlines()
    assert "pip install tabulate 'numpy<2'" in text and "install -y --no-install-recommends tree" in text
    for label in (
        "remote.base base.sif",
        f"remote.base.sha256 {'ab' * 32}",
        "remote.pip tabulate numpy<2",
        "remote.apt tree",
        f"remote.files {tmp_path}/agent.py:/opt/a.py",
        f"remote.built-by remote {remote.__version__}",
    ):
        assert f"    {label}" in text.splitlines()
    # the index, CA bundle and mirror come in at build time through /mnt, never in the recipe
    settings = build.host_pip_settings()
    mirror = build.debian_mirror()
    for value in [*settings.values(), *([mirror] if mirror else [])]:
        if len(value) > 3 and value not in ("true", "false"):
            assert value not in text
    registry = build.derived_recipe(build.Base("docker", "python:3.11-slim", None, "x"), ["tabulate"])
    assert "Bootstrap: docker\nFrom: python:3.11-slim" in registry and "remote.base.sha256" not in registry


def test_host_pip_settings_are_staged_with_their_files_and_without_folders(tmp_path, monkeypatch):
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("PIP_CERT", str(bundle))
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))  # a folder: not there inside
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", f"file://{tmp_path} https://index.invalid/simple")
    monkeypatch.setenv("https_proxy", "http://proxy.invalid:3128")
    settings = build.host_pip_settings()
    assert settings["PIP_CERT"] == str(bundle)  # the environment wins over pip.conf
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    passed = build.stage_pip_settings(mnt, settings)
    staged = (mnt / "pip.env").read_text()
    assert "export PIP_CERT=/mnt/f" in staged and "PIP_FIND_LINKS" not in passed
    assert "export PIP_EXTRA_INDEX_URL=https://index.invalid/simple" in staged
    assert "export https_proxy=http://proxy.invalid:3128" in staged
    copied = staged.split("PIP_CERT=")[1].split()[0].removeprefix("/mnt/")
    assert (mnt / copied).read_text() == bundle.read_text()


def test_the_host_pip_is_pure_python_and_runs_from_its_folder():
    found = build.host_pip()
    assert found is not None, "the venv's pip has compiled parts or is missing"
    folder, oldest = found
    assert (folder / "__main__.py").is_file() and oldest <= (3, 11)


def test_bases_a_build_can_start_from(tmp_path, cache_root):
    assert build.resolve_base("docker://python:3.11-slim") == build.Base(
        "docker", "python:3.11-slim", None, "docker://python:3.11-slim"
    )
    assert build.resolve_base("oras://registry.example/x/y:1").bootstrap == "oras"
    assert build.resolve_base("library://u/c/i:1").bootstrap == "library"
    with pytest.raises(ValueError, match="remote pull"):
        build.resolve_base("https://example.invalid/x.sif")
    with pytest.raises(remote.ImageNotFound):
        build.resolve_base(tmp_path / "missing.sif")
    image = tmp_path / "x.sif"
    image.write_bytes(b"not really an image")
    found = build.resolve_base(image)
    assert (found.bootstrap, found.ref, found.sha256) == ("localimage", str(image), sha(image))
    with pytest.raises(ValueError, match="SRC:DEST"):
        build.split_file(f"{image}:relative/dest")
    with pytest.raises(ValueError, match="nothing to add"):
        build.build_derived(image)


DOCKERFILE = """\
# syntax=docker/dockerfile:1
ARG BASE=base.sif
FROM $BASE
LABEL org.example.title="an env" version=2
ENV X=1 Y="two words"
ARG LEVEL=3
WORKDIR /app
COPY agent.py ./
COPY data /opt/data
RUN pip install tabulate && \\
    python3 -c "import tabulate"
RUN ["python3", "-c", "print('exec form')"]
EXPOSE 8080
USER nobody
HEALTHCHECK CMD true
ENTRYPOINT ["python3"]
CMD ["agent.py"]
"""


def test_a_dockerfile_converts_and_what_it_leaves_out_is_named(tmp_path, cache_root):
    (tmp_path / "base.sif").write_bytes(b"stand-in")
    (tmp_path / "agent.py").write_text("print('agent')\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.txt").write_text("x")
    (tmp_path / "Dockerfile").write_text(DOCKERFILE)
    done = convert(tmp_path / "Dockerfile", build_args={"LEVEL": "5"})
    lines = done.text.splitlines()
    assert lines[1:3] == ["Bootstrap: localimage", f"From: {tmp_path / 'base.sif'}"]
    assert done.base.sha256 == sha(tmp_path / "base.sif")
    assert f"{tmp_path / 'agent.py'} /app/" in lines and f"{tmp_path / 'data'}/. /opt/data" in lines
    post = done.text.split("%post")[1].split("%environment")[0]
    assert "export X=1" in post and 'export Y="two words"' in post and "export LEVEL=5" in post
    assert "mkdir -p /app" in post and "python3 -c 'print('\"'\"'exec form'\"'\"')'" in post
    assert "pip() {" in post  # pip works in a base without pip
    assert "export X=1" in done.text.split("%environment")[1]
    assert '    if [ "$#" -gt 0 ]; then exec python3 "$@"; fi' in lines
    assert "    exec python3 agent.py" in lines and "    cd /app" in lines
    assert "    org.example.title an env" in lines and "    remote.dockerfile Dockerfile" in lines
    named = "\n".join(done.warnings)
    for instruction in ("line 13: EXPOSE", "line 14: USER", "line 15: HEALTHCHECK"):
        assert instruction in named
    assert "%test" not in done.text and "su - nobody" not in done.text


def test_a_dockerfile_that_cannot_convert_names_each_problem(tmp_path, cache_root):
    (tmp_path / "Dockerfile").write_text(
        "FROM debian:bookworm AS build\nRUN make\nFROM python:3.11-slim\nCOPY --from=build /out /out\n"
        'SHELL ["/bin/bash", "-c"]\nADD https://example.invalid/x.tar.gz /opt/\nRUN --mount=type=cache,'
        "target=/root/.cache pip install x\nONBUILD RUN echo\nCOPY missing.txt /opt/\n"
    )
    with pytest.raises(remote.ImageBuildError) as info:
        convert(tmp_path / "Dockerfile")
    message = str(info.value)
    for named in (
        "line 3: FROM: a multi-stage build",
        "line 4: COPY --from=build",
        "line 5: SHELL is not supported",
        "line 6: ADD of a URL",
        "line 7: RUN --mount",
        "line 8: ONBUILD is not supported",
        "line 9: COPY: missing.txt is not in the context",
    ):
        assert named in message
    (tmp_path / "Dockerfile").write_text("FROM python:3.11-slim\nRUN true\n")
    assert convert(tmp_path / "Dockerfile").base == build.Base(
        "docker", "python:3.11-slim", None, "docker://python:3.11-slim"
    )


def test_a_refused_fakeroot_says_what_to_ask_and_what_to_do_instead(tmp_path, monkeypatch):
    fake = tmp_path / "apptainer"
    fake.write_text(
        "#!/bin/sh\necho 'FATAL:   --fakeroot requires either being in /etc/subuid, unprivileged user "
        "namespaces, or the fakeroot command' >&2\nexit 255\n"
    )
    fake.chmod(0o755)
    with pytest.raises(remote.ImageBuildError) as info:
        build.run_apptainer([str(fake), "build", "--fakeroot", "o.sif", "r.def"], remote.ImageBuildError, "b")
    assert "Ask the admin" in str(info.value) and "remote pull" in str(info.value)
    with pytest.raises(remote.ImageBuildError, match=r"^b failed \(apptainer exit code 255\)\n") as info:
        build.run_apptainer([str(fake), "build", "o.sif", "r.def"], remote.ImageBuildError, "b")
    assert "Ask the admin" not in str(info.value)  # not a --fakeroot build: no such advice


def test_build_usage_errors_exit_2(tmp_path):
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "remote.cli", "build", *args], capture_output=True, text=True, cwd=ROOT
        )

    assert cli().returncode == 2
    done = cli("--pip", "tabulate")
    assert done.returncode == 2 and "--from BASE" in done.stderr
    assert cli("--from", str(tmp_path / "missing.sif"), "--pip", "x").returncode == 3
    assert cli("--from", "x.sif", "--files", "nocolon").returncode == 2
    assert cli(str(tmp_path / "nothing-here")).returncode == 2


# -- real builds, as an unprivileged user --------------------------------------------------------


#: Folders on the way to the venv's interpreter that the test user may not pass (a pyenv Python
#: under /root, which is 0700): (folder, the child needed, a stand-in holding only that child).
#: The user's commands run in a private mount namespace where the stand-in covers the folder, so
#: nothing else of it is exposed and no permission on disk changes. Set by the ``user`` fixture.
VIEWS: list[tuple[Path, str, Path]] = []


@pytest.fixture(scope="module")
def user(tmp_path_factory) -> str:
    """An unprivileged user (created if missing) who can read the repository and run its venv."""
    reason = None
    if shutil.which("apptainer") is None:
        reason = "Apptainer is missing (run scripts/setup.sh)"
    elif os.geteuid() != 0:
        reason = f"creating the unprivileged user {USER} needs root"
    if reason:
        if IN_CI:
            pytest.fail(f"CI=true: {reason}", pytrace=False)
        pytest.skip(reason=reason)
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", USER], check=True)
    views = tmp_path_factory.mktemp("views")
    os.chmod(views, 0o711)
    for target in (Path(os.path.realpath(PYTHON)), ROOT):
        for folder in reversed(target.parents):  # from / down
            child = target.relative_to(folder).parts[0]
            if os.stat(folder).st_mode & 0o001 or any(f == folder for f, _, _ in VIEWS):
                continue
            stand_in = views / str(len(VIEWS))
            (stand_in / child).mkdir(parents=True)
            os.chmod(stand_in, 0o711)
            VIEWS.append((folder, child, stand_in))
    VIEWS.sort(key=lambda v: len(v[0].parts), reverse=True)  # the deepest first
    problems = []
    if pwd.getpwnam(USER).pw_uid == 0:
        problems.append(f"{USER} is root")
    readable = as_user(["test", "-r", str(ROOT / "remote" / "__init__.py"), "-a", "-x", str(PYTHON)], "/")
    if readable.returncode != 0:
        problems.append(f"{USER} cannot read {ROOT} or run {PYTHON} ({readable.stderr.strip()})")
    if stat.S_IMODE(os.stat("/dev/fuse").st_mode) & 0o006 != 0o006:
        problems.append("/dev/fuse is not 0666: a non-root user cannot mount a SIF (chmod 0666 /dev/fuse)")
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)
    return USER


def as_user(argv: list[str], cwd: str | Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``argv`` as the test user with a clean environment (its own HOME: ``cwd/home``), keeping
    the machine's pip settings and proxies as a user on it would have them."""
    keep = {k: v for k, v in os.environ.items() if k.startswith("PIP_") or k.lower().endswith("_proxy")}
    env = {
        "HOME": f"{cwd}/home",
        "PATH": os.pathsep.join(
            [str(Path(shutil.which("apptainer") or "/usr/bin/x").parent), "/usr/bin", "/bin"]
        ),
        "LANG": "C.UTF-8",
        "CI": os.environ.get("CI", ""),
        **keep,
    }
    command = ["runuser", "-u", USER, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items()), *argv]
    if VIEWS:
        q = shlex.quote
        mounts = "".join(
            f"mount --rbind {q(str(f / c))} {q(str(v / c))} && mount --rbind {q(str(v))} {q(str(f))} && "
            for f, c, v in VIEWS
        )
        command = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            f'{mounts}exec "$@"',
            "sh",
        ] + command
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=cwd)


def remote_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return as_user([str(PYTHON), "-m", "remote.cli", *args], cwd)


@pytest.fixture
def workdir(user) -> Iterator[Path]:
    """A folder of the test user's (its HOME is ``home`` in it), removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="remote-build-test-"))
    (folder / "home").mkdir()
    for path in (folder, folder / "home"):
        os.chmod(path, 0o755)
        shutil.chown(path, user, user)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def user_copy(source: str, workdir: Path, name: str) -> Path:
    """A copy of ``source`` that the test user owns."""
    copy = workdir / name
    shutil.copyfile(source, copy)
    shutil.chown(copy, USER, USER)
    return copy


def labels(image: Path, cwd: Path) -> dict[str, str]:
    shown = as_user(["apptainer", "inspect", "--labels", "--json", str(image)], cwd)
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    return data.get("data", {}).get("attributes", {}).get("labels", data)


MAKE = """
import sys, remote
env = remote.make("CartPole-v1", image=sys.argv[1])
obs, info = env.reset(seed=0)
print("step", env.step(0)[1])
env.close()
"""


def check_image(image: Path, cwd: Path) -> None:
    """An env made from ``image`` steps, tabulate imports in it, and no pip was left behind."""
    made = as_user([str(PYTHON), "-c", MAKE, str(image)], cwd, timeout=300)
    assert made.returncode == 0 and "step 1.0" in made.stdout, made.stderr[-3000:]
    imported = as_user(["apptainer", "exec", str(image), "python3", "-c", "import tabulate"], cwd)
    assert imported.returncode == 0, imported.stderr
    pip = as_user(["apptainer", "exec", str(image), "python3", "-m", "pip", "--version"], cwd)
    assert pip.returncode != 0  # the host's pip was bound for the build only
    recipe = as_user(["apptainer", "inspect", "--deffile", str(image)], cwd).stdout
    for value in build.host_pip_settings().values():  # the index, CA bundle... stayed outside
        if "/" in value:
            assert value not in recipe
    shown = remote_cli("inspect", str(image), "--ids", cwd=cwd)
    assert shown.returncode == 0 and "CartPole-v1" in shown.stdout, shown.stderr[-2000:]


def test_build_from_a_base_with_pip_as_an_unprivileged_user(minimal_image, workdir):
    base = user_copy(minimal_image, workdir, "base.sif")
    out = workdir / "out.sif"
    started = time.monotonic()
    done = remote_cli(
        "build", "--from", str(base), "--pip", "tabulate", "-o", str(out), "--json", cwd=workdir
    )
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-4000:]
    built = json.loads(done.stdout)
    assert built["path"] == str(out) and built["sha256"] == sha(out)
    assert Path(built["cached"]).parent == workdir / "home" / ".cache" / "remote" / "images" / "sha256"
    print(f"derived build as {USER}: {took:.1f} s")
    found = labels(out, workdir)
    assert found["remote.pip"] == "tabulate" and found["remote.base"] == str(base)
    assert found["remote.base.sha256"] == sha(base)
    assert found["remote.built-by"] == f"remote {remote.__version__}"
    check_image(out, workdir)
    started = time.monotonic()
    again = remote_cli(
        "build", "--from", str(base), "--pip", "tabulate", "-o", str(out), "--json", cwd=workdir
    )
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["sha256"] == built["sha256"]
    assert time.monotonic() - started < 15, "an identical build should come from the cache"


def test_build_with_apt_packages_and_files_as_an_unprivileged_user(minimal_image, workdir):
    base = user_copy(minimal_image, workdir, "base.sif")
    (workdir / "note.txt").write_text("copied in\n")
    out = workdir / "apt.sif"
    started = time.monotonic()
    done = remote_cli(
        "build", "--from", str(base), "--apt", "tree", "--files", f"{workdir}/note.txt:/opt/note.txt",
        "-o", str(out), cwd=workdir,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    print(f"derived build with apt as {USER}: {time.monotonic() - started:.1f} s")
    ran = as_user(["apptainer", "exec", str(out), "sh", "-c", "tree -L 1 /opt && cat /opt/note.txt"], workdir)
    assert ran.returncode == 0 and "copied in" in ran.stdout, ran.stderr
    lists = as_user(["apptainer", "exec", str(out), "sh", "-c", "ls /var/lib/apt/lists | wc -l"], workdir)
    assert lists.stdout.strip() in ("0", "1")  # no package lists of the build host left (maybe lock/)
    assert as_user(["apptainer", "exec", str(out), "ls", "/etc/apt/remote-build.list"], workdir).returncode
    found = labels(out, workdir)
    assert found["remote.apt"] == "tree" and found["remote.files"] == f"{workdir}/note.txt:/opt/note.txt"


def test_build_a_dockerfile_as_an_unprivileged_user(minimal_image, workdir):
    user_copy(minimal_image, workdir, "base.sif")
    (workdir / "Dockerfile").write_text(
        'FROM base.sif\nRUN pip install tabulate\nENV X=1\nEXPOSE 8080\nCMD ["python3", "-c", "print(2)"]\n'
    )
    out = workdir / "docker.sif"
    started = time.monotonic()
    done = remote_cli("build", str(workdir / "Dockerfile"), "-o", str(out), "--json", cwd=workdir)
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-4000:]
    assert "remote: warning: Dockerfile line 4: EXPOSE left out" in done.stderr
    print(f"Dockerfile build as {USER}: {took:.1f} s")
    built = json.loads(done.stdout)
    assert built["sha256"] == sha(out)
    shown = as_user(["apptainer", "exec", str(out), "sh", "-c", "echo X=$X"], workdir)
    assert shown.stdout.strip() == "X=1", shown.stderr
    assert as_user(["apptainer", "run", str(out)], workdir).stdout.strip() == "2"
    found = labels(out, workdir)
    assert found["remote.dockerfile"] == "Dockerfile" and found["remote.base.sha256"] == sha(
        workdir / "base.sif"
    )
    check_image(out, workdir)
    again = remote_cli("build", str(workdir / "Dockerfile"), "-o", str(out), "--json", cwd=workdir)
    assert again.returncode == 0 and json.loads(again.stdout)["sha256"] == built["sha256"]


def test_build_from_a_recipe_base_as_root_and_a_failed_pip_says_so(minimal_image, tmp_path, cache_root):
    if os.geteuid() != 0 and not IN_CI:
        pytest.skip(reason="a plain (not --fakeroot) build needs root")
    recipe = tmp_path / "first.def"
    recipe.write_text(
        f"Bootstrap: localimage\nFrom: {minimal_image}\n\n%post\n    echo first > /opt/first.txt\n"
    )
    out = tmp_path / "second.sif"
    image = build.build_derived(recipe, pip=["tabulate"], out=out)
    assert image.sha256 == sha(out)
    shown = subprocess.run(
        ["apptainer", "exec", str(out), "sh", "-c", "cat /opt/first.txt && python3 -c 'import tabulate'"],
        capture_output=True,
        text=True,
    )
    assert shown.returncode == 0 and shown.stdout == "first\n", shown.stderr
    first = next(e for e in remote.images.list() if e.name == "first")  # the base, built into the cache
    assert (
        json.loads(
            subprocess.run(
                ["apptainer", "inspect", "--labels", "--json", str(out)], capture_output=True
            ).stdout
        )["data"]["attributes"]["labels"]["remote.base.sha256"]
        == first.sha256
    )
    assert build.build_derived(recipe, pip=["tabulate"]).path == image.path  # cached
    with pytest.raises(remote.ImageBuildError, match="building") as info:
        build.build_derived(recipe, pip=["tabulate==0.0.0.0.1"])
    assert "No matching distribution found for tabulate==0.0.0.0.1" in str(info.value)


def test_a_base_without_python_or_debian_is_told_so(minimal_image, tmp_path, cache_root):
    if os.geteuid() != 0 and not IN_CI:
        pytest.skip(reason="editing a sandbox base made from the test image needs root here")
    sandbox = tmp_path / "base"
    subprocess.run(
        ["apptainer", "build", "--sandbox", str(sandbox), minimal_image], check=True, capture_output=True
    )
    (sandbox / "etc" / "os-release").unlink()
    (sandbox / "etc" / "os-release").write_text("ID=alpine\nVERSION_ID=3.20\n")
    with pytest.raises(
        remote.ImageBuildError, match="--apt needs a Debian or Ubuntu base; this one is 'alpine"
    ):
        build.build_derived(sandbox, apt=["tree"])
    for python in (sandbox / "usr" / "bin").glob("python3*"):
        python.unlink()
    with pytest.raises(remote.ImageBuildError, match="the base image has no python3"):
        build.build_derived(sandbox, pip=["tabulate"])
