"""Settings: every ``REMOTE_*`` environment variable remote reads, in one place.

=========================== ==================================================================
``REMOTE_TIMEOUT``          seconds a call may take (default 300), read at import
``REMOTE_START_TIMEOUT``    seconds a container may take to start (default 120), read at import
``REMOTE_RUNTIME``          the default runtime (``apptainer``)
``REMOTE_APPTAINER``        the ``apptainer``/``singularity`` executable (default: from ``PATH``)
``REMOTE_CACHE``            the cache folder (default ``$XDG_CACHE_HOME/remote``, ``~/.cache/remote``)
``REMOTE_RECORD``           the record file (default ``record.sqlite`` in the cache)
``REMOTE_PORT_RANGE``       the ports leases come from, ``LOW-HIGH`` (default 20000-32767)
``REMOTE_CA_BUNDLE``        a CA bundle to verify image downloads with
``REMOTE_EXPERIMENTS``      the experiments lock file (default ``./remote-experiments.json``)
``REMOTE_IMAGE``            the image of ``gymnasium.make("remote/<id>")`` without ``image=``
``REMOTE_OUTPUT_MAX_BYTES`` bytes a container's output log may hold (default 10 MiB, e.g. ``50M``)
=========================== ==================================================================

Each function reads its variable when called, so a change to ``os.environ`` takes effect
at the next call (the two timeouts are defaults of arguments, read once at import).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .errors import RuntimeNotAvailable

#: Most bytes a container's output log keeps when ``REMOTE_OUTPUT_MAX_BYTES`` is not set.
DEFAULT_OUTPUT_MAX_BYTES = 10 * 2**20

#: The ports leases come from when ``REMOTE_PORT_RANGE`` is not set: below Linux's
#: ephemeral range, so a socket bound to port 0 elsewhere does not land on a leased port.
DEFAULT_PORT_RANGE = (20000, 32767)

APPTAINER_HINT = (
    "install Apptainer (https://apptainer.org/docs/admin/main/installation.html; on Debian 12 "
    "run scripts/install-apptainer.sh from the remote repository as root), or set "
    "REMOTE_APPTAINER to the path of an apptainer or singularity executable, or use another "
    "runtime (runtime='process' runs the server with a local Python, no container)"
)


def _get(name: str) -> str | None:
    return os.environ.get(f"REMOTE_{name}") or None


def timeout() -> float:
    """``$REMOTE_TIMEOUT``: seconds a call may take before CallTimeout (default 300)."""
    return float(_get("TIMEOUT") or 300)


def start_timeout() -> float:
    """``$REMOTE_START_TIMEOUT``: seconds a container may take to answer (default 120)."""
    return float(_get("START_TIMEOUT") or 120)


def runtime_name() -> str:
    """``$REMOTE_RUNTIME``, default ``"apptainer"``."""
    return _get("RUNTIME") or "apptainer"


def apptainer_executable(wanted: str | None = None) -> str:
    """The path of ``wanted``, else of ``$REMOTE_APPTAINER``, else of the first of
    ``apptainer``, ``singularity`` on ``PATH``.

    Raises:
        RuntimeNotAvailable: there is none (the message says how to get one).
    """
    wanted = wanted or _get("APPTAINER")
    if wanted:
        found = shutil.which(wanted)
        if found is None:
            raise RuntimeNotAvailable(f"{wanted!r} is not an executable; {APPTAINER_HINT}")
        return found
    found = shutil.which("apptainer") or shutil.which("singularity")
    if found is None:
        raise RuntimeNotAvailable(f"neither apptainer nor singularity is on PATH; {APPTAINER_HINT}")
    return found


def cache_root() -> Path:
    """``$REMOTE_CACHE``, else ``$XDG_CACHE_HOME/remote``, else ``~/.cache/remote`` (not created)."""
    explicit = _get("CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "remote"


def record_file() -> Path | None:
    """``$REMOTE_RECORD``, if set: the record file to use instead of the cache's."""
    path = _get("RECORD")
    return Path(path) if path else None


def port_range() -> tuple[int, int]:
    """``$REMOTE_PORT_RANGE`` ("LOW-HIGH"), else :data:`DEFAULT_PORT_RANGE`.

    Raises:
        ValueError: the variable is not a range of unprivileged ports.
    """
    text = _get("PORT_RANGE")
    if not text:
        return DEFAULT_PORT_RANGE
    low, _, high = text.partition("-")
    try:
        bounds = int(low), int(high)
    except ValueError:
        raise ValueError(f"REMOTE_PORT_RANGE={text!r}: expected LOW-HIGH, e.g. 20000-32767") from None
    if not 1024 <= bounds[0] <= bounds[1] <= 65535:
        raise ValueError(f"REMOTE_PORT_RANGE={text!r}: need 1024 <= LOW <= HIGH <= 65535")
    return bounds


def ca_bundle() -> str | None:
    """``$REMOTE_CA_BUNDLE``: a CA bundle to verify image servers with."""
    return _get("CA_BUNDLE")


def experiments_file() -> str | None:
    """``$REMOTE_EXPERIMENTS``: the experiments lock file."""
    return _get("EXPERIMENTS")


def default_image() -> str | None:
    """``$REMOTE_IMAGE``: the image of registered ``remote/<id>`` envs made without ``image=``."""
    return _get("IMAGE")


def output_max_bytes() -> int:
    """``$REMOTE_OUTPUT_MAX_BYTES``: most bytes a container's output log keeps, its file and
    the rotated ``.1`` together (default :data:`DEFAULT_OUTPUT_MAX_BYTES`); a whole number,
    optionally with a binary ``K``, ``M`` or ``G`` (``512K``, ``50M``).

    Raises:
        ValueError: the variable is not such a size, or is below 2 KiB.
    """
    text = _get("OUTPUT_MAX_BYTES")
    if not text:
        return DEFAULT_OUTPUT_MAX_BYTES
    number, unit = text.strip().upper().rstrip("IB"), 1
    if number[-1:] in ("K", "M", "G"):
        number, unit = number[:-1], 2 ** (10 * ("KMG".index(number[-1]) + 1))
    if not number.strip().isdigit() or int(number) * unit < 2048:
        raise ValueError(f"REMOTE_OUTPUT_MAX_BYTES={text!r}: expected a size of at least 2K, e.g. 10M")
    return int(number) * unit
