"""The wire codec and frames, and the protocol's tables, handshake and errors (no container needed)."""

from __future__ import annotations

import socket
import struct
import threading

import gymnasium as gym
import msgpack
import numpy as np
import pytest

from remote.client import EnvStream
from remote.errors import ExperimentError, ProtocolError, RemoteEnvError
from remote.protocol import channel as frame_channel
from remote.protocol import codec, ops
from remote.server.control import RemoteRunnerServer
from remote.server.envs import RemoteEnvironmentServer
from remote.server.groups import EnvGroupServer

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


def test_the_servers_serve_the_operations_of_the_table():
    single = RemoteEnvironmentServer(gym.make("CartPole-v1"))
    assert set(single.ops) == set(ops.REPLY_SIZE)
    assert set(EnvGroupServer([single]).ops) == ops.GROUP_OPS <= set(ops.REPLY_SIZE)
    for method in ops.CONTROL_METHODS:
        assert callable(getattr(RemoteRunnerServer, method, None)), method


def test_the_hello_is_what_check_hello_admits_and_its_bytes_stay():
    secret = "ab" * 32
    ops.check_hello(ops.hello(secret), secret)
    ops.check_hello(ops.hello(secret, envs=[1, 2]), secret)
    assert codec.dumps(ops.hello(secret, env=3)) == codec.dumps({"protocol": 2, "secret": secret, "env": 3})
    with pytest.raises(ProtocolError, match="authentication"):
        ops.check_hello(ops.hello("cd" * 32, env=3), secret)


def test_an_error_comes_back_as_its_local_exception():
    try:
        raise KeyError("missing")
    except KeyError as exc:
        reply = codec.loads(codec.dumps(ops.error_reply(exc)))
    assert reply[0] == ops.ERROR == 1 and ops.OK == 0
    error = ops.remote_error(reply[1], base=ExperimentError)
    assert isinstance(error, ExperimentError) and isinstance(error, KeyError)
    assert error.remote_type == "builtins.KeyError" and "raise KeyError" in error.remote_traceback
    with pytest.raises(RemoteEnvError, match="missing"):
        ops.result(reply)
    assert ops.result([ops.OK, {"handle": 1}]) == {"handle": 1}


MALFORMED_ERRORS = [
    None,
    "boom",
    [],
    {},
    {"type": "builtins.ValueError", "message": "no traceback"},
    {"type": 1, "message": "m", "traceback": ""},
]


@pytest.mark.parametrize("payload", MALFORMED_ERRORS)
def test_a_malformed_error_is_a_protocol_error(payload):
    with pytest.raises(ProtocolError, match="malformed"):
        ops.remote_error(payload)
    with pytest.raises(ProtocolError, match="malformed"):
        ops.result([ops.ERROR, payload])


@pytest.mark.parametrize("reply", [[2, None], [ops.OK], [ops.OK, 1, 2], (ops.OK, 1), "ok", None])
def test_a_malformed_reply_is_a_protocol_error(reply):
    with pytest.raises(ProtocolError, match="malformed"):
        ops.result(reply)


@pytest.mark.parametrize("payload", MALFORMED_ERRORS)
def test_an_env_stream_given_a_malformed_error_says_so_and_drops(payload):
    a, b = socket.socketpair()
    with a, b:
        stream = EnvStream(None, frame_channel.Channel(a), "env")  # type: ignore[arg-type]
        stream.send(ops.STEP, 0)
        frame_channel.Channel(b).send([ops.ERROR, payload])
        with pytest.raises(ProtocolError, match="malformed reply to step"):
            stream.receive(ops.STEP, ops.STEP_REPLY_SIZE)
        assert not stream.open
