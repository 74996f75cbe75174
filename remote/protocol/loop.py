"""The experiment loop and its checkpoints, the same on both sides.

An agent named ``"module:callable"`` runs in this loop inside the container, next to the
env (:mod:`remote.server.experiment`); an agent object runs in it on the host, stepping a
remote env (:meth:`remote.RemoteRunner.run`). Either way each finished episode is a line
of the log (:mod:`.runlog`), fsynced, and the loop's state is checkpointed at episode
boundaries into a folder next to the log::

    <log>.ckpt/
        LATEST               the name of the newest checkpoint, replaced atomically
        ep-000010/           the state after 10 episodes:
            state.json       the next episode, the log's size then, the returns and lengths
                             so far, the RNG states the loop owns (the action space's, and
                             numpy's and ``random``'s global ones), the run it belongs to
            agent            what ``agent.save(path)`` wrote there (a file or a folder), or
            agent.json       ``agent.state_dict()``: its JSON values, and its numpy
            agent.npz        arrays (no pickle)

A checkpoint is written into a temporary folder, fsynced and renamed, and LATEST replaced
after it: a kill at any moment leaves the previous checkpoint or the new one whole. To
resume, the log is cut back to its size at the checkpoint, the state restored, and the run
continues with the next episode: an interrupted and resumed run writes the same log as one
that ran through (episodes, seeds, returns; wall times differ), as long as the agent's
state is in its checkpoint. An agent's state is kept through ``save(path)``/``load(path)``
(in place), else ``state_dict()``/``load_state_dict(d)`` (numpy arrays, numbers, strings,
lists and dicts); an agent with neither is taken to have no state of its own.

Only the standard library, numpy and gymnasium are imported here.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Protocol

import gymnasium as gym
import numpy as np
from gymnasium import spaces

#: Version of the checkpoint's ``state.json``.
CHECKPOINT_VERSION = 1
LATEST = "LATEST"
STATE = "state.json"


def checkpoint_folder(log: str | os.PathLike[str]) -> Path:
    """Where the checkpoints of the run logged to ``log`` go: ``<log>.ckpt`` beside it."""
    path = Path(log)
    return path.with_name(path.name + ".ckpt")


def latest_checkpoint(folder: str | os.PathLike[str]) -> Path | None:
    """The newest whole checkpoint in ``folder``, or None."""
    try:
        name = (Path(folder) / LATEST).read_text().strip()
    except FileNotFoundError:
        return None
    path = Path(folder) / name
    return path if (path / STATE).is_file() else None


def read_checkpoint(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``state.json`` of the newest checkpoint in ``folder``, or None if there is none."""
    path = latest_checkpoint(folder)
    return None if path is None else json.loads((path / STATE).read_text())


class Recorder(Protocol):
    """Frames of one episode, to a video or a recording file."""

    def add(self, frame: np.ndarray) -> None: ...

    def close(self) -> Any: ...


class EpisodeLoop:
    """``episodes`` episodes of ``env`` with ``agent``, logged to ``log``, checkpointed.

    Args:
        env: the env (local in the container; a remote client on the host).
        agent: the agent: an object with ``act(obs)``, or a plain ``policy(obs)`` callable;
            ``observe(obs, action, reward, next_obs, terminated, truncated, info)`` if it has it.
        run: what identifies the run: ``env_id``, ``seed``, ``agent`` (a name); a checkpoint
            of another run is refused.
        episodes: episodes in all; episode ``i`` is reset with seed ``seed + i``.
        log: the log's path (as this side sees it); the checkpoints go beside it.
        log_inode: the inode the log must have (the host's file, seen from the container).
        resume: continue from the log's newest checkpoint (from the start if it has none).
        checkpoint_every: checkpoint every this many episodes (None: not by count).
        checkpoint_every_sec: checkpoint at the first episode end this many seconds after the
            last checkpoint (None: not by time).
        record: ``record(episode)`` gives the recorder of an episode to film, or None.
        image_sha256: written on each log line.

    ``env.action_space`` is seeded with the run's seed on a fresh start (and restored on
    resume). :meth:`run` runs it; :meth:`request_checkpoint`, :meth:`stop` (finish this
    episode, checkpoint, end) and :attr:`cancelled` (end now) may come from other threads.
    """

    def __init__(
        self,
        env: gym.Env,
        agent: Any,
        *,
        run: dict[str, Any],
        episodes: int,
        log: str,
        log_inode: int | None = None,
        resume: bool = False,
        checkpoint_every: int | None = None,
        checkpoint_every_sec: float | None = None,
        record: Callable[[int], tuple[Recorder, str] | None] | None = None,
        image_sha256: str | None = None,
    ) -> None:
        self.env = env
        self.agent = agent
        self.act = policy_of(agent)
        observe = getattr(agent, "observe", None)
        self.observe = observe if callable(observe) else None
        self.run_id = {key: run[key] for key in ("env_id", "seed", "agent")}
        self.env_id: str = run["env_id"]
        self.seed: int = run["seed"]
        self.episodes = episodes
        self.log_path = log
        self.folder = checkpoint_folder(log)
        self.checkpoint_every = checkpoint_every
        self.checkpoint_every_sec = checkpoint_every_sec
        self.record = record
        self.image_sha256 = image_sha256
        self.returns: list[float] = []
        self.lengths: list[int] = []
        #: Paths of the recordings of finished episodes, in order (recorders' ``path``).
        self.recordings: list[str] = []
        #: Episodes covered by the newest checkpoint (None: none yet), and where it started.
        self.checkpointed: int | None = None
        #: Checkpoints written by this loop (a resumed run's earlier ones not counted).
        self.written = 0
        self.resumed_from: int | None = None
        self.cancelled = threading.Event()
        self.stopping = threading.Event()
        self._checkpoint_wanted = threading.Event()
        #: Notified when an episode ends or a checkpoint is written.
        self.changed = threading.Condition()
        #: Called (in the loop's thread) after each episode and the checkpoint it may bring.
        self.on_episode: Callable[[], None] | None = None
        self.segment_started = time.monotonic()
        self.earlier_wall_time = 0.0
        self._last_checkpoint = time.monotonic()
        self.log = open_log(log, log_inode)
        try:
            if resume:
                self._resume()
            else:
                self._start_fresh()
        except BaseException:
            self.log.close()
            raise

    def close(self) -> None:
        self.log.close()

    # -- start -------------------------------------------------------------------------------

    def _start_fresh(self) -> None:
        if os.fstat(self.log.fileno()).st_size:
            raise FileExistsError(
                f"the log {self.log_path} already holds episodes: pass resume=True to continue "
                "that run, or log to another file"
            )
        shutil.rmtree(self.folder, ignore_errors=True)  # a stale one, of a log since removed
        self.env.action_space.seed(self.seed)

    def _resume(self) -> None:
        path = latest_checkpoint(self.folder)
        if path is None:  # nothing saved: start again (what the log holds is redone identically)
            os.ftruncate(self.log.fileno(), 0)
            shutil.rmtree(self.folder, ignore_errors=True)
            self.env.action_space.seed(self.seed)
            self.resumed_from = 0
            return
        state = json.loads((path / STATE).read_text())
        if state.get("version") != CHECKPOINT_VERSION:
            raise ValueError(
                f"{path / STATE} is checkpoint version {state.get('version')}, not {CHECKPOINT_VERSION}"
            )
        if state["run"] != self.run_id:
            raise ValueError(
                f"the checkpoint {path} is of another run ({state['run']}, not {self.run_id}): "
                "pass resume=False with another log, or the same env, seed and agent"
            )
        size = os.fstat(self.log.fileno()).st_size
        if size < state["log_size"]:
            raise ValueError(
                f"the log {self.log_path} is shorter ({size} bytes) than at its checkpoint "
                f"({state['log_size']} bytes): it was changed; remove {self.folder} to start again"
            )
        os.ftruncate(self.log.fileno(), state["log_size"])
        self.returns, self.lengths = list(state["returns"]), list(state["lengths"])
        self.recordings = list(state.get("recordings", []))
        self.earlier_wall_time = float(state["wall_time"])
        _restore_rngs(self.env.action_space, state["rng"])
        _load_agent(self.agent, path, state["agent_state"])
        self.checkpointed = self.resumed_from = len(self.returns)

    # -- the loop ----------------------------------------------------------------------------

    @property
    def next_episode(self) -> int:
        return len(self.returns)

    def run(self) -> None:
        """Run the episodes left; checkpoint at the end, by the settings, and when asked."""
        while self.next_episode < self.episodes and not self.stopping.is_set():
            if not self._episode(self.next_episode):
                return  # cancelled: the unfinished episode is neither logged nor checkpointed
            if self._checkpoint_due() or self.next_episode == self.episodes:
                self.checkpoint()
            if self.on_episode is not None:
                self.on_episode()
        if self.checkpointed != self.next_episode:
            self.checkpoint()

    def _episode(self, episode: int) -> bool:
        seed = self.seed + episode
        start = time.monotonic()
        recording = self.record(episode) if self.record is not None else None
        recorder = recording[0] if recording else None
        obs, _ = self.env.reset(seed=seed)
        if recorder is not None:
            recorder.add(self.env.render())  # type: ignore[arg-type]
        total, length, over = 0.0, 0, False
        try:
            while not over:
                action = self.act(obs)
                next_obs, reward, terminated, truncated, info = self.env.step(action)
                if self.observe is not None:
                    self.observe(obs, action, reward, next_obs, terminated, truncated, info)
                if recorder is not None:
                    recorder.add(self.env.render())  # type: ignore[arg-type]
                total += float(reward)
                length += 1
                over = bool(terminated or truncated)
                obs = next_obs
                if self.cancelled.is_set():
                    return False
        finally:
            if recorder is not None:
                recorder.close()
                if not over:
                    Path(recording[1]).unlink(missing_ok=True)  # type: ignore[index]
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
            if recording is not None:
                self.recordings.append(recording[1])
            self.returns.append(total)
            self.lengths.append(length)
            self.changed.notify_all()
        return True

    # -- checkpoints -------------------------------------------------------------------------

    def request_checkpoint(self) -> None:
        """Checkpoint at the end of the episode under way."""
        self._checkpoint_wanted.set()

    def stop(self) -> None:
        """Finish the episode under way, checkpoint, and end the run."""
        self.stopping.set()

    def _checkpoint_due(self) -> bool:
        if self._checkpoint_wanted.is_set() or self.stopping.is_set():
            return True
        if self.checkpoint_every and self.next_episode % self.checkpoint_every == 0:
            return True
        since = time.monotonic() - self._last_checkpoint
        return self.checkpoint_every_sec is not None and since >= self.checkpoint_every_sec

    def checkpoint(self) -> None:
        """Write a checkpoint of the state now (call it between episodes)."""
        self._checkpoint_wanted.clear()
        done = self.next_episode
        state = {
            "version": CHECKPOINT_VERSION,
            "run": self.run_id,
            "next_episode": done,
            "log_size": os.fstat(self.log.fileno()).st_size,
            "returns": self.returns,
            "lengths": self.lengths,
            "recordings": self.recordings,
            "wall_time": self.wall_time,
            "rng": _rng_states(self.env.action_space),
            "agent_state": None,
            "time": time.time(),
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"ep-{done:06d}"
        temporary = self.folder / f".{name}.{os.getpid()}.tmp"
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir()
        state["agent_state"] = _save_agent(self.agent, temporary)
        _write_synced(temporary / STATE, json.dumps(state))
        _fsync_tree(temporary)
        final = self.folder / name
        shutil.rmtree(final, ignore_errors=True)  # the same episode count again: the same state
        os.rename(temporary, final)
        _write_synced(self.folder / f".{LATEST}.tmp", name)
        os.rename(self.folder / f".{LATEST}.tmp", self.folder / LATEST)
        _fsync_dir(self.folder)
        for old in [*self.folder.glob("ep-*"), *self.folder.glob(".ep-*.tmp")]:  # (of a killed run too)
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
        self._last_checkpoint = time.monotonic()
        with self.changed:
            self.checkpointed = done
            self.written += 1
            self.changed.notify_all()

    # -- results -----------------------------------------------------------------------------

    @property
    def wall_time(self) -> float:
        """Seconds this run has taken, its earlier segments (before a resume) included."""
        return self.earlier_wall_time + time.monotonic() - self.segment_started

    def summary(self) -> dict[str, Any]:
        returns = np.asarray(self.returns, dtype=float)
        some = len(returns) > 0
        return {
            "env_id": self.env_id,
            "episodes": len(self.returns),
            "cancelled": self.cancelled.is_set(),
            "stopped": self.stopping.is_set() and self.next_episode < self.episodes,
            "mean_return": float(returns.mean()) if some else None,
            "min_return": float(returns.min()) if some else None,
            "max_return": float(returns.max()) if some else None,
            "final_return": float(returns[-1]) if some else None,
            "mean_length": float(np.mean(self.lengths)) if some else None,
            "steps": int(sum(self.lengths)),
            "wall_time": self.wall_time,
            "image_sha256": self.image_sha256,
            "checkpoint": self.checkpointed,
            "resumed_from": self.resumed_from,
        }


def open_log(path: str, inode: int | None = None) -> IO[str]:
    """Open the log (the host created it) for appending; with ``inode``, check that this is
    the host's very file, not one in the container's own file system that dies with it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    except OSError as exc:
        fd = -1
        reason = exc.strerror
    if fd >= 0 and inode is not None and os.fstat(fd).st_ino != inode:
        os.close(fd)
        fd, reason = -1, "it sees another file there than the host"
    if fd < 0:
        raise OSError(
            f"the container cannot write the host's log {path} ({reason}): bind its folder into "
            "the container (binds=[folder])"
        )
    return os.fdopen(fd, "a", encoding="utf-8")


def policy_of(agent: Any) -> Callable[[Any], Any]:
    """The agent's ``act`` method, or the agent itself if it is a plain callable."""
    act = getattr(agent, "act", None)
    if callable(act):
        return act
    if callable(agent) and not isinstance(agent, type):
        return agent
    raise TypeError(
        f"the agent {type(agent).__name__} has no act(obs) and is not a policy callable "
        "(pass an instance, not a class)"
    )


# -- the state the loop owns -------------------------------------------------------------


def _generators(space: spaces.Space) -> Iterator[np.random.Generator]:
    """The random generators of ``space`` and of the spaces inside it, in a fixed order."""
    yield space.np_random
    inner: list[spaces.Space | None] = []
    if isinstance(space, spaces.Dict):
        inner = list(space.spaces.values())
    elif isinstance(space, (spaces.Tuple, spaces.OneOf)):
        inner = list(space.spaces)
    elif isinstance(space, spaces.Sequence):
        inner = [space.feature_space]
    elif isinstance(space, spaces.Graph):
        inner = [space.node_space, space.edge_space]
    for sub in inner:
        if sub is not None:
            yield from _generators(sub)


def _rng_states(action_space: spaces.Space) -> dict[str, Any]:
    name, keys, position, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "action_space": [g.bit_generator.state for g in _generators(action_space)],
        "numpy": [name, keys.tolist(), position, has_gauss, gauss],
        "random": [version, list(internal), gauss_next],
    }


def _restore_rngs(action_space: spaces.Space, states: dict[str, Any]) -> None:
    for generator, state in zip(_generators(action_space), states["action_space"], strict=True):
        generator.bit_generator.state = state
    name, keys, position, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, gauss))
    version, internal, gauss_next = states["random"]
    random.setstate((version, tuple(internal), gauss_next))


def _save_agent(agent: Any, folder: Path) -> str | None:
    """Save the agent's state into ``folder``; returns how (``"save"``, ``"state_dict"``, None)."""
    if callable(getattr(agent, "save", None)) and callable(getattr(agent, "load", None)):
        agent.save(str(folder / "agent"))
        return "save"
    if callable(getattr(agent, "state_dict", None)) and callable(getattr(agent, "load_state_dict", None)):
        arrays: dict[str, np.ndarray] = {}
        tree = _to_json(agent.state_dict(), arrays)
        with open(folder / "agent.npz", "wb") as f:
            np.savez(f, **arrays)
        _write_synced(folder / "agent.json", json.dumps(tree))
        return "state_dict"
    return None


def _load_agent(agent: Any, folder: Path, how: str | None) -> None:
    if how == "save":
        agent.load(str(folder / "agent"))
    elif how == "state_dict":
        with np.load(folder / "agent.npz", allow_pickle=False) as arrays:
            agent.load_state_dict(_from_json(json.loads((folder / "agent.json").read_text()), arrays))
    elif how is not None:
        raise ValueError(
            f"the checkpoint {folder} keeps the agent as {how!r}, which this remote does not know"
        )


def _to_json(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    """``value`` as JSON, its numpy arrays put into ``arrays`` (as ``{"__ndarray__": key}``)."""
    if isinstance(value, np.ndarray):
        key = f"a{len(arrays)}"
        arrays[key] = value
        return {"__ndarray__": key}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("a state_dict's keys must be strings")
        return {k: _to_json(v, arrays) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v, arrays) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(
        f"a state_dict may hold numpy arrays, numbers, strings, lists and dicts, not {type(value).__name__}; "
        "give the agent save(path) and load(path) instead"
    )


def _from_json(value: Any, arrays: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__ndarray__"}:
            return arrays[value["__ndarray__"]]
        return {k: _from_json(v, arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v, arrays) for v in value]
    return value


# -- files that survive a crash ----------------------------------------------------------------


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    """fsync every file and folder under ``folder`` (what the agent saved included)."""
    for root, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(root))
