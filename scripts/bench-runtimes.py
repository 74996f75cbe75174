"""Start and stop time of a runner on each runtime that can run here, interleaved in rounds.

    .venv/bin/python scripts/bench-runtimes.py [--rounds 5]

Prints, per runtime, the median time from ``remote.make`` to the first ``reset`` reply and
of ``close()``, with the ratio to the ``process`` runtime measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import remote

ROOT = Path(__file__).resolve().parent.parent
IMAGES = {
    "process": str(ROOT / ".venvs" / "envA" / "bin" / "python"),
    "apptainer": str(Path(os.environ.get("REMOTE_TEST_IMAGES", ROOT / ".images")) / "gymnasium.sif"),
    "podman": "remote-test:latest",
    "docker": "remote-test:latest",
}


def once(runtime: str, image: str) -> tuple[float, float]:
    started = time.perf_counter()
    env = remote.make("CartPole-v1", image=image, runtime=runtime)
    env.reset(seed=0)
    ready = time.perf_counter()
    env.close()
    return ready - started, time.perf_counter() - ready


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    usable = {}
    for name, image in IMAGES.items():
        try:
            once(name, image)  # warm-up, and the check that it runs here
            usable[name] = image
        except remote.RemoteError as exc:
            print(f"{name}: not available: {str(exc).splitlines()[0]}")
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in usable}
    for _ in range(rounds):
        for name, image in usable.items():
            times[name].append(once(name, image))
    ref = statistics.median(t[0] for t in times["process"]) if "process" in times else None
    print(f"\n| runtime | start → first reset (s) | × process | close (s) |   ({rounds} rounds, medians)")
    print("|---|---|---|---|")
    for name, samples in times.items():
        start = statistics.median(t[0] for t in samples)
        stop = statistics.median(t[1] for t in samples)
        ratio = f"{start / ref:.2f}" if ref else "-"
        print(f"| {name} | {start:.3f} | {ratio} | {stop:.3f} |")


if __name__ == "__main__":
    main()
