"""The container's output (its stdout and stderr) as a bounded log on the host.

The container writes into a pipe; a pump thread of the host reads it in big chunks and
appends them to ``path``. Before ``path`` would hold more than half the cap it becomes
``path.1`` (at a line's end; the previous ``path.1`` goes), so the two never hold more than
the cap together (default
``$REMOTE_OUTPUT_MAX_BYTES``, 10 MiB). Each complete line may also go to the logger
``remote.container`` at INFO. :func:`tail` and :func:`follow` (``tail -F``) read such a log
by its path, across the rotation: ``remote logs`` does.
"""

from __future__ import annotations

import codecs
import contextlib
import fcntl
import logging
import os
import select
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from ..config import output_max_bytes

#: Where forwarded lines go (``forward=True``), at INFO, as ``"<container name>: <line>"``.
LOGGER = logging.getLogger("remote.container")
#: Bytes read from the pipe at once (and its size, where the kernel allows it).
CHUNK = 1 << 20
#: A line forwarded to the logger is cut at this many bytes.
MAX_LINE = 1 << 16

#: The outputs of this process whose pipe is open (see :func:`_close_in_child`).
_live: weakref.WeakSet[ContainerOutput] = weakref.WeakSet()


def rotated(path: str | os.PathLike[str]) -> Path:
    """Where ``path`` goes when it is full: ``path.1``."""
    return Path(f"{os.fspath(path)}.1")


class ContainerOutput:
    """A pipe for a container's stdout and stderr, pumped into a bounded log file.

    Give :attr:`writer` to the child as its stdout (and stderr), then call
    :meth:`close_writer`; the pump ends at EOF, once every process of the container is gone.
    The log's files stay open until :meth:`close`: :meth:`tail` reads them even after they
    were removed (a server empties its run folder as it exits, the default log with it).

    Args:
        path: the log; appended to (a restarted container goes on in the same file).
        max_bytes: most bytes ``path`` and ``path.1`` hold together; default
            ``$REMOTE_OUTPUT_MAX_BYTES`` (10 MiB).
        name: the container's name, in forwarded lines.
        forward: also log each complete line to :data:`LOGGER` at INFO.

    Raises:
        OSError: ``path`` cannot be opened for appending.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int | None = None,
        name: str = "",
        forward: bool = False,
    ) -> None:
        self.path = Path(path)
        self.max_bytes = output_max_bytes() if max_bytes is None else int(max_bytes)
        if self.max_bytes < 2:
            raise ValueError(f"max_bytes must be at least 2, not {self.max_bytes}")
        self.name = name
        self.forward = forward
        self._half = self.max_bytes // 2
        self._partial = b""  # the start of a line not yet ended (forwarding only)
        self._writing = True  # until a write fails: then the output is dropped (said once)
        self._lock = threading.Lock()  # the files: rotated by the pump, read by tail()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._older = _open_rw(rotated(self.path), create=False)
        self._current = _open_rw(self.path)
        self._size = os.fstat(self._current).st_size
        self._reader, self.writer = os.pipe()
        with contextlib.suppress(OSError, AttributeError):  # F_SETPIPE_SZ: Linux, Python 3.10+
            fcntl.fcntl(self._reader, fcntl.F_SETPIPE_SZ, CHUNK)
        self._stop = threading.Event()
        self._done = threading.Event()
        _live.add(self)
        self._thread = threading.Thread(target=self._pump, name=f"remote-output-{name}", daemon=True)
        self._thread.start()

    # -- the pump --------------------------------------------------------------------------

    def _pump(self) -> None:
        poller = select.poll()
        poller.register(self._reader, select.POLLIN)
        buffer = bytearray(CHUNK)  # read into, again and again: os.read would allocate each time
        try:
            while not self._stop.is_set():
                if not poller.poll(250):
                    continue
                count = os.readv(self._reader, [buffer])
                if not count:
                    break  # EOF: no process holds the write end any more
                chunk = memoryview(buffer)[:count]
                self._write(chunk)
                if self.forward:
                    self._forward(bytes(chunk))
        finally:
            if self.forward and self._partial:
                self._emit(self._partial)
            os.close(self._reader)
            self._reader = -1
            self._done.set()

    def _write(self, data: memoryview) -> None:
        """Append ``data``, rotating before ``path`` would hold more than half the cap, at a
        line's end (a line longer than that is cut); after a write error (a full disk) the
        output is dropped, never left in the pipe."""
        view = data
        while view and self._writing:
            room = self._half - self._size
            if room <= 0:  # (a log kept from before, under a larger cap)
                self._rotate()
                continue
            cut = len(view)
            if cut > room:
                cut = bytes(view[:room]).rfind(b"\n") + 1
                if cut == 0 and self._size > 0:  # no line ends in the room left: a new file
                    self._rotate()
                    continue
                cut = cut or room
            try:
                written = os.write(self._current, view[:cut])
            except OSError as exc:
                self._failed(exc)
                return
            view = view[written:]
            self._size += written
            if self._size >= self._half:
                self._rotate()

    def _rotate(self) -> None:
        """``path`` becomes ``path.1`` (the old one goes) and a new ``path`` is begun."""
        with self._lock:
            try:
                with contextlib.suppress(FileNotFoundError):  # removed under us: start afresh
                    os.replace(self.path, rotated(self.path))
                current = _open_rw(self.path)
            except OSError as exc:
                self._failed(exc)
                return
            if self._older >= 0:
                os.close(self._older)
            self._older, self._current, self._size = self._current, current, 0

    def _failed(self, exc: OSError) -> None:
        if self._writing:
            self._writing = False
            logging.getLogger("remote").warning(
                "the output of container %s is being dropped: cannot write %s (%s)", self.name, self.path, exc
            )

    def _forward(self, chunk: bytes) -> None:
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        for line in lines:
            self._emit(line)
        if len(self._partial) > MAX_LINE:
            self._emit(self._partial)
            self._partial = b""

    def _emit(self, line: bytes) -> None:
        text = line[:MAX_LINE].decode(errors="replace").rstrip("\r")
        LOGGER.info("%s: %s", self.name, text, extra={"container": self.name})

    # -- the caller's side -------------------------------------------------------------------

    def close_writer(self) -> None:
        """Close this process's copy of the write end (once the child has its own), so that
        the pump sees EOF when the child's processes are gone."""
        if self.writer >= 0:
            with contextlib.suppress(OSError):
                os.close(self.writer)
            self.writer = -1

    @property
    def done(self) -> bool:
        """True once the pump has ended: at EOF, or stopped by :meth:`close`."""
        return self._done.is_set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds for the pump to drain the pipe to EOF; True if it has."""
        return self._done.wait(timeout)

    def close(self, timeout: float = 2.0) -> None:
        """Wait up to ``timeout`` seconds for EOF, then stop the pump (what is left in the
        pipe is lost) and close the log's files. Safe to call more than once."""
        self.close_writer()
        if not self._done.wait(timeout):
            self._stop.set()
            self._done.wait(1.0)
        with self._lock:
            for fd in (self._older, self._current):
                if fd >= 0:
                    os.close(fd)
            self._older = self._current = -1

    def tail(self, lines: int | None = 20, max_bytes: int | None = None) -> str:
        """The last ``lines`` lines written (all for None), at most ``max_bytes`` (see
        :func:`tail`), read from the open files: there even if the log was removed."""
        with self._lock:
            if self._current < 0:  # closed
                return tail(self.path, lines, max_bytes)
            parts = [(_preader(fd), os.fstat(fd).st_size) for fd in (self._older, self._current) if fd >= 0]
            return _decode(_read_end(parts, lines, max_bytes))

    def close_in_child(self) -> None:
        """In a forked child: close the child's copies of the pipe (a child holding the read
        end would block the container on a full pipe after this process is gone)."""
        for fd in (self._reader, self.writer):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.writer = -1


def _open_rw(path: Path, create: bool = True) -> int:
    """``path`` opened for appending and reading (-1 if it does not exist and not ``create``)."""
    flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    try:
        return os.open(path, flags, 0o644)
    except FileNotFoundError:
        if create:
            raise
        return -1


def _preader(fd: int) -> Callable[[int, int], bytes]:
    return lambda position, size: os.pread(fd, size, position)


def _close_in_child() -> None:
    for output in list(_live):
        output.close_in_child()
    _live.clear()


os.register_at_fork(after_in_child=_close_in_child)


# -- reading a log by its path ----------------------------------------------------------------


def _last_lines(data: bytes, lines: int) -> bytes:
    """The last ``lines`` lines of ``data``, with their line ends."""
    cut = len(data) - 1 if data.endswith(b"\n") else len(data)
    for _ in range(lines):
        cut = data.rfind(b"\n", 0, cut)
        if cut < 0:
            return data
    return data[cut + 1 :]


def _read_end(
    parts: list[tuple[Callable[[int, int], bytes], int]], lines: int | None, max_bytes: int | None
) -> bytes:
    """The end of the files ``parts`` (``(read(position, size), end)`` each), read as one:
    all of it, or enough for ``lines`` lines, at most ``max_bytes``."""
    blocks: list[bytes] = []
    newlines = total = 0
    for read, end in reversed(parts):
        position = end
        while position > 0:
            if (lines is not None and newlines > lines) or (max_bytes is not None and total >= max_bytes):
                break
            size = min(CHUNK, position)
            position -= size
            block = read(position, size)
            blocks.append(block)
            newlines += block.count(b"\n")
            total += len(block)
    data = b"".join(reversed(blocks))
    if max_bytes is not None:
        data = data[-max_bytes:]
    return data if lines is None else _last_lines(data, lines)


def _open(path: Path) -> BinaryIO | None:
    try:
        return open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        return None


def _size(handle: BinaryIO) -> int:
    return os.fstat(handle.fileno()).st_size


def _decode(data: bytes) -> str:
    return data.decode(errors="replace")


def _head(path: Path, lines: int | None, max_bytes: int | None) -> tuple[bytes, BinaryIO | None]:
    """What is in ``path.1`` and ``path`` now (all, or the last ``lines``), and ``path`` open
    at the end of what was read."""
    current, older = _open(path), _open(rotated(path))
    try:
        parts = [(_preader(h.fileno()), _size(h)) for h in (older, current) if h is not None]
        data = _read_end(parts, lines, max_bytes)
        if current is not None:
            current.seek(parts[-1][1])
        return data, current
    finally:
        if older is not None:
            older.close()


def tail(path: str | os.PathLike[str], lines: int | None = 20, max_bytes: int | None = None) -> str:
    """The last ``lines`` lines of the log ``path`` (all of it for None), spanning ``path.1``
    and ``path``, and at most its last ``max_bytes`` bytes; "" if there is none."""
    data, current = _head(Path(path), lines, max_bytes)
    if current is not None:
        current.close()
    return _decode(data)


def follow(
    path: str | os.PathLike[str],
    running: Callable[[], bool],
    *,
    lines: int | None = None,
    interval: float = 0.2,
) -> Iterator[str]:
    """The log ``path`` (all of it, or its last ``lines`` lines), then whatever is written to it,
    as it comes, like ``tail -F``: across rotation (and a log that does not exist yet), until
    ``running()`` is false and all that was written has been read."""
    path = Path(path)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    data, handle = _head(path, lines, None)
    if data:
        yield decoder.decode(data)
    try:
        while True:
            alive = running()  # asked first: what it wrote before it ended is read below
            while True:
                chunk = handle.read(CHUNK) if handle is not None else b""
                if chunk:
                    yield decoder.decode(chunk)
                    continue
                try:
                    now = os.stat(path)
                except FileNotFoundError:
                    break
                if handle is None or now.st_ino != os.fstat(handle.fileno()).st_ino:
                    if handle is not None:  # rotated: the old file is complete; its rest, then the new
                        rest = handle.read()
                        if rest:
                            yield decoder.decode(rest)
                        handle.close()
                    handle = _open(path)
                    continue
                if now.st_size < handle.tell():  # truncated
                    handle.seek(0)
                    continue
                break
            if not alive:
                tail_end = decoder.decode(b"", final=True)
                if tail_end:
                    yield tail_end
                return
            time.sleep(interval)
    finally:
        if handle is not None:
            handle.close()
