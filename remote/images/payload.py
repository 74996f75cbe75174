"""The server code the host brings into the container at start.

Any image with Python, numpy and gymnasium can serve an env: the host copies its own
``remote`` package and the pure-Python parts of what the server needs beyond that (Pyro5,
serpent, msgpack; msgpack falls back to pure Python when its compiled module does not fit
the image's Python) into a folder of the cache, and the container sees it read-only.

The host's ``remote`` goes first on ``sys.path`` (host and server then always speak the
same protocol version); the dependencies go last, so an image's own versions win.
"""

from __future__ import annotations

import compileall
import os
import shutil
import tempfile
from pathlib import Path

import msgpack
import Pyro5
import serpent

from .cache import cache_dir, cache_error, fingerprint

#: The host's ``remote`` package, copied whole into the payload.
PACKAGE = Path(__file__).resolve().parent.parent

#: Run by the image's Python: ``python3 -c BOOTSTRAP <payload dir> <run dir>``.
BOOTSTRAP = (
    "import sys; p = sys.argv[1]; sys.path.insert(0, p + '/top'); sys.path.append(p + '/deps'); "
    "import remote.server; remote.server.main(sys.argv[2])"
)


def _sources() -> dict[str, Path]:
    """Folder name in the payload → host path of the package (or module file)."""
    return {
        "top/remote": PACKAGE,
        "deps/Pyro5": Path(Pyro5.__file__).parent,
        "deps/msgpack": Path(msgpack.__file__).parent,
        "deps/serpent.py": Path(serpent.__file__),
    }


def payload_dir() -> Path:
    """The payload folder for the code installed on this host, built once and shared.

    Built in a temporary folder and renamed into place, so concurrent processes never see
    a half-written payload.
    """
    sources = _sources()
    root = cache_dir() / "payload"
    target = root / fingerprint(sources)
    if target.is_dir():
        return target
    try:
        _copy(sources, root, target)
    except OSError as exc:  # a full or read-only cache
        raise cache_error(exc, root) from None
    return target


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
