"""Episodes as MP4 files, on the host: frames (or a container's recording file,
:mod:`remote.protocol.recording`) encoded with the ffmpeg that imageio-ffmpeg ships.

Needs the ``video`` extra (``pip install 'remote[video]'``), imported only when a video is
made. Every frame given is one frame of the MP4, none dropped or repeated, whatever the
fps: an episode of N steps recorded as N + 1 frames (reset and each step) reads back as
N + 1 frames (:func:`count_frames`). H.264 in yuv420p needs even sizes: a frame of odd
height or width gets its last row or column repeated once (37×21 → 38×22), never rescaled.
Grayscale (H, W) frames become RGB. ffmpeg says nothing unless it fails, and then its last
lines are in the :class:`~remote.errors.VideoError`.

The frames are piped to ffmpeg directly rather than through imageio's writer, which
neither checks ffmpeg's exit status (a full disk goes unnoticed) nor keeps its messages.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import IO

import numpy as np

from .errors import VideoError
from .protocol.recording import check_frame, read_recording

__all__ = ["VideoWriter", "encode_mp4", "encode_recording", "count_frames"]

#: x264 settings: CRF 23 is its default quality; "veryfast" rather than its default "medium":
#: 2.6 rather than 3.3 ms a 600x400 CartPole frame on 2 CPUs, for a file of the same size.
_X264 = ["-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p"]


def _ffmpeg() -> str:
    """Path of imageio-ffmpeg's ffmpeg executable."""
    try:
        import imageio_ffmpeg
    except ImportError as exc:
        raise VideoError(
            f"videos need imageio and imageio-ffmpeg ({exc}): pip install 'remote[video]'"
        ) from None
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as exc:  # no binary for this platform and none on PATH
        raise VideoError(
            f"{exc}: pip install 'remote[video]' on a supported platform, or set "
            "IMAGEIO_FFMPEG_EXE to an ffmpeg executable"
        ) from None


def _tail(log: IO[bytes]) -> str:
    log.seek(0)
    return log.read().decode(errors="replace").strip()[-2000:]


def _rgb_even(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) or (H, W) uint8 → (H', W', 3) with H' and W' even (edge rows/columns repeated)."""
    if frame.ndim == 2:
        frame = np.repeat(frame[:, :, None], 3, axis=2)
    height, width = frame.shape[:2]
    if height % 2 or width % 2:
        frame = np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    return frame


class VideoWriter:
    """Streams frames into the MP4 file ``path`` (overwritten if it exists) at ``fps``
    frames per second. ffmpeg starts with the first frame; a writer closed without any
    frame writes no file::

        with VideoWriter("episode-0.mp4", fps=50) as video:
            video.add(env.render())   # (H, W, 3) or (H, W) uint8, every frame the first's shape

    Raises:
        VideoError: imageio-ffmpeg is missing, or ``path``'s folder does not exist.
        ValueError: ``fps`` is not positive.
    """

    def __init__(self, path: str | os.PathLike[str], fps: float = 30) -> None:
        if not fps > 0:
            raise ValueError(f"fps must be positive, not {fps!r}")
        self.path = Path(path)
        self.fps = fps
        self.frames = 0
        self.shape: tuple[int, ...] | None = None  # of the frames given, once the first is
        self._executable = _ffmpeg()
        if not self.path.parent.is_dir():
            raise VideoError(
                f"cannot write {self.path}: the folder {self.path.parent} does not exist; create it first"
            )
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._closed = False

    def _start(self, height: int, width: int) -> None:
        rate = str(Fraction(float(self.fps)).limit_denominator(1001000))
        command = [
            self._executable, "-hide_banner", "-nostats", "-loglevel", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", rate, "-i", "pipe:0",
            "-an", *_X264, "-f", "mp4", str(self.path),
        ]  # fmt: skip
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close()); a file: ffmpeg never blocks on it
        # a session of its own: Ctrl-C interrupts Python, which then finishes the file
        self._process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log,
            start_new_session=True,
        )  # fmt: skip

    def add(self, frame: np.ndarray) -> None:
        """Append ``frame``: (H, W, 3) or (H, W) uint8, of the first frame's shape.

        Raises:
            ValueError: not such an image, another shape than the first frame's, or the
                writer is closed.
            VideoError: ffmpeg failed (its message says why: a full disk, ...).
        """
        if self._closed:
            raise ValueError(f"the video {self.path} is closed: open a new VideoWriter")
        frame = check_frame(frame)
        if self.shape is not None and frame.shape != self.shape:
            raise ValueError(
                f"frame {self.frames} has shape {frame.shape}, but the video {self.path} "
                f"has frames of shape {self.shape}: one shape per video"
            )
        even = _rgb_even(frame)
        if self.shape is None:
            self.shape = frame.shape
            self._start(*even.shape[:2])
        assert self._process is not None and self._process.stdin is not None
        try:
            self._process.stdin.write(memoryview(even).cast("B"))
        except (BrokenPipeError, ValueError):  # ffmpeg exited
            self.close()  # raises with ffmpeg's message
            raise VideoError(f"ffmpeg stopped taking frames for {self.path}") from None
        self.frames += 1

    def close(self) -> int:
        """Finish the file; the number of frames written. Closing again returns it again.

        Raises:
            VideoError: ffmpeg failed (the file, if any, is removed).
        """
        if self._closed:
            return self.frames
        self._closed = True
        if self._process is None or self._log is None:
            return self.frames
        try:
            try:
                assert self._process.stdin is not None
                self._process.stdin.close()
            except BrokenPipeError:
                pass
            code = self._process.wait()
            if code != 0:
                self.path.unlink(missing_ok=True)
                raise VideoError(
                    f"ffmpeg failed (exit status {code}) writing {self.path}: "
                    f"{_tail(self._log) or 'no message'}"
                )
        finally:
            if self._process.poll() is None:  # interrupted while waiting
                self._process.kill()
                self._process.wait()
            self._log.close()
        return self.frames

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self.close()
            return
        with contextlib.suppress(VideoError):  # keep the frames so far; the block's error is the one to see
            self.close()


def encode_mp4(frames: Iterable[np.ndarray], path: str | os.PathLike[str], fps: float = 30) -> int:
    """Encode ``frames`` (each (H, W, 3) or (H, W) uint8, all of one shape) into the MP4 file
    ``path``; the number of frames written (0: no file).

    Raises:
        VideoError: imageio-ffmpeg is missing, the folder does not exist, or ffmpeg failed.
        ValueError: a frame is not such an image, or has another shape than the first.
    """
    with VideoWriter(path, fps) as video:
        for frame in frames:
            video.add(frame)
    return video.frames


def encode_recording(
    recording: str | os.PathLike[str], mp4: str | os.PathLike[str], fps: float = 30, remove: bool = True
) -> int:
    """Encode a recording file (written by :class:`remote.protocol.recording.RecordingWriter`,
    in the container) into the MP4 file ``mp4``; the number of frames written (0: no file).
    A last frame cut short is left out. ``remove``: delete the recording once the MP4 is
    written (it is kept when encoding fails).

    Raises:
        VideoError: ``recording`` is not a recording file or cannot be read, or as
            :func:`encode_mp4`.
    """
    try:
        frames = read_recording(recording)
    except (ValueError, OSError) as exc:
        raise VideoError(f"cannot encode {recording}: {exc}") from None
    count = encode_mp4(frames, mp4, fps)
    if remove:
        Path(recording).unlink()
    return count


def count_frames(path: str | os.PathLike[str]) -> int:
    """The number of frames of the video file ``path``, as ffmpeg decodes it (every frame is
    decoded: ~0.3 s per thousand CartPole frames of 600×400).

    Raises:
        VideoError: imageio-ffmpeg is missing, or ffmpeg cannot read ``path``.
    """
    command = [_ffmpeg(), "-hide_banner", "-nostats", "-loglevel", "error", "-progress", "pipe:1",
               "-i", str(path), "-map", "0:v:0", "-f", "null", "-"]  # fmt: skip
    done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True)
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip()[-2000:]
        raise VideoError(f"ffmpeg cannot read the video {path}: {message or 'no message'}")
    counts = [line for line in done.stdout.decode().splitlines() if line.startswith("frame=")]
    if not counts:
        raise VideoError(f"ffmpeg reported no frame count for {path}: is it a video file?")
    return int(counts[-1].partition("=")[2])
