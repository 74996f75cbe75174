"""Benchmarks of remote, each measured against a reference from the same run.

``python -m remote.bench [--quick] [--json PATH] [--only SECTION ...]`` (or ``remote bench``)
runs every section in turn and prints one table: each row with its median, p99, reference,
ratio, target, and whether the target is met. A row that cannot be measured on this machine
(an image or an optional package missing) is printed with the reason, never left out.

Sections (one module each): ``transport`` (step latency per observation size, vector
throughput, cold start, close, warm pool), ``envs`` (real envs' overhead per step against the
image's own Python, CartPole on one CPU, numpy scalars in info, another Python, DACBench's
step and ``make`` with ``preload=``), ``clients`` (SB3 PPO learn time on CartPole and
Breakout, make_vec throughput on MuJoCo, Box2D and Atari envs, each against local envs).
``--placement same|split`` pins the client and the servers to one CPU or to two.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from .report import Options, Row, table

#: Sections in the order they run; each is ``remote.bench.<name>`` with ``rows(options)``.
SECTIONS = ("transport", "envs", "clients")


def run(options: Options, sections: tuple[str, ...] = SECTIONS) -> list[Row]:
    """Every row of the named sections."""
    rows: list[Row] = []
    for name in sections:
        rows += importlib.import_module(f"{__name__}.{name}").rows(options)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m remote.bench", description=__doc__.split("\n\n")[0])
    images = os.environ.get("REMOTE_BENCH_IMAGES", ".images")
    parser.add_argument(
        "--image",
        default=os.environ.get("REMOTE_BENCH_IMAGE", f"{images}/gymnasium.sif"),
        help="the gymnasium image of the transport rows",
    )
    parser.add_argument("--envs-image", default=f"{images}/envs.sif", help="the real envs (recipes/envs.def)")
    parser.add_argument("--dacbench-image", default=f"{images}/dacbench.sif", help="recipes/dacbench.def")
    parser.add_argument(
        "--other-python-image",
        default=f"{images}/python313.sif",
        help="an image whose Python is not the host's (recipes/python313.def)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=SECTIONS,
        metavar="SECTION",
        help=f"run only these sections ({', '.join(SECTIONS)})",
    )
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
    if args.placement in ("same", "split"):
        os.sched_setaffinity(0, {0})  # inherited by every process started from here
    options = Options(
        image=args.image,
        envs_image=args.envs_image,
        dacbench_image=args.dacbench_image,
        other_python_image=args.other_python_image,
        quick=args.quick,
        placement=args.placement,
        log=lambda m: print(m, file=sys.stderr),
    )
    rows = run(options, tuple(args.only or SECTIONS))
    print(table(rows))
    if args.json:
        machine: dict[str, Any] = {
            "cpus": os.cpu_count(),
            "placement": args.placement,
            "quick": args.quick,
            "images": [args.image, args.envs_image, args.dacbench_image, args.other_python_image],
            "load": os.getloadavg(),
        }
        Path(args.json).write_text(
            json.dumps({"machine": machine, "rows": [r.as_dict() for r in rows]}, indent=2)
        )
    return 0
