"""Soak: N containers x M steps with random kill -9s; then kill cycles. Prints figures.

    python benchmarks/soak.py [--image .images/gymnasium.sif] [--containers 4] [--steps 20000]
                              [--kill-every 5000] [--kill-cycles 100] [--json out.json]

Reports steps done, container deaths injected and detected (as typed ContainerDied),
the slowest detection, orphans left (processes, run folders: must be 0) and the host's
RSS growth. Not a test: a figure-printing run for long unattended use.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import signal
import tempfile
import time
from pathlib import Path

import remote

DEFAULT_IMAGE = Path(__file__).resolve().parent.parent / ".images" / "gymnasium.sif"


def rss_mb() -> float:
    """Current resident set size of this process in MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def descendants() -> list[int]:
    """Live descendants of this process."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [os.getpid()]
    while frontier:
        kids = [p for p, pp in parents.items() if pp == frontier[-1]]
        frontier.pop()
        found += kids
        frontier += kids
    return found


def run_dirs() -> set[str]:
    bases = {tempfile.gettempdir(), "/tmp", os.environ.get("XDG_RUNTIME_DIR") or "/tmp"}
    return {str(p) for base in bases for p in Path(base).glob("rmt-*")}


def kill_and_detect(env: remote.RemoteEnvironmentClient) -> float:
    """kill -9 the container under ``env``; return seconds until ContainerDied surfaced."""
    os.kill(env.runner.pid, signal.SIGKILL)
    started = time.monotonic()
    try:
        while True:
            env.step(env.action_space.sample())
    except remote.ContainerDied:
        return time.monotonic() - started
    finally:
        env.close()


def soak(image: str, containers: int, steps: int, kill_every: int, seed: int) -> dict:
    rng = random.Random(seed)
    envs = [remote.make("CartPole-v1", image=image) for _ in range(containers)]
    for env in envs:
        env.reset(seed=seed)
    done = injected = detected = 0
    slowest = 0.0
    rss_start = None
    while done < steps:
        i = rng.randrange(containers)
        env = envs[i]
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        done += 1
        if terminated or truncated:
            env.reset()
        if done == min(steps, 2000):
            rss_start = rss_mb()  # after warm-up: caches and buffers in place
        if kill_every and done % kill_every == 0:
            injected += 1
            slowest = max(slowest, kill_and_detect(envs[i]))
            detected += 1
            envs[i] = remote.make("CartPole-v1", image=image)
            envs[i].reset(seed=seed)
    rss_end = rss_mb()
    for env in envs:
        env.close()
    return {
        "steps": done,
        "kills_injected": injected,
        "deaths_detected": detected,
        "slowest_detection_s": round(slowest, 3),
        "rss_growth_mb": round(rss_end - (rss_start or rss_end), 2),
    }


def kill_cycles(image: str, cycles: int) -> dict:
    times = []
    for _ in range(cycles):
        env = remote.make("CartPole-v1", image=image)
        env.reset(seed=0)
        times.append(kill_and_detect(env))
    return {
        "kill_cycles": cycles,
        "typed_container_died": len(times),
        "within_2s": sum(t < 2.0 for t in times),
        "max_detection_s": round(max(times, default=0), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default=str(DEFAULT_IMAGE))
    parser.add_argument("--containers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--kill-every", type=int, default=5000)
    parser.add_argument("--kill-cycles", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    dirs_before = run_dirs()
    started = time.monotonic()
    figures = soak(args.image, args.containers, args.steps, args.kill_every, args.seed)
    figures.update(kill_cycles(args.image, args.kill_cycles))
    time.sleep(0.5)
    figures["orphan_processes"] = len(descendants())
    figures["orphan_run_dirs"] = len(run_dirs() - dirs_before)
    figures["wall_s"] = round(time.monotonic() - started, 1)
    width = max(map(len, figures))
    for key, value in figures.items():
        print(f"{key:<{width}}  {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    ok = (
        figures["orphan_processes"] == 0
        and figures["orphan_run_dirs"] == 0
        and figures["within_2s"] == figures["kill_cycles"]
    )
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
