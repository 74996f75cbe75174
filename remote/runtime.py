"""Container runtimes, and the supervised process that runs the server in one.

A runtime turns "run this command in this image, with these folders and variables" into
an argv. :class:`ServerProcess` starts that argv and supervises it.

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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from .errors import RuntimeNotAvailable

INSTALL_HINT = (
    "install Apptainer (https://apptainer.org/docs/admin/main/installation.html; on Debian 12 "
    "run scripts/install-apptainer.sh from the remote repository as root), or set "
    "REMOTE_APPTAINER to the path of an apptainer or singularity executable"
)


class Apptainer:
    """The Apptainer (or SingularityCE) runtime: rootless, unprivileged ``exec``.

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
                raise RuntimeNotAvailable(f"{wanted!r} is not an executable; {INSTALL_HINT}")
        else:
            found = shutil.which("apptainer") or shutil.which("singularity")
            if found is None:
                raise RuntimeNotAvailable(f"neither apptainer nor singularity is on PATH; {INSTALL_HINT}")
        self.executable = found
        self.extra_args = list(extra_args)

    def command(
        self,
        image: str,
        argv: Sequence[str],
        binds: Sequence[tuple[str, str, str]] = (),
        env: Mapping[str, str] | None = None,
    ) -> list[str]:
        """The argv that runs ``argv`` in ``image`` with ``binds`` (src, dest, "ro"|"rw")
        and only the variables in ``env`` (the host's environment is not passed in)."""
        cmd = [self.executable, "exec", "--cleanenv", "--pid", *self.extra_args]
        for src, dest, mode in binds:
            cmd += ["--bind", f"{src}:{dest}:{mode}"]
        for key, value in (env or {}).items():
            cmd += ["--env", f"{key}={value}"]
        return [*cmd, image, *argv]


class ServerProcess:
    """A server process under supervision.

    Its stdin is the read end of a pipe whose only writer is this object (the *lifeline*):
    closing it, or the host process dying, tells the server to exit. A tiny ``sh`` on the
    same lifeline removes ``remove_on_exit`` then, which the container cannot do itself (a
    folder bound into a container is a mount point there). Output goes to ``log_path``. A
    watcher thread waits for the process and calls ``on_exit(returncode)`` the moment it
    ends, however it ends.
    """

    def __init__(
        self,
        argv: Sequence[str],
        log_path: Path,
        on_exit: Callable[[int], None] | None = None,
        remove_on_exit: Path | None = None,
    ) -> None:
        self.log_path = log_path
        self._lock = threading.Lock()
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
                    raise RuntimeNotAvailable(f"cannot run {argv[0]!r}: {exc}; {INSTALL_HINT}") from None
            self._sweeper = None
            if remove_on_exit is not None:
                self._sweeper = subprocess.Popen(
                    ["sh", "-c", 'cat >/dev/null; exec rm -rf -- "$1"', "sh", str(remove_on_exit)],
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
        threading.Thread(target=self._watch, name=f"remote-watch-{self.pid}", daemon=True).start()

    def _watch(self) -> None:
        returncode = self.proc.wait()
        self._kill_group(signal.SIGKILL)  # anything that left the PID namespace's reach
        self._close_lifeline()  # the sweeper removes the run folder and exits
        if self._sweeper is not None:
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
            if not self.exited.wait(1.0):
                self._kill_group(signal.SIGKILL)
                self.exited.wait(5.0)
        return self.proc.returncode

    def _close_lifeline(self) -> None:
        with self._lock:
            if self._lifeline >= 0:
                os.close(self._lifeline)
                self._lifeline = -1
