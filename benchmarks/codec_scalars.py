"""What the codec costs per numpy scalar and per step message, before and after, with msgpack
compiled and with its pure-Python fallback (``MSGPACK_PUREPYTHON=1``, as in an image whose
Python is not the host's).

    python benchmarks/codec_scalars.py [--before PATH] [--json out.json]

"before" is the codec at ``PATH`` (default: the main worktree's), loaded beside the package's
own ("after"). Messages are encoded and decoded as a frame's body (``pack_with``/``decode``
with a channel's hooks), best of several rounds; µs per call. The fallback column runs in a
subprocess with ``MSGPACK_PUREPYTHON=1``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from remote.bench.envs import best

DEFAULT_BEFORE = "/work/main/remote/protocol/codec.py"


def frame_codec(codec: ModuleType) -> tuple[Callable[[Any], bytes], Callable[[bytes], Any]]:
    """``(encode, decode)`` of a frame's body as :class:`remote.protocol.channel.Channel` makes
    and reads it with ``codec`` (the arrays here are small: all inline)."""
    packers: list[Any] = []

    def default(obj: Any) -> Any:
        if type(obj) is np.ndarray:
            return codec.inline_ext(obj)
        return codec.plain(obj, default, pack)

    def pack(obj: Any) -> bytes:
        return codec.pack_with(packers, default, obj)

    def hook(code: int, data: bytes) -> Any:
        if code == codec.EXT_NDARRAY_OOB:
            raise AssertionError("no out-of-band arrays here")
        if code == codec.EXT_TUPLE:
            return tuple(codec.msgpack.unpackb(data, **options))
        return codec.ext_hook(code, data)

    options = {**codec.UNPACK, "ext_hook": hook}
    return pack, lambda data: codec.decode(memoryview(data), options)


def load_before(path: str) -> ModuleType:
    """The codec at ``path`` as ``remote.protocol.codec_before`` (its ``..errors`` is ours)."""
    import remote.protocol  # noqa: F401  (the parent package of the relative imports)

    spec = importlib.util.spec_from_file_location("remote.protocol.codec_before", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def hopper_info(kind: Any) -> dict[str, Any]:
    """Hopper-v5's info after a step: 4 float64, a float32, a float (``kind``: float for all)."""
    f64 = np.float64 if kind is None else kind
    f32 = np.float32 if kind is None else kind
    return {
        "x_position": f64(0.0123),
        "z_distance_from_origin": f64(-0.0021),
        "x_velocity": f64(0.314),
        "reward_forward": f64(0.314),
        "reward_ctrl": f32(-0.0007),
        "reward_survive": 1.0,
    }


VALUES: dict[str, Any] = {
    "float": 1.25,
    "np.float64": np.float64(1.25),
    "np.float32": np.float32(1.25),
    "np.int64": np.int64(7),
    "np.bool_": np.bool_(True),
}
MESSAGES: dict[str, Any] = {
    "CartPole request [step, 1]": ["step", 1],
    "CartPole request [step, np.int64]": ["step", np.int64(1)],
    "CartPole reply": [0, np.zeros(4, np.float32), 1.0, False, False, {}],
    "Hopper request [step, f32[3]]": ["step", np.zeros(3, np.float32)],
    "Hopper reply, numpy scalars": [0, np.zeros(11), np.float64(1.2), False, False, hopper_info(None)],
    "Hopper reply, Python floats": [0, np.zeros(11), 1.2, False, False, hopper_info(float)],
    "6 np.float64 in info (each)": [
        0,
        np.zeros(11),
        1.2,
        False,
        False,
        {f"k{i}": np.float64(i) for i in range(6)},
    ],
    "6 float in info (each)": [0, np.zeros(11), 1.2, False, False, {f"k{i}": float(i) for i in range(6)}],
}


MESSAGE_OF = {  # one value in an info dict: (the message with 6 - the message with none) / 6
    "one np.float64 in a reply's info": "6 np.float64 in info (each)",
    "one float in a reply's info": "6 float in info (each)",
}
EMPTY_INFO = [0, np.zeros(11), 1.2, False, False, {}]


def measure(before_path: str) -> dict[str, Any]:
    """µs of encode and decode (and the bytes), per value and per message, for both codecs."""
    import msgpack

    from remote.protocol import codec as after

    codecs = {"before": load_before(before_path), "after": after}
    out: dict[str, Any] = {"msgpack": msgpack.Packer.__module__, "python": sys.version.split()[0]}
    out.update({name: {} for name in codecs})
    for label, value in {**VALUES, **MESSAGES}.items():
        calls, sizes = [], {}
        for name, codec in codecs.items():
            encode, decode = frame_codec(codec) if label in MESSAGES else (codec.dumps, codec.loads)
            data = encode(value)
            back = decode(data)
            assert type(back) is type(value), (label, back)
            calls += [(encode, value), (decode, data)]
            sizes[name] = len(data)
            if label in MESSAGE_OF.values():
                calls += [(encode, EMPTY_INFO), (decode, encode(EMPTY_INFO))]
        times = best(calls)
        step = len(times) // len(codecs)
        for i, name in enumerate(codecs):
            row = times[i * step : (i + 1) * step]
            if step == 4:  # (6 values - none) / 6
                name_of = next(k for k, v in MESSAGE_OF.items() if v == label)
                out[name][name_of] = [(row[0] - row[2]) / 6, (row[1] - row[3]) / 6, 0]
            else:
                out[name][label] = [*row, sizes[name]]
    return out


def table(compiled: dict[str, Any], fallback: dict[str, Any]) -> str:
    head = (
        "| value or message | compiled before enc+dec | compiled after enc+dec | × | "
        "fallback before enc+dec | fallback after enc+dec | × |"
    )
    lines = [
        f"compiled: {compiled['msgpack']} (Python {compiled['python']}); "
        f"fallback: {fallback['msgpack']} (Python {fallback['python']}); µs, best of 9 interleaved rounds",
        "",
        head,
        "|---|---|---|---|---|---|---|",
    ]
    for label in compiled["after"]:
        cells = [label]
        for run in (compiled, fallback):
            b, a = run["before"][label], run["after"][label]
            cells += [
                f"{b[0]:.2f} + {b[1]:.2f}",
                f"{a[0]:.2f} + {a[1]:.2f}",
                f"{(b[0] + b[1]) / (a[0] + a[1]):.2f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    for run, name in ((compiled, "compiled"), (fallback, "fallback")):  # a step's codec work
        for when in ("before", "after"):
            rows = run[when]
            for env, request, reply in (
                ("CartPole", "CartPole request [step, 1]", "CartPole reply"),
                ("Hopper", "Hopper request [step, f32[3]]", "Hopper reply, numpy scalars"),
            ):
                total = sum(rows[request][:2]) + sum(rows[reply][:2])
                lines.append(
                    f"{name} {when}: codec work of one {env} step (request + reply, both ends) {total:.1f} µs"
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", default=DEFAULT_BEFORE, help="the codec.py to compare with")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.before)))
        return
    compiled = measure(args.before)
    env = {**os.environ, "MSGPACK_PUREPYTHON": "1"}
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(Path(__file__).resolve().parent.parent), env.get("PYTHONPATH")])
    )
    child = [sys.executable, __file__, "--child", "--before", args.before]
    fallback = json.loads(subprocess.run(child, env=env, check=True, capture_output=True, text=True).stdout)
    print(table(compiled, fallback))
    if args.json:
        Path(args.json).write_text(json.dumps({"compiled": compiled, "fallback": fallback}, indent=1))


if __name__ == "__main__":
    main()
