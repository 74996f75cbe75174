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
    """:meth:`remote.RemoteRunner.run` (see there); ``on_checkpoint(episodes)`` is called
    when the host learns of a new checkpoint."""
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
            if isinstance(agent, str):
                summary = _run_in_container(
                    runner,
                    agent,
                    dict(agent_kwargs or {}),
                    path,
                    videos,
                    options,
                    interruptions,
                    active,
                    progress,
                    on_checkpoint,
                )
            else:
                summary = _run_on_host(
                    runner, agent, path, videos, options, interruptions, active, progress, on_checkpoint
                )
    finally:
        runner.active_runs.discard(active)
    return {**summary, "log": str(path), "videos": _videos(videos) if video_every else []}


def _run_in_container(
    runner: RemoteRunner,
    agent: str,
    agent_kwargs: dict[str, Any],
    path: Path,
    videos: Path,
    options: dict[str, Any],
    interruptions: Interruptions,
    active: ActiveRun,
    progress: Callable[[int, int], None] | None,
    on_checkpoint: Callable[[int], None] | None,
) -> dict[str, Any]:
    spec = {
        **options,
        "agent": agent,
        "agent_kwargs": agent_kwargs,
        "log": runner.container_path(path),
        "log_inode": path.stat().st_ino,
        "image_sha256": runner.image_sha256,
        "video_dir": runner.container_path(videos),
    }

    def call(request: dict[str, Any]) -> Any:
        return runner.experiment(codec.dumps(request))

    number = call({"op": ops.EXPERIMENT_START, "spec": spec})
    stopping = cancelling = False
    try:
        while True:
            if interruptions.terminated is not None and not stopping:
                call({"op": ops.EXPERIMENT_STOP, "id": number})
                stopping = True
            if interruptions.overdue and not cancelling:  # the episode is too long to wait for
                call({"op": ops.EXPERIMENT_CANCEL, "id": number})
                cancelling = True
            if active.wanted.is_set():
                active.wanted.clear()
                call({"op": ops.EXPERIMENT_CHECKPOINT, "id": number})
            try:
                status = call(
                    {"op": ops.EXPERIMENT_POLL, "id": number, "wait": min(POLL_PERIOD, runner.timeout / 4)}
                )
            except CallTimeout:
                if runner.paused:  # frozen by its manager: wait for it to be thawed
                    continue
                raise
            for recording in status["recordings"]:
                _encode(videos / Path(recording).name, status.get("fps"))
            if active.update(status["checkpoints"], status["checkpoint"]) and on_checkpoint is not None:
                on_checkpoint(status["checkpoint"])
            if progress is not None:
                progress(status["episodes"], options["episodes"])
            if status["done"]:
                return status["summary"]
    except BaseException:
        if runner.alive:
            with contextlib.suppress(RemoteError):
                call({"op": ops.EXPERIMENT_CANCEL, "id": number})
        raise


def _run_on_host(
    runner: RemoteRunner,
    agent: Any,
    path: Path,
    videos: Path,
    options: dict[str, Any],
    interruptions: Interruptions,
    active: ActiveRun,
    progress: Callable[[int, int], None] | None,
    on_checkpoint: Callable[[int], None] | None,
) -> dict[str, Any]:
    env_kwargs = dict(options["env_kwargs"])
    if options["video_every"]:
        env_kwargs.setdefault("render_mode", "rgb_array")
    env = runner.make(options["env_id"], **env_kwargs)
    try:
        loop = EpisodeLoop(
            env,
            agent,
            run={"env_id": options["env_id"], "seed": options["seed"], "agent": agent_name(agent)},
            episodes=options["episodes"],
            log=str(path),
            resume=options["resume"],
            checkpoint_every=options["checkpoint_every"],
            checkpoint_every_sec=options["checkpoint_every_sec"],
            record=_host_recorder(videos, options["video_every"], env) if options["video_every"] else None,
            image_sha256=runner.image_sha256,
        )
    except (OSError, ValueError) as exc:
        env.close()
        raise ExperimentError(str(exc)) from None
    except BaseException:
        env.close()
        raise
    cancel_later = threading.Timer(interruptions.grace, loop.cancelled.set)  # an episode too long
    cancel_later.daemon = True

    def stop() -> None:
        loop.stop()
        cancel_later.start()

    def report() -> None:
        if active.update(loop.written, loop.checkpointed) and on_checkpoint is not None:
            on_checkpoint(loop.checkpointed)  # type: ignore[arg-type]
        if progress is not None:
            progress(loop.next_episode, options["episodes"])

    interruptions.on_stop = stop
    active.ask = loop.request_checkpoint
    loop.on_episode = report
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
