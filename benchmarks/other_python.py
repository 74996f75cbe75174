"""Step cost in an image whose Python is not the host's, against an image with the host's.

    python benchmarks/other_python.py IMAGE_A IMAGE_B [--rounds 7] [--steps 3000]

Each image serves CartPole-v1 and a Hopper-like reply (tests/envs: 11 float64 observations,
an info of six numpy float64 scalars) from one container kept up through the run; rounds
alternate A and B (the machine is shared: figures are noisy). Prints µs per step (median and
best of the rounds), B/A (of the bests, and the median of each round's B/A: a round's A and B
ran back to back, so a slow spell of the machine weighs on both), and each server's codec.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

import remote

TEST_ENVS = Path(__file__).resolve().parent.parent / "tests" / "envs"
ENVS = {"CartPole-v1": "CartPole-v1", "Hopper-like": "testenvs:HopperLikeEnv"}


def per_step(env: remote.RemoteEnvironmentClient, actions: list, steps: int) -> float:
    """µs per ``env.step`` over ``steps`` steps (a reset where an episode ends, counted in)."""
    env.reset(seed=0)
    start = time.perf_counter()
    for t in range(steps):
        _, _, terminated, truncated, _ = env.step(actions[t % len(actions)])
        if terminated or truncated:
            env.reset()
    return (time.perf_counter() - start) / steps * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("images", nargs=2, metavar="IMAGE")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=3000)
    args = parser.parse_args()
    options = {"binds": [f"{TEST_ENVS}:{TEST_ENVS}:ro"], "env": {"PYTHONPATH": str(TEST_ENVS)}}
    infos = []
    for name, env_id in ENVS.items():
        envs = [remote.make(env_id, image=image, runner_options=options) for image in args.images]
        try:
            rng = np.random.default_rng(0)
            actions = (
                [envs[0].action_space.sample() for _ in range(256)]
                if name != "CartPole-v1"
                else [int(a) for a in rng.integers(0, 2, 256)]
            )
            for env in envs:
                per_step(env, actions, 300)  # warm up
            times: list[list[float]] = [[], []]
            for r in range(args.rounds):
                order = (0, 1) if r % 2 == 0 else (1, 0)
                for i in order:
                    times[i].append(per_step(envs[i], actions, args.steps))
            a, b = (statistics.median(t) for t in times)
            low_a, low_b = (min(t) for t in times)
            paired = statistics.median(y / x for x, y in zip(*times, strict=True))
            print(
                f"{name:12} median A {a:6.1f} µs  B {b:6.1f} µs; best A {low_a:6.1f} µs  B {low_b:6.1f} µs; "
                f"B/A: best {low_b / low_a:.3f}, median of the rounds' {paired:.3f}"
            )
            infos = [env.runner.info for env in envs]
        finally:
            for env in envs:
                env.close()
    for label, image, info in zip("AB", args.images, infos, strict=True):
        print(f"{label}: {image}: python {info.get('python')}, codec {info.get('codec')}")


if __name__ == "__main__":
    main()
