"""The wire codec and frames (no container needed)."""

from __future__ import annotations

import socket
import struct
import threading

import msgpack
import numpy as np
import pytest

from remote.errors import ProtocolError
from remote.protocol import channel as frame_channel
from remote.protocol import codec

DTYPES = [
    "bool",
    "int8",
    "uint8",
    "int16",
    "uint16",
    "int32",
    "uint32",
    "int64",
    "uint64",
    "float16",
    "float32",
    "float64",
    "complex64",
    "complex128",
    ">i4",
    ">f8",
    "<U3",
    "S4",
    "datetime64[ns]",
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (3,), (2, 3), (2, 0, 4)])
def test_arrays_round_trip_bit_identical(dtype, shape):
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 255, size=int(np.prod(shape)) * np.dtype(dtype).itemsize, dtype=np.uint8)
    array = np.frombuffer(raw.tobytes(), dtype=dtype).reshape(shape)
    back = codec.loads(codec.dumps(array))
    assert back.dtype == array.dtype and back.shape == array.shape
    assert back.tobytes() == array.tobytes()
    assert back.flags.writeable


def test_non_contiguous_arrays():
    array = np.arange(24, dtype=np.int32).reshape(4, 6)[::2, ::3].T
    back = codec.loads(codec.dumps(array))
    assert np.array_equal(back, array) and back.dtype == array.dtype


def test_nested_tuples_dicts_and_scalars_keep_their_types():
    value = {
        "a": (1, (2.5, np.float32(3)), [np.int64(4), None]),
        7: {"b": b"\x00", "c": "x"},
        "t": (),
        "flag": np.bool_(True),
    }
    back = codec.loads(codec.dumps(value))
    assert back == value
    assert isinstance(back["a"], tuple) and isinstance(back["a"][1], tuple)
    assert isinstance(back["a"][2], list)
    assert type(back["a"][1][1]) is np.float32 and type(back["a"][2][0]) is np.int64
    assert type(back["flag"]) is np.bool_


def test_unsupported_values_are_refused():
    with pytest.raises(TypeError, match="object"):
        codec.dumps(object())
    with pytest.raises(TypeError, match="object"):
        codec.dumps(np.array([object()]))


@pytest.mark.parametrize(
    "data",
    [
        b"\xc1",  # never-used msgpack byte
        msgpack.packb(msgpack.ExtType(99, b"")),
        msgpack.packb(msgpack.ExtType(1, b"\x03<f4\x01" + struct.pack("<q", 4) + b"\x00" * 3)),
        msgpack.packb(msgpack.ExtType(1, b"\x02|O\x00")),
        msgpack.packb(msgpack.ExtType(1, b"")),
    ],
)
def test_malformed_input_raises_protocol_error(data):
    with pytest.raises(ProtocolError):
        codec.loads(data)


def test_frames_over_a_socket_and_the_size_limit(monkeypatch):
    a, b = socket.socketpair()
    with a, b:
        big = np.arange(300_000, dtype=np.float64)  # larger than the socket buffer
        sender = threading.Thread(target=frame_channel.Channel(a).send, args=({"x": big},))
        sender.start()
        assert np.array_equal(frame_channel.Channel(b).recv()["x"], big)
        sender.join()
        monkeypatch.setattr(frame_channel, "MAX_FRAME", 1000)
        with pytest.raises(ProtocolError, match="exceeds"):
            frame_channel.Channel(a).send(bytes(2000))
        a.sendall(struct.pack("<I", 5000))
        with pytest.raises(ProtocolError, match="limit"):
            frame_channel.Channel(b).recv()
        a.close()
        with pytest.raises(ConnectionError):
            frame_channel.Channel(b).recv()
