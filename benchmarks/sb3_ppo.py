"""PPO learn time on local envs vs on remote.sb3.make_vec, interleaved A/B/C rounds.

python benchmarks/sb3_ppo.py --image .images/gymnasium.sif [--steps 20000] [--rounds 2]

A: make_vec_env (DummyVecEnv of 4 local Monitor-wrapped CartPoles); B: remote.sb3.make_vec,
1 container of 4 envs; C: 4 containers of 1 env. The same PPO (n_steps=128, batch_size=64,
n_epochs=2, seed 0, CPU) learns for ``--steps`` on each; envs are made before the clock
starts. Also times ``step_wait`` alone (``--profile``: cProfile of the remote rounds).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from stable_baselines3 import PPO  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402

import remote.sb3  # noqa: E402

ENV_ID, N_ENVS = "CartPole-v1", 4
PPO_KWARGS: dict[str, Any] = dict(n_steps=128, batch_size=64, n_epochs=2, seed=0, device="cpu", verbose=0)


def make(kind: str, image: str) -> Any:
    if kind == "local":
        return make_vec_env(ENV_ID, n_envs=N_ENVS, seed=0)
    per = {"remote 1x4": 4, "remote 4x1": 1}[kind]
    return remote.sb3.make_vec(ENV_ID, N_ENVS, image=image, envs_per_container=per, seed=0)


class StepTimer:
    """Wraps ``step_wait`` of a VecEnv to add up the seconds it takes."""

    def __init__(self, envs: Any) -> None:
        self.seconds, self.calls = 0.0, 0
        inner = envs.step_wait

        def timed() -> Any:
            start = time.perf_counter()
            try:
                return inner()
            finally:
                self.seconds += time.perf_counter() - start
                self.calls += 1

        envs.step_wait = timed


def run(kind: str, image: str, steps: int, profile: cProfile.Profile | None) -> tuple[float, float]:
    """Seconds of ``learn(steps)``, and of its ``step_wait`` calls."""
    envs = make(kind, image)
    try:
        timer = StepTimer(envs)
        model = PPO("MlpPolicy", envs, **PPO_KWARGS)
        if profile is not None and kind != "local":
            profile.enable()
        start = time.perf_counter()
        model.learn(total_timesteps=steps)
        took = time.perf_counter() - start
        if profile is not None:
            profile.disable()
        return took, timer.seconds
    finally:
        envs.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_image = Path(__file__).resolve().parent.parent / ".images" / "gymnasium.sif"
    parser.add_argument("--image", default=str(default_image))
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--profile", action="store_true", help="cProfile the remote runs, print the top")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    kinds = ["local", "remote 1x4", "remote 4x1"]
    profile = cProfile.Profile() if args.profile else None
    learn: dict[str, list[float]] = {k: [] for k in kinds}
    stepping: dict[str, list[float]] = {k: [] for k in kinds}
    for round_ in range(args.rounds):
        for kind in kinds:  # A/B/C, then again: drift on a noisy machine hits all alike
            took, steps_took = run(kind, args.image, args.steps, profile)
            learn[kind].append(took)
            stepping[kind].append(steps_took)
            line = f"round {round_ + 1} {kind:<11} learn {took:7.2f} s  step_wait {steps_took:6.2f} s"
            print(line, flush=True)
    base = statistics.median(learn["local"])
    base_step = statistics.median(stepping["local"])
    vec_steps = args.steps / N_ENVS
    threads = torch.get_num_threads()
    print(f"\nPPO {ENV_ID} x{N_ENVS}, {args.steps} steps, torch threads {threads}, median of {args.rounds}")
    print(f"{'envs':<12}{'learn s':>9}{'ratio':>8}{'step_wait s':>13}{'µs/step':>9}{'ratio':>8}")
    for kind in kinds:
        took, steps_took = statistics.median(learn[kind]), statistics.median(stepping[kind])
        print(
            f"{kind:<12}{took:9.2f}{took / base:8.3f}{steps_took:13.2f}"
            f"{steps_took / vec_steps * 1e6:9.0f}{steps_took / base_step:8.2f}"
        )
    if profile is not None:
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
