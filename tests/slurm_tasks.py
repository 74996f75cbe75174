"""The array-task function the Slurm tests submit (importable by submitit's job processes),
and ``main`` for sbatch: ``python slurm_tasks.py IMAGE SHA256 LOG_DIR OUT_DIR``."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import remote.slurm


def rollout(task: int | None, image: str, sha256: str | None, log_dir: str, hold: str | None = None) -> dict:
    """Start the task's container, reset an env with the task's seed; with ``hold`` (a file
    path), write where things run there and wait to be cancelled."""
    with remote.slurm.array_task(task, log_dir=log_dir) as job:
        env = job.make("CartPole-v1", image=image, sha256=sha256)
        obs, _ = env.reset(seed=job.seed)
        result = {
            "task": job.task_id,
            "seed": job.seed,
            "container": job.container,
            "ports": list(job.ports),
            "run_dir": str(job.run_dir),
            "container_pid": job.manager.runner(job.container).pid,
            "pid": os.getpid(),
            "log": str(job.log_path),
            "obs": obs.tolist(),
        }
        if hold:
            Path(hold).write_text(json.dumps(result))
            time.sleep(120)
        return result


def main() -> None:
    """An sbatch array task: the task id comes from $SLURM_ARRAY_TASK_ID."""
    image, sha256, log_dir, out_dir = sys.argv[1:5]
    result = rollout(None, image, sha256, log_dir)
    Path(out_dir, f"{result['task']}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()


def experiment(image: str, log_dir: str, out_dir: str, envs: str) -> None:
    """An sbatch array task that runs 40 episodes in its container, resumably; it writes its
    summary (and the attempt) to ``out_dir/<task>.json`` when the run is done."""
    with remote.slurm.array_task(None, log_dir=log_dir) as job:
        summary = job.run(
            "testagents:Walker",
            40,
            env_id="CartPole-v1",
            image=image,
            container_options={"binds": [f"{envs}:{envs}:ro"], "env": {"PYTHONPATH": envs}},
            agent_kwargs={"delay": 0.004},
            checkpoint_every_sec=None,
        )
        summary["attempt"] = int(os.environ.get("SLURM_RESTART_COUNT", "0")) + 1
        Path(out_dir, f"{job.task_id}.json").write_text(json.dumps(summary))
