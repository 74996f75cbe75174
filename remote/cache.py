"""Where remote keeps files that outlive one process: one folder per user, shared by jobs."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache folder: ``$REMOTE_CACHE``, else ``$XDG_CACHE_HOME/remote``, else ``~/.cache/remote``.

    Point ``REMOTE_CACHE`` at scratch space on a cluster where ``$HOME`` is small.
    """
    explicit = os.environ.get("REMOTE_CACHE")
    if explicit:
        path = Path(explicit).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = Path(base) / "remote"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path
