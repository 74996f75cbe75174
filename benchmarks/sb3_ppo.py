"""PPO learn time on local CartPoles vs on remote.sb3.make_vec: the CartPole rows of
``remote bench --only clients`` (remote/bench/clients.py measures), with a profile on demand.

python benchmarks/sb3_ppo.py --image .images/gymnasium.sif [--steps 20000] [--rounds 2] [--profile]

Local: make_vec_env (DummyVecEnv of 4 Monitor-wrapped CartPoles); subproc: make_vec_env's
SubprocVecEnv (4 processes, for scale); remote 1x4: 1 container of 4 envs; remote 4x1: 4
containers of 1 env; interleaved rounds, the same PPO and seed.
``--profile``: cProfile of the remote runs' ``learn``, its top 25 by own time.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from remote.bench import clients  # noqa: E402
from remote.bench.report import table  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_image = Path(__file__).resolve().parent.parent / ".images" / "gymnasium.sif"
    parser.add_argument("--image", default=str(default_image))
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=clients.TORCH_THREADS, help="torch threads")
    parser.add_argument("--profile", action="store_true", help="cProfile the remote runs, print the top")
    args = parser.parse_args()
    profile = cProfile.Profile() if args.profile else None
    learn = clients.cartpole_learn(args.image, args.steps, args.rounds, profile=profile, threads=args.threads)
    label = f"PPO CartPole ×{clients.CARTPOLE_ENVS}, {args.steps:,} steps, torch threads {args.threads}"
    print(table(clients.learn_rows(label, learn, clients.CARTPOLE_LABELS, 1.05, clients.CARTPOLE_SCALE)))
    vec_steps = args.steps / clients.CARTPOLE_ENVS
    for kind, runs in learn.items():
        waited = statistics.median(r["step_wait"] for r in runs)
        print(f"{kind:<11} step_wait {waited:6.2f} s, {waited / vec_steps * 1e6:5.0f} µs per step")
    if profile is not None:
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
