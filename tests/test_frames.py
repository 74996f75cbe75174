"""Frames with out-of-band arrays: validated sizes, no copies beyond the first read."""

from __future__ import annotations

import socket
import struct
import threading

import msgpack
import numpy as np
import pytest

from remote import wire
from remote.errors import ProtocolError


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
            wire.Channel(b).recv()


def test_out_of_band_arrays_larger_than_the_buffer_and_small_ones_in_one_frame():
    a, b = socket.socketpair()
    with a, b:
        value = [np.arange(1_000_000, dtype=np.float32), np.arange(3), (np.ones((512, 9)), "x")]
        channel = wire.Channel(b, buffer_size=1024)
        for _ in range(3):
            sender = threading.Thread(target=wire.send_frame, args=(a, value))
            sender.start()
            got = channel.recv()
            sender.join()
            assert got[0].tobytes() == value[0].tobytes() and got[0].flags.writeable
            assert np.array_equal(got[1], value[1]) and isinstance(got[2], tuple)
            assert np.array_equal(got[2][0], value[2][0]) and got[2][1] == "x"


def test_inline_codec_refuses_out_of_band_arrays():
    with pytest.raises(ProtocolError, match="extension"):
        wire.loads(msgpack.packb(msgpack.ExtType(4, _header("<f8", (2,)))))
