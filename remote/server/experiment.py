"""The experiment loop that runs next to the env, inside the container, and its log.

:meth:`remote.RemoteRunner.run` starts it: the agent and the env live in the same
process, so a step costs no round trip to the host. Each finished episode is one line of
a JSON-lines log, written to a host file bound into the container, flushed and fsynced
before the next episode starts: if the host process dies (and the container with it),
the log holds every finished episode (:mod:`remote.protocol.runlog` says what is in it).

The agent protocol: ``agent`` names a callable ``"module:callable"`` importable in the
container (from the image, or a folder bound in and put on ``PYTHONPATH``). It is a
factory, called once as ``factory(env, **agent_kwargs)``; what it returns is either an
object with ``act(obs) -> action`` or a plain callable ``policy(obs) -> action``. If it
has ``observe(obs, action, reward, next_obs, terminated, truncated, info)``, that is
called after every step (a learning agent updates there). ``env.action_space`` is seeded
with the run's seed, so an agent that samples from it is reproducible.

This module runs inside the container: stdlib, numpy, gymnasium and :mod:`remote.protocol` only.
"""

from __future__ import annotations

import importlib
import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

from ..protocol.ops import EXPERIMENT_CANCEL, EXPERIMENT_POLL, EXPERIMENT_START


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


def policy_of(agent: Any) -> Callable[[Any], Any]:
    """The agent's ``act`` method, or the agent itself if it is a plain callable."""
    act = getattr(agent, "act", None)
    if callable(act):
        return act
    if callable(agent):
        return agent
    raise TypeError(
        f"the agent factory returned {type(agent).__name__}: it has no act(obs) and is not callable"
    )


class Experiment:
    """One run: ``episodes`` episodes of ``env`` with ``agent``, logged line by line to ``log``."""

    def __init__(self, spec: dict[str, Any], make_env: Callable[[str, dict[str, Any]], gym.Env]) -> None:
        self.env_id: str = spec["env_id"]
        self.episodes: int = spec["episodes"]
        self.seed: int = spec["seed"]
        self.image_sha256: str | None = spec.get("image_sha256")
        factory = load_agent(spec["agent"])
        self.log = _open_log(spec["log"], spec["log_inode"])
        try:
            self.env = make_env(self.env_id, spec.get("env_kwargs") or {})
            self.env.action_space.seed(self.seed)
            self.agent = factory(self.env, **(spec.get("agent_kwargs") or {}))
            self.act = policy_of(self.agent)
        except BaseException:
            self.log.close()
            raise
        self.observe = getattr(self.agent, "observe", None)
        self.returns: list[float] = []
        self.lengths: list[int] = []
        self.error: BaseException | None = None
        self.cancelled = threading.Event()
        self.done = threading.Event()
        self.changed = threading.Condition()
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self._run, name="remote-experiment", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for episode in range(self.episodes):
                if self.cancelled.is_set():
                    break
                self._episode(episode)
        except BaseException as exc:  # reported to the host by the next poll
            self.error = exc
        finally:
            self.log.close()
            try:
                self.env.close()
            finally:
                self.done.set()
                with self.changed:
                    self.changed.notify_all()

    def _episode(self, episode: int) -> None:
        seed = self.seed + episode
        start = time.monotonic()
        obs, _ = self.env.reset(seed=seed)
        total, length, over = 0.0, 0, False
        while not over:
            action = self.act(obs)
            next_obs, reward, terminated, truncated, info = self.env.step(action)
            if self.observe is not None:
                self.observe(obs, action, reward, next_obs, terminated, truncated, info)
            total += float(reward)
            length += 1
            over = bool(terminated or truncated)
            obs = next_obs
            if self.cancelled.is_set():
                return  # an unfinished episode is not logged
        line = {
            "episode": episode,
            "seed": seed,
            "return": total,
            "length": length,
            "wall_time": time.monotonic() - start,
            "image_sha256": self.image_sha256,
            "env_id": self.env_id,
        }
        self.log.write(json.dumps(line) + "\n")
        self.log.flush()
        os.fsync(self.log.fileno())
        with self.changed:
            self.returns.append(total)
            self.lengths.append(length)
            self.changed.notify_all()

    def poll(self, wait: float) -> dict[str, Any]:
        """Progress after at most ``wait`` seconds (sooner when an episode ends); re-raises
        the loop's error, if it failed, so the host gets it with its traceback."""
        with self.changed:
            seen = len(self.returns)
            self.changed.wait_for(lambda: self.done.is_set() or len(self.returns) > seen, timeout=wait)
        if self.done.is_set() and self.error is not None:
            raise self.error
        return {
            "done": self.done.is_set(),
            "episodes": len(self.returns),
            "summary": self.summary() if self.done.is_set() else None,
        }

    def summary(self) -> dict[str, Any]:
        returns = np.asarray(self.returns, dtype=float)
        return {
            "env_id": self.env_id,
            "episodes": len(self.returns),
            "cancelled": self.cancelled.is_set(),
            "mean_return": float(returns.mean()) if len(returns) else None,
            "min_return": float(returns.min()) if len(returns) else None,
            "max_return": float(returns.max()) if len(returns) else None,
            "mean_length": float(np.mean(self.lengths)) if self.lengths else None,
            "steps": int(sum(self.lengths)),
            "wall_time": time.monotonic() - self.started,
            "image_sha256": self.image_sha256,
        }


class Experiments:
    """The experiments of one server, driven by the requests of
    :data:`remote.protocol.ops.EXPERIMENT` (``{"op": "start"|"poll"|"cancel", ...}``)."""

    def __init__(self) -> None:
        self.running: dict[int, Experiment] = {}
        self.lock = threading.Lock()
        self.next_id = 1

    def handle(self, request: Any, make_env: Callable[[str, dict[str, Any]], gym.Env]) -> Any:
        ops = (EXPERIMENT_START, EXPERIMENT_POLL, EXPERIMENT_CANCEL)
        if not isinstance(request, dict) or request.get("op") not in ops:
            raise ValueError("an experiment request is {'op': 'start'|'poll'|'cancel', ...}")
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
            experiment.cancelled.set()
            return None
        wait = request.get("wait", 0.0)
        try:
            return experiment.poll(min(float(wait), 30.0) if isinstance(wait, (int, float)) else 0.0)
        finally:
            if experiment.done.is_set():  # reported, result or error: forget it
                with self.lock:
                    self.running.pop(request["id"], None)


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
    return spec


def _open_log(path: str, inode: int) -> Any:
    """Open the log the host created for appending, and check by its inode that the
    container sees that very file, not one in its own file system that dies with it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    except OSError as exc:
        fd = -1
        reason = exc.strerror
    if fd >= 0 and os.fstat(fd).st_ino != inode:
        os.close(fd)
        fd, reason = -1, "it sees another file there than the host"
    if fd < 0:
        raise OSError(
            f"the container cannot write the host's log {path} ({reason}): bind its folder into "
            "the container (binds=[folder])"
        )
    return os.fdopen(fd, "a", encoding="utf-8")
