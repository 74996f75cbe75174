"""The codec: gymnasium values as msgpack, with numpy arrays as raw buffers.

Values that cross the wire are msgpack with these extension types:

* ``ndarray``: a small header (dtype string, shape) followed by the raw buffer (C order).
  Dtype, byte order and shape survive exactly; nothing goes through ``tolist()``.
* ``ndarray out of band`` (frames only): the header alone; the array's bytes follow the
  msgpack body in the frame, sent straight from the array's memory and received straight
  into the new array's memory. Used for arrays of :data:`OUT_OF_BAND` bytes or more.
* ``tuple``: msgpack has only arrays, which decode as lists; tuples are tagged so that
  nested tuples (``Tuple`` spaces) come back as tuples.
* ``numpy scalar``: ``np.float32(1.5)`` stays an ``np.float32``. A type of
  :data:`SCALAR_TYPES` (bool, integers, floats, complex: what an info dict holds) goes in
  its short form: the byte ``0x80 + i`` naming ``SCALAR_TYPES[i]``, then the value's bytes,
  little endian (no array: made by a ``struct`` call, read by numpy's scalar-from-bytes or,
  for a float64, ``struct`` again; every bit kept, a float32 NaN's too); any other
  (``datetime64``, ``str_``, ``longdouble``, ...) as the header of a 0-d array, then its
  bytes. A header starts with its dtype string's length (never 128), so the first byte tells
  the two apart; readers take both.
* ``record`` (frames whose msgpack is compiled, :func:`pack_with`; a flat body carries
  dicts its own way): a frame's last item (an info, a dict action), or each dict of a list
  that is its last item (a group's infos), when it is a dict of ``str`` keys and of numbers
  of :data:`RECORD_TYPES`, numpy's among them (a MuJoCo info's 4-6 float64s): its keys and
  types, then its values packed by one ``struct`` call; ~2.5 µs less per info of six than
  an extension per number. Little endian::

      record = u16 header size · header · values
      header = u8 count · (u8 type code · u8 key size · key utf-8)*
      values = each value's bytes, in the header's order, unpadded

  A type code is a numpy scalar's short form code (``0x80 + i``) or ``f`` float, ``i`` int,
  ``?`` bool (Python's). Any other dict (of Python numbers alone, a float32 NaN, an int
  beyond int64, an array, a key over 255 bytes) goes as msgpack, as do dicts deeper inside.

**Flat bodies** (frames only, :func:`pack_with`): the hot path's messages (a step request
``["step", action]``, a step reply ``[OK, obs, reward, terminated, truncated, info]``, a reset
reply) are a list of leaves and of ``str``-keyed dicts of leaves. Where msgpack is its
pure-Python fallback (an image whose Python is not the host's), such a list goes as a flat
body, read and written by ``struct`` without msgpack, 2.5–4.8× faster there (compiled msgpack
is faster still, so it is written only there; both are always read). Little endian::

    body  = 0xC1 (never a msgpack byte) · u8 item count · item*
    item  = "d" · u8 entry count · (u8 key size · key utf-8 · leaf)*  |  leaf
    leaf  = "n" None | "T" True | "F" False | "i" i64 | "u" u64 | "f" f64
          | "s" · u32 size · utf-8 | "g" · a numpy scalar's short form (0x80 + i · value bytes)
          | "x" · u8 code · u32 size · an extension's payload (as above: the arrays)

Any other list (more than 255 items or entries, a key over 255 bytes, any other type, a
list nested in a tuple) goes as msgpack; a decoder reads both. :func:`dumps` never writes
flat bodies (its bytes are stable and compared), :func:`loads` reads them.

Only plain data is ever decoded: no classes, no pickle, no code. Anything else raises
:class:`~remote.errors.ProtocolError` (decode) or ``TypeError`` (encode).

Frames (and the out-of-band arrays) are :mod:`remote.protocol.channel`'s.
"""

from __future__ import annotations

import functools
import itertools
import math
import struct
import sys
import threading
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np

from ..errors import ProtocolError

EXT_NDARRAY = 1
EXT_TUPLE = 2
EXT_SCALAR = 3
EXT_NDARRAY_OOB = 4
EXT_RECORD = 5

#: The frames' bodies go flat where they can (:func:`pack_with`): where msgpack is its
#: pure-Python fallback. Compiled msgpack is faster than a flat body made in Python.
FLAT_BODIES = msgpack.Packer.__module__ == "msgpack.fallback"
#: The msgpack this process runs, as the server's ``INFO`` reports it.
MSGPACK = "pure-python" if FLAT_BODIES else "compiled"
_ARRAY_HEADERS: dict[tuple[np.dtype, tuple[int, ...]], bytes] = {}
_PARSED_HEADERS: dict[bytes, tuple[np.dtype, tuple[int, ...], int, int]] = {}


class _ThreadState(threading.local):
    """Reusable packers of :func:`dumps`, per thread. A tuple inside a value is packed while
    the outer packer is busy, so each nesting level takes its own; creating a Packer
    inside a ``default`` hook costs ~15 µs, reusing one ~0.3 µs."""

    def __init__(self) -> None:
        self.packers: list[msgpack.Packer] = []
        self.nested = 0  # tuples being packed: their items never go as a flat body


_state = _ThreadState()


def pack_with(free: list[msgpack.Packer], default: Any, obj: Any) -> bytes:
    """A frame's body: msgpack with a packer from ``free`` (a new one if none is free, put
    back after); where :data:`FLAT_BODIES`, :func:`flat` first if it takes ``obj``, else
    with :func:`with_records`."""
    if type(obj) is list and obj and not _state.nested:
        if FLAT_BODIES:
            data = flat(obj, default)
            if data is not None:
                return data
        else:
            obj = with_records(obj)
    return _msgpack_with(free, default, obj)


def _msgpack_with(free: list[msgpack.Packer], default: Any, obj: Any) -> bytes:
    packer = free.pop() if free else _packer(default)
    data = packer.pack(obj)  # on error the packer is dropped, not returned dirty
    free.append(packer)
    return data


def _packer(default: Callable[[Any], Any]) -> msgpack.Packer:
    """A packer whose ``default`` makes the numpy scalars of :data:`SCALAR_TYPES` itself (an
    info dict's, every step), before calling the given ``default`` for anything else."""
    exts = _SCALAR_EXTS

    def scalars_first(obj: Any) -> Any:
        ext = exts.get(type(obj))
        if ext is not None:
            return ext(obj)
        return default(obj)

    return msgpack.Packer(default=scalars_first, use_bin_type=True, strict_types=True)


def _pack(obj: Any) -> bytes:
    return _msgpack_with(_state.packers, _default, obj)


def _default(obj: Any) -> Any:
    if type(obj) is np.ndarray:
        return inline_ext(obj)
    return plain(obj, _default, _pack)


#: ``ExtType(code, data)`` without ExtType's own checks in Python (~0.4 µs of ~0.6).
_new_ext = functools.partial(tuple.__new__, msgpack.ExtType)


def inline_ext(array: np.ndarray) -> msgpack.ExtType:
    return _new_ext((EXT_NDARRAY, array_header(array) + np.ascontiguousarray(array).tobytes()))


def plain(obj: Any, default: Any, pack: Any) -> Any:
    ext = _SCALAR_EXTS.get(type(obj))
    if ext is not None:
        return ext(obj)
    if isinstance(obj, tuple):
        _state.nested += 1
        try:
            return _new_ext((EXT_TUPLE, pack(list(obj))))
        finally:
            _state.nested -= 1
    if isinstance(obj, np.generic):  # the types of no table: np.longlong, np.str_, np.datetime64, ...
        array = np.asarray(obj)
        return _new_ext((EXT_SCALAR, array_header(array) + array.tobytes()))
    if isinstance(obj, np.ndarray):  # a subclass (np.matrix, masked arrays): send the plain array
        return default(np.asarray(obj).view(np.ndarray))
    for plain in (dict, list, bool, int, float, str, bytes):  # subclasses: OrderedDict, IntEnum
        if isinstance(obj, plain):
            return plain(obj)
    raise TypeError(f"cannot send a {type(obj).__name__} over the wire: {obj!r:.80}")


def array_header(array: np.ndarray) -> bytes:
    """``[len(dtype)][dtype.str][ndim][shape as int64 ...]``, cached per dtype and shape."""
    key = (array.dtype, array.shape)
    header = _ARRAY_HEADERS.get(key)
    if header is None:
        dtype = array.dtype
        if dtype.hasobject or dtype.names is not None or dtype.subdtype is not None:
            raise TypeError(f"cannot send an array of dtype {dtype} (object or structured)")
        code = dtype.str.encode("ascii")
        shape = array.shape
        header = struct.pack(f"<B{len(code)}sB{len(shape)}q", len(code), code, len(shape), *shape)
        if len(_ARRAY_HEADERS) > 1024:
            _ARRAY_HEADERS.clear()
        _ARRAY_HEADERS[key] = header
    return header


def parse_array_header(data: bytes) -> tuple[np.dtype, tuple[int, ...], int, int]:
    """``(dtype, shape, header size, byte count)`` of an array header (cached); ProtocolError
    if it is malformed or names an object, structured or empty dtype, or a negative size."""
    try:
        size = data[0]
        end = 2 + size + 8 * data[1 + size]
    except IndexError:
        raise ProtocolError("malformed array header: too short") from None
    key = data[:end]
    parsed = _PARSED_HEADERS.get(key)
    if parsed is not None:
        return parsed
    try:
        dtype = np.dtype(data[1 : 1 + size].decode("ascii"))
        shape = struct.unpack_from(f"<{data[1 + size]}q", data, 2 + size)
    except Exception as exc:
        raise ProtocolError(f"malformed array header: {exc}") from None
    if (
        dtype.hasobject
        or dtype.names is not None
        or dtype.subdtype is not None
        or dtype.itemsize == 0
        or any(n < 0 for n in shape)
    ):
        raise ProtocolError(f"refusing array of dtype {dtype} and shape {shape}")
    count = 1
    for n in shape:
        count *= n
    parsed = dtype, shape, end, count * dtype.itemsize
    if len(_PARSED_HEADERS) > 1024:
        _PARSED_HEADERS.clear()
    _PARSED_HEADERS[key] = parsed
    return parsed


def new_array(dtype: np.dtype, shape: tuple[int, ...], memory: bytearray | np.ndarray) -> np.ndarray:
    """A writable array over ``memory`` (as a local env's arrays are writable)."""
    try:
        return np.ndarray(shape, dtype, memory)
    except ValueError as exc:  # e.g. more dimensions than numpy allows
        raise ProtocolError(f"refusing array of dtype {dtype} and shape {shape}: {exc}") from None


def read_array(data: bytes) -> np.ndarray:
    """The array of an ``EXT_NDARRAY`` payload (its own writable memory); ProtocolError if malformed."""
    dtype, shape, offset, nbytes = parse_array_header(data)
    if len(data) - offset != nbytes:
        raise ProtocolError(f"array buffer has {len(data) - offset} bytes, expected {nbytes}")
    return new_array(dtype, shape, bytearray(memoryview(data)[offset:]))


# -- numpy scalars ------------------------------------------------------------------------------

#: The scalar types of the short form: ``SCALAR_TYPES[i]`` goes as ``0x80 + i`` and its value's
#: bytes, little endian; any other ``np.generic`` as a 0-d array's header and its bytes.
SCALAR_TYPES = (
    np.bool_, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64,
    np.float16, np.float32, np.float64, np.complex64, np.complex128,
)  # fmt: skip


def _struct_code(dtype: np.dtype) -> str:
    """The struct format of one value of ``dtype`` where struct is exact (bool, integers,
    float64: a ``float`` underneath), else ``""`` (a float32 through a double would quiet a NaN)."""
    if dtype.kind in "iu":
        code = {1: "b", 2: "h", 4: "i", 8: "q"}[dtype.itemsize]
        return "<" + (code.upper() if dtype.kind == "u" else code)
    return {"b": "<?", "f": "<d" if dtype.itemsize == 8 else ""}.get(dtype.kind, "")


def _scalar_packer(kind: type, prefix: bytes) -> Callable[[Any], bytes]:
    """``value → prefix + its bytes`` (little endian: a little-endian host's only)."""
    code = _struct_code(np.dtype(kind))
    if code:
        return functools.partial(struct.Struct(f"<{len(prefix)}s{code[1:]}").pack, prefix)
    if kind is np.float32:  # through struct unless a NaN, whose bits a double could change
        pack = functools.partial(struct.Struct(f"<{len(prefix)}sf").pack, prefix)
        return lambda value: pack(value) if value == value else prefix + value.tobytes()
    return lambda value: prefix + value.tobytes()


#: A numpy scalar of a dtype from exactly its bytes, bit for bit (numpy's own, for pickles).
try:
    from numpy._core.multiarray import scalar as _from_bytes  # numpy 2
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import scalar as _from_bytes

_FLOAT64 = np.dtype("<f8")
_UNPACK_SHORT_FLOAT64 = struct.Struct("<xd").unpack
#: The bools' short-form values, by their byte (any other byte is malformed).
_BOOLS = (np.False_, np.True_)
#: Where a scalar is read: its short form's first byte → (payload size, dtype; None: a bool).
_SCALAR_FORMS: dict[int, tuple[int, np.dtype | None]] = {}
#: How one is made, on a little-endian host: its type → its payload (0x80 + i, its bytes).
_SCALAR_PAYLOADS: dict[type, Callable[[Any], bytes]] = {}
for _index, _kind in enumerate(SCALAR_TYPES):
    _dtype = _FLOAT64 if _kind is np.float64 else np.dtype(_kind).newbyteorder("<")
    _SCALAR_FORMS[0x80 + _index] = (1 + _dtype.itemsize, None if _kind is np.bool_ else _dtype)
    if sys.byteorder == "little":
        _SCALAR_PAYLOADS[_kind] = _scalar_packer(_kind, bytes((0x80 + _index,)))


def _ext_maker(payload: Callable[[Any], bytes]) -> Callable[[Any], msgpack.ExtType]:
    return lambda value: _new_ext((EXT_SCALAR, payload(value)))


#: A scalar's type → its extension: made from its payload, or for a bool one of two made once.
_SCALAR_EXTS: dict[type, Callable[[Any], msgpack.ExtType]] = {
    kind: _ext_maker(payload) for kind, payload in _SCALAR_PAYLOADS.items()
}
if np.bool_ in _SCALAR_PAYLOADS:
    _SCALAR_EXTS[np.bool_] = {
        value: _new_ext((EXT_SCALAR, _SCALAR_PAYLOADS[np.bool_](value))) for value in _BOOLS
    }.__getitem__


def read_scalar(data: bytes) -> Any:
    """The scalar of an ``EXT_SCALAR`` payload: a short form (its bytes made into the scalar
    by numpy at once, ~0.1 µs, a float32 NaN's bits kept), or a 0-d array's header and bytes;
    ProtocolError (or IndexError: a bool byte other than 0 or 1) unless it is one of them."""
    try:
        size, dtype = _SCALAR_FORMS[data[0]]
    except (KeyError, IndexError):  # another dtype (datetime64, str_, longdouble, ...): a 0-d array
        array = read_array(data)
        if array.shape:
            raise ProtocolError(f"a scalar must have no shape, this one has {array.shape}") from None
        return array[()]
    if len(data) != size:
        raise ProtocolError(f"a {SCALAR_TYPES[data[0] - 0x80].__name__} takes {size} bytes, not {len(data)}")
    if dtype is _FLOAT64:  # a float underneath: struct and float64(), faster still
        return np.float64(_UNPACK_SHORT_FLOAT64(data)[0])
    return _from_bytes(dtype, data[1:]) if dtype is not None else _BOOLS[data[1]]


# -- records ------------------------------------------------------------------------------------

#: The scalars of :data:`SCALAR_TYPES` that ``struct`` carries exactly, and float32 (unless
#: NaN, whose bits a double could change); float16 and complex are left to their extensions.
_RECORD_SCALARS = tuple(k for k in SCALAR_TYPES if _struct_code(np.dtype(k)) or k is np.float32)
#: The numbers a record holds.
RECORD_TYPES = (*_RECORD_SCALARS, float, int, bool)
_RECORD_CODES: dict[type, tuple[int, str]] = {  # type → (type code, struct code, no byte order)
    **{
        kind: (0x80 + SCALAR_TYPES.index(kind), _struct_code(np.dtype(kind))[1:] or "f")
        for kind in _RECORD_SCALARS
    },
    float: (ord("f"), "d"),
    int: (ord("i"), "q"),
    bool: (ord("?"), "?"),
}
_RECORD_TYPES = {code: (kind, struct_code) for kind, (code, struct_code) in _RECORD_CODES.items()}
_RECORD_HEADER_SIZE = struct.Struct("<H")
_RECORD_MAKERS: dict[tuple[tuple[Any, ...], tuple[type, ...]], Callable[[Any], Any] | None] = {}
#: A record's header → (keys, its values' unpack_from, their types (or the one type of all), end).
_RECORD_READERS: dict[bytes, tuple[tuple[str, ...], Callable[..., tuple[Any, ...]], Any, int]] = {}


def with_records(obj: list[Any]) -> list[Any]:
    """``obj``, or a copy whose last item (or each dict of a list that is its last item) went
    into a record where it can."""
    last = obj[-1]
    if type(last) is dict:
        if last:
            ext = record(last)
            if ext is not None:
                return [*obj[:-1], ext]
    elif type(last) is list and last and type(last[0]) is dict:
        made = [record(item) if type(item) is dict and item else None for item in last]
        if any(ext is not None for ext in made):
            items = [item if ext is None else ext for item, ext in zip(last, made, strict=True)]
            return [*obj[:-1], items]
    return obj


def record(entries: dict[Any, Any]) -> msgpack.ExtType | None:
    """The record of a non-empty dict, or None if it cannot go as one."""
    values = entries.values()
    key = (tuple(entries), tuple(map(type, values)))
    try:
        maker = _RECORD_MAKERS[key]
    except KeyError:
        maker = _record_maker(*key)
    return maker(values) if maker is not None else None


def _record_maker(keys: tuple[Any, ...], kinds: tuple[type, ...]) -> Callable[[Any], Any] | None:
    """``values → their record`` for these keys and types (None for a dict that is no
    record: it goes as msgpack), cached."""
    header = _record_header(keys, kinds)
    maker = None
    if header is not None:
        codes = "".join(_RECORD_CODES[kind][1] for kind in kinds)
        pack = functools.partial(struct.Struct(f"<H{len(header)}s{codes}").pack, len(header), header)
        if np.float32 in kinds or int in kinds:  # a NaN or an int beyond int64 may come
            float32s = tuple(kind is np.float32 for kind in kinds) if np.float32 in kinds else None
            maker = functools.partial(_checked_record, pack, float32s)
        else:
            maker = functools.partial(_record_of, pack)
    if len(_RECORD_MAKERS) > 1024:
        _RECORD_MAKERS.clear()
    _RECORD_MAKERS[(keys, kinds)] = maker
    return maker


def _record_header(keys: tuple[Any, ...], kinds: tuple[type, ...]) -> bytes | None:
    """The header of a record of these keys and types, or None if they cannot make one."""
    if len(keys) > 255 or not all(kind in _RECORD_CODES for kind in kinds):
        return None
    if not any(kind in _RECORD_SCALARS for kind in kinds):  # compiled msgpack is faster for these
        return None
    if not all(type(key) is str for key in keys):
        return None
    try:
        names = [key.encode() for key in keys]
    except UnicodeEncodeError:  # a lone surrogate: msgpack says so
        return None
    if any(len(name) > 255 for name in names):
        return None
    header = bytes((len(keys),)) + b"".join(
        bytes((_RECORD_CODES[kind][0], len(name))) + name for kind, name in zip(kinds, names, strict=True)
    )
    return header if len(header) < 1 << 16 else None


def _record_of(pack: Callable[..., bytes], values: Any) -> msgpack.ExtType:
    return _new_ext((EXT_RECORD, pack(*values)))


def _checked_record(pack: Callable[..., bytes], float32s: Any, values: Any) -> msgpack.ExtType | None:
    """The record, or None where a float32 is NaN (its bits kept as an extension) or an int
    is beyond int64; ``float32s``: which values are float32s (None: none)."""
    if float32s is not None and any(map(math.isnan, itertools.compress(values, float32s))):
        return None
    try:
        return _record_of(pack, values)
    except struct.error:  # an int beyond int64
        return None


def read_record(data: bytes) -> dict[str, Any]:
    """The dict of an ``EXT_RECORD`` payload; ProtocolError if it is malformed."""
    if len(data) < 3:
        raise ProtocolError("malformed record: too short")
    end = 2 + _RECORD_HEADER_SIZE.unpack_from(data)[0]
    header = data[2:end]
    reader = _RECORD_READERS.get(header) or _record_reader(header)
    keys, unpack, kinds, size = reader
    if len(data) != end + size:
        raise ProtocolError(f"a record's values take {size} bytes, not {len(data) - end}")
    values = unpack(data, end)
    if type(kinds) is type:
        return dict(zip(keys, map(kinds, values), strict=True))
    return {key: kind(value) for key, kind, value in zip(keys, kinds, values, strict=True)}


def _record_reader(header: bytes) -> tuple[tuple[str, ...], Callable[..., tuple[Any, ...]], Any, int]:
    """The reader of a record header (cached); ProtocolError if it is malformed."""
    keys: list[str] = []
    kinds = []
    codes = []
    at = 1
    try:
        for _ in range(header[0]):
            kind, code = _RECORD_TYPES[header[at]]
            end = at + 2 + header[at + 1]
            if end > len(header):
                raise IndexError
            keys.append(str(header[at + 2 : end], "utf-8"))
            kinds.append(kind)
            codes.append(code)
            at = end
    except (IndexError, KeyError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"malformed record header: {type(exc).__name__}") from None
    if at != len(header) or not keys or len(set(keys)) != len(keys):
        raise ProtocolError("malformed record header: trailing bytes, no keys or a key twice")
    unpack = struct.Struct("<" + "".join(codes))
    same = kinds[0] if all(kind is kinds[0] for kind in kinds) else tuple(kinds)
    reader = tuple(keys), unpack.unpack_from, same, unpack.size
    if len(_RECORD_READERS) > 1024:
        _RECORD_READERS.clear()
    _RECORD_READERS[header] = reader
    return reader


# -- flat bodies ----------------------------------------------------------------------------------

FLAT = 0xC1  #: the first byte of a flat body (never used by msgpack)
_FLOAT = struct.Struct("<cd")
_INT = struct.Struct("<cq")
_UINT = struct.Struct("<cQ")
_STR = struct.Struct("<cI")
_EXT_HEAD = struct.Struct("<BI")
_KEYS: dict[str, bytes] = {}  # a dict key → its size and bytes


def _int_leaf(value: int) -> bytes:
    if -(1 << 63) <= value < 1 << 63:
        return _INT.pack(b"i", value)
    if 0 <= value < 1 << 64:
        return _UINT.pack(b"u", value)
    raise OverflowError("Integer value out of range")  # as msgpack says


def _str_leaf(value: str) -> bytes:
    data = value.encode()
    return _STR.pack(b"s", len(data)) + data


#: type → its leaf, for every leaf type but ndarray (the caller's ``default`` makes its extension).
_LEAVES: dict[type, Callable[[Any], bytes]] = {
    float: functools.partial(_FLOAT.pack, b"f"),
    bool: lambda value: b"T" if value else b"F",
    int: _int_leaf,
    type(None): lambda _: b"n",
    str: _str_leaf,
    **{
        kind: _scalar_packer(kind, b"g" + bytes((0x80 + i,)))
        for i, kind in enumerate(SCALAR_TYPES)
        if kind in _SCALAR_PAYLOADS
    },
}


def flat(obj: list[Any], default: Callable[[np.ndarray], msgpack.ExtType]) -> bytes | None:
    """``obj`` as a flat body, or None if it is no list of leaves and str-keyed dicts of leaves
    (then nothing happened: ``default`` is called, for the arrays, only once ``obj`` fits)."""
    if len(obj) > 255:
        return None
    leaves = _LEAVES
    parts: list[Any] = [bytes((FLAT, len(obj)))]
    arrays = []  # where in ``parts`` the arrays are
    for item in obj:
        leaf = leaves.get(type(item))
        if leaf is not None:
            parts.append(leaf(item))
        elif type(item) is np.ndarray:
            arrays.append(len(parts))
            parts.append(item)
        elif type(item) is dict and len(item) < 256:
            parts.append(bytes((0x64, len(item))))  # "d"
            for key, value in item.items():
                name = _KEYS.get(key) if type(key) is str else None
                if name is None:
                    if type(key) is not str or len(data := key.encode()) > 255:
                        return None
                    if len(_KEYS) > 1024:
                        _KEYS.clear()
                    name = _KEYS[key] = bytes((len(data),)) + data
                parts.append(name)
                leaf = leaves.get(type(value))
                if leaf is not None:
                    parts.append(leaf(value))
                elif type(value) is np.ndarray:
                    arrays.append(len(parts))
                    parts.append(value)
                else:
                    return None
        else:
            return None
    for at in arrays:  # in order: the channel sends out-of-band arrays in the order made
        code, data = default(parts[at])
        parts[at] = b"x" + _EXT_HEAD.pack(code, len(data)) + data
    return b"".join(parts)


_F, _G, _X, _D = ord("f"), ord("g"), ord("x"), ord("d")
_UNPACK_FLOAT = struct.Struct("<d").unpack_from
_UNPACK_EXT = _EXT_HEAD.unpack_from
_UNPACK_INT = struct.Struct("<q").unpack_from
_UNPACK_UINT = struct.Struct("<Q").unpack_from
_UNPACK_SIZE = struct.Struct("<I").unpack_from
_CONSTANTS = {ord("n"): None, ord("T"): True, ord("F"): False}


def _leaf(data: Any, at: int, ext_hook: Callable[[int, bytes], Any]) -> tuple[Any, int]:
    """The leaf at ``at`` of a flat body, and where the next item starts."""
    tag = data[at]
    if tag == _F:
        return _UNPACK_FLOAT(data, at + 1)[0], at + 9
    if tag == _G:
        size = _SCALAR_FORMS[data[at + 1]][0]
        end = at + 1 + size
        if end > len(data):
            raise ProtocolError("flat body: a scalar runs past the end")
        return read_scalar(bytes(data[at + 1 : end])), end
    if tag == _X:
        code, size = _UNPACK_EXT(data, at + 1)
        end = at + 6 + size
        if end > len(data):
            raise ProtocolError("flat body: an extension runs past the end")
        return ext_hook(code, bytes(data[at + 6 : end])), end
    if tag in _CONSTANTS:
        return _CONSTANTS[tag], at + 1
    if tag == 0x69:  # "i"
        return _UNPACK_INT(data, at + 1)[0], at + 9
    if tag == 0x75:  # "u"
        return _UNPACK_UINT(data, at + 1)[0], at + 9
    if tag == 0x73:  # "s"
        end = at + 5 + _UNPACK_SIZE(data, at + 1)[0]
        if end > len(data):
            raise ProtocolError("flat body: a string runs past the end")
        return str(data[at + 5 : end], "utf-8"), end
    raise ProtocolError(f"flat body: unknown leaf tag {tag}")


def unflat(data: Any, ext_hook: Callable[[int, bytes], Any]) -> list[Any]:
    """The list of a flat body (bytes or a memoryview); ProtocolError (or IndexError,
    struct.error, UnicodeDecodeError: :func:`decode` turns them into one) if malformed."""
    items: list[Any] = []
    at = 2
    for _ in range(data[1]):
        if data[at] != _D:
            value, at = _leaf(data, at, ext_hook)
            items.append(value)
            continue
        entries = {}
        count, at = data[at + 1], at + 2
        for _ in range(count):
            end = at + 1 + data[at]
            if end > len(data):
                raise ProtocolError("flat body: a key runs past the end")
            key = str(data[at + 1 : end], "utf-8")
            entries[key], at = _leaf(data, end, ext_hook)
        items.append(entries)
    if at != len(data):
        raise ProtocolError(f"flat body: {len(data) - at} bytes after its last item")
    return items


#: The extensions read from their payload alone, by code (a step's observation, reward, info).
READERS: dict[int, Callable[[bytes], Any]] = {
    EXT_NDARRAY: read_array,
    EXT_SCALAR: read_scalar,
    EXT_RECORD: read_record,
}


def ext_hook(code: int, data: bytes) -> Any:
    reader = READERS.get(code)
    if reader is not None:
        return reader(data)
    if code == EXT_TUPLE:
        return tuple(msgpack.unpackb(data, **UNPACK))
    raise ProtocolError(f"unknown msgpack extension type {code}")


UNPACK = {"ext_hook": ext_hook, "raw": False, "strict_map_key": False}


def decode(data: bytes | bytearray | memoryview, options: dict[str, Any]) -> Any:
    """A flat body or ``msgpack.unpackb(data, **options)``; anything malformed raises ProtocolError."""
    try:
        if data and data[0] == FLAT:
            return unflat(data, options["ext_hook"])
        return msgpack.unpackb(data, **options)
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(f"malformed message: {type(exc).__name__}: {exc}") from None


def dumps(obj: Any) -> bytes:
    """Encode a value (numbers, str, bytes, lists, tuples, dicts, numpy arrays and scalars)."""
    return _pack(obj)


def loads(data: bytes | bytearray | memoryview) -> Any:
    """Decode bytes produced by :func:`dumps`; raise ProtocolError on anything malformed."""
    return decode(data, UNPACK)


def oob_array_header(data: bytes) -> tuple[np.dtype, tuple[int, ...], int, int]:
    """:func:`parse_array_header` of a header that is all of ``data`` (an out-of-band
    array's), looked up in the cache as it is."""
    return _PARSED_HEADERS.get(data) or parse_array_header(data)
