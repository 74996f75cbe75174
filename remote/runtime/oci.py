"""Podman and Docker: a Docker-compatible CLI; the image is an image name."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from typing import ClassVar

from ..errors import ChecksumMismatch, ImageNotFound, RuntimeNotAvailable
from ..images.sources import Image
from .base import Bind, Runtime, cgroup_flags, register


class OciRuntime(Runtime):
    """A Docker-compatible CLI; the image is an image name (``remote-test:latest``)."""

    program: ClassVar[str]
    hint: ClassVar[str]

    def __init__(self, executable: str | None = None, extra_args: Sequence[str] = ()) -> None:
        found = shutil.which(executable or self.program)
        if found is None:
            raise RuntimeNotAvailable(f"{executable or self.program!r} is not on PATH; {self.hint}")
        self.executable = found
        self.extra_args = list(extra_args)
        probe = self._run("version")
        if probe.returncode != 0:
            raise RuntimeNotAvailable(
                f"{self.program} cannot run here: {_last_line(probe.stderr)}; {self.hint}"
            )

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [self.executable, *args], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RuntimeNotAvailable(f"{self.executable} {args[0]} failed: {exc}; {self.hint}") from None

    def resolve_image(self, image: str | os.PathLike[str], sha256: str | None = None) -> Image:
        name = os.fspath(image)
        inspect = self._run("image", "inspect", "--format", "{{.Id}}", name)
        if inspect.returncode != 0:
            raise ImageNotFound(
                f"{self.program} has no image {name!r}; build it ({self.program} build -t {name} .) "
                f"or load it ({self.program} load -i image.tar); see docs/runtimes.md"
            )
        image_id = inspect.stdout.strip().removeprefix("sha256:")
        if sha256 is not None and sha256 != image_id:
            raise ChecksumMismatch(f"{self.program} image {name} has id {image_id}, expected {sha256}")
        return Image(name, image_id or None, name)

    def user_args(self) -> list[str]:
        """Flags that make the server run as the host user (files it creates are the user's)."""
        return ["--user", f"{os.getuid()}:{os.getgid()}"]

    def command(
        self,
        image: str,
        python: str,
        args: Sequence[str],
        binds: Sequence[Bind] = (),
        env: Mapping[str, str] | None = None,
        name: str = "",
        flags: Sequence[str] = (),
    ) -> list[str]:
        # -i: stdin is the lifeline; --init: a PID 1 that reaps the env's children and
        # forwards signals; host network: TCP ports on 127.0.0.1 work as for a process.
        cmd = [self.executable, "run", *flags, "--rm", "-i", "--init", "--network", "host", *self.user_args()]
        if name:
            cmd += ["--name", name]
        for src, dest, mode in binds:
            cmd += ["-v", f"{src}:{dest}:{mode}"]
        for key, value in (env or {}).items():
            cmd += ["-e", f"{key}={value}"]
        return [*cmd, *self.extra_args, image, python, *args]

    def limit_flags(self, cpus: float, memory: int, gpus: Sequence[str], enforcement: str) -> list[str]:
        """``--cpus``/``--memory`` under cgroup enforcement; GPUs only by CUDA_VISIBLE_DEVICES."""
        return cgroup_flags(cpus, memory, enforcement)

    def cleanup(self, name: str) -> None:
        # `run --rm` removes the container when the CLI sees it exit; if the CLI itself was
        # killed, the container may still run: remove it by name.
        if name:
            self._run("rm", "--force", name)


class Podman(OciRuntime):
    """Podman, rootless preferred (``--userns=keep-id``: the server runs as the host user).

    Args:
        executable: path or name of ``podman``.
        extra_args: more ``run`` flags, e.g. ``["--cpus", "2"]``.
    """

    name = "podman"
    program = "podman"
    hint = (
        "install Podman (Debian/Ubuntu: apt-get install podman; on this project's CI machine kind "
        "run scripts/install-podman.sh as root), or use runtime='apptainer' or 'process'"
    )

    def user_args(self) -> list[str]:
        return ["--userns=keep-id"] if os.geteuid() != 0 else []  # rootful: root is the host user

    def cleanup(self, name: str) -> None:
        if name:
            self._run("rm", "--force", "--ignore", "--time", "0", name)


class Docker(OciRuntime):
    """Docker: needs a running daemon the user may talk to (``docker`` group or root);
    the server runs with ``--user uid:gid`` of the host user.

    Args:
        executable: path or name of ``docker``.
        extra_args: more ``run`` flags, e.g. ``["--cpus", "2"]``.
    """

    name = "docker"
    program = "docker"
    hint = (
        "install Docker and start its daemon (systemctl start docker), and let this user use it "
        "(the docker group), or use runtime='podman', 'apptainer' or 'process'"
    )


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


register("podman", Podman)
register("docker", Docker)
