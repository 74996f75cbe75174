"""The experiment log: one JSON line per finished episode, written by the container
(:mod:`remote.server.experiment`), read by the host with :func:`read_log`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

#: Keys of every episode line of the log.
LOG_FIELDS = ("episode", "seed", "return", "length", "wall_time", "image_sha256", "env_id")


def read_log(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The episode lines of a run's log, in order. A last line cut short (a full disk, a
    crash of the machine) is skipped; every line before it is complete, as each was fsynced
    before the next episode began.

    Raises:
        ValueError: a line other than the last is not a JSON object (not a run log).
    """
    texts = Path(path).read_text(encoding="utf-8").splitlines()
    lines = []
    for number, text in enumerate(texts, 1):
        try:
            entry = json.loads(text)
        except ValueError:
            entry = None
        if isinstance(entry, dict):
            lines.append(entry)
        elif number < len(texts):
            raise ValueError(f"{path}:{number} is not a log line: {text[:80]!r}")
    return lines
