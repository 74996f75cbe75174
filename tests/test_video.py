"""Episode videos: the raw recording file the container writes (remote.protocol.recording)
and its encoding to MP4 on the host (remote.video), one MP4 frame per frame given."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import remote
from remote.protocol.recording import MAGIC, RecordingWriter, read_recording
from remote.video import VideoError, VideoWriter, count_frames, encode_mp4, encode_recording

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() == "true"
if IN_CI:  # scripts/setup.sh installs the video extra: in CI these tests must run
    import imageio_ffmpeg
else:
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg", reason="pip install 'remote[video]'")


def random_frames(n: int, shape: tuple[int, ...] = (20, 30, 3), seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]


def decode(path: Path, height: int, width: int) -> np.ndarray:
    """Every frame of the video at ``path`` as RGB, (n, height, width, 3) uint8; the byte count
    must be exactly count_frames(path) frames of that size."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-map", "0:v:0",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]  # fmt: skip
    raw = subprocess.run(command, capture_output=True, check=True).stdout
    assert len(raw) == count_frames(path) * height * width * 3
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


# --- the recording file ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(20, 30, 3), (7, 5)], ids=["rgb", "gray"])
def test_recording_round_trip_is_bit_for_bit(tmp_path, shape):
    frames = random_frames(6, shape)
    frames[2] = frames[2][::-1]  # not C-contiguous: written in its logical order
    with RecordingWriter(tmp_path / "a.rec") as rec:
        for frame in frames:
            rec.add(frame)
        assert rec.frames == 6 and rec.shape == shape
    back = list(read_recording(tmp_path / "a.rec"))
    assert len(back) == 6
    for got, want in zip(back, frames, strict=True):
        assert got.dtype == np.uint8 and got.shape == shape
        np.testing.assert_array_equal(got, want)
    back[0][0, 0] = 1  # each a new, writable array
    assert (tmp_path / "a.rec").read_bytes().startswith(MAGIC)


def test_recording_is_created_exclusively(tmp_path):
    (tmp_path / "a.rec").write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        RecordingWriter(tmp_path / "a.rec")
    assert (tmp_path / "a.rec").read_bytes() == b"precious"


def test_a_truncated_recording_reads_its_complete_frames(tmp_path):
    frames = random_frames(4)
    path = tmp_path / "a.rec"
    with RecordingWriter(path) as rec:
        for frame in frames:
            rec.add(frame)
    data = path.read_bytes()
    frame_size = frames[0].nbytes
    for cut, complete in [(1, 3), (frame_size - 1, 3), (frame_size, 3), (frame_size + 1, 2)]:
        path.write_bytes(data[:-cut])
        back = list(read_recording(path))
        assert len(back) == complete, cut
        for got, want in zip(back, frames[:complete], strict=True):
            np.testing.assert_array_equal(got, want)
    header_end = len(data) - 4 * frame_size
    for end in (len(MAGIC), len(MAGIC) + 2, header_end - 1):  # cut in the header: no frame yet
        path.write_bytes(data[:end])
        assert list(read_recording(path)) == []


def test_a_recording_closed_without_frames_has_none(tmp_path):
    RecordingWriter(tmp_path / "a.rec").close()
    assert list(read_recording(tmp_path / "a.rec")) == []
    assert encode_recording(tmp_path / "a.rec", tmp_path / "a.mp4") == 0
    assert not (tmp_path / "a.mp4").exists() and not (tmp_path / "a.rec").exists()


def _header(text: bytes) -> bytes:
    return MAGIC + len(text).to_bytes(4, "little") + text


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"episode,return\n0,12.5\n",
        MAGIC[:-1] + b"\r",
        _header(b"[1, 2]"),
        _header(b"{not json"),
        _header(b'{"version": 2, "shape": [2, 2, 3], "dtype": "uint8"}'),
        _header(b'{"version": 1, "shape": [2, 2, 3], "dtype": "float32"}'),
        _header(b'{"version": 1, "shape": [2, 2, 4], "dtype": "uint8"}'),
        _header(b'{"version": 1, "shape": [0, 2], "dtype": "uint8"}'),
        MAGIC + (10**6).to_bytes(4, "little") + b"{}",
    ],
    ids=["empty", "text", "magic", "list", "json", "version", "dtype", "rgba", "zero", "huge"],
)
def test_a_file_that_is_not_a_recording_raises(tmp_path, content):
    path = tmp_path / "a.rec"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="recording"):
        read_recording(path)  # at the call, not at the first frame
    with pytest.raises(VideoError, match="recording"):
        encode_recording(path, tmp_path / "a.mp4")
    assert path.exists() and not (tmp_path / "a.mp4").exists()


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (np.zeros((20, 31, 3), np.uint8), r"shape \(20, 31, 3\).*\(20, 30, 3\)"),
        (np.zeros((20, 30), np.uint8), r"shape \(20, 30\)"),
        (np.zeros((20, 30, 3), np.float32), "uint8, not float32"),
        (np.zeros((20, 30, 4), np.uint8), "alpha"),
        (np.zeros((20, 30, 3, 1), np.uint8), r"\(H, W, 3\) or \(H, W\)"),
        (np.zeros((0, 30, 3), np.uint8), r"\(H, W, 3\) or \(H, W\)"),
        ([[0, 1], [2, 3]], "numpy array"),
    ],
    ids=["width", "gray", "float", "rgba", "4d", "empty", "list"],
)
def test_a_mismatched_frame_raises_and_leaves_the_recording_intact(tmp_path, frame, match):
    first, second = random_frames(2)
    with RecordingWriter(tmp_path / "a.rec") as rec:
        rec.add(first)
        with pytest.raises(ValueError, match=match):
            rec.add(frame)
        rec.add(second)
    back = list(read_recording(tmp_path / "a.rec"))
    assert len(back) == 2
    np.testing.assert_array_equal(back[1], second)


def test_a_closed_recording_takes_no_frame(tmp_path):
    rec = RecordingWriter(tmp_path / "a.rec")
    rec.close()
    rec.close()
    with pytest.raises(ValueError, match="closed"):
        rec.add(random_frames(1)[0])


# --- MP4 ------------------------------------------------------------------------------------------


def levels(n: int) -> list[int]:
    """A gray level per frame, each frame's different from its neighbours'."""
    return [(40 * i) % 251 for i in range(n)]


@pytest.mark.parametrize(("n", "fps"), [(1, 30), (2, 30), (3, 30), (500, 30), (3, 29.97), (7, 7.5), (5, 1)])
def test_an_mp4_has_exactly_the_frames_given_in_order(tmp_path, n, fps):
    frames = [np.full((16, 24, 3), level, np.uint8) for level in levels(n)]
    assert encode_mp4(iter(frames), tmp_path / "a.mp4", fps=fps) == n
    assert count_frames(tmp_path / "a.mp4") == n
    decoded = decode(tmp_path / "a.mp4", 16, 24)
    # no frame dropped or repeated: the n gray levels come back, in order
    np.testing.assert_allclose(decoded.mean(axis=(1, 2, 3)), levels(n), atol=3)


@pytest.mark.parametrize("shape", [(37, 21, 3), (37, 20, 3), (36, 21, 3), (37, 21)])
def test_odd_sizes_are_padded_by_their_edge_not_rescaled(tmp_path, shape):
    height, width = shape[:2]
    rows, columns = np.indices((height, width))
    gray = ((rows // 4 + columns // 4) % 2 * 200 + 20).astype(np.uint8)  # 4-pixel checkerboard
    frame = gray if len(shape) == 2 else np.repeat(gray[:, :, None], 3, axis=2)
    assert encode_mp4([frame] * 3, tmp_path / "a.mp4") == 3
    out_h, out_w = height + height % 2, width + width % 2
    decoded = decode(tmp_path / "a.mp4", out_h, out_w)[0].astype(int)
    # x264's loss is ~5 per pixel here; a rescale to the even size moves the squares' edges
    # (ffmpeg's scale to 38x22: ~50)
    assert np.abs(decoded[:height, :width] - gray[:, :, None]).mean() < 12
    assert np.abs(decoded[height - 1 :, :width] - gray[-1][None, :, None]).max() < 16  # the repeated row
    assert np.abs(decoded[:height, width - 1 :] - gray[:, -1][:, None, None]).max() < 16  # ... column


def test_grayscale_frames_become_rgb(tmp_path):
    frames = [np.full((10, 12), level, np.uint8) for level in (30, 200)]
    assert encode_mp4(frames, tmp_path / "a.mp4") == 2
    decoded = decode(tmp_path / "a.mp4", 10, 12)
    assert decoded.shape == (2, 10, 12, 3)
    np.testing.assert_allclose(decoded.mean(axis=(1, 2)), [[30] * 3, [200] * 3], atol=3)


def test_video_writer_streams_frames(tmp_path):
    with VideoWriter(tmp_path / "a.mp4", fps=50) as video:
        for frame in random_frames(4):
            video.add(frame)
        with pytest.raises(ValueError, match="one shape per video"):
            video.add(np.zeros((21, 30, 3), np.uint8))
        assert video.frames == 4
    assert video.close() == 4  # again: the same count
    with pytest.raises(ValueError, match="closed"):
        video.add(random_frames(1)[0])
    assert count_frames(tmp_path / "a.mp4") == 4


def test_video_writer_keeps_the_frames_before_an_error_in_its_block(tmp_path):
    with pytest.raises(KeyError), VideoWriter(tmp_path / "a.mp4") as video:
        for frame in random_frames(3):
            video.add(frame)
        raise KeyError("the env broke")
    assert count_frames(tmp_path / "a.mp4") == 3


def test_no_frames_write_no_file(tmp_path):
    assert VideoWriter(tmp_path / "a.mp4").close() == 0
    assert encode_mp4([], tmp_path / "a.mp4") == 0
    assert not (tmp_path / "a.mp4").exists()


def test_encode_recording_removes_the_recording_only_when_asked(tmp_path):
    frames = random_frames(5, (24, 32, 3))
    for remove in (False, True):
        with RecordingWriter(tmp_path / f"{remove}.rec") as rec:
            for frame in frames:
                rec.add(frame)
        recording, mp4 = tmp_path / f"{remove}.rec", tmp_path / f"{remove}.mp4"
        assert encode_recording(recording, mp4, 20, remove=remove) == 5
        assert count_frames(mp4) == 5
        assert recording.exists() is not remove


def test_encoding_is_quiet(tmp_path):
    """No ffmpeg or imageio output on stderr, no warning: in a fresh interpreter, warnings
    as errors."""
    code = f"""
        import numpy as np
        from remote.video import count_frames, encode_mp4
        frames = [np.full((37, 21), i, np.uint8) for i in range(3)]
        assert encode_mp4(frames, {str(tmp_path / "a.mp4")!r}, fps=29.97) == 3
        assert count_frames({str(tmp_path / "a.mp4")!r}) == 3
        """
    command = [sys.executable, "-X", "dev", "-W", "error", "-c", textwrap.dedent(code)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "" and done.stdout == ""


def test_ffmpeg_failures_are_video_errors(tmp_path):
    with pytest.raises(VideoError, match="does not exist; create it first"):
        VideoWriter(tmp_path / "no" / "a.mp4")
    (tmp_path / "full.mp4").symlink_to("/dev/full")  # a full disk
    with pytest.raises(VideoError, match="No space left on device"):
        encode_mp4(random_frames(3), tmp_path / "full.mp4")
    (tmp_path / "text.mp4").write_text("not a video")
    with pytest.raises(VideoError, match="cannot read the video"):
        count_frames(tmp_path / "text.mp4")
    with pytest.raises(VideoError, match="cannot read the video"):
        count_frames(tmp_path / "missing.mp4")
    with pytest.raises(ValueError, match="fps must be positive"):
        VideoWriter(tmp_path / "a.mp4", fps=0)
    assert issubclass(VideoError, remote.RemoteError)


def test_without_imageio_the_error_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import fails
    for call in (lambda: VideoWriter(tmp_path / "a.mp4"), lambda: count_frames(tmp_path / "a.mp4")):
        with pytest.raises(VideoError, match=r"pip install 'remote\[video\]'"):
            call()


# --- a recording written by the container's Python ------------------------------------------------

#: Run by the image's python3: remote.protocol.recording with numpy only, frames from
#: FRAMES (a callable), into the recording named by argv[1].
CONTAINER_SCRIPT = """
import sys
import numpy as np
from remote.protocol.recording import RecordingWriter
{frames}
with RecordingWriter(sys.argv[1]) as rec:
    for frame in frames():
        rec.add(frame)
loaded = sorted(m.split(".")[0] for m in sys.modules)
assert not {{"imageio", "imageio_ffmpeg", "Pyro5", "msgpack", "psutil"}} & set(loaded), loaded
print(rec.frames, *rec.shape)
"""

CARTPOLE = """
import gymnasium as gym
def frames():  # an episode of 9 steps: 10 frames
    env = gym.make("CartPole-v1", render_mode="rgb_array")
    env.reset(seed=0)
    yield env.render()
    for step in range(9):
        env.step(step % 2)
        yield env.render()
"""

NUMPY = """
def frames():
    return (np.full((37, 21, 3), 40 * i, np.uint8) for i in range(6))
"""


def in_container(image: str, frames: str, out: Path) -> list[int]:
    """CONTAINER_SCRIPT run by ``image``'s Python with this checkout read-only on its
    PYTHONPATH; its printed frame count and shape."""
    command = ["apptainer", "exec", "--cleanenv", "--bind", f"{ROOT}:{ROOT}:ro", "--bind", f"{out.parent}",
               "--env", f"PYTHONPATH={ROOT}", image,
               "python3", "-c", CONTAINER_SCRIPT.format(frames=frames), str(out)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=out.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    return [int(word) for word in done.stdout.split()]


def test_a_recording_from_the_minimal_image_encodes_on_the_host(minimal_image, tmp_path):
    """The minimal image (Python, numpy, gymnasium; no pygame to render with) writes the
    recording with numpy alone."""
    assert in_container(minimal_image, NUMPY, tmp_path / "a.rec") == [6, 37, 21, 3]
    assert encode_recording(tmp_path / "a.rec", tmp_path / "a.mp4") == 6
    assert count_frames(tmp_path / "a.mp4") == 6
    np.testing.assert_allclose(decode(tmp_path / "a.mp4", 38, 22).mean(axis=(1, 2, 3)), levels(6), atol=3)
    assert not (tmp_path / "a.rec").exists()


def test_a_cartpole_episode_recorded_in_the_container_has_one_frame_per_step(envs_image, tmp_path):
    """CartPole-v1's rgb_array renders (pygame: in envs.sif), recorded in the container and
    encoded on the host: 9 steps, 10 frames."""
    assert in_container(envs_image, CARTPOLE, tmp_path / "a.rec") == [10, 400, 600, 3]
    frames = list(read_recording(tmp_path / "a.rec"))
    assert len(frames) == 10 and len({frame.tobytes() for frame in frames}) > 1  # the cart moves
    assert encode_recording(tmp_path / "a.rec", tmp_path / "a.mp4", fps=50) == 10
    assert count_frames(tmp_path / "a.mp4") == 10
    decoded = decode(tmp_path / "a.mp4", 400, 600).astype(int)
    assert np.abs(decoded - np.stack(frames)).mean() < 3
