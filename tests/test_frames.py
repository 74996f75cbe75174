"""Frames with out-of-band arrays: validated sizes, no copies beyond the first read."""

from __future__ import annotations

import socket
import struct
import threading
import time

import msgpack
import numpy as np
import pytest

from remote.errors import ProtocolError
from remote.protocol import codec
from remote.protocol.channel import Channel


def _header(dtype: str, shape: tuple[int, ...]) -> bytes:
    code = dtype.encode()
    return struct.pack(f"<B{len(code)}sB{len(shape)}q", len(code), code, len(shape), *shape)


def _raw_frame(body_value, out_of_band: bytes) -> bytes:
    body = msgpack.packb(body_value, use_bin_type=True)
    return struct.pack("<II", 4 + len(body) + len(out_of_band), len(body)) + body + out_of_band


@pytest.mark.parametrize(
    "frame, message",
    [
        (_raw_frame([msgpack.ExtType(4, _header("<f8", (4,)))], bytes(16)), "does not fit"),
        (_raw_frame([msgpack.ExtType(4, _header("<f8", (2,)))], bytes(32)), "no array claims"),
        (_raw_frame([msgpack.ExtType(4, _header("|O", (2,)))], bytes(16)), "refusing"),
        (_raw_frame([msgpack.ExtType(4, _header("<f8", (2,)) + b"x")], bytes(16)), "does not fit"),
        (struct.pack("<II", 8, 100) + bytes(8), "does not fit a frame"),
        (_raw_frame([1], b"") * 2, "more than one frame"),
    ],
)
def test_malformed_frames_are_refused(frame, message):
    a, b = socket.socketpair()
    with a, b:
        a.sendall(frame)
        with pytest.raises(ProtocolError, match=message):
            Channel(b).recv()


def test_out_of_band_arrays_larger_than_the_buffer_and_small_ones_in_one_frame():
    a, b = socket.socketpair()
    with a, b:
        value = [np.arange(1_000_000, dtype=np.float32), np.arange(3), (np.ones((512, 9)), "x")]
        channel = Channel(b, buffer_size=1024)
        for _ in range(3):
            sender = threading.Thread(target=Channel(a).send, args=(value,))
            sender.start()
            got = channel.recv()
            sender.join()
            assert got[0].tobytes() == value[0].tobytes() and got[0].flags.writeable
            assert np.array_equal(got[1], value[1]) and isinstance(got[2], tuple)
            assert np.array_equal(got[2][0], value[2][0]) and got[2][1] == "x"


def test_inline_codec_refuses_out_of_band_arrays():
    with pytest.raises(ProtocolError, match="extension"):
        codec.loads(msgpack.packb(msgpack.ExtType(4, _header("<f8", (2,)))))


@pytest.mark.parametrize("cut", [None, 8 + 46 + 5000, 8 + 46 + 9000])  # body: 46 bytes
@pytest.mark.parametrize("buffer_size", [1024, 65536])  # 1024: the buffer grows after frame 1
def test_out_of_band_arrays_whole_or_split_across_reads_own_their_memory(cut, buffer_size):
    """Arrays whose bytes came with the first read are copied out of the channel's buffer;
    the rest are read straight into their memory: either way a later frame changes nothing."""
    a, b = socket.socketpair()
    with a, b:
        channel = Channel(b, buffer_size)
        frames = [[np.full(6000, i, np.uint8), np.full((20, 100), i, np.float32), "tail"] for i in (1, 2)]
        received = []
        for value in frames:
            sender_side = socket.socketpair()
            with sender_side[0], sender_side[1]:
                Channel(sender_side[0]).send(value)  # encode once, then dribble it to `a`
                data = sender_side[1].recv(1 << 20)
            assert len(data) == 8 + 46 + 6000 + 8000
            if cut is None:
                a.sendall(data)
                received.append(channel.recv())
            else:
                sender = threading.Timer(0.05, a.sendall, args=(data[cut:],))
                a.sendall(data[:cut])
                sender.start()
                received.append(channel.recv())
                sender.join()
        for i, got in zip((1, 2), received, strict=True):
            assert got[0].dtype == np.uint8 and got[0].shape == (6000,) and (got[0] == i).all()
            assert got[1].dtype == np.float32 and got[1].shape == (20, 100) and (got[1] == i).all()
            assert got[2] == "tail" and got[0].flags.writeable and got[1].flags.writeable


def test_a_channel_timeout_is_kept_by_the_kernel_and_raises_timeout_error():
    """The socket stays blocking (no poll() per frame); a silent peer or a full send buffer
    ends in TimeoutError after the timeout, and None waits again for ever."""
    a, b = socket.socketpair()
    with a, b:
        channel = Channel(b)
        channel.settimeout(0.2)
        assert b.gettimeout() is None
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="waiting for a frame"):
            channel.recv()
        assert 0.15 < time.monotonic() - started < 2
        with pytest.raises(TimeoutError, match="sending a frame"):
            for _ in range(10_000):  # nobody reads `a`: the buffers fill up
                channel.send(np.zeros(1 << 16, np.uint8))
        channel.settimeout(None)
        replier = threading.Timer(0.3, Channel(a).send, args=("late",))
        replier.start()
        assert channel.recv() == "late"
        replier.join()
