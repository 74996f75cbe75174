"""Property tests: every space type and numpy dtype survives the wire codec bit for bit."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

import numpy as np
import pytest
from gymnasium import spaces
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from remote.errors import ProtocolError
from remote.protocol import channel as frame_channel
from remote.protocol import codec
from remote.protocol import spaces as space_codec

DTYPES = st.one_of(
    hnp.boolean_dtypes(),
    hnp.integer_dtypes(endianness="="),
    hnp.integer_dtypes(endianness=">"),
    hnp.unsigned_integer_dtypes(endianness="?"),
    hnp.floating_dtypes(endianness="?"),
    hnp.complex_number_dtypes(endianness="?"),
    hnp.datetime64_dtypes(endianness="?"),
    hnp.timedelta64_dtypes(endianness="?"),
    hnp.unicode_string_dtypes(endianness="?"),
    hnp.byte_string_dtypes(endianness="?"),
)


def arrays() -> st.SearchStrategy[np.ndarray]:
    """Arrays of every dtype, 0-d and empty included, some non-contiguous."""
    base = hnp.arrays(DTYPES, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))

    def maybe_strided(array: np.ndarray, step: int) -> np.ndarray:
        return array[::step] if array.ndim and step > 1 else array

    return st.builds(maybe_strided, base, st.integers(1, 3))


def same(a, b) -> bool:
    """Bit-identical through nesting, including types (NaN-safe: compares bytes)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, np.generic):
        return a.dtype == b.dtype and a.tobytes() == b.tobytes()
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and a != a:
        return b != b
    return a == b


LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),
    st.text(max_size=8),
    st.binary(max_size=16),
    arrays(),
    arrays().map(lambda a: a.reshape(-1)[0] if a.size else a),
)
VALUES = st.recursive(
    LEAVES,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(st.one_of(st.text(max_size=5), st.integers(-5, 5)), children, max_size=4),
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(VALUES)
def test_values_round_trip_bit_identical(value):
    assert same(codec.loads(codec.dumps(value)), value)


@settings(max_examples=300, deadline=None)
@given(arrays())
def test_arrays_round_trip_bit_identical(array):
    back = codec.loads(codec.dumps(array))
    assert back.dtype == array.dtype and back.shape == array.shape
    assert back.tobytes() == np.ascontiguousarray(array).tobytes()


def big_arrays() -> st.SearchStrategy[np.ndarray]:
    """Arrays of 4 KB to ~400 KB (the sizes that travel out of band, up to more than a
    receive buffer), some strided."""
    shapes = hnp.array_shapes(min_dims=2, max_dims=2, min_side=64, max_side=160)
    return st.builds(lambda a, step: a[::step], hnp.arrays(DTYPES, shapes), st.integers(1, 2))


FRAMED_VALUES = st.recursive(
    st.one_of(big_arrays(), LEAVES),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(st.text(max_size=5), children, max_size=4),
    ),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None)
@given(FRAMED_VALUES, st.sampled_from([64, 4096, 65536]))
def test_values_round_trip_bit_identical_through_frames(value, buffer_size):
    """Frames: out-of-band arrays, whole in the first read or not, twice on one channel
    (the receive buffer may have grown in between)."""
    a, b = socket.socketpair()
    with a, b:
        channel = frame_channel.Channel(b, buffer_size)
        received = []
        for _ in range(2):  # a peer sends its next frame only after an answer
            sender = threading.Thread(target=frame_channel.Channel(a).send, args=(value,))
            sender.start()
            received.append(channel.recv())
            sender.join()
    assert same(received[0], value) and same(received[1], value)


RECORD_NUMBERS = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),  # beyond 63 bits: the dict goes as msgpack
    st.floats(),
    hnp.arrays(st.sampled_from([k for k in codec.RECORD_TYPES if issubclass(k, np.generic)]), ()).map(
        lambda a: a[()]  # float32 NaNs with payloads among them: the dict goes as msgpack
    ),
)
INFOS = st.dictionaries(st.text(max_size=5), RECORD_NUMBERS, max_size=6)


@settings(max_examples=200, deadline=None)
@given(st.lists(LEAVES, max_size=3), st.one_of(INFOS, st.lists(INFOS, max_size=4)))
def test_infos_of_numbers_round_trip_bit_identical_through_frames(head, last):
    """A frame's last item, a dict of numbers or a list of them, goes as records where it
    can (a dict of any of :data:`codec.RECORD_TYPES`), else as msgpack: the same either way."""
    value = [*head, last]
    a, b = socket.socketpair()
    with a, b:
        sender = threading.Thread(target=frame_channel.Channel(a).send, args=(value,))
        sender.start()
        received = frame_channel.Channel(b).recv()
        sender.join()
    assert same(received, value)


BOX_DTYPES = st.sampled_from([np.float16, np.float32, np.float64, np.int8, np.int32, np.int64, np.uint8])
SHAPES = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4)


@st.composite
def boxes(draw) -> spaces.Box:
    dtype = draw(BOX_DTYPES)
    shape = draw(SHAPES)
    if np.issubdtype(dtype, np.integer):
        low = draw(st.integers(0 if np.issubdtype(dtype, np.unsignedinteger) else -5, 5))
        return spaces.Box(low, low + draw(st.integers(0, 10)), shape, dtype)
    unbounded = draw(st.booleans())
    return spaces.Box(-np.inf if unbounded else -1.0, np.inf if unbounded else 2.0, shape, dtype)


LEAF_SPACES = st.one_of(
    boxes(),
    st.builds(spaces.Discrete, st.integers(1, 10), start=st.integers(-5, 5)),
    st.builds(spaces.MultiDiscrete, st.lists(st.integers(1, 6), min_size=1, max_size=4)),
    st.builds(
        spaces.MultiBinary, st.one_of(st.integers(1, 6), st.lists(st.integers(1, 3), min_size=1, max_size=3))
    ),
    st.builds(spaces.Text, st.integers(1, 8), charset=st.sampled_from(["ab", "xyz01", "Q"])),
)
SPACES = st.recursive(
    LEAF_SPACES,
    lambda children: st.one_of(
        st.lists(children, min_size=1, max_size=3).map(lambda s: spaces.Tuple(s)),
        st.dictionaries(st.text("abcdef", min_size=1, max_size=4), children, min_size=1, max_size=3).map(
            spaces.Dict
        ),
        children.map(spaces.Sequence),
        st.lists(children, min_size=1, max_size=3).map(lambda s: spaces.OneOf(s)),
    ),
    max_leaves=6,
)


@settings(max_examples=200, deadline=None)
@given(SPACES, st.integers(0, 2**32 - 1))
def test_spaces_and_their_samples_round_trip(space, seed):
    back = space_codec.rebuild(codec.loads(codec.dumps(space_codec.describe(space))))
    assert back == space and type(back) is type(space)
    space.seed(seed)
    sample = space.sample()
    assert same(codec.loads(codec.dumps(sample)), sample)
    assert back.contains(codec.loads(codec.dumps(sample)))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_never_crash_the_decoder(data):
    with contextlib.suppress(ProtocolError):  # refused cleanly: the only acceptable failure
        codec.loads(data)


def test_graph_space_round_trip():
    space = spaces.Graph(spaces.Box(0, 1, (3,)), spaces.Discrete(2))
    assert space_codec.rebuild(codec.loads(codec.dumps(space_codec.describe(space)))) == space


@pytest.mark.parametrize("value", [{1, 2}, object(), np.array([None]), 1 + 2j, 2**70])
def test_values_the_codec_refuses(value):
    with pytest.raises((TypeError, OverflowError)):
        codec.dumps(value)


FLAT_LEAVES = st.one_of(LEAVES, big_arrays())
FLAT_LISTS = st.lists(
    st.one_of(FLAT_LEAVES, st.dictionaries(st.text(max_size=5), FLAT_LEAVES, max_size=4)), max_size=6
)


@settings(max_examples=150, deadline=None)
@given(st.one_of(FLAT_LISTS, FRAMED_VALUES), st.booleans())
def test_values_round_trip_bit_identical_through_flat_bodies(value, flat):
    """Frames where msgpack is the pure-Python fallback: lists of leaves and of dicts of
    leaves go as flat bodies (large arrays out of band), all else as msgpack."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(codec, "FLAT_BODIES", flat)
        a, b = socket.socketpair()
        with a, b:
            sender = threading.Thread(target=frame_channel.Channel(a).send, args=(value,))
            sender.start()
            received = frame_channel.Channel(b, 4096).recv()
            sender.join()
    assert same(received, value)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_never_crash_the_flat_decoder(data):
    with contextlib.suppress(ProtocolError):
        codec.loads(bytes((codec.FLAT,)) + data)


RECORD_ENTRIES = st.tuples(
    st.sampled_from(
        [0x80 + i for i in range(len(codec.SCALAR_TYPES))] + [ord("f"), ord("i"), ord("?"), 0, 255]
    ),
    st.binary(max_size=4),
    st.integers(-1, 2),  # the key size as it is, short or long by one or two
)


@settings(max_examples=500, deadline=None)
@given(st.lists(RECORD_ENTRIES, max_size=4), st.binary(max_size=40), st.integers(-2, 2))
def test_nearly_well_formed_records_decode_to_a_dict_or_raise_protocol_error(entries, values, off):
    """Headers with real and unknown type codes, keys sized right or wrong, counts and header
    sizes off by one or two: a dict or ProtocolError, never another exception."""
    header = bytes((max(0, len(entries) + min(off, 0)),)) + b"".join(
        bytes((code, max(0, len(key) + wrong))) + key for code, key, wrong in entries
    )
    data = struct.pack("<H", max(0, len(header) + max(off, 0))) + header + values
    with contextlib.suppress(ProtocolError):
        assert type(codec.read_record(data)) is dict  # read_record itself, not loads: that wraps all
