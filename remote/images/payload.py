"""The server code the host brings into the container at start.

Any image with Python, numpy and gymnasium can serve an env: the host copies its own
``remote`` package and what the server needs beyond that (Pyro5, serpent, msgpack) into a
folder of the cache, and the container sees it read-only. msgpack's package holds the host's
compiled module and those pulled for other Pythons (:mod:`.codecs`): the image's Python loads
the one made for it, or msgpack's pure-Python fallback where there is none.

The host's ``remote`` goes first on ``sys.path`` (host and server then always speak the
same protocol version); the dependencies go last, so an image's own versions win.
"""

from __future__ import annotations

import compileall
import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import msgpack
import Pyro5
import serpent

from . import codecs
from .cache import cache_dir, cache_error, fingerprint

#: The host's ``remote`` package, copied whole into the payload.
PACKAGE = Path(__file__).resolve().parent.parent

#: Run by the image's Python: ``python3 -c BOOTSTRAP <payload dir> <run dir>``.
BOOTSTRAP = (
    "import sys; p = sys.argv[1]; sys.path.insert(0, p + '/top'); sys.path.append(p + '/deps'); "
    "import remote.server; remote.server.main(sys.argv[2])"
)


def _sources() -> dict[str, Path]:
    """Folder name in the payload → host path of the package (or module file); a compiled
    msgpack pulled for another Python goes into the msgpack package (a pull makes a new payload)."""
    host_msgpack = Path(msgpack.__file__).parent
    pulled = {
        f"deps/msgpack/{module.name}": module
        for module in codecs.modules().values()
        if module.parent != host_msgpack
    }
    return {
        "top/remote": PACKAGE,
        "deps/Pyro5": Path(Pyro5.__file__).parent,
        "deps/msgpack": host_msgpack,
        "deps/serpent.py": Path(serpent.__file__),
        **pulled,
    }


def payload_dir() -> Path:
    """The payload folder for the code installed on this host, built once and shared.

    Built in a temporary folder and renamed into place, so concurrent processes never see
    a half-written payload.
    """
    sources = _sources()
    target = _payload_path(sources)
    root = target.parent
    if target.is_dir():
        with contextlib.suppress(OSError):  # its age tells prune() it is in use
            os.utime(target)
        return target
    try:
        _copy(sources, root, target)
    except OSError as exc:  # a full or read-only cache
        raise cache_error(exc, root) from None
    return target


def prune(older_than: float) -> list[Path]:
    """Remove the payloads (of code since upgraded or changed) no container started from for
    ``older_than`` seconds; never the current one. Returns the folders removed."""
    current = _payload_path(_sources())
    if not current.parent.is_dir():
        return []
    cutoff = time.time() - older_than
    removed = []
    for folder in sorted(current.parent.iterdir()):
        if folder != current and folder.is_dir() and not folder.name.startswith("."):
            with contextlib.suppress(OSError):
                if folder.stat().st_mtime < cutoff:
                    shutil.rmtree(folder)
                    removed.append(folder)
    return removed


def _payload_path(sources: dict[str, Path]) -> Path:
    """Where the payload of ``sources`` is (or goes) in the cache."""
    return cache_dir() / "payload" / fingerprint(sources)


def _copy(sources: dict[str, Path], root: Path, target: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        for name, src in sources.items():
            dest = staging / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(src, dest)
        # bytecode for this host's Python: an image with the same version starts ~20 ms
        # sooner (the payload is read-only there, so nothing would be cached)
        compileall.compile_dir(staging, quiet=2, workers=1)
        staging.chmod(0o755)
        try:
            os.rename(staging, target)
        except OSError:  # another process won the race: use its copy
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
