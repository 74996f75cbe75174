"""The one progress display (on tqdm): a line on stderr, drawn only when stderr is a terminal.

    with Progress("run CartPole-v1", total=50, unit="episodes") as bar:
        bar.update(12)      # remote: run CartPole-v1  [#####...................]  12/50 episodes  24%  3 s

With ``unit="B"`` counts are bytes (``1.05M/4.19MB``); without a total (a build, a download
of unknown size) the line shows what is done, if it has a unit, and the time elapsed. The
line is redrawn every half second, so the time moves on between updates.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from tqdm import tqdm

WIDTH = 24
#: Seconds between two redraws without an update.
TICK = 0.5


class Progress:
    """A progress line for ``label``; does nothing unless ``stream`` (stderr) is a terminal.

    Args:
        label: what is in progress, e.g. ``"downloading x.sif"``.
        total: the count when done; None if unknown (then only the time is shown).
        unit: what is counted (``"episodes"``); ``"B"`` for bytes, scaled to k, M, G.
        stream: where to draw; default: ``sys.stderr``.
    """

    def __init__(
        self, label: str, total: int | None = None, unit: str = "", stream: TextIO | None = None
    ) -> None:
        self.label = label
        self.unit = unit
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self._bar: tqdm | None = None
        self._total = total
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def __enter__(self) -> Progress:
        if self.enabled:
            from tqdm import tqdm  # here: only a terminal needs it

            scaled = self.unit == "B"
            self._bar = tqdm(
                desc=self.label,
                total=self._total,
                unit=self.unit,
                unit_scale=scaled,
                file=self.stream,
                ascii=".#",
                mininterval=0.1,
                miniters=1,
                bar_format=self._format(self._total),
                **_screen(self.stream),
            )
            self._ticker = threading.Thread(target=self._tick, name="remote-progress", daemon=True)
            self._ticker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()  # no redraw after the line has ended
        if self._bar is not None:
            self._bar.close()  # draws the last state and ends the line

    def update(self, done: int, total: int | None = None) -> None:
        """Show ``done`` (of ``total``, when it becomes known); redrawn at most ten times a second."""
        bar = self._bar
        if bar is None:
            return
        if total is not None and total != bar.total:
            bar.total = total
            bar.bar_format = self._format(total)
        bar.update(done - bar.n)

    def _format(self, total: int | None) -> str:
        """tqdm's ``bar_format``: the label, the bar and count (if any), the seconds elapsed."""
        unit = ("{unit}" if self.unit == "B" else " {unit}") if self.unit else ""
        count = f"{{n_fmt}}{unit}  " if self.unit else ""
        if total:
            count = f"[{{bar:{WIDTH}}}]  {{n_fmt}}/{{total_fmt}}{unit}  {{percentage:.0f}}%  "
        return f"remote: {{desc}}  {count}{{elapsed_s:.0f}} s "

    def _tick(self) -> None:
        """Redraw every :data:`TICK` seconds, so the time moves on between updates."""
        while not self._stop.wait(TICK):
            if self._bar is not None:
                self._bar.refresh()


def _screen(stream: TextIO) -> dict[str, int]:
    """tqdm's ``ncols``/``nrows``: the terminal's size, the line cut to its width; a terminal
    that says none (size 0) is taken as wide, not as one with room for no bar at all."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (OSError, ValueError):  # not a file (a test's stream), or closed
        return {"ncols": 1000, "nrows": 20}
    return {"ncols": size.columns or 1000, "nrows": size.lines or 20}
