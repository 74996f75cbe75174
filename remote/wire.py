"""The wire: a msgpack codec for gymnasium values, and frames on a socket.

Values that cross the wire are msgpack with these extension types:

* ``ndarray``: a small header (dtype string, shape) followed by the raw buffer (C order).
  Dtype, byte order and shape survive exactly; nothing goes through ``tolist()``.
* ``ndarray out of band`` (frames only): the header alone; the array's bytes follow the
  msgpack body in the frame, sent straight from the array's memory and received straight
  into the new array's memory. Used for arrays of :data:`OUT_OF_BAND` bytes or more.
* ``tuple``: msgpack has only arrays, which decode as lists; tuples are tagged so that
  nested tuples (``Tuple`` spaces) come back as tuples.
* ``numpy scalar``: ``np.float32(1.5)`` stays an ``np.float32``.

Only plain data is ever decoded: no classes, no pickle, no code. Anything else raises
:class:`~remote.errors.ProtocolError` (decode) or ``TypeError`` (encode).

A frame is ``[u32 size][u32 body size][msgpack body][out-of-band array bytes]`` (little
endian; ``size`` counts everything after itself). Frames larger than :data:`MAX_FRAME`
are refused on both sides. A :class:`Channel` is a socket speaking frames; its peer
sends a frame only as the answer to one of ours, so a frame never shares a read with
the next.
"""

from __future__ import annotations

import socket
import struct
import threading
from typing import Any

import msgpack
import numpy as np

from .errors import ProtocolError

#: Version of the protocol spoken between host and container; checked on every connect.
PROTOCOL_VERSION = 2

#: Largest frame accepted in either direction (bytes).
MAX_FRAME = 512 * 1024 * 1024

#: Arrays of at least this many bytes travel out of band in frames.
OUT_OF_BAND = 4096

#: A channel's receive buffer grows to fit frames up to this size (bytes), so that such a
#: frame arrives in one read; the arrays of larger frames are read straight into their memory.
GROWN_BUFFER = 256 * 1024

_EXT_NDARRAY = 1
_EXT_TUPLE = 2
_EXT_SCALAR = 3
_EXT_NDARRAY_OOB = 4
_SIZE = struct.Struct("<I")
_HEADER = struct.Struct("<II")
_ARRAY_HEADERS: dict[tuple[np.dtype, tuple[int, ...]], bytes] = {}
_OUT_OF_BAND_EXTS: dict[tuple[np.dtype, tuple[int, ...]], msgpack.ExtType] = {}
_PARSED_HEADERS: dict[bytes, tuple[np.dtype, tuple[int, ...], int, int]] = {}


class _ThreadState(threading.local):
    """Reusable packers of :func:`dumps`, per thread. A tuple inside a value is packed while
    the outer packer is busy, so each nesting level takes its own; creating a Packer
    inside a ``default`` hook costs ~15 µs, reusing one ~0.3 µs."""

    def __init__(self) -> None:
        self.packers: list[msgpack.Packer] = []


_state = _ThreadState()


def _pack_with(free: list[msgpack.Packer], default: Any, obj: Any) -> bytes:
    """Pack with a packer from ``free`` (a new one if none is free), then put it back."""
    packer = free.pop() if free else msgpack.Packer(default=default, use_bin_type=True, strict_types=True)
    data = packer.pack(obj)  # on error the packer is dropped, not returned dirty
    free.append(packer)
    return data


def _pack(obj: Any) -> bytes:
    return _pack_with(_state.packers, _default, obj)


def _default(obj: Any) -> Any:
    if type(obj) is np.ndarray:
        return _inline_ext(obj)
    return _plain(obj, _default, _pack)


def _inline_ext(array: np.ndarray) -> msgpack.ExtType:
    return msgpack.ExtType(_EXT_NDARRAY, _array_header(array) + np.ascontiguousarray(array).tobytes())


def _plain(obj: Any, default: Any, pack: Any) -> Any:
    if isinstance(obj, tuple):
        return msgpack.ExtType(_EXT_TUPLE, pack(list(obj)))
    if isinstance(obj, np.generic):
        array = np.asarray(obj)
        return msgpack.ExtType(_EXT_SCALAR, _array_header(array) + array.tobytes())
    if isinstance(obj, np.ndarray):  # a subclass (np.matrix, masked arrays): send the plain array
        return default(np.asarray(obj).view(np.ndarray))
    for plain in (dict, list, bool, int, float, str, bytes):  # subclasses: OrderedDict, IntEnum
        if isinstance(obj, plain):
            return plain(obj)
    raise TypeError(f"cannot send a {type(obj).__name__} over the wire: {obj!r:.80}")


def _array_header(array: np.ndarray) -> bytes:
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


def _parse_array_header(data: bytes) -> tuple[np.dtype, tuple[int, ...], int, int]:
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


def _new_array(dtype: np.dtype, shape: tuple[int, ...], memory: bytearray | np.ndarray) -> np.ndarray:
    """A writable array over ``memory`` (as a local env's arrays are writable)."""
    try:
        return np.ndarray(shape, dtype, memory)
    except ValueError as exc:  # e.g. more dimensions than numpy allows
        raise ProtocolError(f"refusing array of dtype {dtype} and shape {shape}: {exc}") from None


def _inline_array(data: bytes) -> np.ndarray:
    dtype, shape, offset, nbytes = _parse_array_header(data)
    if len(data) - offset != nbytes:
        raise ProtocolError(f"array buffer has {len(data) - offset} bytes, expected {nbytes}")
    return _new_array(dtype, shape, bytearray(memoryview(data)[offset:]))


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _EXT_NDARRAY:
        return _inline_array(data)
    if code == _EXT_TUPLE:
        return tuple(msgpack.unpackb(data, **_UNPACK))
    if code == _EXT_SCALAR:
        return _inline_array(data)[()]
    raise ProtocolError(f"unknown msgpack extension type {code}")


_UNPACK = {"ext_hook": _ext_hook, "raw": False, "strict_map_key": False}


def _decode(data: bytes | bytearray | memoryview, options: dict[str, Any]) -> Any:
    """``msgpack.unpackb(data, **options)``; anything malformed raises ProtocolError."""
    try:
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
    return _decode(data, _UNPACK)


def _bytes_of(array: np.ndarray) -> memoryview:
    """The memory of a C-contiguous array as bytes, without a copy."""
    try:
        return memoryview(array).cast("B")
    except (TypeError, ValueError):  # datetime dtypes export no buffer
        return memoryview(array.reshape(-1).view(np.uint8))


def _too_large(size: int) -> ProtocolError:
    return ProtocolError(f"peer announced a message of {size} bytes (limit {MAX_FRAME})")


class Channel:
    """A connected socket that sends and receives frames, with a reusable receive buffer.

    Out-of-band arrays are received into their own memory: bytes that arrived with the
    body are copied once, the rest is read straight into the array.
    """

    def __init__(self, sock: socket.socket, buffer_size: int = 65536) -> None:
        self.sock = sock
        self._buffer = bytearray(buffer_size)
        self._view = memoryview(self._buffer)
        self._packers: list[msgpack.Packer] = []  # one per nesting level of tuples in a value
        self._arrays: list[np.ndarray] = []  # the out-of-band arrays of the frame being packed
        self._unpack_options = {**_UNPACK, "ext_hook": self._ext_hook}
        # the out-of-band arrays of the frame being decoded: bytes announced and not yet
        # claimed, where the next one starts in the buffer, the bytes in the buffer so far,
        # and (memory, start) of each array whose bytes did not all arrive with the body
        self._budget = 0
        self._next = 0
        self._got = 0
        self._pending: list[tuple[np.ndarray, int]] = []

    def send(self, obj: Any) -> None:
        """Encode ``obj`` and send it as one frame; large arrays go from their own memory."""
        try:
            self._send(obj)
        except BlockingIOError:  # SO_SNDTIMEO ran out
            raise TimeoutError("timed out sending a frame") from None

    def recv(self) -> Any:
        """Receive one frame and decode it. ConnectionError on EOF, ProtocolError on
        anything malformed, TimeoutError after the timeout of :meth:`settimeout`."""
        try:
            return self._recv()
        except BlockingIOError:  # SO_RCVTIMEO ran out
            raise TimeoutError("timed out waiting for a frame") from None

    def _send(self, obj: Any) -> None:
        arrays = self._arrays
        arrays.clear()
        body = self._pack(obj)
        size = 4 + len(body)
        if not arrays:
            if size > MAX_FRAME:
                raise ProtocolError(f"message of {size} bytes exceeds the limit of {MAX_FRAME}")
            self.sock.sendall(_HEADER.pack(size, len(body)) + body)
            return
        # arrays go to sendmsg as they are (their buffer is their C-order memory); datetime
        # arrays export no buffer, so they go as bytes views
        buffers: list[Any] = [None, body]
        for array in arrays:
            size += array.nbytes
            buffers.append(array if array.dtype.kind not in "Mm" else _bytes_of(array))
        arrays.clear()
        if size > MAX_FRAME:
            raise ProtocolError(f"message of {size} bytes exceeds the limit of {MAX_FRAME}")
        buffers[0] = _HEADER.pack(size, len(body))
        sent = self.sock.sendmsg(buffers)
        if sent == size + 4:
            return
        for buffer in buffers:  # the socket took part of it: send the rest in order
            view = _bytes_of(buffer) if isinstance(buffer, np.ndarray) else memoryview(buffer)
            if sent >= view.nbytes:
                sent -= view.nbytes
                continue
            self.sock.sendall(view[sent:])
            sent = 0

    def _pack(self, obj: Any) -> bytes:
        return _pack_with(self._packers, self._default, obj)

    def _default(self, obj: Any) -> Any:
        if type(obj) is np.ndarray:
            if obj.nbytes < OUT_OF_BAND:
                return _inline_ext(obj)
            ext = _OUT_OF_BAND_EXTS.get((obj.dtype, obj.shape))
            if ext is None:  # an ExtType costs ~0.5 µs to make: one per dtype and shape
                if len(_OUT_OF_BAND_EXTS) > 1024:
                    _OUT_OF_BAND_EXTS.clear()
                ext = _OUT_OF_BAND_EXTS[(obj.dtype, obj.shape)] = msgpack.ExtType(
                    _EXT_NDARRAY_OOB, _array_header(obj)
                )
            self._arrays.append(np.ascontiguousarray(obj))
            return ext
        return _plain(obj, self._default, self._pack)

    def _fill(self, got: int, need: int) -> int:
        if got == 0 and need:  # recv_into returned 0 bytes: end of file
            raise ConnectionResetError("connection closed by peer")
        recv_into = self.sock.recv_into
        view = self._view
        while got < need:
            n = recv_into(view[got:])
            if n == 0:
                raise ConnectionResetError("connection closed by peer")
            got += n
        return got

    def _recv(self) -> Any:
        buffer = self._buffer
        got = self.sock.recv_into(self._view)  # usually the whole frame
        if got < 8:
            got = self._fill(got, 4)
            (announced,) = _SIZE.unpack_from(buffer)
            if announced > MAX_FRAME:
                raise _too_large(announced)
            got = self._fill(got, 8)
        size, body_size = _HEADER.unpack_from(buffer)
        if size > MAX_FRAME:
            raise _too_large(size)
        if body_size > size - 4:
            raise ProtocolError(f"frame body of {body_size} bytes does not fit a frame of {size}")
        end = 8 + body_size
        if got < end:
            if end > len(buffer):  # a large body: grow the buffer, keep what arrived
                grown = bytearray(end)
                grown[:got] = self._view[:got]
                self._buffer, self._view = grown, memoryview(grown)
            got = self._fill(got, end)
        if got > size + 4:
            raise ProtocolError("peer sent more than one frame without waiting for an answer")
        self._budget = size + 4 - end
        if not self._budget:  # no out-of-band arrays
            return _decode(self._view[8:end], self._unpack_options)
        self._next, self._got = end, got
        try:
            value = _decode(self._view[8:end], self._unpack_options)
            if self._budget:
                raise ProtocolError(f"frame has {self._budget} out-of-band bytes no array claims")
            if self._pending:
                self._receive_arrays()
        finally:
            self._pending.clear()
        if len(self._buffer) < size + 4 <= GROWN_BUFFER:  # the next such frame comes in one read
            self._buffer = bytearray(size + 4)
            self._view = memoryview(self._buffer)
        return value

    def _receive_arrays(self) -> None:
        """Fill the arrays whose bytes did not all arrive with the body, in frame order."""
        view, got = self._view, self._got
        recv_into = self.sock.recv_into
        for memory, start in self._pending:
            target = memoryview(memory)
            take = max(0, min(got - start, len(memory)))
            target[:take] = view[start : start + take]
            while take < len(memory):
                n = recv_into(target[take:])
                if n == 0:
                    raise ConnectionResetError("connection closed by peer")
                take += n

    def _ext_hook(self, code: int, data: bytes) -> Any:
        if code == _EXT_NDARRAY_OOB:  # the data is the header alone: look it up as it is
            dtype, shape, offset, nbytes = _PARSED_HEADERS.get(data) or _parse_array_header(data)
            if offset != len(data) or nbytes > self._budget:
                raise ProtocolError(f"out-of-band array of {nbytes} bytes does not fit the frame")
            self._budget -= nbytes
            start = self._next
            self._next = start + nbytes
            if self._next <= self._got:  # all of it arrived with the body: one copy
                return _new_array(dtype, shape, bytearray(self._view[start : self._next]))
            memory = np.empty(nbytes, np.uint8)  # filled by _receive_arrays; not zeroed first
            self._pending.append((memory, start))
            return _new_array(dtype, shape, memory)
        if code == _EXT_TUPLE:
            return tuple(msgpack.unpackb(data, **self._unpack_options))
        return _ext_hook(code, data)

    def settimeout(self, timeout: float | None) -> None:
        """Raise TimeoutError from a send or receive that takes longer than ``timeout``
        seconds (None: wait for ever). The kernel keeps the timeout (SO_RCVTIMEO and
        SO_SNDTIMEO on a blocking socket): a Python socket timeout would cost a poll()
        before every send and every receive."""
        self.sock.settimeout(None)
        micros = 0 if timeout is None else max(1, round(timeout * 1e6))  # 0: no timeout
        value = struct.pack("@ll", micros // 1_000_000, micros % 1_000_000)
        for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
            self.sock.setsockopt(socket.SOL_SOCKET, option, value)

    def close(self) -> None:
        self.sock.close()
