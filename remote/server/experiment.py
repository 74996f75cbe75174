"""The experiment loop that runs next to the env, inside the container.

:meth:`remote.RemoteRunner.run` starts it: the agent and the env live in the same
process, so a step costs no round trip to the host. The loop itself, its log and its
checkpoints are :mod:`remote.protocol.loop`'s; this module makes the agent and the env,
runs the loop in a thread, and answers the host's polls.

The agent protocol: ``agent`` names a callable ``"module:callable"`` importable in the
container (from the image, or a folder bound in and put on ``PYTHONPATH``). It is a
factory, called once as ``factory(env, **agent_kwargs)``; what it returns is either an
object with ``act(obs) -> action`` or a plain callable ``policy(obs) -> action``. If it
has ``observe(obs, action, reward, next_obs, terminated, truncated, info)``, that is
called after every step (a learning agent updates there); with ``save(path)``/``load(path)``
or ``state_dict()``/``load_state_dict()`` its state goes into the run's checkpoints.
``env.action_space`` is seeded with the run's seed, so an agent that samples from it is
reproducible.

Signals (what Slurm sends a job, or ``remote checkpoint``): SIGUSR1 checkpoints every
running experiment at the end of its episode; SIGTERM stops them there, with a checkpoint
(:func:`stop_all`), before the server exits.

This module runs inside the container: stdlib, numpy, gymnasium and :mod:`remote.protocol` only.
"""

from __future__ import annotations

import importlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym

from ..protocol.loop import EpisodeLoop
from ..protocol.ops import (
    EXPERIMENT_CANCEL,
    EXPERIMENT_CHECKPOINT,
    EXPERIMENT_POLL,
    EXPERIMENT_START,
    EXPERIMENT_STOP,
)

#: Seconds an experiment has, on SIGTERM, to end its episode and checkpoint (Slurm gives a
#: job 30 s between SIGTERM and SIGKILL by default).
STOP_GRACE = 20.0
#: Seconds, after that, for the host to poll the summaries of the stopped experiments.
REPORT_GRACE = 2.0


def load_agent(entry_point: str) -> Callable[..., Any]:
    """The callable named by ``"module:callable"`` (``"pkg.mod:Class.factory"`` works too)."""
    module_name, sep, attr = entry_point.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"agent must be 'module:callable', not {entry_point!r}")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(
            f"cannot import the agent module {module_name!r} in the container ({exc}); put it in the "
            "image, or bind its folder and add it to PYTHONPATH (binds=, env= of the runner)"
        ) from exc
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise AttributeError(f"module {module_name!r} has no {attr!r}")
    if not callable(target):
        raise TypeError(f"agent {entry_point!r} is not callable")
    return target


class Experiment:
    """One run in a thread: the loop of ``spec`` (see :func:`_checked_spec`)."""

    def __init__(self, spec: dict[str, Any], make_env: Callable[[str, dict[str, Any]], gym.Env]) -> None:
        factory = load_agent(spec["agent"])
        env_kwargs = dict(spec.get("env_kwargs") or {})
        self.video_every: int | None = spec.get("video_every")
        if self.video_every:
            env_kwargs.setdefault("render_mode", "rgb_array")
        env = make_env(spec["env_id"], env_kwargs)
        try:
            env.action_space.seed(spec["seed"])
            agent = factory(env, **(spec.get("agent_kwargs") or {}))
            self.loop = EpisodeLoop(
                env,
                agent,
                run={"env_id": spec["env_id"], "seed": spec["seed"], "agent": spec["agent"]},
                episodes=spec["episodes"],
                log=spec["log"],
                log_inode=spec["log_inode"],
                resume=bool(spec.get("resume")),
                checkpoint_every=spec.get("checkpoint_every"),
                checkpoint_every_sec=spec.get("checkpoint_every_sec"),
                record=self._recorder(spec.get("video_dir")) if self.video_every else None,
                image_sha256=spec.get("image_sha256"),
            )
        except BaseException:
            env.close()
            raise
        self.reported = len(self.loop.recordings)
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="remote-experiment", daemon=True)
        self.thread.start()

    def _recorder(self, folder: str | None) -> Callable[[int], Any]:
        from ..protocol.recording import RecordingWriter

        assert folder is not None and self.video_every  # _checked_spec

        def record(episode: int) -> Any:
            if episode % self.video_every:  # type: ignore[operator]
                return None
            path = os.path.join(folder, f".episode-{episode:06d}.rec")
            Path(path).unlink(missing_ok=True)  # of a run killed during this episode
            return RecordingWriter(path), path

        return record

    def _run(self) -> None:
        try:
            self.loop.run()
        except BaseException as exc:  # reported to the host by the next poll
            self.error = exc
        finally:
            self.loop.close()
            try:
                self.loop.env.close()
            finally:
                self.done.set()
                with self.loop.changed:
                    self.loop.changed.notify_all()

    def poll(self, wait: float) -> dict[str, Any]:
        """Progress after ``wait`` seconds, or sooner once done or checkpointed; re-raises the loop's error,
        if it failed, so the host gets it with its traceback."""
        loop = self.loop
        with loop.changed:
            written = loop.written  # a new checkpoint is news: the host may be waiting for it
            loop.changed.wait_for(lambda: self.done.is_set() or loop.written > written, timeout=wait)
            recordings = loop.recordings[self.reported :]
            self.reported += len(recordings)
        if self.done.is_set() and self.error is not None:
            raise self.error
        return {
            "done": self.done.is_set(),
            "episodes": loop.next_episode,
            "checkpoint": loop.checkpointed,
            "checkpoints": loop.written,
            "recordings": recordings,
            "fps": loop.env.metadata.get("render_fps"),
            "summary": loop.summary() if self.done.is_set() else None,
        }


class Experiments:
    """The experiments of one server, driven by the requests of
    :data:`remote.protocol.ops.EXPERIMENT` (``{"op": "start"|"poll"|"cancel"|"stop"|"checkpoint", ...}``)."""

    OPS = (EXPERIMENT_START, EXPERIMENT_POLL, EXPERIMENT_CANCEL, EXPERIMENT_STOP, EXPERIMENT_CHECKPOINT)

    def __init__(self) -> None:
        self.running: dict[int, Experiment] = {}
        self.lock = threading.Lock()
        self.next_id = 1

    def handle(self, request: Any, make_env: Callable[[str, dict[str, Any]], gym.Env]) -> Any:
        if not isinstance(request, dict) or request.get("op") not in self.OPS:
            raise ValueError(f"an experiment request is {{'op': {'|'.join(self.OPS)}, ...}}")
        if request["op"] == EXPERIMENT_START:
            experiment = Experiment(_checked_spec(request.get("spec")), make_env)
            with self.lock:
                number, self.next_id = self.next_id, self.next_id + 1
                self.running[number] = experiment
            return number
        with self.lock:
            experiment = self.running.get(request.get("id"))  # type: ignore[arg-type]
        if experiment is None:
            raise KeyError(f"no experiment {request.get('id')!r:.20}")
        if request["op"] == EXPERIMENT_CANCEL:
            experiment.loop.cancelled.set()
            return None
        if request["op"] == EXPERIMENT_STOP:
            experiment.loop.stop()
            return None
        if request["op"] == EXPERIMENT_CHECKPOINT:
            experiment.loop.request_checkpoint()
            return None
        wait = request.get("wait", 0.0)
        try:
            return experiment.poll(min(float(wait), 30.0) if isinstance(wait, (int, float)) else 0.0)
        finally:
            if experiment.done.is_set():  # reported, result or error: forget it
                with self.lock:
                    self.running.pop(request["id"], None)

    def checkpoint_all(self) -> None:
        """Checkpoint every running experiment at the end of its episode (SIGUSR1)."""
        with self.lock:
            experiments = list(self.running.values())
        for experiment in experiments:
            experiment.loop.request_checkpoint()

    def stop_all(self, grace: float) -> None:
        """Stop every running experiment at the end of its episode, with a checkpoint; those
        not done within ``grace`` seconds are cancelled (their last checkpoint stands)."""
        with self.lock:
            experiments = list(self.running.values())
        for experiment in experiments:
            experiment.loop.stop()
        deadline = time.monotonic() + grace
        for experiment in experiments:
            if not experiment.done.wait(max(0.0, deadline - time.monotonic())):
                experiment.loop.cancelled.set()
                experiment.done.wait(1.0)
        deadline = time.monotonic() + REPORT_GRACE  # the host's next poll takes the summary
        while time.monotonic() < deadline:
            with self.lock:
                if not any(e in self.running.values() for e in experiments):
                    break
            time.sleep(0.01)
        time.sleep(0.05)  # for the reply to leave


#: The shared registry of the server process.
EXPERIMENTS = Experiments()


def _checked_spec(spec: Any) -> dict[str, Any]:
    types = {"agent": str, "env_id": str, "episodes": int, "seed": int, "log": str, "log_inode": int}
    if not isinstance(spec, dict) or not all(isinstance(spec.get(k), t) for k, t in types.items()):
        needed = ", ".join(f"{k}: {t.__name__}" for k, t in types.items())
        raise ValueError(f"an experiment spec needs {needed}")
    if spec["episodes"] < 1:
        raise ValueError("episodes must be at least 1")
    for key in ("env_kwargs", "agent_kwargs"):
        if spec.get(key) is not None and not isinstance(spec[key], dict):
            raise ValueError(f"{key} must be a dict")
    optional = {"checkpoint_every": int, "checkpoint_every_sec": (int, float), "video_every": int}
    for key, kind in optional.items():
        value = spec.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool) or value <= 0):
            raise ValueError(f"{key} must be a positive number or None")
    if spec.get("video_every") and not isinstance(spec.get("video_dir"), str):
        raise ValueError("video_every needs video_dir, a folder the container can write")
    return spec
