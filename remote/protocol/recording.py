"""The raw recording file: the frames of one episode as the container renders them, for the
host to encode (:func:`remote.video.encode_recording`). Only the standard library and numpy
are used here: the image's Python needs no imageio, no ffmpeg.

Layout, all of it written by :class:`RecordingWriter`::

    MAGIC                 18 bytes, b"\\x89remote-recording\\n"
    header length         4 bytes, unsigned little-endian, at most 4096
    header                UTF-8 JSON: {"version": 1, "shape": [H, W, 3] or [H, W], "dtype": "uint8"}
    frame 0, frame 1, ... each H*W*3 (or H*W) bytes, C order, back to back, no separators

The magic is written when the file is created, the header with the first frame (it gives the
shape). Each frame goes to the OS as it is added (no buffering in the process), so a writer
killed mid-episode (kill -9) leaves every frame before the one it was writing complete;
:func:`read_recording` skips that last partial frame. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import numpy as np

#: First bytes of every recording file (the high first byte keeps a text file from matching).
MAGIC = b"\x89remote-recording\n"
#: Version of the layout above, in the header.
VERSION = 1
#: Largest header a reader accepts, in bytes.
MAX_HEADER = 4096
_LENGTH = struct.Struct("<I")


def check_frame(frame: np.ndarray) -> np.ndarray:
    """``frame`` as a C-contiguous array, if it is an image a recording or video can hold:
    uint8, shape (H, W, 3) (RGB) or (H, W) (grayscale), H and W at least 1.

    Raises:
        ValueError: any other array (the message says how to convert it).
    """
    if not isinstance(frame, np.ndarray):
        raise ValueError(
            f"a frame must be a numpy array (env.render() with render_mode='rgb_array'), "
            f"not {type(frame).__name__}"
        )
    if frame.dtype != np.uint8:
        raise ValueError(
            f"a frame must be uint8, not {frame.dtype}: convert it, e.g. "
            "(frame * 255).clip(0, 255).astype(np.uint8) for floats in [0, 1]"
        )
    if not (frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 3)) or 0 in frame.shape:
        hint = " (RGBA: drop the alpha channel, frame[..., :3])" if frame.shape[-1:] == (4,) else ""
        raise ValueError(f"a frame must have shape (H, W, 3) or (H, W), not {frame.shape}{hint}")
    return np.ascontiguousarray(frame)


class RecordingWriter:
    """Writes frames to a new recording file at ``path`` (see the module docstring).

    The file is created at once and exclusively (``FileExistsError`` if it exists). Every
    frame must have the first frame's shape. ``close()`` (or leaving the ``with`` block)
    flushes and fsyncs the file::

        with RecordingWriter(run_dir / "episode-3.rec") as rec:
            rec.add(env.render())   # (H, W, 3) uint8
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.shape: tuple[int, ...] | None = None  # of every frame, once the first is added
        self.frames = 0
        self._file = open(self.path, "xb", buffering=0)  # noqa: SIM115 (closed by close())
        self._write(MAGIC)

    def _write(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        while view:  # a raw write may take fewer bytes than given
            view = view[self._file.write(view) :]

    def add(self, frame: np.ndarray) -> None:
        """Append ``frame``: (H, W, 3) or (H, W) uint8, the first frame's shape.

        Raises:
            ValueError: not such an image, another shape than the first frame's, or the
                writer is closed.
        """
        if self._file.closed:
            raise ValueError(f"the recording {self.path} is closed: open a new RecordingWriter")
        frame = check_frame(frame)
        if self.shape is None:
            header = json.dumps({"version": VERSION, "shape": list(frame.shape), "dtype": "uint8"})
            self._write(_LENGTH.pack(len(header)) + header.encode())
            self.shape = frame.shape
        elif frame.shape != self.shape:
            raise ValueError(
                f"frame {self.frames} has shape {frame.shape}, but the recording "
                f"{self.path} holds frames of shape {self.shape}: one shape per recording"
            )
        self._write(memoryview(frame).cast("B"))
        self.frames += 1

    def close(self) -> None:
        """Flush and fsync the file, then close it. Closing again does nothing."""
        if not self._file.closed:
            try:
                os.fsync(self._file.fileno())
            finally:
                self._file.close()

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _read_header(path: Path) -> tuple[tuple[int, ...] | None, int]:
    """The frame shape of the recording at ``path`` (None: no frame yet) and where its
    first frame starts."""
    with open(path, "rb") as f:
        magic = f.read(len(MAGIC))
        if magic != MAGIC:
            raise ValueError(
                f"{path} is not a recording file (it does not start with "
                f"{MAGIC!r}): pass a file written by RecordingWriter"
            )
        length = f.read(_LENGTH.size)
        if len(length) < _LENGTH.size:
            return None, 0  # cut short before the first frame
        (size,) = _LENGTH.unpack(length)
        if size > MAX_HEADER:
            raise ValueError(
                f"{path} is not a recording file: its header claims {size} bytes (at most {MAX_HEADER})"
            )
        text = f.read(size)
        if len(text) < size:
            return None, 0
        start = f.tell()
    try:
        header = json.loads(text)
    except ValueError:
        header = None
    if not isinstance(header, dict):
        raise ValueError(f"{path} is not a recording file: its header is not a JSON object")
    if header.get("version") != VERSION:
        raise ValueError(
            f"{path} is a recording of version {header.get('version')!r}; this remote "
            f"reads version {VERSION}: read it with the remote that wrote it"
        )
    shape = header.get("shape")
    valid = (
        header.get("dtype") == "uint8"
        and isinstance(shape, list)
        and all(type(n) is int and n > 0 for n in shape)
        and (len(shape) == 2 or (len(shape) == 3 and shape[2] == 3))
    )
    if not valid:
        raise ValueError(f"{path} is not a recording file: bad header {header!r}")
    return tuple(shape), start


def read_recording(path: str | os.PathLike[str]) -> Iterator[np.ndarray]:
    """The frames of the recording at ``path``, in order, each a new (H, W, 3) or (H, W)
    uint8 array. A last frame cut short (the writer was killed) is skipped. The header is
    checked now; the frames are read as the iterator is consumed.

    Raises:
        ValueError: ``path`` is not a recording file (another magic, a bad header).
        OSError: ``path`` cannot be read.
    """
    path = Path(path)
    shape, start = _read_header(path)
    return _frames(path, shape, start)


def _frames(path: Path, shape: tuple[int, ...] | None, start: int) -> Iterator[np.ndarray]:
    if shape is None:
        return
    size = int(np.prod(shape))
    with open(path, "rb") as f:
        f.seek(start)
        while True:
            buffer = bytearray(size)
            if f.readinto(buffer) < size:
                return  # the end, or a last frame cut short
            yield np.frombuffer(buffer, dtype=np.uint8).reshape(shape)
