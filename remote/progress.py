"""A one-line progress display on stderr, drawn only when stderr is a terminal.

    with Progress("run CartPole-v1", total=50, unit="episodes") as bar:
        bar.update(12)                      # remote: run CartPole-v1  [#####.......]  12/50 episodes  3 s

Without a total (a build), the line shows the time elapsed, redrawn every half second.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

WIDTH = 24


class Progress:
    """A progress line for ``label``; does nothing unless ``stream`` (stderr) is a terminal."""

    def __init__(
        self, label: str, total: int | None = None, unit: str = "", stream: TextIO | None = None
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.done = 0
        self.started = time.monotonic()
        self._drawn = 0.0
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def __enter__(self) -> Progress:
        if self.enabled and self.total is None:
            threading.Thread(target=self._tick, daemon=True).start()
        self._draw(force=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._draw(force=True)
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()

    def update(self, done: int) -> None:
        """Show ``done`` of ``total`` (redrawn at most ten times a second)."""
        self.done = done
        self._draw()

    def _tick(self) -> None:
        while not self._stop.wait(0.5):
            self._draw(force=True)

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._drawn < 0.1):
            return
        self._drawn = now
        text = f"remote: {self.label}  "
        if self.total:
            filled = WIDTH * min(self.done, self.total) // self.total
            text += f"[{'#' * filled}{'.' * (WIDTH - filled)}]  {self.done}/{self.total} {self.unit}  "
        text += f"{now - self.started:.0f} s "
        with self._lock:
            self.stream.write("\r" + text)
            self.stream.flush()
