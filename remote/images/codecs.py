"""Compiled msgpack for images whose Python is not the host's, brought in the payload.

msgpack's compiled module is built for one CPython version
(``_cmsgpack.cpython-313-x86_64-linux-gnu.so``). An image whose Python is not the host's
cannot load the host's module: msgpack's pure-Python fallback runs there, at ~1.2-1.3x the
step cost. :func:`pull` downloads msgpack's wheels (the host's msgpack version and machine,
manylinux, so any glibc ≥ 2.17) for each CPython remote supports, once, into the cache; the
payload then holds every such module in its ``msgpack`` package, beside the host's, and the
image's import system loads the one whose suffix is its own: nothing is probed or chosen at
start.

Nothing is downloaded when a container starts: a compute node without network runs the
fallback, and the host warns once, saying what to do (:func:`fallback_advice`).

Layout under the cache (shared by every job of the user; a pull holds its lock)::

    codecs/msgpack-<version>-<machine>/_cmsgpack.cpython-3XY-<machine>-linux-gnu.so
    codecs/locks/msgpack-<version>-<machine>.lock
"""

from __future__ import annotations

import platform
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import msgpack

from .cache import atomic_file, cache_dir, cache_error, file_lock

#: The CPython versions remote serves envs from (Python ≥ 3.10): those :func:`pull` fetches.
PYTHONS = ("3.10", "3.11", "3.12", "3.13", "3.14")
#: The host's msgpack: the payload's Python code, which every compiled module must match.
VERSION = metadata.version("msgpack")
#: ``3XY`` in a compiled module's name (``_cmsgpack.cpython-313-x86_64-linux-gnu.so``).
_MODULE = re.compile(r"_cmsgpack\.cpython-3(\d+)-[\w-]+\.so")
#: Seconds one ``pip download`` may take.
PIP_TIMEOUT = 300.0


@dataclass(frozen=True)
class Codec:
    """The compiled msgpack for one CPython version: where it is, or why there is none."""

    python: str  #: ``"3.13"``
    module: Path | None  #: the compiled module the payload brings for it, if any
    error: str | None = None  #: why the last :func:`pull` got none


def folder() -> Path:
    """Where the pulled modules of the host's msgpack version and machine are (or would be)."""
    return cache_dir() / "codecs" / f"msgpack-{VERSION}-{platform.machine()}"


def modules() -> dict[str, Path]:
    """CPython version (``"3.13"``) → the compiled msgpack module the payload brings for it:
    the host's own, and those pulled into the cache."""
    host = Path(msgpack.__file__).parent
    found: dict[str, Path] = {}
    for path in [*sorted(folder().glob("_cmsgpack.*.so")), *sorted(host.glob("_cmsgpack.*.so"))]:
        match = _MODULE.fullmatch(path.name)
        if match:
            found[f"3.{match[1]}"] = path
    return found


def status(pythons: Sequence[str] = PYTHONS) -> list[Codec]:
    """The compiled msgpack the payload brings for each of ``pythons`` (None: the fallback runs)."""
    have = modules()
    return [Codec(python, have.get(python)) for python in pythons]


def pull(pythons: Sequence[str] = PYTHONS) -> list[Codec]:
    """Download the compiled msgpack for each of ``pythons`` the cache lacks, and say what it
    has now: one ``pip download`` of a wheel per version (the host's pip settings: index, CA
    bundle, proxy), in parallel; the module is kept, the wheel dropped. Processes pulling at
    once wait for each other; a version already there costs nothing.

    Raises:
        CacheError: the cache cannot be written.
    """
    target = folder()
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise cache_error(exc, target) from None
    with file_lock(target.parent / "locks" / f"{target.name}.lock"):
        missing = [python for python in pythons if python not in modules()]
        with ThreadPoolExecutor(max_workers=4) as pool:
            errors = dict(zip(missing, pool.map(lambda python: _fetch(python, target), missing), strict=True))
    have = modules()
    return [Codec(python, have.get(python), errors.get(python)) for python in pythons]


def _fetch(python: str, target: Path) -> str | None:
    """Put the compiled module of msgpack's wheel for CPython ``python`` into ``target``;
    None, or why not (pip's last words)."""
    tag = python.replace(".", "")
    machine = platform.machine()
    with tempfile.TemporaryDirectory(prefix=".pull-", dir=target.parent) as tmp:
        command = [
            sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
            "--no-deps", "--only-binary=:all:", "--implementation", "cp", "--python-version", python,
            "--abi", f"cp{tag}", "--platform", f"manylinux_2_17_{machine}", "--platform",
            f"manylinux2014_{machine}", "--dest", tmp, f"msgpack=={VERSION}",
        ]  # fmt: skip
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT)
        except subprocess.TimeoutExpired:
            return f"pip download took over {PIP_TIMEOUT:g} s (no network here?)"
        wheels = sorted(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            last = lines[-1].strip().removeprefix("ERROR: ") if lines else f"exited with {done.returncode}"
            return f"pip download: {last}"
        with zipfile.ZipFile(wheels[0]) as wheel:
            names = [n for n in wheel.namelist() if _MODULE.fullmatch(n.removeprefix("msgpack/"))]
            if not names:
                return f"{wheels[0].name} holds no compiled module"
            with atomic_file(target / Path(names[0]).name) as out:
                out.write(wheel.read(names[0]))
    return None


def fallback_advice(python: str | None) -> str:
    """Why an image whose Python is ``python`` (``"3.13.5"``) runs msgpack's fallback, and
    what to do about it: one clause for the host's warning."""
    minor = ".".join((python or "?").split(".")[:2])
    if minor in modules():
        return (
            f"the payload's compiled msgpack for Python {minor} did not load there (a musl libc, a glibc "
            "older than 2.17, a free-threaded Python, or MSGPACK_PUREPYTHON set?)"
        )
    supported = f"{PYTHONS[0]}-{PYTHONS[-1]}"
    if minor not in PYTHONS:
        return f"remote brings compiled msgpack for Python {supported} only: an image with one avoids it"
    return (
        f"run `remote codecs pull` once (where there is network: it fills the cache your jobs share) "
        f"to bring compiled msgpack for Python {supported}"
    )
