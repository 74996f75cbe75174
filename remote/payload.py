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
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import msgpack
import Pyro5
import serpent

import remote

from .cache import cache_dir

#: Run by the image's Python: ``python3 -c BOOTSTRAP <payload dir> <run dir>``.
BOOTSTRAP = (
    "import sys; p = sys.argv[1]; sys.path.insert(0, p + '/top'); sys.path.append(p + '/deps'); "
    "import remote.server; remote.server.main(sys.argv[2])"
)


def _sources() -> dict[str, Path]:
    """Folder name in the payload → host path of the package (or module file)."""
    return {
        "top/remote": Path(remote.__file__).parent,
        "deps/Pyro5": Path(Pyro5.__file__).parent,
        "deps/msgpack": Path(msgpack.__file__).parent,
        "deps/serpent.py": Path(serpent.__file__),
    }


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def _fingerprint(sources: dict[str, Path]) -> str:
    digest = hashlib.sha256()
    for name, src in sorted(sources.items()):
        for f in _files(src):
            st = f.stat()
            digest.update(
                f"{name}/{f.relative_to(src) if src.is_dir() else ''}:"
                f"{st.st_size}:{st.st_mtime_ns}\n".encode()
            )
    return digest.hexdigest()[:16]


def payload_dir() -> Path:
    """The payload folder for the code installed on this host, built once and shared.

    Built in a temporary folder and renamed into place, so concurrent processes never see
    a half-written payload.
    """
    sources = _sources()
    root = cache_dir() / "payload"
    target = root / _fingerprint(sources)
    if target.is_dir():
        return target
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
    return target
