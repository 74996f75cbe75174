"""Runtimes: how the server is started, and the supervised process it runs as.

A :class:`Runtime` turns "run this Python, in this image, with these folders and
variables" into an argv; the image argument means what the runtime expects (a ``.sif``
for Apptainer, an interpreter for :class:`Process`, an image name for Podman/Docker).
:class:`ServerProcess` starts that argv and supervises it, the same for every runtime.

Why a supervised ``apptainer exec`` and not ``apptainer instance start``: the server is
one child process of the host, so its death is seen at once (a watcher thread waits on
it), killing its process group leaves nothing behind, and no instance name can be
orphaned. ``instance stop`` also takes 3-4 s here, an ``exec`` stops in milliseconds.
``--pid`` gives the container its own PID namespace: when the server exits, every
process the environment started goes with it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import ClassVar

from .errors import ChecksumMismatch, ImageNotFound, RuntimeNotAvailable
from .image import Image, resolve_image

#: A folder made visible to the server: (host path, path seen by the server, "ro"|"rw").
Bind = tuple[str, str, str]

#: The names ``runtime=`` and ``$REMOTE_RUNTIME`` accept.
RUNTIMES = ("apptainer", "singularity", "process", "podman", "docker")


class Runtime(ABC):
    """How the server is started. Subclasses say what an image is and build the argv;
    :class:`ServerProcess` runs and supervises that argv for all of them."""

    name: ClassVar[str]

    def resolve_image(self, image: str | os.PathLike[str], sha256: str | None = None) -> Image:
        """The image as the runtime will be given it, fetched or built into the cache if need
        be; raises ImageNotFound if there is none, ChecksumMismatch if ``sha256`` differs."""
        return resolve_image(image, sha256=sha256)

    @abstractmethod
    def command(
        self,
        image: str,
        python: str,
        args: Sequence[str],
        binds: Sequence[Bind] = (),
        env: Mapping[str, str] | None = None,
        name: str = "",
    ) -> list[str]:
        """The argv that runs ``python *args`` from ``image`` with ``binds``, and only the
        variables in ``env`` (the host's environment is not passed in). ``name`` names the
        container where the runtime has names."""

    def cleanup(self, name: str) -> None:
        """Remove what may outlive the started process (called once it has exited); by
        default nothing does."""
        return None


def get_runtime(runtime: str | Runtime | None = None) -> Runtime:
    """The runtime for ``runtime``: an instance, a name in :data:`RUNTIMES`, or None for
    ``$REMOTE_RUNTIME`` (default ``"apptainer"``)."""
    if isinstance(runtime, Runtime):
        return runtime
    wanted = runtime or os.environ.get("REMOTE_RUNTIME") or "apptainer"
    if wanted == "apptainer":
        return Apptainer()
    if wanted == "singularity":
        return Apptainer("singularity")
    if wanted == "process":
        return Process()
    if wanted == "podman":
        return Podman()
    if wanted == "docker":
        return Docker()
    raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)} or a Runtime, not {wanted!r}")


APPTAINER_HINT = (
    "install Apptainer (https://apptainer.org/docs/admin/main/installation.html; on Debian 12 "
    "run scripts/install-apptainer.sh from the remote repository as root), or set "
    "REMOTE_APPTAINER to the path of an apptainer or singularity executable, or use another "
    "runtime (runtime='process' runs the server with a local Python, no container)"
)


class Apptainer(Runtime):
    """The Apptainer (or SingularityCE) runtime: rootless, unprivileged ``exec``. The image
    is a ``.sif`` file or a sandbox folder.

    Args:
        executable: path or name of ``apptainer``/``singularity``; default: ``$REMOTE_APPTAINER``,
            else the first of ``apptainer``, ``singularity`` on ``PATH``.
        extra_args: more ``exec`` flags, e.g. ``["--nv"]`` or ``["--userns"]``.
    """

    name = "apptainer"

    def __init__(self, executable: str | None = None, extra_args: Sequence[str] = ()) -> None:
        wanted = executable or os.environ.get("REMOTE_APPTAINER")
        if wanted:
            found = shutil.which(wanted)
            if found is None:
                raise RuntimeNotAvailable(f"{wanted!r} is not an executable; {APPTAINER_HINT}")
        else:
            found = shutil.which("apptainer") or shutil.which("singularity")
            if found is None:
                raise RuntimeNotAvailable(f"neither apptainer nor singularity is on PATH; {APPTAINER_HINT}")
        self.executable = found
        self.extra_args = list(extra_args)

    def command(
        self,
        image: str,
        python: str,
        args: Sequence[str],
        binds: Sequence[Bind] = (),
        env: Mapping[str, str] | None = None,
        name: str = "",
    ) -> list[str]:
        cmd = [self.executable, "exec", "--cleanenv", "--pid", *self.extra_args]
        for src, dest, mode in binds:
            cmd += ["--bind", f"{src}:{dest}:{mode}"]
        for key, value in (env or {}).items():
            cmd += ["--env", f"{key}={value}"]
        return [*cmd, image, python, *args]


class Process(Runtime):
    """No container: the server runs as a plain process of the host, with the Python
    interpreter given as the image, e.g. a venv's ``bin/python`` or a conda env's
    ``bin/python``, with its own package versions (``python=`` of the runner is not used:
    the image is the interpreter). Starts fastest: the inner loop for developing an env.

    There is no mount namespace (a bind must keep its path; ``ro`` is not enforced) and no
    PID namespace: the server runs in its own process group, killed as a whole once the
    server exits or its host goes away.
    """

    name = "process"

    def resolve_image(self, image: str | os.PathLike[str], sha256: str | None = None) -> Image:
        if sha256 is not None:
            raise ValueError("sha256= pins an image file; the process runtime runs an interpreter")
        path = os.path.abspath(os.path.expanduser(os.fspath(image)))  # a venv's python is a symlink
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise ImageNotFound(
                f"no Python interpreter at {path!r}: with runtime='process' the image is a Python "
                "executable with numpy and gymnasium, e.g. .venv/bin/python or a conda env's bin/python"
            )
        return Image(path, None, os.fspath(image))

    def command(
        self,
        image: str,
        python: str,
        args: Sequence[str],
        binds: Sequence[Bind] = (),
        env: Mapping[str, str] | None = None,
        name: str = "",
    ) -> list[str]:
        for src, dest, _ in binds:
            if os.path.abspath(src) != os.path.abspath(dest):
                raise ValueError(
                    f"bind {src}:{dest}: the process runtime has no container to mount into; "
                    "pass the folder by its host path (src:src)"
                )
        path = f"{os.path.dirname(image)}:{os.defpath.lstrip(':')}"
        base = {"PATH": path, "HOME": os.path.expanduser("~")}
        variables = [f"{key}={value}" for key, value in {**base, **(env or {})}.items()]
        return ["env", "-i", *variables, image, *args]


class _Oci(Runtime):
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
    ) -> list[str]:
        # -i: stdin is the lifeline; --init: a PID 1 that reaps the env's children and
        # forwards signals; host network: TCP ports on 127.0.0.1 work as for a process.
        cmd = [self.executable, "run", "--rm", "-i", "--init", "--network", "host", *self.user_args()]
        if name:
            cmd += ["--name", name]
        for src, dest, mode in binds:
            cmd += ["-v", f"{src}:{dest}:{mode}"]
        for key, value in (env or {}).items():
            cmd += ["-e", f"{key}={value}"]
        return [*cmd, *self.extra_args, image, python, *args]

    def cleanup(self, name: str) -> None:
        # `run --rm` removes the container when the CLI sees it exit; if the CLI itself was
        # killed, the container may still run: remove it by name.
        if name:
            self._run("rm", "--force", name)


class Podman(_Oci):
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


class Docker(_Oci):
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


#: Run by ``sh`` with the lifeline as stdin and args (folder, process group id): when the
#: lifeline closes, wait up to 3 s for the group to exit, kill what is left, remove the folder.
SWEEPER = """
cat >/dev/null
n=0
while kill -s 0 -- "-$2" 2>/dev/null; do
  n=$((n + 1))
  if [ "$n" -gt 150 ]; then kill -s KILL -- "-$2" 2>/dev/null; break; fi
  sleep 0.02
done
exec rm -rf -- "$1"
"""


class ServerProcess:
    """A server process under supervision.

    Its stdin is the read end of a pipe whose only writer is this object (the *lifeline*):
    closing it, or the host process dying, tells the server to exit. A tiny ``sh`` on the
    same lifeline (the *sweeper*) then gives the process group a few seconds to exit, kills
    what is left of it, and removes ``remove_on_exit``, which the container cannot do itself
    (a folder bound into a container is a mount point there). Output goes to ``log_path``. A
    watcher thread waits for the process, kills its group, calls ``cleanup()`` and then
    ``on_exit(returncode)`` the moment it ends, however it ends.
    """

    def __init__(
        self,
        argv: Sequence[str],
        log_path: Path,
        on_exit: Callable[[int], None] | None = None,
        remove_on_exit: Path | None = None,
        cleanup: Callable[[], None] | None = None,
    ) -> None:
        self.log_path = log_path
        self._lock = threading.RLock()  # re-entrant: see runner._on_sigterm
        lifeline_r, self._lifeline = os.pipe()
        try:
            with open(log_path, "ab") as log:
                try:
                    self.proc = subprocess.Popen(
                        list(argv),
                        stdin=lifeline_r,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                        close_fds=True,
                    )
                except OSError as exc:
                    os.close(self._lifeline)
                    raise RuntimeNotAvailable(f"cannot run {argv[0]!r}: {exc}") from None
            self._sweeper = None
            if remove_on_exit is not None:
                self._sweeper = subprocess.Popen(
                    ["sh", "-c", SWEEPER, "sh", str(remove_on_exit), str(self.proc.pid)],
                    stdin=lifeline_r,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                    close_fds=True,
                )
        finally:
            os.close(lifeline_r)
        self.pid = self.proc.pid
        self.exited = threading.Event()
        self._on_exit = on_exit
        self._cleanup = cleanup
        threading.Thread(target=self._watch, name=f"remote-watch-{self.pid}", daemon=True).start()

    def _watch(self) -> None:
        returncode = self.proc.wait()
        self._kill_group(signal.SIGKILL)  # what the server started, if no PID namespace took it
        if self._cleanup is not None:
            self._cleanup()
        self._close_lifeline()
        if self._sweeper is not None:  # the host is alive and cleans up itself (on_exit)
            self._sweeper.kill()
            self._sweeper.wait()
        try:
            if self._on_exit is not None:
                self._on_exit(returncode)
        finally:
            self.exited.set()  # after clean-up: whoever waits on it sees it done

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode if self.exited.is_set() else None

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the process printed."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 16384))
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _kill_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def stop(self, timeout: float = 5.0) -> int | None:
        """Ask the server to exit (close its stdin); kill its process group if it does not
        within ``timeout`` seconds. Returns the exit code."""
        self._close_lifeline()
        if not self.exited.wait(timeout):
            self._kill_group(signal.SIGTERM)
            self._kill_group(signal.SIGCONT)  # a stopped (paused, SIGSTOPped) server must see it
            if not self.exited.wait(1.0):
                self._kill_group(signal.SIGKILL)
                self.exited.wait(5.0)
        return self.proc.returncode

    def _close_lifeline(self) -> None:
        with self._lock:
            if self._lifeline >= 0:
                os.close(self._lifeline)
                self._lifeline = -1
