"""What every benchmark section shares: the options of a run, a row of the table, timing.

A section is a module with ``rows(options: Options) -> list[Row]``; ``remote.bench`` runs the
sections in order and prints one table. Every figure is in µs (a learn time of 20 s is
20,000,000 µs) and every ratio is against a reference measured in the same run.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Options:
    """What ``python -m remote.bench`` was asked for."""

    image: str  #: the gymnasium image (transport rows)
    envs_image: str  #: the real-envs image (recipes/envs.def)
    dacbench_image: str  #: recipes/dacbench.def
    other_python_image: str  #: an image whose Python is not the host's
    quick: bool = False
    placement: str = "free"
    log: Callable[[str], None] = print


@dataclass
class Row:
    """One line of the table. ``median``/``p99`` in µs; ``met`` None when there is no target."""

    measurement: str
    median: float | None = None
    p99: float | None = None
    reference: str = ""
    ratio: str = ""
    target: str = ""
    met: bool | None = None
    note: str = ""  #: why a row was not measured, or what else the reader must know
    extra: dict[str, Any] = field(default_factory=dict)  #: kept in the JSON only

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summary(values: list[float]) -> dict[str, float]:
    """Median, p99 and count of ``values``."""
    ordered = sorted(values)
    return {
        "median": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "n": len(ordered),
    }


def measured(measurement: str, values: list[float], **fields: Any) -> Row:
    """A row of the median and p99 of ``values`` (µs)."""
    stats = summary(values)
    return Row(measurement, stats["median"], stats["p99"], **fields)


def missing(measurement: str, target: str, why: str) -> Row:
    """A row that could not be measured here, and why: never left out silently."""
    return Row(measurement, target=target, met=None, note=f"not measured: {why}")


def time_steps(step: Callable[[int], Any], count: int, into: list[float]) -> None:
    """Call ``step(i & 1)`` ``count`` times; append each call's µs to ``into``."""
    clock = time.perf_counter_ns
    for i in range(count):
        start = clock()
        step(i & 1)
        into.append((clock() - start) / 1000)


def interleaved(cases: dict[str, Callable[[int], Any]], rounds: int, steps: int) -> dict[str, list[float]]:
    """µs per call of each case, ``rounds`` rounds of ``steps`` calls taken in turn."""
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for step in cases.values():
        time_steps(step, min(steps, 200), [])  # warm up
    for _ in range(rounds):
        for name, step in cases.items():
            time_steps(step, steps, samples[name])
    return samples


def pin_tree(pid: int, cpu: int) -> None:
    """Pin every thread of ``pid`` and of its descendants to ``cpu``."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError):
                continue
    tree, frontier = [pid], [pid]
    while frontier:
        kids = [p for p, parent in parents.items() if parent in frontier]
        tree += kids
        frontier = kids
    for process in tree:
        for task in Path(f"/proc/{process}/task").glob("*"):
            try:
                os.sched_setaffinity(int(task.name), {cpu})
            except (OSError, ValueError):
                continue  # gone meanwhile


def _µs(value: float) -> str:
    if value >= 10_000_000:
        return f"{value / 1e6:,.2f} s"
    if value >= 10_000:
        return f"{value / 1000:,.1f} ms"
    return f"{value:,.1f} µs" if value >= 10 else f"{value:.2f} µs"


def table(rows: list[Row]) -> str:
    """The rows as a markdown table."""
    lines = [
        "| measurement | median | p99 | reference | ratio | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        median = "" if row.median is None else _µs(row.median)
        p99 = "" if row.p99 is None else _µs(row.p99)
        met = "" if row.met is None else ("yes" if row.met else "NO")
        what = row.measurement + (f" ({row.note})" if row.note else "")
        lines.append(f"| {what} | {median} | {p99} | {row.reference} | {row.ratio} | {row.target} | {met} |")
    return "\n".join(lines)
