"""The wire codec and frames, and the protocol's tables, handshake and errors (no container needed)."""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import threading

import gymnasium as gym
import msgpack
import numpy as np
import pytest

from remote.client import EnvStream
from remote.errors import ExperimentError, ProtocolError, RemoteEnvError
from remote.protocol import channel as frame_channel
from remote.protocol import codec, ops
from remote.server import streams
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


# -- numpy scalars and flat bodies -----------------------------------------------------------------


def _scalars() -> list[np.generic]:
    """Every scalar type at its edges: NaNs with payloads (signalling ones too), -0.0, ±inf,
    the extreme integers, and the types of no short form."""
    values: list[np.generic] = []
    for kind in codec.SCALAR_TYPES:
        dtype = np.dtype(kind)
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            values += [kind(info.min), kind(info.max), kind(0), kind(-1 if dtype.kind == "i" else 1)]
        elif dtype.kind == "f":
            bits = {
                2: [0x7C01, 0xFE00],
                4: [0x7F800001, 0xFFC00123],
                8: [0x7FF0000000000001, 0xFFF8000000000042],
            }
            unsigned = np.dtype(f"u{dtype.itemsize}")
            values += [np.array(b, unsigned).view(dtype)[()] for b in bits[dtype.itemsize]]
            values += [kind(-0.0), kind(np.inf), kind(-np.inf), kind(1.5), np.finfo(dtype).tiny]
        elif dtype.kind == "c":
            values += [kind(1.5 - 2j), kind(complex(np.nan, -0.0))]
        else:
            values += [np.bool_(True), np.bool_(False)]
    others = [np.longlong(-5), np.ulonglong(5), np.datetime64(7, "ns"), np.str_("ab")]
    return values + others + [np.bytes_(b"x\x00y"), np.timedelta64(-3, "s"), np.void(b"\x01\x02")]


def _same_scalar(got, want) -> bool:
    """The same bits and type: the type its dtype string names (np.longlong is np.int64's twin)."""
    kind = np.dtype(want.dtype.str).type
    return type(got) is kind and got.dtype == want.dtype and got.tobytes() == want.tobytes()


def _pair() -> tuple[frame_channel.Channel, frame_channel.Channel]:
    a, b = socket.socketpair()
    return frame_channel.Channel(a), frame_channel.Channel(b)


def _through(sender: frame_channel.Channel, receiver: frame_channel.Channel, value):
    thread = threading.Thread(target=sender.send, args=(value,))
    thread.start()
    try:
        return receiver.recv()
    finally:
        thread.join()


@pytest.mark.parametrize("flat", [False, True])
def test_numpy_scalars_round_trip_exactly(monkeypatch, flat):
    """As values, in a step reply's info, through frames (flat bodies or msgpack): the same
    type and the same bits (a float32 NaN is not quieted on the way)."""
    monkeypatch.setattr(codec, "FLAT_BODIES", flat)
    scalars = _scalars()
    for value in scalars:
        assert _same_scalar(codec.loads(codec.dumps(value)), value), value
    sender, receiver = _pair()
    with sender.sock, receiver.sock:
        info = {f"k{i}": value for i, value in enumerate(scalars)}
        reply = _through(sender, receiver, [ops.OK, np.arange(3.0), scalars[0], False, True, info])
        assert list(reply[5]) == list(info)
        assert all(_same_scalar(reply[5][key], value) for key, value in info.items())
        assert _same_scalar(reply[2], scalars[0])


F64 = 0x80 + codec.SCALAR_TYPES.index(np.float64)
F32 = 0x80 + codec.SCALAR_TYPES.index(np.float32)
I64 = 0x80 + codec.SCALAR_TYPES.index(np.int64)
BOOL = 0x80 + codec.SCALAR_TYPES.index(np.bool_)


def test_numpy_scalars_take_the_short_form():
    assert codec.dumps(np.float64(1.5)) == b"\xc7\x09\x03" + bytes((F64,)) + struct.pack("<d", 1.5)
    assert codec.dumps(np.float32(1.5)) == b"\xc7\x05\x03" + bytes((F32,)) + struct.pack("<f", 1.5)
    old = msgpack.packb(msgpack.ExtType(codec.EXT_SCALAR, b"\x03<f8\x00" + struct.pack("<d", 2.5)))
    assert _same_scalar(codec.loads(old), np.float64(2.5))  # the long form of before is still read


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        bytes((F64,)) + b"\x00" * 7,  # a byte short
        bytes((F64,)) + b"\x00" * 9,  # a byte long
        bytes((F32,)) + b"\x00" * 3,
        bytes((F32,)) + b"\x00" * 5,
        bytes((I64,)) + b"\x00" * 9,
        bytes((BOOL,)) + b"\x02",  # a bool is 0 or 1
        bytes((BOOL,)),
        bytes((0x80 + len(codec.SCALAR_TYPES),)) + b"\x00" * 8,  # no such type
        b"\x03<f8\x00" + b"\x00" * 7,  # the long form, short
        b"\x03<f8\x01" + struct.pack("<q", 1) + b"\x00" * 8,  # the long form with a shape
        b"\x02|O\x00" + b"\x00" * 8,  # an object
        b"\x05<zzzz\x00",  # no dtype
    ],
)
def test_a_malformed_scalar_payload_raises_protocol_error(payload):
    with pytest.raises(ProtocolError):
        codec.loads(msgpack.packb(msgpack.ExtType(codec.EXT_SCALAR, payload)))


def _record_numbers() -> dict[str, object]:
    """Every type a record holds, at its edges (float32 NaNs aside: they keep their bits as
    extensions); numpy's from :func:`_scalars`."""
    numbers = {}
    for value in _scalars():
        if type(value) in codec.RECORD_TYPES and not (type(value) is np.float32 and value != value):
            numbers[f"{type(value).__name__}{len(numbers)}"] = value
    python = [True, False, 0, -(2**63), 2**63 - 1, 1.5, -0.0, float("inf"), float("nan")]
    numbers.update({f"py{i}": value for i, value in enumerate(python)})
    return numbers


def _same_number(got, want) -> bool:
    if isinstance(want, np.generic):
        return _same_scalar(got, want)
    return type(got) is type(want) and struct.pack("<d", got) == struct.pack("<d", want)


def test_an_info_of_numbers_goes_as_one_record_and_comes_back_exactly():
    """A frame's last dict (an info) and the dicts of a last list (a group's infos) go as
    records, one struct call for all their numbers: the same keys in order, types and bits."""
    numbers = _record_numbers()
    reply = [ops.OK, np.arange(3.0), np.float64(1.0), False, False, numbers]
    packed = codec.with_records(reply)
    assert packed[:5] == reply[:5] and packed[5].code == codec.EXT_RECORD
    group = [ops.OK, [numbers, {}, {"a": [1]}, {"x": np.float64(2.0)}]]
    packed_group = codec.with_records(group)[1]
    assert [type(item) for item in packed_group] == [msgpack.ExtType, dict, dict, msgpack.ExtType]
    sender, receiver = _pair()
    with sender.sock, receiver.sock:
        back = _through(sender, receiver, reply)[5]
        assert list(back) == list(numbers) and all(_same_number(back[k], v) for k, v in numbers.items())
        back_group = _through(sender, receiver, group)[1]
        assert back_group[1:3] == [{}, {"a": [1]}] and _same_number(back_group[3]["x"], np.float64(2.0))
        assert all(_same_number(back_group[0][k], v) for k, v in numbers.items())


@pytest.mark.parametrize(
    "info",
    [
        {"f": 1.5, "i": 3, "b": True},  # Python's numbers alone: compiled msgpack is faster
        {"nan": np.float32("nan")},  # its bits would not survive a double
        {"big": 2**63, "x": np.float64(1.0)},
        {"a": np.zeros(2)},
        {"half": np.float16(1.0)},
        {1: np.float64(1.0)},
        {"k" * 256: np.float64(1.0)},
    ],
)
def test_an_info_a_record_cannot_hold_goes_as_msgpack(info):
    reply = [ops.OK, info]
    assert codec.with_records(reply) is reply
    sender, receiver = _pair()
    with sender.sock, receiver.sock:
        back = _through(sender, receiver, reply)[1]
    assert list(back) == list(info) and all(type(back[k]) is type(v) for k, v in info.items())


def _record(header: bytes, values: bytes = b"") -> bytes:
    return msgpack.packb(msgpack.ExtType(codec.EXT_RECORD, struct.pack("<H", len(header)) + header + values))


@pytest.mark.parametrize(
    "data",
    [
        msgpack.packb(msgpack.ExtType(codec.EXT_RECORD, b"")),
        msgpack.packb(msgpack.ExtType(codec.EXT_RECORD, b"\x09\x00\x01")),  # header past the end
        _record(b"\x01" + bytes((F64, 1)) + b"x", b"\x00" * 7),  # values a byte short
        _record(b"\x01" + bytes((F64, 1)) + b"x", b"\x00" * 9),  # a byte long
        _record(b"\x01" + bytes((0x80 + 9, 1)) + b"x", b"\x00" * 2),  # float16: no record type
        _record(b"\x01" + bytes((ord("z"), 1)) + b"x", b"\x00"),  # no such type
        _record(b"\x01" + bytes((F64, 5)) + b"x", b"\x00" * 8),  # key past the header's end
        _record(b"\x02" + bytes((F64, 1)) + b"x" + bytes((F64, 1)) + b"x", b"\x00" * 16),  # twice
        _record(b"\x01" + bytes((F64, 1)) + b"x\x00", b"\x00" * 8),  # trailing header byte
        _record(b"\x00"),  # no keys
        _record(b"\x01" + bytes((F64, 1)) + b"\xff", b"\x00" * 8),  # no utf-8
    ],
)
def test_a_malformed_record_raises_protocol_error(data):
    with pytest.raises(ProtocolError):
        codec.loads(data)


STEP_REPLY = [
    ops.OK,
    np.arange(11.0),
    np.float64(1.25),
    False,
    True,
    {"x": np.float64(0.5), "n": 3, "s": "é"},
]


def test_flat_bodies_are_the_hot_paths_messages_and_read_back():
    body = codec.flat(STEP_REPLY, codec.inline_ext)
    assert body is not None and body[0] == codec.FLAT
    back = codec.loads(body)
    assert back[1].tobytes() == STEP_REPLY[1].tobytes() and _same_scalar(back[2], STEP_REPLY[2])
    assert back[3:5] == [False, True] and back[5] == STEP_REPLY[5] and type(back[5]["x"]) is np.float64
    assert codec.loads(codec.flat([ops.STEP, 2**64 - 1, -(2**63), None, 1.5], codec.inline_ext)) == [
        ops.STEP, 2**64 - 1, -(2**63), None, 1.5,
    ]  # fmt: skip
    for other in ([[1]], [{1: 2}], [{"a": [1]}], [(1,)], [b"x"], [{"k" * 256: 1}], [0] * 256, [np.str_("a")]):
        assert codec.flat(other, codec.inline_ext) is None, other
    with pytest.raises(OverflowError):
        codec.flat([2**64], codec.inline_ext)


def test_every_cut_or_corrupted_flat_body_raises_protocol_error():
    body = codec.flat(STEP_REPLY, codec.inline_ext)
    for end in range(len(body)):
        with pytest.raises(ProtocolError):
            codec.loads(body[:end])
    for bad in (
        body + b"\x00",
        body[:2] + b"q" + body[3:],
        b"\xc1\x01g\xff" + b"\x00" * 8,
        b"\xc1\x01s\xff\xff\xff\xff",
    ):
        with pytest.raises(ProtocolError):
            codec.loads(bad)


def test_flat_frames_carry_out_of_band_arrays_and_tuples_stay_msgpack(monkeypatch):
    monkeypatch.setattr(codec, "FLAT_BODIES", True)
    big, small = np.arange(50_000, dtype=np.float32), np.arange(4, dtype=np.float32)
    nested = (0, small, 1.0, False, False, {})  # a tuple shaped like a step reply: msgpack inside
    sender, receiver = _pair()
    with sender.sock, receiver.sock:
        for value in (
            [ops.OK, big, 1.0, False, False, {"frame": big[::-2].copy(), "small": small}],
            [ops.OK, nested, 0.0, False, False, {}],
            [ops.STEP, np.int64(1)],
        ):
            for _ in range(2):
                back = _through(sender, receiver, value)
                assert codec.dumps(back) == codec.dumps(value)
                assert type(back[1]) is type(value[1])


FALLBACK_CHILD = """
import json, socket, sys
import numpy as np
from remote.protocol import codec
from remote.server.control import server_info
assert codec.FLAT_BODIES and codec.MSGPACK == server_info()["codec"] == "pure-python"
from remote.protocol.channel import Channel
values = eval(sys.argv[1], {"np": np})
a, b = socket.socketpair()
def body(value):  # the body of the frame a channel sends (small: one read)
    Channel(a).send(value)
    return b.recv(65536)[8:].hex()
print(json.dumps({
    "dumps": [codec.dumps(v).hex() for v in values],
    "frames": [body(v) for v in values],
    "read": [codec.dumps(codec.loads(bytes.fromhex(h))).hex() for h in sys.argv[2:]],
}))
"""

FALLBACK_VALUES = """[
    [0, np.arange(4, dtype=np.float32), 1.0, False, False, {}],
    ["step", np.int64(1)],
    ["step", np.zeros(3, np.float32)],
    [0, np.arange(11.0), np.float64(1.2), False, False,
     {"x": np.float64(0.5), "c": np.float32(-7e-4), "r": 1.0, "lives": 3, "ok": np.bool_(True)}],
    [0, np.zeros(2), {"seed": [1, 2]}],
    {"a": (1, (2.5, np.float32(3))), 7: [np.int64(4), None, np.datetime64(3, "s")], "b": b"\\x00"},
    np.uint16(9),
]"""


def test_the_pure_python_msgpack_gives_the_same_bytes_and_values():
    """``dumps`` is byte for byte the same with msgpack's fallback; frames there go flat
    where they can, and each side reads what the other wrote."""
    import os
    import subprocess

    values = eval(FALLBACK_VALUES, {"np": np})  # noqa: S307 (our own literal)
    ours = [codec.dumps(v).hex() for v in values]
    env = {**os.environ, "MSGPACK_PUREPYTHON": "1"}
    child = [sys.executable, "-c", FALLBACK_CHILD, FALLBACK_VALUES, *ours]
    got = json.loads(subprocess.run(child, env=env, check=True, capture_output=True, text=True).stdout)
    assert got["dumps"] == ours
    assert got["read"] == ours
    for value, frame in zip(values, got["frames"], strict=True):
        data = bytes.fromhex(frame)
        assert (data[0] == codec.FLAT) == (type(value) is list and "seed" not in repr(value)), value
        assert codec.dumps(codec.loads(data)) == codec.dumps(value)


def test_the_server_says_which_msgpack_it_runs():
    from remote.server.control import server_info

    assert server_info()["codec"] == codec.MSGPACK == "compiled"


@pytest.mark.parametrize(
    "asked", [None, 0, 300_000, frame_channel.SOLE_REQUEST_POLL_NS, -1, 10**10, 1.5, "1"]
)
def test_a_stream_polls_for_requests_as_long_as_its_hello_asked(tmp_path, asked):
    """A lone stream polls for its next request (on more than one CPU) as long as its hello's
    ``"poll_ns"`` says (0: not at all; absent: REQUEST_POLL_NS); anything but an int from 0
    to SOLE_REQUEST_POLL_NS is refused with an error reply, and the stream is closed."""
    secret = "ab" * 32
    runner = RemoteRunnerServer()
    runner.envs[1] = RemoteEnvironmentServer(gym.make("CartPole-v1"))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "stream"))
    listener.listen(4)
    server = streams.EnvStreamServer(listener, runner, secret)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = frame_channel.Channel(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
    client.sock.connect(str(tmp_path / "stream"))
    valid = asked is None or (type(asked) is int and 0 <= asked <= frame_channel.SOLE_REQUEST_POLL_NS)
    try:
        client.send(ops.hello(secret, envs=[1], **({} if asked is None else {"poll_ns": asked})))
        reply = client.recv()
        if not valid:
            assert reply[0] == ops.ERROR and "poll_ns" in reply[1]["message"]
            return
        assert reply == [ops.OK, None]
        client.send([ops.RESET, [[0], None]])
        assert client.recv()[0] == ops.OK
        (served,) = server.connections.values()
        wanted = frame_channel.REQUEST_POLL_NS if asked is None else asked
        assert served.poll_ns == frame_channel.polling(wanted)
        if len(os.sched_getaffinity(0)) > 1:
            assert served.poll_ns == wanted
    finally:
        client.close()
        server.stop()
        runner.close_all()
