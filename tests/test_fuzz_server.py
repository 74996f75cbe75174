"""10,000 fuzzed frames at a real server: it refuses them, executes nothing, and still serves."""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import socket
import struct
from pathlib import Path

import msgpack

import remote
from remote.protocol import channel as frame_channel
from remote.protocol import codec
from remote.protocol.ops import PROTOCOL_VERSION


class Canary:
    """Unpickling this would create a file: proof that something was executed."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def fuzz_frames(rng: random.Random, canary: str, handle: int, secret: str):
    """Yield (needs_hello, raw bytes): garbage, malformed frames, hostile and random requests."""
    hello = {"protocol": PROTOCOL_VERSION, "secret": secret, "env": handle}
    evil = pickle.dumps(Canary(canary))
    values = [
        None,
        True,
        -1,
        2**40,
        1.5,
        "step",
        "reset",
        b"\x80\x04",
        [],
        {},
        [1, 2],
        {"a": 1},
        evil,
        "__import__('os').system('touch " + canary + "')",
    ]
    while True:
        kind = rng.randrange(8)
        if kind == 0:  # raw garbage, any length
            yield False, rng.randbytes(rng.randrange(1, 64))
        elif kind == 1:  # a pickle where a frame should be
            yield False, struct.pack("<II", len(evil) + 4, len(evil)) + evil
        elif kind == 2:  # a frame header announcing too much
            yield False, struct.pack("<II", rng.choice([2**31, frame_channel.MAX_FRAME + 1, 3]), 2**30)
        elif kind == 3:  # hello with wrong fields
            bad = dict(hello, **{rng.choice(["protocol", "secret", "env"]): rng.choice(values)})
            yield False, _frame(bad)
        elif kind == 4:  # random msgpack body, right framing
            yield True, _frame_raw(msgpack.packb(rng.choice(values)))
        elif kind == 5:  # unknown and hostile operations
            yield (
                True,
                _frame(
                    [
                        rng.choice(["__class__", "__reduce__", "system", "eval", "close_all", 7]),
                        rng.choice(values),
                    ]
                ),
            )
        elif kind == 6:  # real operations with wrong arguments
            yield True, _frame([rng.choice(["step", "reset", "render"]), rng.choice(values)])
        else:  # an extension type we never send, or a malformed array
            ext = msgpack.ExtType(rng.choice([1, 2, 3, 9, 99]), rng.randbytes(rng.randrange(0, 20)))
            yield True, _frame_raw(msgpack.packb(["step", ext]))


def _frame(obj) -> bytes:
    return _frame_raw(codec.dumps(obj))


def _frame_raw(body: bytes) -> bytes:
    return struct.pack("<II", len(body) + 4, len(body)) + body


def test_ten_thousand_fuzzed_frames(image, tmp_path):
    canary = str(tmp_path / "canary")
    rng = random.Random(1234)
    with remote.RemoteRunner(image, timeout=10, binds=[str(tmp_path)]) as runner:
        env = runner.make("CartPole-v1")
        env.reset(seed=0)
        server = runner.info["pid"]
        address = runner._ready["stream"]
        hello = _frame({"protocol": PROTOCOL_VERSION, "secret": runner._secret, "env": env.handle})
        sent = refused = 0
        frames = fuzz_frames(rng, canary, env.handle, runner._secret)
        while sent < 10_000:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(5)
                s.connect(address)
                needs_hello, data = next(frames)
                if not needs_hello:  # a bad first frame: send it, say we are done, expect refusal
                    s.sendall(data)
                    s.shutdown(socket.SHUT_WR)
                    try:
                        reply = frame_channel.Channel(s).recv()
                        assert reply[0] == 1, f"accepted a bad hello: {data!r:.80}"
                    except (ConnectionError, remote.ProtocolError):
                        pass  # dropped without a word: fine too
                    refused += 1
                    sent += 1
                    continue
                s.sendall(hello)
                assert frame_channel.Channel(s).recv() == [0, None]
                while needs_hello and sent < 10_000:  # several requests on one connection
                    s.sendall(data)
                    sent += 1
                    try:
                        reply = frame_channel.Channel(s).recv()
                    except (ConnectionError, remote.ProtocolError):
                        refused += 1  # the server dropped the connection: fine
                        break
                    assert isinstance(reply, list) and reply[0] in (0, 1)
                    refused += reply[0] == 1
                    needs_hello, data = next(frames)
        # a control-socket fuzz too: garbage at the Pyro5 daemon
        for _ in range(200):
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(5)
                s.connect(runner._ready["control"])
                s.sendall(rng.randbytes(rng.randrange(1, 200)))
                with contextlib.suppress(ConnectionError, TimeoutError):
                    s.recv(100)
        assert not Path(canary).exists(), "a fuzzed frame was executed"
        assert runner.info["pid"] == server and runner.alive
        again = runner.make("CartPole-v1")  # the server still serves a valid client
        obs, _ = again.reset(seed=0)
        assert obs.shape == (4,) and again.step(1)[1] == 1.0
        env.reset(seed=1)  # the env whose handle was fuzzed (and stepped by valid fuzz) still works
        assert env.step(0)[1] == 1.0
        print(f"{sent} fuzzed frames, {refused} refused or dropped, server pid unchanged, nothing executed")
