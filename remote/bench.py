"""Benchmarks of the hot path, measured against references from the same run.

``python -m remote.bench [--quick] [--json PATH] [--image IMAGE] [--placement P]`` measures, in
interleaved rounds, the latency of one ``step`` for CartPole-v1 and for 28 KB / 100 KB /
1 MB uint8 observations: a local env, ``gymnasium.vector.AsyncVectorEnv`` with one env,
the raw floor (a minimal unix-socket server in a subprocess: msgpack header and the raw
observation buffer) and ``remote.make`` through a real container; then the throughput of
16 CartPoles from :func:`remote.make_vec` in one container against an in-process
``SyncVectorEnv``, and cold start (``make`` → first ``reset``) against a bare
``apptainer exec IMAGE true``, ``close()``, and ``make`` → first ``reset`` from a warm
:class:`remote.Pool`. It prints medians, p99s, the ratio to each target's reference, and
whether the target is met. ``--placement same|split`` pins the client and the servers
(floor, AsyncVectorEnv worker, container) to one CPU or to two.
"""

from __future__ import annotations

import argparse
import json
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


#: The floor: a raw unix-socket server, msgpack request, msgpack header + raw obs reply.
FLOOR_SERVER = """
import socket, struct, sys
import msgpack
from remote.bench import _local_env
env = _local_env(int(sys.argv[2]))
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
    obs, reward, terminated, truncated, _ = env.step(msgpack.unpackb(memoryview(buffer)[4:n]))
    if terminated or truncated:
        obs, _ = env.reset()
    head = msgpack.packb([obs.dtype.str, obs.shape, reward, bool(terminated), bool(truncated)])
    conn.sendmsg([size.pack(len(head)), head, obs])
"""


class _Floor:
    """Client of :data:`FLOOR_SERVER`: the least work that moves a step over a socket."""

    def __init__(self, nbytes: int) -> None:
        self.dir = tempfile.mkdtemp(prefix="rmt-bench-")
        path = os.path.join(self.dir, "s")
        root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", FLOOR_SERVER, path, str(nbytes)], stdout=subprocess.PIPE, env=env
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == b"ready"
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(path)
        self.buffer = bytearray(nbytes + 4096)
        self.view = memoryview(self.buffer)
        self.requests = [b"\x01\x00\x00\x00" + bytes([a]) for a in (0, 1)]  # msgpack ints 0, 1

    def step(self, action: int) -> np.ndarray:
        sock, view = self.sock, self.view
        sock.sendall(self.requests[action])
        got = sock.recv_into(view)
        while got < 4:
            got += sock.recv_into(view[got:])
        size = int.from_bytes(view[:4], "little")
        while got < 4 + size:
            got += sock.recv_into(view[got:])
        dtype, shape, *_ = msgpack.unpackb(view[4 : 4 + size])
        dtype = np.dtype(dtype)
        count = math.prod(shape)
        end = 4 + size + count * dtype.itemsize
        while got < end:
            got += sock.recv_into(view[got:end])
        return np.frombuffer(self.buffer, dtype, count, 4 + size).reshape(shape).copy()

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
    floor = _Floor(nbytes)
    kwargs = {"nbytes": nbytes} if nbytes else {}
    env = remote.make("remote.bench:ArrayObsEnv" if nbytes else "CartPole-v1", image=image, **kwargs)
    return {
        "local": (_env_stepper(local), local.close, None),
        "async": (lambda a: vector.step(actions[a]), vector.close, vector.processes[0].pid),
        "floor": (floor.step, floor.close, floor.proc.pid),
        "remote": (_env_stepper(env), env.close, env.runner.pid),
    }


def _time_steps(step: Callable[[int], Any], count: int, into: list[float]) -> None:
    clock = time.perf_counter_ns
    for i in range(count):
        start = clock()
        step(i & 1)
        into.append((clock() - start) / 1000)


def _interleaved(cases: dict[str, Callable[[int], Any]], rounds: int, steps: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for step in cases.values():
        _time_steps(step, min(steps, 200), [])  # warm up
    for _ in range(rounds):
        for name, step in cases.items():
            _time_steps(step, steps, samples[name])
    return samples


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


def _pin_tree(pid: int, cpu: int) -> None:
    """Pin every thread of ``pid`` and of its descendants to ``cpu``."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError):
                continue
    tree, frontier = [pid], [pid]
    while frontier:
        kids = [p for p, parent in parents.items() if parent in frontier]
        tree += kids
        frontier = kids
    for process in tree:
        for task in Path(f"/proc/{process}/task").glob("*"):
            try:
                os.sched_setaffinity(int(task.name), {cpu})
            except (OSError, ValueError):
                continue  # gone meanwhile


def _measure(cases: dict[str, Case], rounds: int, steps: int, placement: str) -> dict[str, list[float]]:
    try:
        if placement == "split":
            for _, _, pid in cases.values():
                if pid is not None:
                    _pin_tree(pid, 1)
        return _interleaved({name: case[0] for name, case in cases.items()}, rounds, steps)
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


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "n": len(ordered),
    }


def run(
    image: str, quick: bool = False, placement: str = "free", log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Measure everything; return ``{"results": {name: summary}, "targets": [...]}``.

    ``placement``: ``"free"`` (the scheduler's choice), ``"same"`` (this process and every
    server on CPU 0) or ``"split"`` (this process on CPU 0, the servers on CPU 1).
    """
    if placement in ("same", "split"):
        os.sched_setaffinity(0, {0})  # inherited by every process started from here
    rounds, steps, cold_rounds = (2, 300, 2) if quick else (5, 2000, 5)
    results: dict[str, dict[str, float]] = {}
    for label, nbytes in SIZES.items():
        log(f"stepping {label} ...")
        samples = _measure(_cases(image, nbytes), rounds, steps, placement)
        for name, values in samples.items():
            results[f"{label} {name}"] = _summary(values)
    log("stepping 16 CartPoles ...")
    samples = _measure(_vector_cases(image), rounds, steps // 4, placement)
    for name, values in samples.items():
        results[name] = _summary(values)
    log("cold starts ...")
    for name, values in _cold(image, cold_rounds).items():
        results[name] = _summary([v * 1e6 for v in values])  # µs like the rest
    return {"results": results, "targets": _targets(results)}


def _targets(r: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    def med(name: str) -> float:
        return r[name]["median"]

    def row(name: str, reference: str | None, ratio: float | None, target: str, met: bool | None) -> dict:
        return {"name": name, "reference": reference, "ratio": ratio, "target": target, "met": met}

    rows = []
    for label in SIZES:
        rows += [row(f"{label} {ref}", None, None, "", None) for ref in ("local", "async", "floor")]
        remote_ = f"{label} remote"
        to_async = med(remote_) / med(f"{label} async")
        to_floor = med(remote_) / med(f"{label} floor")
        if label == "CartPole":
            rows.append(row(remote_, f"{label} async", to_async, "≤ 1.0", to_async <= 1.0))
            rows.append(row(remote_, f"{label} floor", to_floor, "≤ 1.5", to_floor <= 1.5))
        elif label == "28 KB":
            rows.append(row(remote_, f"{label} floor", to_floor, "≤ 1.2", to_floor <= 1.2))
        else:
            rows.append(row(remote_, f"{label} floor", to_floor, "", None))
    throughput = med("sync16") / med("remote16")
    rows.append(row("sync16", None, None, "", None))
    rows.append(row("remote16", "sync16", throughput, "throughput ≥ 0.5", throughput >= 0.5))
    rows.append(row("bare_exec", None, None, "", None))
    cold, bare = med("make_reset"), med("bare_exec")
    rows.append(row("make_reset", None, None, "≤ 400 ms", cold <= 400_000))
    over_bare = row("make_reset", "bare_exec", None, "≤ bare + 300 ms", cold <= bare + 300_000)
    over_bare["over_reference_ms"] = (cold - bare) / 1000
    rows.append(over_bare)
    rows.append(row("close", None, None, "≤ 100 ms", med("close") <= 100_000))
    warm = med("pool_make")
    rows.append(row("pool_make", "make_reset", warm / cold, "≤ 2 ms", warm <= 2_000))
    return rows


def _µs(value: float) -> str:
    return f"{value / 1000:,.1f} ms" if value >= 10_000 else f"{value:,.1f} µs"


def table(report: dict[str, Any]) -> str:
    """The report as a markdown table."""
    results = report["results"]
    lines = [
        "| measurement | median | p99 | reference | ratio | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    labels = {
        "sync16": "16 CartPoles, SyncVectorEnv in-process (per step of 16)",
        "remote16": "16 CartPoles, make_vec in one container (per step of 16)",
        "bare_exec": "bare `apptainer exec IMAGE true`",
        "make_reset": "cold `remote.make` → first `reset`",
        "close": "`close()`",
        "pool_make": "warm `Pool.make` → first `reset`",
    }
    for row in report["targets"]:
        name = row["name"]
        result = results[name]
        ratio = "" if row["ratio"] is None else f"{row['ratio']:.2f}"
        if row["ratio"] is not None and row["ratio"] < 0.01:
            ratio = f"{row['ratio']:.4f}"
        if "over_reference_ms" in row:
            ratio = f"+{row['over_reference_ms']:.0f} ms"
        met = "" if row["met"] is None else ("yes" if row["met"] else "NO")
        lines.append(
            f"| {labels.get(name, name + ' step')} | {_µs(result['median'])} | {_µs(result['p99'])} "
            f"| {row['reference'] or ''} | {ratio} | {row['target']} | {met} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m remote.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default=os.environ.get("REMOTE_BENCH_IMAGE", ".images/gymnasium.sif"))
    parser.add_argument("--quick", action="store_true", help="fewer rounds and steps")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers as JSON")
    parser.add_argument(
        "--placement",
        choices=["free", "same", "split"],
        default="free",
        help="free: the scheduler's choice; same: client and servers on CPU 0; "
        "split: client on CPU 0, servers on CPU 1",
    )
    args = parser.parse_args(argv)
    if not Path(args.image).exists():
        parser.error(f"image {args.image} not found (build it, or pass --image)")
    if args.placement != "free" and (os.cpu_count() or 1) < 2:
        parser.error("--placement same|split needs two CPUs")
    report = run(args.image, args.quick, args.placement, log=lambda m: print(m, file=sys.stderr))
    report["machine"] = {
        "cpus": os.cpu_count(),
        "placement": args.placement,
        "quick": args.quick,
        "image": args.image,
        "load": os.getloadavg(),
    }
    print(table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
