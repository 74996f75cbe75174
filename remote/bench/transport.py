"""The transport rows: one ``step`` for CartPole-v1 and for 28 KB / 100 KB / 1 MB uint8
observations, measured in interleaved rounds against a local env,
``gymnasium.vector.AsyncVectorEnv`` with one env and the raw floor (a minimal unix-socket
server in a subprocess: msgpack header and the raw observation buffer); 16 CartPoles from
:func:`remote.make_vec` in one container against an in-process ``SyncVectorEnv``; cold start
(``make`` → first ``reset``) against a bare ``apptainer exec IMAGE true``, ``close()``, and
``make`` → first ``reset`` from a warm :class:`remote.Pool`.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import msgpack
import numpy as np

from .report import Options, Row, interleaved, measured, pin_tree

SIZES = {"CartPole": 0, "28 KB": 28 * 1024, "100 KB": 100 * 1024, "1 MB": 1024 * 1024}


class ArrayObsEnv(gym.Env):
    """A near-free env with uint8 observations of ``nbytes``: the transport is what is measured."""

    def __init__(self, nbytes: int = 28 * 1024) -> None:
        self.observation_space = gym.spaces.Box(0, 255, (nbytes,), np.uint8)
        self.action_space = gym.spaces.Discrete(2)
        self._frames = np.random.default_rng(0).integers(0, 256, (2, nbytes), dtype=np.uint8)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        return self._frames[0], {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        return self._frames[int(action)], 1.0, False, False, {}


def _local_env(nbytes: int) -> gym.Env:
    return ArrayObsEnv(nbytes) if nbytes else gym.make("CartPole-v1")


def raw_server(setup: str, step: str) -> str:
    """The script of a raw unix-socket server, :class:`Floor`'s peer: ``setup`` makes ``env``;
    ``step`` (indented 4) sets ``obs, reward, terminated, truncated`` from the msgpack ``request``.
    It answers with a 4-byte size, a msgpack header ``[dtype, shape, reward, terminated,
    truncated]`` and the raw observation."""
    return f"""
import socket, struct, sys
import msgpack
{setup}
env.reset(seed=0)
listener = socket.socket(socket.AF_UNIX)
listener.bind(sys.argv[1])
listener.listen(1)
print("ready", flush=True)
conn, _ = listener.accept()
size = struct.Struct("<I")
buffer = bytearray(256)
while True:
    n = conn.recv_into(buffer)
    if not n:
        break
    request = msgpack.unpackb(memoryview(buffer)[4:n])
{step}
    head = msgpack.packb([obs.dtype.str, obs.shape, reward, bool(terminated), bool(truncated)])
    conn.sendmsg([size.pack(len(head)), head, obs])
"""


#: The floor: a raw unix-socket server, msgpack request, msgpack header + raw obs reply.
FLOOR_SERVER = raw_server(
    "from remote.bench.transport import _local_env\nenv = _local_env(int(sys.argv[2]))",
    "    obs, reward, terminated, truncated, _ = env.step(request)\n"
    "    if terminated or truncated:\n"
    "        obs, _ = env.reset()",
)


class Floor:
    """Client of :data:`FLOOR_SERVER` (or of a ``server`` script that answers as it does: a
    4-byte size, a msgpack header ``[dtype, shape, ...]``, the raw observation): the least
    work that moves a step over a socket."""

    def __init__(self, nbytes: int, server: str = FLOOR_SERVER) -> None:
        self.dir = tempfile.mkdtemp(prefix="rmt-bench-")
        path = os.path.join(self.dir, "s")
        root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", server, path, str(nbytes)], stdout=subprocess.PIPE, env=env
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == b"ready"
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(path)
        self.buffer = bytearray(nbytes + 4096)
        self.view = memoryview(self.buffer)
        self.requests = [b"\x01\x00\x00\x00" + bytes([a]) for a in (0, 1)]  # msgpack ints 0, 1

    def step(self, action: int) -> np.ndarray:
        return self.exchange(self.requests[action])[0]

    def exchange(self, request: bytes) -> tuple[np.ndarray, list[Any]]:
        """Send ``request`` (size-prefixed msgpack); the reply's observation and the rest of
        its header."""
        sock, view = self.sock, self.view
        sock.sendall(request)
        got = sock.recv_into(view)
        while got < 4:
            got += sock.recv_into(view[got:])
        size = int.from_bytes(view[:4], "little")
        while got < 4 + size:
            got += sock.recv_into(view[got:])
        dtype, shape, *rest = msgpack.unpackb(view[4 : 4 + size])
        dtype = np.dtype(dtype)
        count = math.prod(shape)
        end = 4 + size + count * dtype.itemsize
        while got < end:
            got += sock.recv_into(view[got:end])
        return np.frombuffer(self.buffer, dtype, count, 4 + size).reshape(shape).copy(), rest

    def close(self) -> None:
        self.sock.close()
        self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


def _env_stepper(env: gym.Env) -> Callable[[int], None]:
    env.reset(seed=0)

    def step(action: int) -> None:
        result = env.step(action)
        if result[2] or result[3]:
            env.reset()

    return step


Case = tuple[Callable[[int], Any], Callable[[], None], "int | None"]


def _cases(image: str, nbytes: int) -> dict[str, Case]:
    """name → (step(action), close, pid of its server process) for the four ways to step one env."""
    import remote

    local = _local_env(nbytes)
    vector = gym.vector.AsyncVectorEnv([lambda: _local_env(nbytes)])
    vector.reset(seed=0)
    actions = [np.array([0]), np.array([1])]
    floor = Floor(nbytes)
    kwargs = {"nbytes": nbytes} if nbytes else {}
    env = remote.make(
        "remote.bench.transport:ArrayObsEnv" if nbytes else "CartPole-v1", image=image, **kwargs
    )
    return {
        "local": (_env_stepper(local), local.close, None),
        "async": (lambda a: vector.step(actions[a]), vector.close, vector.processes[0].pid),
        "floor": (floor.step, floor.close, floor.proc.pid),
        "remote": (_env_stepper(env), env.close, env.runner.pid),
    }


def _vector_cases(image: str) -> dict[str, Case]:
    import remote

    local = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 16)
    envs = remote.make_vec("CartPole-v1", 16, image=image, envs_per_container=16)
    actions = [np.zeros(16, dtype=np.int64), np.ones(16, dtype=np.int64)]
    local.reset(seed=0)
    envs.reset(seed=0)
    return {
        "sync16": (lambda a: local.step(actions[a]), local.close, None),
        "remote16": (lambda a: envs.step(actions[a]), envs.close, envs.runners[0].pid),
    }


def _measure(cases: dict[str, Case], rounds: int, steps: int, placement: str) -> dict[str, list[float]]:
    try:
        if placement == "split":
            for _, _, pid in cases.values():
                if pid is not None:
                    pin_tree(pid, 1)
        return interleaved({name: case[0] for name, case in cases.items()}, rounds, steps)
    finally:
        for _, close, _ in cases.values():
            close()


def _cold(image: str, rounds: int) -> dict[str, list[float]]:
    """Seconds: bare ``apptainer exec IMAGE true``, ``make`` → first ``reset``, ``close``, and
    ``make`` → first ``reset`` from a warm :class:`remote.Pool`."""
    import remote

    samples: dict[str, list[float]] = {"bare_exec": [], "make_reset": [], "close": [], "pool_make": []}
    with remote.Pool(image, min_idle=1, max_size=1) as pool:
        pool.make("CartPole-v1").close()  # its container is up: every make below is warm
        for _ in range(rounds * 10):
            start = time.perf_counter()
            env = pool.make("CartPole-v1")
            env.reset(seed=0)
            samples["pool_make"].append(time.perf_counter() - start)
            env.close()
    for _ in range(rounds):
        start = time.perf_counter()
        subprocess.run(["apptainer", "exec", image, "true"], check=True, capture_output=True)
        samples["bare_exec"].append(time.perf_counter() - start)
        start = time.perf_counter()
        env = remote.make("CartPole-v1", image=image)
        env.reset(seed=0)
        samples["make_reset"].append(time.perf_counter() - start)
        start = time.perf_counter()
        env.close()
        samples["close"].append(time.perf_counter() - start)
    return samples


def rows(options: Options) -> list[Row]:
    """Step latency per observation size, 16 CartPoles, cold start, close, warm pool."""
    image, log = options.image, options.log
    rounds, steps, cold_rounds = (2, 300, 2) if options.quick else (5, 2000, 5)
    out: list[Row] = []
    for label, nbytes in SIZES.items():
        log(f"stepping {label} ...")
        samples = _measure(_cases(image, nbytes), rounds, steps, options.placement)
        med = {name: statistics.median(values) for name, values in samples.items()}
        out += [measured(f"{label} {name} step", samples[name]) for name in ("local", "async", "floor")]
        to_async, to_floor = med["remote"] / med["async"], med["remote"] / med["floor"]
        remote_step = f"{label} remote step"
        if label == "CartPole":
            out.append(
                measured(
                    remote_step,
                    samples["remote"],
                    reference=f"{label} async",
                    ratio=f"{to_async:.2f}",
                    target="≤ 1.0",
                    met=to_async <= 1.0,
                )
            )
        targets = {"CartPole": 1.5, "28 KB": 1.2}
        out.append(
            measured(
                remote_step,
                samples["remote"],
                reference=f"{label} floor",
                ratio=f"{to_floor:.2f}",
                target=f"≤ {targets[label]}" if label in targets else "",
                met=to_floor <= targets[label] if label in targets else None,
            )
        )
    log("stepping 16 CartPoles ...")
    samples = _measure(_vector_cases(image), rounds, steps // 4, options.placement)
    throughput = statistics.median(samples["sync16"]) / statistics.median(samples["remote16"])
    out.append(measured("16 CartPoles, SyncVectorEnv in-process (per step of 16)", samples["sync16"]))
    out.append(
        measured(
            "16 CartPoles, make_vec in one container (per step of 16)",
            samples["remote16"],
            reference="SyncVectorEnv",
            ratio=f"{throughput:.2f}",
            target="throughput ≥ 0.5",
            met=throughput >= 0.5,
        )
    )
    log("cold starts ...")
    cold = {name: [v * 1e6 for v in values] for name, values in _cold(image, cold_rounds).items()}
    make, bare = statistics.median(cold["make_reset"]), statistics.median(cold["bare_exec"])
    warm = statistics.median(cold["pool_make"])
    make_row = "cold `remote.make` → first `reset`"
    out += [
        measured("bare `apptainer exec IMAGE true`", cold["bare_exec"]),
        measured(make_row, cold["make_reset"], target="≤ 400 ms", met=make <= 400_000),
        measured(
            make_row,
            cold["make_reset"],
            reference="bare exec",
            ratio=f"+{(make - bare) / 1000:.0f} ms",
            target="≤ bare + 300 ms",
            met=make <= bare + 300_000,
        ),
        measured(
            "`close()`", cold["close"], target="≤ 100 ms", met=statistics.median(cold["close"]) <= 100_000
        ),
        measured(
            "warm `Pool.make` → first `reset`",
            cold["pool_make"],
            reference="cold make",
            ratio=f"{warm / make:.4f}",
            target="≤ 2 ms",
            met=warm <= 2_000,
        ),
    ]
    return out
