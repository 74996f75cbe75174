"""The client rows (issue #16): what an RL library sees. SB3 PPO learn time on remote envs
against the same PPO on local envs, and :func:`remote.make_vec` throughput on real envs
against gymnasium's own vector envs.

* PPO ``MlpPolicy`` on 4 CartPoles (``gymnasium.sif``): SB3's ``make_vec_env`` (a
  ``DummyVecEnv``) against :func:`remote.sb3.make_vec` with 1 container of 4 envs and with 4
  containers of 1 env, and, for scale, ``make_vec_env``'s ``SubprocVecEnv`` (4 processes,
  no container); the same seed and PPO kwargs, envs made before the clock starts,
  interleaved rounds (local, subproc, 1x4, 4x1, then again).
* PPO ``CnnPolicy`` on Breakout (``envs.sif``), ``AtariPreprocessing(frame_skip=4)`` on a
  ``frameskip=1`` base and ``FrameStackObservation(4)`` made in the container, through
  :func:`remote.sb3.make_vec`; the local reference is the same ``make_vec_env`` PPO in the
  image's own Python (the host has no ale-py) with the host venv's torch and SB3 bound in and
  appended to ``sys.path`` after the image's packages, as tests/test_sb3_atari.py does.
* Env-steps per second of ``make_vec(8, envs_per_container=4)`` stepped from the host
  against the best of ``SyncVectorEnv`` and ``AsyncVectorEnv`` of 8 envs in the image's own
  Python, for HalfCheetah, LunarLander, Breakout and CarRacing: the same pre-drawn random
  actions, ``reset(seed=0)``, gymnasium's default (next-step) autoreset. The median and p99
  are of one vector step (µs); the ratio is of env-steps per second over all the steps. For
  scale, :class:`Workers`: 2 worker processes of 4 envs in the image, sleeping or spinning
  while they wait, which is make_vec's design with nothing of remote's.

Torch runs with :data:`TORCH_THREADS` thread(s) on both sides of every PPO row. Learn time
is ``model.learn`` alone; ``extra`` also holds the seconds spent in ``step_wait``.

Sizes: full: CartPole 20,000 steps × 2 rounds, Breakout 2,048 steps × 2 rounds, throughput
2 rounds of 1,000 vector steps per case (CarRacing 300): about 6 minutes on 2 busy CPUs.
Quick: CartPole 4,096 steps × 2 rounds, Breakout 512 × 1, throughput 1 round of 300 (CarRacing
100): about 1.5 minutes.
"""

from __future__ import annotations

import inspect
import json
import os
import statistics
import sysconfig
import tempfile
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .image import run_in_image
from .report import Options, Row, measured, missing

#: Torch threads of every PPO run, host and image alike.
TORCH_THREADS = 1

CARTPOLE_ID, CARTPOLE_ENVS = "CartPole-v1", 4
#: benchmarks/sb3_ppo.py's PPO, and its CartPole cases: name → envs per container (None: local,
#: in this process; 0: local, SB3's SubprocVecEnv, one process per env).
PPO_KWARGS: dict[str, Any] = dict(n_steps=128, batch_size=64, n_epochs=2, seed=0, device="cpu", verbose=0)
CARTPOLE_KINDS: dict[str, int | None] = {"local": None, "subproc": 0, "remote 1x4": 4, "remote 4x1": 1}
CARTPOLE_LABELS = {
    "local": "local DummyVecEnv (make_vec_env)",
    "subproc": "local SubprocVecEnv (make_vec_env), 4 processes × 1 env",
    "remote 1x4": "remote.sb3.make_vec, 1 container × 4 envs",
    "remote 4x1": "remote.sb3.make_vec, 4 containers × 1 env",
}
#: The cases printed for scale, without a target: what SB3's own multi-process VecEnv costs
#: (4 processes on 2 CPUs pay a wake-up each per step, as 4 containers do).
CARTPOLE_SCALE = ("subproc",)

#: tests/test_sb3_atari.py's env, server-side preprocessing and PPO.
ATARI_ID = "ALE/Breakout-v5"
ATARI_KWARGS: dict[str, Any] = {"frameskip": 1, "render_mode": "rgb_array"}  # make_vec_env's mode
ATARI_WRAPPERS: list[tuple[str, dict[str, Any]]] = [
    ("gymnasium.wrappers:AtariPreprocessing", {"frame_skip": 4}),
    ("gymnasium.wrappers:FrameStackObservation", {"stack_size": 4}),
]
ATARI_PPO: dict[str, Any] = dict(n_steps=256, batch_size=64, n_epochs=2, seed=0, device="cpu", verbose=0)
ATARI_LABELS = {"local": "local, the image's Python", "remote": "remote.sb3.make_vec, 1 env"}

#: Throughput envs → vector steps per case and round: (full, quick).
THROUGHPUT_ENVS = {
    "HalfCheetah-v5": (1000, 300),
    "LunarLander-v3": (1000, 300),
    "ALE/Breakout-v5": (1000, 300),
    "CarRacing-v3": (300, 100),  # some 8 ms an env step: every frame is rendered in software
}
VECTOR_ENVS, ENVS_PER_CONTAINER = 8, 4
_WORKERS = f"{VECTOR_ENVS // ENVS_PER_CONTAINER} processes × {ENVS_PER_CONTAINER} envs (socketpair, pickle)"
THROUGHPUT_LABELS = {
    "sync": f"SyncVectorEnv of {VECTOR_ENVS}, the image's Python",
    "async": f"AsyncVectorEnv of {VECTOR_ENVS}, the image's Python",
    "workers": f"{_WORKERS}, sleeping, the image's Python",
    "workers spinning": f"{_WORKERS}, spinning, the image's Python",
    "remote": f"make_vec({VECTOR_ENVS}, envs_per_container={ENVS_PER_CONTAINER})",
}
#: The cases printed for scale: the least a vector env of worker processes does (make_vec's
#: design without remote), its workers sleeping or spinning while they wait for actions.
THROUGHPUT_SCALE = ("workers", "workers spinning")
THROUGHPUT_TARGET = "env-steps/s ≥ 1.0×"

#: The host venv's site-packages: torch and SB3 for the image's reference PPO.
SITE = os.path.realpath(sysconfig.get_paths()["purelib"])


def timed_learn(
    envs: Any, policy: str, steps: int, ppo_kwargs: dict[str, Any], threads: int, profile: Any = None
) -> dict[str, Any]:
    """Seconds of ``PPO(policy, envs, **ppo_kwargs).learn(steps)`` with ``threads`` torch
    threads (the model is made before the clock starts), of its ``step_wait`` calls, and
    the episodes ``(return, length)`` it saw. A first, untimed PPO learns one rollout: the
    timed one does not pay torch's first use (its ``seed`` reseeds the envs, so it sees the
    episodes it would have seen alone). Self-contained: the image's Python runs this source.
    ``profile``: a ``cProfile.Profile`` enabled during the timed ``learn``."""
    import time

    import torch
    from stable_baselines3 import PPO

    waited = [0.0]
    inner = envs.step_wait

    def step_wait() -> Any:
        start = time.perf_counter()
        try:
            return inner()
        finally:
            waited[0] += time.perf_counter() - start

    envs.step_wait = step_wait
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        PPO(policy, envs, **ppo_kwargs).learn(total_timesteps=ppo_kwargs["n_steps"] * envs.num_envs)
        waited[0] = 0.0
        model = PPO(policy, envs, **ppo_kwargs)
        if profile is not None:
            profile.enable()
        start = time.perf_counter()
        model.learn(total_timesteps=steps)
        seconds = time.perf_counter() - start
        if profile is not None:
            profile.disable()
    finally:
        torch.set_num_threads(before)
        del envs.step_wait
    return {
        "seconds": seconds,
        "step_wait": waited[0],
        "timesteps": model.num_timesteps,
        "threads": threads,
        "episodes": [[float(info["r"]), int(info["l"])] for info in model.ep_info_buffer],
    }


def step_times(envs: Any, actions: Any) -> list[float]:
    """µs of each ``envs.step(action)`` over the rows of ``actions``, after ``reset(seed=0)``
    and 10 warm-up steps (the first 10 rows). Self-contained: the image's Python runs this
    source."""
    import time

    envs.reset(seed=0)
    for action in actions[:10]:
        envs.step(action)
    clock, out = time.perf_counter_ns, []
    for action in actions:
        start = clock()
        envs.step(action)
        out.append((clock() - start) / 1000)
    return out


class Workers:
    """``n`` envs in forked worker processes of ``per`` envs each, actions and results
    pickled over a socketpair (``multiprocessing.Pipe``): the least a vector env of processes
    does, make_vec's design without remote (an env that ends is reset within the step).
    ``spin``: the workers poll their end instead of sleeping on it. Self-contained: the
    image's Python runs this source."""

    def __init__(self, env_id: str, n: int, per: int, spin: bool) -> None:
        import multiprocessing
        import os

        self.slices = [(start, min(start + per, n)) for start in range(0, n, per)]
        self.ends: list[Any] = []
        self.pids: list[int] = []
        for start, stop in self.slices:
            mine, theirs = multiprocessing.Pipe()  # duplex: a socketpair
            pid = os.fork()
            if pid == 0:
                mine.close()
                try:
                    Workers.serve(theirs, env_id, stop - start, spin)
                finally:
                    os._exit(0)
            theirs.close()
            self.ends.append(mine)
            self.pids.append(pid)

    @staticmethod
    def serve(end: Any, env_id: str, count: int, spin: bool) -> None:
        import gymnasium

        envs = [gymnasium.make(env_id) for _ in range(count)]
        while True:
            while spin and not end.poll():
                pass
            try:
                op, args = end.recv()
            except EOFError:
                return
            if op == "reset":
                results = [env.reset(seed=args + i)[0] for i, env in enumerate(envs)]
            else:
                results = []
                for env, action in zip(envs, args, strict=True):
                    obs, reward, terminated, truncated, info = env.step(action)
                    if terminated or truncated:
                        obs, _ = env.reset()
                    results.append((obs, reward, terminated, truncated, info))
            end.send(results)

    def exchange(self, requests: list[Any]) -> list[Any]:
        for end, request in zip(self.ends, requests, strict=True):
            end.send(request)
        return [result for end in self.ends for result in end.recv()]

    def reset(self, seed: int) -> Any:
        import numpy

        return numpy.stack(self.exchange([("reset", seed + start) for start, _ in self.slices]))

    def step(self, actions: Any) -> Any:
        import numpy

        results = self.exchange([("step", actions[start:stop]) for start, stop in self.slices])
        return numpy.stack([r[0] for r in results]), [r[1:] for r in results]

    def close(self) -> None:
        import os

        for end in self.ends:
            end.close()
        for pid in self.pids:
            os.waitpid(pid, 0)


def _source(*functions: Callable[..., Any]) -> str:
    return "\n\n".join(textwrap.dedent(inspect.getsource(f)) for f in functions)


#: The Breakout reference in the image's Python: argv[1] the site-packages, argv[2] the JSON spec.
ATARI_REFERENCE = """
import importlib, json, sys
sys.path.append(sys.argv[1])  # after the image's dist-packages: its numpy, gymnasium, ale-py, cv2 win
import ale_py, gymnasium
from stable_baselines3.common.env_util import make_vec_env
from typing import Any

{functions}

spec = json.loads(sys.argv[2])

def make():
    env = gymnasium.make(spec["env_id"], **spec["env_kwargs"])
    for entry_point, kwargs in spec["wrappers"]:
        module, _, name = entry_point.partition(":")
        env = getattr(importlib.import_module(module), name)(env, **kwargs)
    return env

envs = make_vec_env(make, n_envs=1, seed=spec["ppo"]["seed"])
result = timed_learn(envs, "CnnPolicy", spec["steps"], spec["ppo"], spec["threads"])
envs.close()
print(json.dumps(result))
"""

#: The throughput references in the image's Python: argv env id, actions .npy, number of
#: envs, envs per worker process.
THROUGHPUT_REFERENCE = """
import json, sys
import ale_py, gymnasium, numpy
from typing import Any
from gymnasium.vector import AsyncVectorEnv, SyncVectorEnv

{functions}

env_id, actions, n, per = sys.argv[1], numpy.load(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
makers = {{
    "sync": lambda: SyncVectorEnv([lambda: gymnasium.make(env_id)] * n),
    "async": lambda: AsyncVectorEnv([lambda: gymnasium.make(env_id)] * n),
    "workers": lambda: Workers(env_id, n, per, spin=False),
    "workers spinning": lambda: Workers(env_id, n, per, spin=True),
}}
out = {{}}
for name, make in makers.items():
    envs = make()
    try:
        out[name] = step_times(envs, actions)
    finally:
        envs.close()
print(json.dumps(out))
"""


def learn_rows(
    label: str,
    learn: dict[str, list[dict[str, Any]]],
    kinds: dict[str, str],
    target: float,
    scale: tuple[str, ...] = (),
) -> list[Row]:
    """One row per case of learn times (µs); the first case is the reference of the others,
    whose ratio must meet ``target``, but for the cases of ``scale`` (their ratio alone)."""
    (base, base_label), *others = kinds.items()

    def row(kind: str, **fields: Any) -> Row:
        runs = learn[kind]
        extra = {
            "learn_s": [r["seconds"] for r in runs],
            "step_wait_s": [r["step_wait"] for r in runs],
            "timesteps": runs[0]["timesteps"],
            "torch_threads": runs[0]["threads"],
        }
        return measured(f"{label}: {kinds[kind]}", [r["seconds"] * 1e6 for r in runs], extra=extra, **fields)

    reference = statistics.median(r["seconds"] for r in learn[base])
    out = [row(base)]
    for kind, _ in others:
        ratio = statistics.median(r["seconds"] for r in learn[kind]) / reference
        same = learn[kind][0]["episodes"] == learn[base][0]["episodes"]
        goal: dict[str, Any] = {} if kind in scale else {"target": f"≤ {target:.2f}×", "met": ratio <= target}
        note = "" if same else "its episodes differ from the reference's"
        out.append(row(kind, reference=base_label, ratio=f"{ratio:.2f}×", note=note, **goal))
    return out


def cartpole_learn(
    image: str,
    steps: int,
    rounds: int,
    log: Callable[[str], None] = print,
    profile: Any = None,
    threads: int = TORCH_THREADS,
) -> dict[str, list[dict[str, Any]]]:
    """:func:`timed_learn` of each of :data:`CARTPOLE_KINDS`, ``rounds`` interleaved rounds;
    ``profile`` (a ``cProfile.Profile``) covers the remote runs' ``learn``."""
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import SubprocVecEnv

    import remote.sb3

    learn: dict[str, list[dict[str, Any]]] = {kind: [] for kind in CARTPOLE_KINDS}
    for round_ in range(rounds):
        for kind, per in CARTPOLE_KINDS.items():  # every case, then again: drift hits all alike
            if per is None:
                envs = make_vec_env(CARTPOLE_ID, n_envs=CARTPOLE_ENVS, seed=0)
            elif per == 0:
                envs = make_vec_env(CARTPOLE_ID, n_envs=CARTPOLE_ENVS, seed=0, vec_env_cls=SubprocVecEnv)
            else:
                envs = remote.sb3.make_vec(
                    CARTPOLE_ID, CARTPOLE_ENVS, image=image, envs_per_container=per, seed=0
                )
            try:
                run = timed_learn(envs, "MlpPolicy", steps, PPO_KWARGS, threads, profile if per else None)
            finally:
                envs.close()
            learn[kind].append(run)
            took = f"learn {run['seconds']:6.2f} s, step_wait {run['step_wait']:5.2f} s"
            log(f"  round {round_ + 1} {kind:<11} {took}")
    return learn


def _cartpole_rows(options: Options, steps: int, rounds: int, label: str) -> list[Row]:
    options.log(f"PPO on {CARTPOLE_ENVS} CartPoles, {steps} steps × {rounds} rounds ...")
    learn = cartpole_learn(options.image, steps, rounds, options.log)
    return learn_rows(label, learn, CARTPOLE_LABELS, 1.05, CARTPOLE_SCALE)


def _atari_rows(options: Options, steps: int, rounds: int, label: str) -> list[Row]:
    import remote.sb3

    spec = {"env_id": ATARI_ID, "env_kwargs": ATARI_KWARGS, "wrappers": ATARI_WRAPPERS}
    spec.update(ppo=ATARI_PPO, steps=steps, threads=TORCH_THREADS)
    script = ATARI_REFERENCE.format(functions=_source(timed_learn))
    learn: dict[str, list[dict[str, Any]]] = {"local": [], "remote": []}
    options.log(f"PPO CnnPolicy on Breakout, {steps} steps × {rounds} rounds ...")
    for round_ in range(rounds):  # the image's PPO, then the host's on make_vec, then again
        learn["local"].append(
            run_in_image(options.envs_image, script, [SITE, json.dumps(spec)], binds=[SITE])
        )
        envs = remote.sb3.make_vec(
            ATARI_ID, 1, image=options.envs_image, env_kwargs=ATARI_KWARGS, wrappers=ATARI_WRAPPERS, seed=0
        )
        try:
            learn["remote"].append(timed_learn(envs, "CnnPolicy", steps, ATARI_PPO, TORCH_THREADS))
        finally:
            envs.close()
        for kind, runs in learn.items():
            log = f"  round {round_ + 1} {kind:<6} learn {runs[-1]['seconds']:6.2f} s"
            options.log(f"{log}, step_wait {runs[-1]['step_wait']:5.2f} s")
    return learn_rows(label, learn, ATARI_LABELS, 1.10)


def _throughput_rows(options: Options, env_id: str, steps: int, rounds: int) -> list[Row]:
    """SyncVectorEnv, AsyncVectorEnv and :class:`Workers` (in the image), and make_vec (from
    the host) of ``env_id``."""
    import remote

    n, per = VECTOR_ENVS, ENVS_PER_CONTAINER
    options.log(f"stepping {n} × {env_id}, {steps} steps × {rounds} rounds ...")
    labels = THROUGHPUT_LABELS
    label = f"{env_id} ×{n}, per vector step"
    script = THROUGHPUT_REFERENCE.format(functions=_source(step_times, Workers))
    samples: dict[str, list[float]] = {kind: [] for kind in labels}
    envs = remote.make_vec(env_id, n, image=options.envs_image, envs_per_container=per)
    try:
        envs.action_space.seed(0)
        actions = np.stack([envs.action_space.sample() for _ in range(steps)])
        with tempfile.TemporaryDirectory(prefix="rmt-bench-") as directory:
            path = os.path.join(directory, "actions.npy")
            np.save(path, actions)
            for _ in range(rounds):  # the image's references, then make_vec, then again
                args = [env_id, path, str(n), str(per)]
                for kind, values in run_in_image(options.envs_image, script, args, binds=[directory]).items():
                    samples[kind] += values
                samples["remote"] += step_times(envs, actions)
    finally:
        envs.close()
    rate = {kind: len(values) * n / sum(values) * 1e6 for kind, values in samples.items()}  # env-steps/s
    best = max(("sync", "async"), key=rate.__getitem__)
    ratio = rate["remote"] / rate[best]
    options.log(f"  {env_id}: env-steps/s " + ", ".join(f"{k} {v:,.0f}" for k, v in rate.items()))
    out = [
        measured(f"{label}: {labels[k]}", samples[k], extra={"env_steps_per_s": rate[k]})
        for k in ("sync", "async")
    ]
    faster = labels[best].split(",")[0] + " (the faster)"
    out += [
        measured(
            f"{label}: {labels[k]}",
            samples[k],
            reference=faster,
            ratio=f"{rate[k] / rate[best]:.2f}×",
            extra={"env_steps_per_s": rate[k]},
        )
        for k in THROUGHPUT_SCALE
    ]
    out.append(
        measured(
            f"{label}: {labels['remote']}",
            samples["remote"],
            reference=faster,
            ratio=f"{ratio:.2f}×",
            target=THROUGHPUT_TARGET,
            met=ratio >= 1.0,
            extra={"env_steps_per_s": rate["remote"], "reference_env_steps_per_s": rate[best]},
        )
    )
    return out


def _missing_sb3() -> str | None:
    try:
        import remote.sb3  # noqa: F401
    except ImportError as exc:
        return f"stable-baselines3 missing ({exc})"
    return None


def _missing_image(image: str) -> str | None:
    return None if Path(image).exists() else f"image {image} not found"


def _guarded(
    options: Options, names: list[tuple[str, str]], why: str | None, measure: Callable[[], list[Row]]
) -> list[Row]:
    """The rows of ``measure()``, or, if ``why`` (what is missing) or if it fails, one
    :func:`missing` row per ``(measurement, target)`` of ``names``: a failure here must
    not hide the other rows."""
    if why is None:
        try:
            return measure()
        except Exception as exc:
            why = f"failed: {type(exc).__name__}: {str(exc)[-300:]}"
            options.log(f"  {names[0][0]}: {why}")
    return [missing(name, target, why) for name, target in names]


def rows(options: Options) -> list[Row]:
    """PPO on CartPole and on Breakout against local envs; make_vec throughput on real envs."""
    quick = options.quick
    out: list[Row] = []
    steps, rounds = (4096, 2) if quick else (20_000, 2)
    label = f"SB3 PPO CartPole ×{CARTPOLE_ENVS}, {steps:,} steps, torch threads {TORCH_THREADS}, learn"
    names = [
        (f"{label}: {v}", "" if k == "local" or k in CARTPOLE_SCALE else "≤ 1.05×")
        for k, v in CARTPOLE_LABELS.items()
    ]
    why = _missing_sb3() or _missing_image(options.image)
    out += _guarded(options, names, why, lambda: _cartpole_rows(options, steps, rounds, label))

    a_steps, a_rounds = (512, 1) if quick else (2048, 2)
    a_label = (
        f"SB3 PPO CnnPolicy Breakout (preprocessed in the container), {a_steps:,} steps, "
        f"torch threads {TORCH_THREADS}, learn"
    )
    names = [(f"{a_label}: {v}", "" if k == "local" else "≤ 1.10×") for k, v in ATARI_LABELS.items()]
    why = _missing_sb3() or _missing_image(options.envs_image)
    out += _guarded(options, names, why, lambda: _atari_rows(options, a_steps, a_rounds, a_label))

    t_rounds = 1 if quick else 2
    for env_id, (full, fewer) in THROUGHPUT_ENVS.items():
        t_steps = fewer if quick else full
        names = [(f"{env_id} ×{VECTOR_ENVS}, per vector step: {v}", "") for v in THROUGHPUT_LABELS.values()]
        names[-1] = (names[-1][0], THROUGHPUT_TARGET)
        measure = lambda e=env_id, s=t_steps: _throughput_rows(options, e, s, t_rounds)  # noqa: E731
        out += _guarded(options, names, _missing_image(options.envs_image), measure)
    return out
