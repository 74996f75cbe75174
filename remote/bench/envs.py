"""The real-envs rows of issue #16: what remote adds to a step of LunarLander, HalfCheetah,
Hopper (envs.sif) and DACBench's FunctionApproximation (dacbench.sif) over the same env
stepped by the image's own Python; CartPole with client and server on one CPU against a raw
unix-socket server; what a numpy scalar in ``info`` costs the codec; a step through an image
whose Python is not the host's; and DACBench's ``make`` after the container is up, with and
without ``preload=``.

Every loop is the realistic one: actions drawn from the env's ``action_space`` (seeded 0),
``reset`` when an episode ends, one step and its reset timed together.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import subprocess
import time
import timeit
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gymnasium as gym
import msgpack
import numpy as np

from .image import image_command
from .report import Options, Row, interleaved, measured, missing, pin_tree, time_steps
from .transport import Floor, raw_server

#: envs.sif's envs whose overhead per step is measured: id → what the id needs imported.
ENVS = {"LunarLander-v3": (), "HalfCheetah-v5": (), "Hopper-v5": ()}
DACBENCH_ENV = "FunctionApproximation-v0"
ACTIONS = 1000  #: pre-drawn actions, replayed in a cycle

#: The reference: the env stepped by the image's own Python, ``N`` steps per line read on
#: stdin, the µs of each step (and its reset) printed back as one ``@``-prefixed JSON line.
STEPPER = """
import importlib, json, sys, time, warnings
warnings.filterwarnings("ignore")
import gymnasium as gym
request = json.loads(sys.argv[1])
for name in request["imports"]:
    importlib.import_module(name)
env = gym.make(request["env_id"])
env.action_space.seed(0)
actions = [env.action_space.sample() for _ in range(request["actions"])]
env.reset(seed=0)
clock, i = time.perf_counter_ns, 0
print("@ready", flush=True)
for line in sys.stdin:
    times = []
    for _ in range(int(line)):
        start = clock()
        result = env.step(actions[i % len(actions)])
        if result[2] or result[3]:
            env.reset()
        times.append((clock() - start) / 1000)
        i += 1
    print("@" + json.dumps(times), flush=True)
"""

#: A raw unix-socket server of CartPole for :class:`remote.bench.transport.Floor`: a msgpack
#: action is a step, nil a reset; the reply is the floor's (size, header, raw observation).
RAW_SERVER = raw_server(
    "import gymnasium as gym\nenv = gym.make('CartPole-v1')",
    "    if request is None:\n"
    "        (obs, _), reward, terminated, truncated = env.reset(), 0.0, False, False\n"
    "    else:\n"
    "        obs, reward, terminated, truncated, _ = env.step(request)\n"
    "        reward = float(reward)",
)


class ImageStepper:
    """:data:`STEPPER` running in ``image``: the env without remote, stepped round by round."""

    def __init__(self, image: str, env_id: str, imports: tuple[str, ...] = ()) -> None:
        request = json.dumps({"env_id": env_id, "imports": list(imports), "actions": ACTIONS})
        self.proc = subprocess.Popen(
            image_command(image, STEPPER, [request]), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self._answer()

    def _answer(self) -> str:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # the env may print on its own
            if line.startswith("@"):
                return line[1:]
        raise RuntimeError(f"the image's Python stopped (exit {self.proc.wait()})")

    def round(self, steps: int) -> list[float]:
        """µs of each of ``steps`` steps."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{steps}\n")
        self.proc.stdin.flush()
        return json.loads(self._answer())

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def loop(env: gym.Env) -> Callable[[int], None]:
    """A step of the realistic loop (:data:`STEPPER`'s): the next pre-drawn action, reset at
    an episode's end; its argument is ignored (for :func:`remote.bench.report.time_steps`)."""
    env.action_space.seed(0)
    actions = [env.action_space.sample() for _ in range(ACTIONS)]
    env.reset(seed=0)
    count = iter(range(1 << 62))

    def step(_: int) -> None:
        result = env.step(actions[next(count) % ACTIONS])
        if result[2] or result[3]:
            env.reset()

    return step


def sampling_loop(env: gym.Env) -> Callable[[int], None]:
    """A step with ``action_space.sample()``, reset at an episode's end."""
    env.action_space.seed(0)
    env.reset(seed=0)
    space = env.action_space

    def step(_: int) -> None:
        result = env.step(space.sample())
        if result[2] or result[3]:
            env.reset()

    return step


def place(pids: list[int | None], placement: str) -> None:
    """With ``--placement split``, the servers go to CPU 1 (``same`` is inherited from CPU 0)."""
    if placement == "split":
        for pid in pids:
            if pid is not None:
                pin_tree(pid, 1)


def versus_image(
    image: str, env_id: str, imports: tuple[str, ...], rounds: int, steps: int, placement: str
) -> dict[str, list[float]]:
    """µs per step of ``env_id`` in the image's own Python (``"local"``) and through
    ``remote.make`` (``"remote"``), in alternate rounds."""
    import remote

    stepper = ImageStepper(image, env_id, imports)
    try:
        env = remote.make(env_id, image=image, runner_options={"imports": list(imports)})
        try:
            place([stepper.proc.pid, env.runner.pid], placement)
            step = loop(env)
            samples: dict[str, list[float]] = {"local": [], "remote": []}
            stepper.round(min(steps, 200))  # warm up
            time_steps(step, min(steps, 200), [])
            for _ in range(rounds):
                samples["local"] += stepper.round(steps)
                time_steps(step, steps, samples["remote"])
            return samples
        finally:
            env.close()
    finally:
        stepper.close()


def versus_rows(env_id: str, samples: dict[str, list[float]]) -> tuple[list[Row], float, float]:
    """The two raw figures of :func:`versus_image`, and their medians (local, remote)."""
    rows = [
        measured(f"{env_id} step, in the image's Python", samples["local"]),
        measured(f"{env_id} step, remote", samples["remote"]),
    ]
    return rows, statistics.median(samples["local"]), statistics.median(samples["remote"])


# -- client and server on one CPU --------------------------------------------------------------


@contextmanager
def on_cpu(cpu: int) -> Iterator[None]:
    """This thread (and what it starts) on ``cpu`` only; its CPUs as before afterwards."""
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, saved)


def raw_loop(floor: Floor) -> Callable[[int], None]:
    """:func:`sampling_loop` against :data:`RAW_SERVER`."""
    space = gym.spaces.Discrete(2, seed=0)  # CartPole's
    reset = b"\x01\x00\x00\x00" + msgpack.packb(None)

    def step(_: int) -> None:
        body = msgpack.packb(int(space.sample()))
        _, (_, terminated, truncated) = floor.exchange(len(body).to_bytes(4, "little") + body)
        if terminated or truncated:
            floor.exchange(reset)

    return step


def one_cpu(image: str, rounds: int, steps: int) -> dict[str, list[float]]:
    """µs per CartPole step, client and server on CPU 0: remote and :data:`RAW_SERVER`."""
    import remote

    with on_cpu(0):
        floor = Floor(0, server=RAW_SERVER)
        try:
            env = remote.make("CartPole-v1", image=image)
            try:
                for pid in (floor.proc.pid, env.runner.pid):
                    if pid:  # never 0: that would be every process's parent
                        pin_tree(pid, 0)
                cases = {"raw": raw_loop(floor), "remote": sampling_loop(env)}
                return interleaved(cases, rounds, steps)
            finally:
                env.close()
        finally:
            floor.close()


# -- numpy scalars in info ----------------------------------------------------------------------


def best(calls: list[tuple[Any, Any]], rounds: int = 9) -> list[float]:
    """Best µs per call of each ``(call, argument)``, over ``rounds`` rounds of ~10 ms each,
    the calls interleaved round by round (a load spike hits them all alike)."""
    timers = [timeit.Timer(functools.partial(call, arg)) for call, arg in calls]
    numbers = [max(1, int(0.01 / max(timer.timeit(50) / 50, 1e-9))) for timer in timers]
    times = [
        [timer.timeit(number) / number * 1e6 for timer, number in zip(timers, numbers, strict=True)]
        for _ in range(rounds)
    ]
    return [min(column) for column in zip(*times, strict=True)]


SCALARS: dict[str, type] = {
    "np.float64": np.float64,
    "np.int64": np.int64,
    "np.bool_": np.bool_,
    "np.float32": np.float32,
    "float": float,
}


def reply(info: dict[str, Any]) -> list[Any]:
    """A step's reply (Hopper-like: 11 float64 observations) with ``info``."""
    return [0, np.zeros(11), 1.2, False, False, info]


def scalar_costs(rounds: int) -> dict[str, float]:
    """µs to encode and decode one value of each of :data:`SCALARS` in a reply's info, sent
    and received by a pair of real channels: (a reply with 6 of them − one with none) / 6
    (the rest of the two, the syscalls too, is the same)."""
    import socket

    from remote.protocol.channel import Channel

    ends = socket.socketpair()
    sender, receiver = Channel(ends[0]), Channel(ends[1])

    def through(message: list[Any]) -> Any:
        sender.send(message)
        return receiver.recv()

    messages = [reply({})] + [reply({f"k{i}": kind(i) for i in range(6)}) for kind in SCALARS.values()]
    try:
        for message in messages:  # what is measured comes back as it went
            assert [type(v) for v in through(message)[5].values()] == [type(v) for v in message[5].values()]
        times = best([(through, message) for message in messages], rounds)
    finally:
        sender.close()
        receiver.close()
    return {name: (cost - times[0]) / 6 for name, cost in zip(SCALARS, times[1:], strict=True)}


def scalar_rows(rounds: int) -> list[Row]:
    """A row per numpy scalar type of :data:`SCALARS`, against Python's float."""
    from remote.protocol import codec

    costs = scalar_costs(rounds)
    note = f"(6 in a reply's info − none) / 6, best of {rounds} rounds, msgpack {codec.MSGPACK}"
    out = [Row("float in info, encode + decode per scalar", costs["float"], note=note)]
    out += [
        Row(
            f"{name} in info, encode + decode per scalar",
            cost,
            reference="float in info",
            ratio=f"{cost / costs['float']:.2f}",
            target="≤ 1 µs",
            met=cost <= 1.0,
        )
        for name, cost in costs.items()
        if name != "float"
    ]
    return out


# -- another Python -----------------------------------------------------------------------------


def other_python(
    image: str, other: str, rounds: int, steps: int, placement: str
) -> tuple[dict[str, list[float]], dict[str, dict[str, Any]]]:
    """µs per CartPole step through ``image`` and through ``other``; each server's info."""
    import remote

    env = remote.make("CartPole-v1", image=image)
    try:
        far = remote.make("CartPole-v1", image=other)
        try:
            place([env.runner.pid, far.runner.pid], placement)
            cases = {"image": sampling_loop(env), "other": sampling_loop(far)}
            return interleaved(cases, rounds, steps), {"image": env.runner.info, "other": far.runner.info}
        finally:
            far.close()
    finally:
        env.close()


# -- make after the container is up --------------------------------------------------------------


def make_after_start(image: str, rounds: int) -> dict[str, list[float]]:
    """µs of ``runner.make(DACBENCH_ENV)`` on a runner just started, with ``preload=["dacbench"]``
    and without (the make imports dacbench), and of each runner's start; rounds alternate."""
    import remote

    samples: dict[str, list[float]] = {"preload": [], "plain": [], "preload start": [], "plain start": []}
    for _ in range(rounds):
        for name, preload in (("preload", ["dacbench"]), ("plain", [])):
            start = time.perf_counter()
            with remote.RemoteRunner(image, preload=preload) as runner:
                up = time.perf_counter()
                runner.make(DACBENCH_ENV).close()
                samples[name].append((time.perf_counter() - up) * 1e6)
                samples[f"{name} start"].append((up - start) * 1e6)
    return samples


def make_rows(samples: dict[str, list[float]]) -> list[Row]:
    """The make without preload (it imports dacbench) and with, against the 50 ms target."""
    plain, preload = statistics.median(samples["plain"]), statistics.median(samples["preload"])
    return [
        measured(f"{DACBENCH_ENV} `make` after the container is up, no preload", samples["plain"]),
        measured(
            DACBENCH_MAKE,
            samples["preload"],
            reference="no preload",
            ratio=f"{preload / plain:.3f}",
            target="≤ 50 ms",
            met=preload <= 50_000,
            note=f"runner start {statistics.median(samples['preload start']) / 1e6:.1f} s with preload, "
            f"{statistics.median(samples['plain start']) / 1e6:.1f} s without",
            extra={"start": {k: v for k, v in samples.items() if k.endswith("start")}},
        ),
    ]


# -- the section ---------------------------------------------------------------------------------

#: A group's measure: its rows, given the options and (rounds, steps).
Measure = Callable[[Options, int, int], list[Row]]


def guarded(
    options: Options, what: str, targets: dict[str, str], images: list[str], measure: Measure
) -> list[Row]:
    """``measure``'s rows; a :func:`missing` row per ``targets`` (measurement → target) if an
    image of ``images`` is not there or ``measure`` fails, so the table still has them."""
    why = next(
        (
            f"image {i} not found: scripts/build-test-images.sh builds it"
            for i in images
            if not Path(i).exists()
        ),
        None,
    )
    if why is None:
        options.log(f"{what} ...")
        rounds, steps = (2, 300) if options.quick else (5, 2000)
        try:
            return measure(options, rounds, steps)
        except Exception as exc:  # noqa: BLE001 (one failed group must not lose the table)
            options.log(traceback.format_exc())
            why = f"failed: {type(exc).__name__}: {exc}"
    return [missing(name, target, why) for name, target in targets.items()]


def overhead(env_id: str, imports: tuple[str, ...]) -> Measure:
    def measure(options: Options, rounds: int, steps: int) -> list[Row]:
        samples = versus_image(options.envs_image, env_id, imports, rounds, steps, options.placement)
        rows, local, far = versus_rows(env_id, samples)
        return rows + [
            Row(
                f"{env_id} overhead per step",
                far - local,
                reference="same env in the image's Python",
                ratio=f"{far / local:.2f}",
                target="≤ 20 µs",
                met=far - local <= 20,
                note="remote median − local median",
            )
        ]

    return measure


def cartpole_one_cpu(options: Options, rounds: int, steps: int) -> list[Row]:
    samples = one_cpu(options.image, rounds, steps)
    ratio = statistics.median(samples["remote"]) / statistics.median(samples["raw"])
    return [
        measured("CartPole-v1 step on one CPU, raw unix socket + msgpack", samples["raw"]),
        measured(
            ONE_CPU,
            samples["remote"],
            reference="raw unix socket + msgpack",
            ratio=f"{ratio:.2f}",
            target="≤ 1.3×",
            met=ratio <= 1.3,
            note="client and server on CPU 0, action_space.sample(), reset at an episode's end",
        ),
    ]


def another_python(options: Options, rounds: int, steps: int) -> list[Row]:
    image, other = options.image, options.other_python_image
    samples, info = other_python(image, other, rounds, steps, options.placement)
    ratio = statistics.median(samples["other"]) / statistics.median(samples["image"])
    python = info["image"].get("python", "?")
    return [
        measured(f"CartPole-v1 step, Python {python} ({Path(image).name})", samples["image"]),
        measured(
            OTHER_PYTHON,
            samples["other"],
            reference=f"Python {python}",
            ratio=f"{ratio:.2f}",
            target="≤ 1.1×",
            met=ratio <= 1.1,
            note=f"Python {info['other'].get('python', '?')} ({Path(other).name}), "
            f"server codec {info['other'].get('codec', '?')}",
        ),
    ]


def dacbench_step(options: Options, rounds: int, steps: int) -> list[Row]:
    samples = versus_image(
        options.dacbench_image, DACBENCH_ENV, ("dacbench",), rounds, steps, options.placement
    )
    rows, local, far = versus_rows(DACBENCH_ENV, samples)
    rows[-1].reference, rows[-1].ratio = "same env in the image's Python", f"{far / local:.2f}"
    rows[-1].target, rows[-1].met = "≤ 2× local", far <= 2 * local
    return rows


ONE_CPU = "CartPole-v1 step on one CPU, remote"
OTHER_PYTHON = "CartPole-v1 step, an image with another Python"
DACBENCH_STEP = f"{DACBENCH_ENV} step, remote"
DACBENCH_MAKE = f"{DACBENCH_ENV} `make` after the container is up, preload=['dacbench']"


def rows(options: Options) -> list[Row]:
    """Overhead per step of real envs, CartPole on one CPU, numpy scalars, another Python,
    DACBench's step and its ``make`` with ``preload=``."""
    out: list[Row] = []
    for env_id, imports in ENVS.items():
        target = {f"{env_id} overhead per step": "≤ 20 µs"}
        out += guarded(options, f"stepping {env_id}", target, [options.envs_image], overhead(env_id, imports))
    out += guarded(options, "CartPole on one CPU", {ONE_CPU: "≤ 1.3×"}, [options.image], cartpole_one_cpu)
    out += guarded(
        options,
        "numpy scalars in info",
        {f"{n} in info, encode + decode per scalar": "≤ 1 µs" for n in SCALARS if n != "float"},
        [],
        lambda o, r, s: scalar_rows(5 if o.quick else 9),
    )
    images = [options.image, options.other_python_image]
    out += guarded(options, "another Python", {OTHER_PYTHON: "≤ 1.1×"}, images, another_python)
    dac = [options.dacbench_image]
    out += guarded(options, f"stepping {DACBENCH_ENV}", {DACBENCH_STEP: "≤ 2× local"}, dac, dacbench_step)
    out += guarded(
        options,
        f"{DACBENCH_ENV} make after start",
        {DACBENCH_MAKE: "≤ 50 ms"},
        dac,
        lambda o, r, s: make_rows(make_after_start(o.dacbench_image, 1 if o.quick else 3)),
    )
    return out
