"""The supervised server process: a lifeline, a sweeper, a watcher; the same for every runtime."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import RuntimeNotAvailable
from .output import ContainerOutput

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

#: Seconds the watcher waits for the output pump to drain the pipe once the process is gone.
DRAIN_TIMEOUT = 2.0
#: The most of its output an error message shows (see :meth:`ServerProcess.log_tail`).
TAIL_BYTES = 16384

#: The ServerProcesses of this process whose lifeline is open (see :func:`close_lifelines_in_child`).
_live: weakref.WeakSet[ServerProcess] = weakref.WeakSet()


class ServerProcess:
    """A server process under supervision.

    Its stdin is the read end of a pipe whose only writer is this object (the *lifeline*):
    closing it, or the host process dying, tells the server to exit. A tiny ``sh`` on the
    same lifeline (the *sweeper*) then gives the process group a few seconds to exit, kills
    what is left of it, and removes ``remove_on_exit``, which the container cannot do itself
    (a folder bound into a container is a mount point there). Its stdout and stderr go to
    ``output`` (:class:`remote.runtime.output.ContainerOutput`, a bounded log). A watcher
    thread waits for the process, kills its group, calls ``cleanup()``, lets ``output`` drain
    and then calls ``on_exit(returncode)`` the moment it ends, however it ends.

    A child forked from this process (``AsyncVectorEnv``'s workers, ``multiprocessing``)
    closes its copy of the lifeline at once, so that only this process keeps the server
    alive, and leaves the server to it: ``stop()`` there does nothing.
    """

    def __init__(
        self,
        argv: Sequence[str],
        output: ContainerOutput,
        on_exit: Callable[[int], None] | None = None,
        remove_on_exit: Path | None = None,
        cleanup: Callable[[], None] | None = None,
    ) -> None:
        self.output = output
        self._lock = threading.RLock()  # re-entrant: see runner._on_sigterm
        self._owner = os.getpid()  # another pid: a forked child, which must leave the server alone
        lifeline_r, self._lifeline = os.pipe()
        _live.add(self)
        try:
            try:
                self.proc = subprocess.Popen(
                    list(argv),
                    stdin=lifeline_r,
                    stdout=output.writer,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as exc:
                os.close(self._lifeline)
                output.close(0.0)
                raise RuntimeNotAvailable(f"cannot run {argv[0]!r}: {exc}") from None
            finally:
                output.close_writer()  # the child has its own: EOF comes when its processes are gone
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
        self.output.join(DRAIN_TIMEOUT)  # its last words, before on_exit reads them
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

    @property
    def log_path(self) -> Path:
        """The log of the process's output."""
        return self.output.path

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the process printed (at most :data:`TAIL_BYTES` of them)."""
        try:
            return self.output.tail(lines, TAIL_BYTES).rstrip("\n")
        except OSError:
            return ""

    @property
    def inherited(self) -> bool:
        """True in a child forked from the process that started the server: not its to stop."""
        return os.getpid() != self._owner

    def _kill_group(self, sig: signal.Signals) -> None:
        if self.inherited:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def stop(self, timeout: float = 5.0) -> int | None:
        """Ask the server to exit (close its stdin); kill its process group if it does not
        within ``timeout`` seconds. Returns the exit code; None at once in a forked child."""
        self._close_lifeline()
        if self.inherited:
            return None
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
                _live.discard(self)

    def close_lifeline_in_child(self) -> None:
        """In a forked child: close the child's copy of the lifeline (its lock may have been
        held by a thread the child does not have, so it is not taken, but replaced)."""
        self._lock = threading.RLock()
        if self._lifeline >= 0:
            with contextlib.suppress(OSError):
                os.close(self._lifeline)
            self._lifeline = -1


def close_lifelines_in_child() -> None:
    """Run in every child forked from this process: a child that kept a lifeline open would
    keep its server running after this process is gone (``kill -9``), and make ``stop()``
    wait for the child to exit before the server sees its stdin close."""
    for process in list(_live):
        process.close_lifeline_in_child()
    _live.clear()


os.register_at_fork(after_in_child=close_lifelines_in_child)
