"""Two images whose Python stacks cannot coexist, stepped side by side from one host process.

gymnasium.sif has numpy 2.x + gymnasium 1.x, legacy.sif numpy 1.26 + gymnasium 0.29.1
(recipes/gymnasium.def, recipes/legacy.def). This process imports neither stack's
constraints: each env runs in its own container and reports its versions from inside.

    python examples/side_by_side.py .images/gymnasium.sif .images/legacy.sif
"""

import sys

import remote


def main(images: list[str], steps: int = 100) -> None:
    runners = [remote.RemoteRunner(image) for image in images]
    try:
        envs = [runner.make("CartPole-v1") for runner in runners]
        for env in envs:
            env.reset(seed=0)
        returns = [0.0] * len(envs)
        for _ in range(steps):  # interleaved: one step in each image, in turn
            for i, env in enumerate(envs):
                _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
                returns[i] += float(reward)
                if terminated or truncated:
                    env.reset()
        for runner, total in zip(runners, returns, strict=True):
            info = runner.info
            print(
                f"{runner.image}: numpy {info['numpy']}, gymnasium {info['gymnasium']}, "
                f"python {info['python']} (inside); {steps} steps, reward {total:g}"
            )
    finally:
        for runner in runners:
            runner.close()


if __name__ == "__main__":
    main(sys.argv[1:] or [".images/gymnasium.sif", ".images/legacy.sif"])
