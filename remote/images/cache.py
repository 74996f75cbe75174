"""The per-user cache: a folder shared by every process of a user, images stored by sha256.

Layout under :func:`cache_dir`::

    images/sha256/<hex>.sif   an image, named by the sha256 of its bytes
    images/index.json         what each cached image came from (see :class:`CachedImage`)
    images/locks/<key>.lock   one lock per image being fetched or built
    payload/                  the server code brought into containers (remote.payload)
    codecs/                   compiled msgpack for images' other Pythons (remote.images.codecs)

A file appears under its final name only complete and verified: it is written to a
temporary file in the same folder, ``fsync``-ed and renamed (:func:`atomic_file`). Processes
that want the same image take its lock (:func:`file_lock`); the first fetches it, the others
wait and then find it in place, so N jobs starting at once download or build it once.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from ..config import cache_root
from ..errors import CacheError

#: errno values that mean "this file system will not take the write", not a bug.
UNWRITABLE = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def cache_dir() -> Path:
    """The cache folder: ``$REMOTE_CACHE``, else ``$XDG_CACHE_HOME/remote``, else ``~/.cache/remote``.

    Point ``REMOTE_CACHE`` at scratch space on a cluster where ``$HOME`` is small.

    Raises:
        CacheError: the folder cannot be created.
    """
    path = cache_root()
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise cache_error(exc, path) from None
    return path


def cache_error(exc: OSError, path: Path | str) -> CacheError:
    """A :class:`CacheError` for a failed write at ``path`` that tells the user what to do."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        why = "the file system is full (or over quota)"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        why = "the file system is read-only or the folder is not writable"
    else:
        why = os.strerror(exc.errno) if exc.errno else str(exc)
    return CacheError(
        f"cannot write the remote cache at {path}: {why} ({exc.strerror or exc}). Free space with "
        "remote.images.prune(), or set REMOTE_CACHE to a writable folder with room for images "
        "(on a cluster: your scratch space)"
    )


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block.

    The lock belongs to the open file, so it is released when the block ends or the process
    dies, however it dies: no stale locks. Any number of processes may wait on it.

    On NFS, Linux emulates ``flock`` with POSIX byte-range locks, which hold across nodes
    when the server supports locking (NFSv4, or NFSv3 with lockd). Where it does not, the
    call fails (``ENOLCK``, raised as :class:`CacheError`) or, on mounts with ``local_lock``,
    locks only within one node; then processes on different nodes may fetch the same image
    twice. That still cannot corrupt the cache (each writes its own temporary file and the
    rename is atomic) but wastes the transfer: put ``REMOTE_CACHE`` on a file system with
    working locks, or fetch the image once before starting an array of jobs.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise cache_error(exc, path) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            raise CacheError(
                f"cannot lock {path}: {exc.strerror}; the file system of the remote cache does not "
                "support file locks: set REMOTE_CACHE to a local or scratch folder"
            ) from None
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Write ``path`` all at once: yield a temporary file beside it; when the block ends
    without error, ``fsync`` it and rename it to ``path``. On error the temporary file is
    removed and ``path`` is untouched. A full or read-only file system raises CacheError."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise cache_error(exc, path.parent) from None
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        publish(Path(tmp), path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.errno in UNWRITABLE:
            raise cache_error(exc, path.parent) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def publish(tmp: Path, path: Path) -> None:
    """Rename the complete file ``tmp`` to ``path`` (same folder) and make the rename durable."""
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes, as 64 hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    """sha256 of a local file, remembered by path, size and mtime so a large image is read once."""
    st = path.stat()
    key = f"{path}:{st.st_size}:{st.st_mtime_ns}"
    memo = cache_dir() / "digests.json"
    try:
        known = json.loads(memo.read_text())
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    if isinstance(known.get(key), str):
        return known[key]
    digest = sha256_file(path)
    known = {k: v for k, v in known.items() if not k.startswith(f"{path}:")}
    known[key] = digest
    with contextlib.suppress(CacheError), atomic_file(memo, "w") as f:  # a memo: losing it is fine
        json.dump(known, f)
    return digest


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def fingerprint(sources: dict[str, Path]) -> str:
    """A short digest of the names, sizes and mtimes of the files under ``sources`` (label → path)."""
    digest = hashlib.sha256()
    for name, src in sorted(sources.items()):
        for f in _files(src):
            st = f.stat()
            digest.update(
                f"{name}/{f.relative_to(src) if src.is_dir() else ''}:"
                f"{st.st_size}:{st.st_mtime_ns}\n".encode()
            )
    return digest.hexdigest()[:16]


# -- the image store -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CachedImage:
    """One image in the cache: what it is called, where it came from, what it is."""

    name: str  #: short name: the file, recipe or repository name of the source
    source: str  #: what was resolved: a URL, ``docker://...``, or ``build:<recipe>#<key>``
    sha256: str  #: sha256 of the image file
    size: int  #: bytes
    last_used: float  #: Unix time of the last resolution
    path: str  #: the image file


def images_dir() -> Path:
    return cache_dir() / "images"


def image_path(sha256: str) -> Path:
    """Where the image with this sha256 is stored (whether or not it is there)."""
    return images_dir() / "sha256" / f"{sha256}.sif"


def image_lock(key: str) -> contextlib.AbstractContextManager[None]:
    """The lock for fetching or building one image; ``key`` is its sha256 or its source."""
    name = key if len(key) == 64 and all(c in "0123456789abcdef" for c in key) else _hash(key)
    return file_lock(images_dir() / "locks" / f"{name}.lock")


def staging_dir() -> Path:
    """The folder for files being downloaded or built: beside the store, so a rename publishes."""
    path = images_dir() / "sha256"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise cache_error(exc, path) from None
    return path


def lookup(source: str) -> CachedImage | None:
    """The cached image resolved from ``source`` before, if its file is still there."""
    entry = _read_index().get(source)
    if entry is None or not Path(entry["path"]).is_file():
        return None
    return CachedImage(**entry)


def record(source: str, name: str, sha256: str) -> CachedImage:
    """Note that ``source`` resolved to the stored image ``sha256``; refresh its last use."""
    path = image_path(sha256)
    entry = CachedImage(name, source, sha256, path.stat().st_size, time.time(), str(path))
    _update_index(lambda index: index.__setitem__(source, asdict(entry)))
    return entry


def entries() -> list[CachedImage]:
    """Every image in the index whose file is there, most recently used first."""
    found = [CachedImage(**e) for e in _read_index().values() if Path(e["path"]).is_file()]
    return sorted(found, key=lambda e: e.last_used, reverse=True)


def forget(chosen: list[CachedImage]) -> None:
    """Remove ``chosen`` from the index, and each file no other entry still uses.

    A process using a removed image keeps it open; the next resolution fetches it again.
    """
    gone = {e.source for e in chosen}
    unused: set[str] = set()

    def drop(index: dict[str, Any]) -> None:
        for source in gone:
            index.pop(source, None)
        kept = {e["sha256"] for e in index.values()}
        unused.update(e.path for e in chosen if e.sha256 not in kept)

    _update_index(drop)
    for path in unused:
        Path(path).unlink(missing_ok=True)


def _index_path() -> Path:
    return images_dir() / "index.json"


def _read_index() -> dict[str, Any]:
    try:
        data = json.loads(_index_path().read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return {}  # unreadable index: start over; the stored files are found again on use
    return data.get("images", {}) if isinstance(data, dict) else {}


def _update_index(change: Callable[[dict[str, Any]], None]) -> None:
    """Read, change and rewrite the index under its lock (writes are atomic)."""
    path = _index_path()
    with file_lock(path.with_suffix(".lock")):
        index = _read_index()
        change(index)
        with atomic_file(path, "w") as f:
            json.dump({"version": 1, "images": index}, f, indent=1, sort_keys=True)


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
