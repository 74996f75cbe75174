"""Frames on a socket: the stream a host and its container speak for reset and step.

A frame is ``[u32 size][u32 body size][msgpack body][out-of-band array bytes]`` (little
endian; ``size`` counts everything after itself). The body is a value of
:mod:`remote.protocol.codec`; arrays of :data:`OUT_OF_BAND` bytes or more travel out of
band: the body holds their header alone, their bytes follow it, sent straight from the
array's memory and received straight into the new array's memory. Frames larger than
:data:`MAX_FRAME` are refused on both sides. A :class:`Channel` is a socket speaking
frames; its peer sends a frame only as the answer to one of ours, so a frame never shares
a read with the next.

A receive first polls the socket for a while (when the CPUs are not contended) before it
sleeps in the kernel: waking a sleeping process on another CPU is what a round trip
costs most here, on both sides (the sender's ``send`` pays for the wake-up too).
"""

from __future__ import annotations

import os
import socket
import struct
import time
from typing import Any

import msgpack
import numpy as np

from ..errors import ProtocolError
from .codec import (
    EXT_NDARRAY_OOB,
    EXT_TUPLE,
    READERS,
    UNPACK,
    array_header,
    decode,
    ext_hook,
    inline_ext,
    new_array,
    oob_array_header,
    pack_with,
    plain,
)

#: Largest frame accepted in either direction (bytes).
MAX_FRAME = 512 * 1024 * 1024

#: Arrays of at least this many bytes travel out of band in frames.
OUT_OF_BAND = 4096

#: A channel's receive buffer grows to fit frames up to this size (bytes), so that such a
#: frame arrives in one read; the arrays of larger frames are read straight into their memory.
GROWN_BUFFER = 256 * 1024

#: How long a receive polls for its frame before it sleeps in the kernel (ns): a frame that
#: comes sooner is read without the wake-up of a sleeping process (20–150 µs on a VM).
POLL_NS = 200_000
#: How long a lone stream in the container polls for its next request (ns): longer than a
#: client's poll for its reply, as the next request follows the agent's own work (a policy's
#: forward pass, 0.2-0.5 ms). SB3 PPO on 4 CartPoles, 20k steps: learn time 1.35x local
#: with 0.2 ms, 1.01-1.14x with 1-2 ms (step_wait 244 -> 137-140 us per step of 4).
REQUEST_POLL_NS = 1_000_000
#: The polls of the one stream of a process that has no other (ns; the client's for its
#: replies, the container's for its requests, asked for in the hello): long enough for a
#: CNN policy's forward pass (2-3 ms on one thread) and an Atari step (~0.5 ms). SB3 PPO
#: CnnPolicy on Breakout, 2,048 steps: step_wait 1.63-1.96 s with the polls above, 1.16-1.30
#: s with these (the image's own Python: 1.06-1.21 s). Not for every stream: 8 envs of one
#: process stepped in turn ran 25-50% slower per step with them (8 containers spinning on 2
#: CPUs, and a spinning CPU slows its neighbour's work by 35-45% on this VM).
SOLE_POLL_NS, SOLE_REQUEST_POLL_NS = 2_000_000, 5_000_000
#: After a poll in vain, receives sleep at once, but every ``REPROBE``-th polls again.
REPROBE = 16
#: Receives poll only while tasks waited for a CPU less than this share of the time (the
#: kernel's CPU pressure, /proc/pressure/cpu): a spinning process takes a CPU that others,
#: often its own peer, need; polling pays only where a CPU would otherwise sit idle. Round
#: trips that sleep make 2-6 % themselves (a woken task waits for its CPU), polling ones
#: 1-2 %, other programs competing for the CPUs 20-60 %.
CONTENDED = 0.20
#: How often the pressure is read (ns).
PRESSURE_PERIOD_NS = 100_000_000
#: While contended without polling, a period polls after this many, to see whether the
#: contention was the round trips' own.
TRIAL = 10

_SIZE = struct.Struct("<I")
_HEADER = struct.Struct("<II")
_OUT_OF_BAND_EXTS: dict[tuple[np.dtype, tuple[int, ...]], msgpack.ExtType] = {}


def _bytes_of(array: np.ndarray) -> memoryview:
    """The memory of a C-contiguous array as bytes, without a copy."""
    try:
        return memoryview(array).cast("B")
    except (TypeError, ValueError):  # datetime dtypes export no buffer
        return memoryview(array.reshape(-1).view(np.uint8))


class _Pressure:
    """Whether the CPUs are contended, from the growth of the kernel's CPU stall time
    (``some ... total=`` µs in /proc/pressure/cpu) over the last period; without that file,
    from the load average against the CPUs this process may use.

    Round trips that sleep stall too (a woken peer waits for the CPU its waker is leaving),
    so after ``TRIAL`` periods without polling that looked contended comes one with polling:
    polling goes on if that one is not contended; if it is, the next trial waits twice as
    long (up to ``64 * TRIAL`` periods)."""

    def __init__(self) -> None:
        self.next = 0  # when to read again (perf_counter_ns)
        self.contended = True
        self._stall = self._stalled()
        self._at = time.perf_counter_ns()
        self._off = 0  # periods without polling in a row
        self._trial = TRIAL  # after how many of them polling is tried

    @staticmethod
    def _stalled() -> int | None:
        try:
            with open("/proc/pressure/cpu", "rb") as file:
                return int(file.readline().rsplit(b"total=", 1)[1])
        except (OSError, ValueError, IndexError):
            return None

    def update(self, now: int) -> bool:
        """Read the pressure (due at :attr:`next`); whether the CPUs are contended."""
        stall = self._stalled()
        if stall is None or self._stall is None:
            contended = os.getloadavg()[0] >= len(os.sched_getaffinity(0))
        else:
            contended = (stall - self._stall) * 1000 > CONTENDED * (now - self._at)
        if contended and self.contended:  # perhaps the sleeping round trips' own stalls
            self._off += 1
            contended = self._off < self._trial
        elif contended:  # polling, and contended all the same
            if self._off >= self._trial:  # a trial that failed
                self._trial = min(2 * self._trial, 64 * TRIAL)
            self._off = 0
        else:
            self._off, self._trial = 0, TRIAL
        self.contended = contended
        self._stall, self._at, self.next = stall, now, now + PRESSURE_PERIOD_NS
        return contended


_pressure = _Pressure()


def polling(ns: int = POLL_NS, busy: int = 1) -> int:
    """``ns``, or 0 unless this process may run on more CPUs than ``busy`` peers need while
    it waits: a poll would keep them from the CPU they need to answer (on one CPU, the one
    peer; a host stepping several containers at once, the containers still stepping)."""
    return ns if len(os.sched_getaffinity(0)) > busy else 0


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
        self._unpack_options = {**UNPACK, "ext_hook": self._ext_hook}
        # the out-of-band arrays of the frame being decoded: bytes announced and not yet
        # claimed, where the next one starts in the buffer, the bytes in the buffer so far,
        # and (memory, start) of each array whose bytes did not all arrive with the body
        self._budget = 0
        self._next = 0
        self._got = 0
        self._pending: list[tuple[np.ndarray, int]] = []
        #: How long a receive polls before it sleeps (ns; 0: it sleeps at once).
        self.poll_ns = polling()
        self._late = False  # the last polled frame came after the poll
        self._reads = 0

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
        return pack_with(self._packers, self._default, obj)

    def _default(self, obj: Any) -> Any:
        if type(obj) is np.ndarray:
            if obj.nbytes < OUT_OF_BAND:
                return inline_ext(obj)
            ext = _OUT_OF_BAND_EXTS.get((obj.dtype, obj.shape))
            if ext is None:  # an ExtType costs ~0.5 µs to make: one per dtype and shape
                if len(_OUT_OF_BAND_EXTS) > 1024:
                    _OUT_OF_BAND_EXTS.clear()
                ext = _OUT_OF_BAND_EXTS[(obj.dtype, obj.shape)] = msgpack.ExtType(
                    EXT_NDARRAY_OOB, array_header(obj)
                )
            self._arrays.append(np.ascontiguousarray(obj))
            return ext
        return plain(obj, self._default, self._pack)

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
        got = self._first_read()  # usually the whole frame
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
            return decode(self._view[8:end], self._unpack_options)
        self._next, self._got = end, got
        try:
            value = decode(self._view[8:end], self._unpack_options)
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

    def _first_read(self) -> int:
        """The first read of a frame: polls the socket for up to :attr:`poll_ns` while the
        CPUs are not contended, unless the last poll was in vain; then sleeps until it comes."""
        poll = self.poll_ns
        if poll:
            self._reads += 1
            if not self._late or not self._reads % REPROBE:
                clock = time.perf_counter_ns
                now = clock()
                pressure = _pressure
                if not (pressure.update(now) if now >= pressure.next else pressure.contended):
                    recv_into, view = self.sock.recv_into, self._view
                    deadline = now + poll
                    while True:
                        try:
                            got = recv_into(view, 0, socket.MSG_DONTWAIT)
                        except BlockingIOError:
                            if clock() > deadline:
                                break
                        else:
                            self._late = False
                            return got
                    self._late = True
        return self.sock.recv_into(self._view)

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
        reader = READERS.get(code)  # the most frequent: observation, reward, info
        if reader is not None:
            return reader(data)
        if code == EXT_NDARRAY_OOB:  # the data is the header alone: look it up as it is
            dtype, shape, offset, nbytes = oob_array_header(data)
            if offset != len(data) or nbytes > self._budget:
                raise ProtocolError(f"out-of-band array of {nbytes} bytes does not fit the frame")
            self._budget -= nbytes
            start = self._next
            self._next = start + nbytes
            if self._next <= self._got:  # all of it arrived with the body: one copy
                return new_array(dtype, shape, bytearray(self._view[start : self._next]))
            memory = np.empty(nbytes, np.uint8)  # filled by _receive_arrays; not zeroed first
            self._pending.append((memory, start))
            return new_array(dtype, shape, memory)
        if code == EXT_TUPLE:
            return tuple(msgpack.unpackb(data, **self._unpack_options))
        return ext_hook(code, data)

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
