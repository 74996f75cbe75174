"""Experiment runs from the host: :meth:`remote.RemoteRunner.run`.

An agent named ``"module:callable"`` runs in the container (:mod:`remote.server.experiment`)
and is polled, one control call per period however short its episodes; an agent object
runs here, on the host, and steps a remote env. Both run :class:`remote.protocol.loop.EpisodeLoop`:
the same log, seeds, checkpoints and summary.

During a run (in the main thread) SIGUSR1 asks for a checkpoint at the end of the episode
under way, and SIGTERM (Slurm's scancel, preemption, a time limit) stops the run there, with
a checkpoint, within ``stop_grace`` seconds; then the SIGTERM handler the program had runs
(remote's own stops the containers and exits; :func:`remote.slurm.array_task`'s raises
:class:`remote.slurm.Cancelled`). ``resume=True`` continues from the checkpoint.

Videos: every ``video_every``-th episode is filmed (``render_mode="rgb_array"``): in the
container as a raw recording (:mod:`remote.protocol.recording`) that the host encodes as it
arrives, on the host straight to MP4 (:mod:`remote.video`); ``episode-000010.mp4`` in
``video_dir``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from .errors import CallTimeout, ExperimentError, RemoteError
from .protocol import codec, ops
from .protocol.loop import EpisodeLoop, read_checkpoint

if TYPE_CHECKING:
    from .runner import RemoteRunner

#: Seconds between two polls of a run in the container.
POLL_PERIOD = 0.5


class Interruptions:
    """SIGTERM and SIGUSR1 while a run is under way (see the module docstring); handlers are
    installed only in the main thread, and put back as they were when the run ends."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self, grace: float) -> None:
        self.grace = grace
        #: When SIGTERM came (``time.monotonic()``), or None.
        self.terminated: float | None = None
        self.on_stop: Callable[[], None] | None = None
        self.on_checkpoint: Callable[[], None] | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Interruptions:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGTERM:
            if self.terminated is None:
                self.terminated = time.monotonic()
                if self.on_stop is not None:
                    self.on_stop()
            return
        if self.on_checkpoint is not None:
            self.on_checkpoint()
        previous = self._previous.get(signum)
        if callable(previous):
            previous(signum, frame)

    @property
    def overdue(self) -> bool:
        """SIGTERM came more than ``grace`` seconds ago."""
        return self.terminated is not None and time.monotonic() - self.terminated > self.grace

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        # the program's own SIGTERM handling, also if the run ended in an error: the container
        # may have had the same SIGTERM (Slurm signals every process of a job) and be gone
        if self.terminated is not None:
            previous = self._previous.get(signal.SIGTERM, signal.SIG_DFL)
            if callable(previous):
                previous(signal.SIGTERM, None)
            elif previous == signal.SIG_DFL:
                signal.raise_signal(signal.SIGTERM)


class ActiveRun:
    """A run under way, as :meth:`remote.RemoteRunner.checkpoint` asks it for a checkpoint."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.written = 0  #: checkpoints written so far
        self.checkpoint: int | None = None  #: episodes the newest one covers
        self.wanted = threading.Event()
        self.ask: Callable[[], None] = self.wanted.set

    def request(self) -> None:
        self.ask()

    def update(self, written: int, checkpoint: int | None) -> bool:
        """What the loop reports; True if it is a new checkpoint."""
        with self.changed:
            new = written != self.written
            self.written, self.checkpoint = written, checkpoint
            self.changed.notify_all()
        return new and checkpoint is not None

    def wait(self, timeout: float, what: str) -> int:
        """The episodes of the next checkpoint, once it is written."""
        with self.changed:
            before = self.written
            if not self.changed.wait_for(lambda: self.written > before, timeout):
                raise CallTimeout(f"no {what} within {timeout:g} s: its episode is longer than that")
            assert self.checkpoint is not None
            return self.checkpoint


def run(
    runner: RemoteRunner,
    agent: Any,
    episodes: int,
    *,
    env_id: str,
    log: str | os.PathLike[str],
    env_kwargs: Mapping[str, Any] | None = None,
    agent_kwargs: Mapping[str, Any] | None = None,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    resume: bool = False,
    checkpoint_every: int | None = None,
    checkpoint_every_sec: float | None = 60.0,
    video_every: int | None = None,
    video_dir: str | os.PathLike[str] | None = None,
    stop_grace: float = 20.0,
    on_checkpoint: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """``runner.run(agent, episodes, ...)`` (:meth:`remote.RemoteRunner.run`): run ``episodes``
    episodes of ``env_id`` with ``agent``; episode ``i`` is reset with seed ``seed + i``.

    ``agent`` is either ``"module:callable"``, importable in the container, and the loop
    runs there, next to the env (no round trip per step): a factory called as
    ``factory(env, **agent_kwargs)`` that returns an object with ``act(obs)`` (and,
    optionally, ``observe(obs, action, reward, next_obs, terminated, truncated, info)``,
    called after each step) or a plain ``policy(obs)`` callable (see
    :mod:`remote.server.experiment`); or such an object itself, and the loop runs here,
    on the host, stepping a remote env. Either way ``env.action_space`` is seeded with
    ``seed``, and the log, checkpoints and summary are the same
    (:mod:`remote.protocol.loop`).

    Each finished episode is appended to ``log`` (JSON lines: episode, seed, return,
    length, wall_time, image_sha256, env_id), fsynced. An agent in the container writes
    it itself: the log's folder must be visible there at a known place (a ``binds=``
    entry, or the same path, as Apptainer's default binds of ``$HOME``, ``/tmp`` and the
    current folder give). Read it with :func:`remote.read_log`; it keeps every finished
    episode if this process is killed. A log that holds episodes already is refused
    unless ``resume=True``.

    Checkpoints (``<log>.ckpt``): the episode counter, the RNG states, and the agent's
    state (``save(path)``/``load(path)``, or ``state_dict()``/``load_state_dict()``), at
    the end of an episode: every ``checkpoint_every`` episodes, ``checkpoint_every_sec``
    seconds, at the end, on :meth:`checkpoint` or SIGUSR1, and on SIGTERM, which also
    ends the run after the episode under way (within ``stop_grace`` seconds, else at
    once), before the program's own SIGTERM handler runs. ``resume=True`` continues
    from the newest checkpoint: the log then ends as an uninterrupted run's would.
    ``on_checkpoint(episodes)`` is called when this process learns of a new checkpoint.

    Videos: with ``video_every=N``, episodes 0, N, 2N... are rendered (``render_mode=
    "rgb_array"``) and encoded on the host as ``episode-<i>.mp4`` in ``video_dir``
    (default ``<log>.videos``, visible in the container for an agent there); it needs
    ``pip install 'remote[video]'`` on the host, nothing in the image.

    No call waits for the whole run: a loop in the container is polled with one short
    control call per half second (each bounded by the runner's ``timeout``), so a run
    may take any time. ``progress(done, episodes)`` is called at each poll (after each
    episode on the host). If this call is interrupted otherwise (an exception, Ctrl-C),
    the loop is cancelled: the unfinished episode is not logged.

    Returns:
        the summary: env_id, episodes, cancelled, stopped (by SIGTERM before the end),
        mean/min/max/final_return, mean_length, steps, wall_time (of every segment),
        image_sha256, checkpoint (episodes its newest checkpoint covers), resumed_from,
        log (the log's host path) and videos (their host paths).

    Raises:
        ExperimentError: the agent could not be imported or made, the agent or the env
            raised (``remote_traceback`` has the container's traceback), or the log or
            its checkpoint does not fit the run.
    """
    _check(episodes, checkpoint_every, checkpoint_every_sec, video_every, stop_grace)
    path = Path(os.path.abspath(log))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()  # the host's file: the container must write this very one (same inode)
    videos = Path(os.path.abspath(video_dir)) if video_dir else path.with_name(path.name + ".videos")
    if video_every:
        videos.mkdir(parents=True, exist_ok=True)
        _tidy_recordings(videos, path)
    options = {
        "env_id": env_id,
        "env_kwargs": dict(env_kwargs or {}),
        "episodes": episodes,
        "seed": seed,
        "resume": resume,
        "checkpoint_every": checkpoint_every,
        "checkpoint_every_sec": checkpoint_every_sec,
        "video_every": video_every,
    }
    if not isinstance(agent, str) and agent_kwargs:
        raise TypeError("agent_kwargs= is for an agent named 'module:factory'; this agent is an object")
    active = ActiveRun()
    runner.active_runs.add(active)
    try:
        with Interruptions(stop_grace) as interruptions:
            interruptions.on_checkpoint = active.request
            run = _Run(runner, path, videos, options, interruptions, active, progress, on_checkpoint)
            if isinstance(agent, str):
                summary = _run_in_container(run, agent, dict(agent_kwargs or {}))
            else:
                summary = _run_on_host(run, agent)
    finally:
        runner.active_runs.discard(active)
    return {**summary, "log": str(path), "videos": _videos(videos) if video_every else []}


@dataclass
class _Run:
    """What both sides of a run use: its runner, log and video folder, the loop's options,
    and who is told of its progress."""

    runner: RemoteRunner
    log: Path
    videos: Path
    options: dict[str, Any]
    interruptions: Interruptions
    active: ActiveRun
    progress: Callable[[int, int], None] | None
    on_checkpoint: Callable[[int], None] | None

    def report(self, checkpoints: int, checkpoint: int | None, done: int) -> None:
        """Tell of ``done`` episodes and of the run's ``checkpoints``-th checkpoint (covering
        ``checkpoint`` episodes) if it is new."""
        if self.active.update(checkpoints, checkpoint) and self.on_checkpoint is not None:
            self.on_checkpoint(checkpoint)  # type: ignore[arg-type]
        if self.progress is not None:
            self.progress(done, self.options["episodes"])


def _run_in_container(run: _Run, agent: str, agent_kwargs: dict[str, Any]) -> dict[str, Any]:
    spec = {
        **run.options,
        "agent": agent,
        "agent_kwargs": agent_kwargs,
        "log": run.runner.container_path(run.log),
        "log_inode": run.log.stat().st_ino,
        "image_sha256": run.runner.image_sha256,
        "video_dir": run.runner.container_path(run.videos),
    }

    with run.runner.experiment_connection() as experiment:  # its polls hold no other call back

        def call(request: dict[str, Any]) -> Any:
            return experiment(codec.dumps(request))

        number = call({"op": ops.EXPERIMENT_START, "spec": spec})
        stopping = cancelling = False
        try:
            while True:
                if run.interruptions.terminated is not None and not stopping:
                    call({"op": ops.EXPERIMENT_STOP, "id": number})
                    stopping = True
                if run.interruptions.overdue and not cancelling:  # the episode is too long to wait for
                    call({"op": ops.EXPERIMENT_CANCEL, "id": number})
                    cancelling = True
                if run.active.wanted.is_set():
                    run.active.wanted.clear()
                    call({"op": ops.EXPERIMENT_CHECKPOINT, "id": number})
                try:
                    status = call(
                        {
                            "op": ops.EXPERIMENT_POLL,
                            "id": number,
                            "wait": min(POLL_PERIOD, run.runner.timeout / 4),
                        }
                    )
                except CallTimeout:
                    if run.runner.paused:  # frozen by its manager: wait for it to be thawed
                        continue
                    raise
                for recording in status["recordings"]:
                    _encode(run.videos / Path(recording).name, status.get("fps"))
                run.report(status["checkpoints"], status["checkpoint"], status["episodes"])
                if status["done"]:
                    return status["summary"]
        except BaseException:
            if run.runner.alive:
                with contextlib.suppress(RemoteError):
                    call({"op": ops.EXPERIMENT_CANCEL, "id": number})
            raise


def _run_on_host(run: _Run, agent: Any) -> dict[str, Any]:
    env_kwargs = dict(run.options["env_kwargs"])
    if run.options["video_every"]:
        env_kwargs.setdefault("render_mode", "rgb_array")
    env = run.runner.make(run.options["env_id"], **env_kwargs)
    try:
        loop = EpisodeLoop(
            env,
            agent,
            run={"env_id": run.options["env_id"], "seed": run.options["seed"], "agent": agent_name(agent)},
            episodes=run.options["episodes"],
            log=str(run.log),
            resume=run.options["resume"],
            checkpoint_every=run.options["checkpoint_every"],
            checkpoint_every_sec=run.options["checkpoint_every_sec"],
            record=_host_recorder(run.videos, run.options["video_every"], env)
            if run.options["video_every"]
            else None,
            image_sha256=run.runner.image_sha256,
        )
    except (OSError, ValueError) as exc:
        env.close()
        raise ExperimentError(str(exc)) from None
    except BaseException:
        env.close()
        raise
    cancel_later = threading.Timer(run.interruptions.grace, loop.cancelled.set)  # an episode too long
    cancel_later.daemon = True

    def stop() -> None:
        loop.stop()
        cancel_later.start()

    run.interruptions.on_stop = stop
    run.active.ask = loop.request_checkpoint
    loop.on_episode = lambda: run.report(loop.written, loop.checkpointed, loop.next_episode)
    try:
        loop.run()
        return loop.summary()
    finally:
        cancel_later.cancel()
        loop.close()
        env.close()


def agent_name(agent: Any) -> str:
    """How a run names its agent: its entry point ``"module:callable"``, or ``"module:QualName"``
    of an agent function, or of an agent object's class."""
    if isinstance(agent, str):
        return agent
    named = agent if hasattr(agent, "__qualname__") else type(agent)
    return f"{named.__module__}:{named.__qualname__}"


def _host_recorder(videos: Path, every: int, env: Any) -> Callable[[int], Any]:
    from .video import VideoWriter

    fps = float(env.metadata.get("render_fps") or 30)

    def record(episode: int) -> Any:
        if episode % every:
            return None
        mp4 = videos / f"episode-{episode:06d}.mp4"
        return VideoWriter(mp4, fps), str(mp4)

    return record


def _encode(recording: Path, fps: float | None) -> None:
    """Encode a recording from the container as ``episode-N.mp4`` beside it, and remove it."""
    from .video import encode_recording

    mp4 = recording.with_name(recording.name.removeprefix(".").removesuffix(".rec") + ".mp4")
    encode_recording(recording, mp4, fps=float(fps or 30), remove=True)


def _tidy_recordings(videos: Path, log: Path) -> None:
    """Recordings a killed run left: encode those of episodes its checkpoint covers (it ended
    before the host could), remove the others (they will be filmed again)."""
    state = read_checkpoint(log.with_name(log.name + ".ckpt"))
    covered = state["next_episode"] if state else 0
    for recording in sorted(videos.glob(".episode-*.rec")):
        episode = int(recording.name.split("-")[1].split(".")[0])
        if episode < covered and not recording.with_name(f"episode-{episode:06d}.mp4").exists():
            _encode(recording, None)
        else:
            recording.unlink(missing_ok=True)


def _videos(videos: Path) -> list[str]:
    return [str(p) for p in sorted(videos.glob("episode-*.mp4"))]


def _check(
    episodes: int,
    checkpoint_every: int | None,
    checkpoint_every_sec: float | None,
    video_every: int | None,
    stop_grace: float,
) -> None:
    if not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes must be a positive int, not {episodes!r}")
    for name, value in (
        ("checkpoint_every", checkpoint_every),
        ("checkpoint_every_sec", checkpoint_every_sec),
        ("video_every", video_every),
    ):
        if value is not None and not (isinstance(value, (int, float)) and value > 0):
            raise ValueError(f"{name} must be a positive number or None, not {value!r}")
    if not stop_grace >= 0:
        raise ValueError("stop_grace must be a number of seconds >= 0")
