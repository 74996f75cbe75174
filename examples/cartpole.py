"""CartPole with a random policy, in a container and locally, side by side.

    python examples/cartpole.py [IMAGE] [--episodes N]

IMAGE defaults to .images/gymnasium.sif (built by scripts/setup.sh).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import gymnasium as gym

import remote

DEFAULT_IMAGE = Path(__file__).resolve().parent.parent / ".images" / "gymnasium.sif"


def run(env: gym.Env, episodes: int, seed: int) -> tuple[int, float, list[float]]:
    """Random policy for ``episodes`` episodes; returns (steps, seconds, episode returns)."""
    env.action_space.seed(seed)
    steps, returns = 0, []
    start = time.perf_counter()
    for episode in range(episodes):
        env.reset(seed=seed + episode)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            total += float(reward)
            steps += 1
            done = terminated or truncated
        returns.append(total)
    return steps, time.perf_counter() - start, returns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", nargs="?", default=str(DEFAULT_IMAGE))
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    started = time.perf_counter()
    env = remote.make("CartPole-v1", image=args.image)
    ready = time.perf_counter() - started
    info = env.runner.info
    print(
        f"container ready in {ready:.2f} s: python {info['python']}, "
        f"gymnasium {info['gymnasium']}, numpy {info['numpy']} (inside {args.image})"
    )
    try:
        far = run(env, args.episodes, args.seed)
    finally:
        env.close()
    near = run(gym.make("CartPole-v1"), args.episodes, args.seed)

    print(f"{'':10} {'steps':>7} {'steps/s':>10} {'µs/step':>9}  mean return")
    for name, (steps, seconds, returns) in (("container", far), ("local", near)):
        print(
            f"{name:10} {steps:7d} {steps / seconds:10.0f} {seconds / steps * 1e6:9.1f}  "
            f"{sum(returns) / len(returns):.1f}"
        )
    same = far[2] == near[2]
    print(f"same returns for the same seeds: {'yes' if same else 'NO'}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
