"""The ``remote`` command: images, experiments, containers and checks from the shell.

argparse, not click or typer: it is in the standard library, so the command adds no
dependency, and its subcommands, help and exit status 2 for usage errors are all we need.

Exit status: 0 success; 1 a check or an experiment failed; 2 a usage error (a bad
option, an unknown name); 3 a runtime failure (container, runtime, image or cache).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from . import __version__
from .errors import ExperimentError, RemoteError, UnknownName

OK, FAILED, USAGE, RUNTIME = 0, 1, 2, 3
#: States in which a container on the record may have a process.
UP_STATES = ("STARTING", "RUNNING", "PAUSED", "STOPPING")
#: ``remote gc`` removes the output logs of containers that ended this many days ago.
LOG_DAYS = 7

SUMMARY = "Run reinforcement-learning environments in rootless containers."

EXAMPLES = """\
Examples:
  $ remote pull https://example.org/envs.sif --sha256 <hex>
  $ remote build recipes/gymnasium.def gymnasium.sif
  $ remote check gymnasium.sif CartPole-v1
  $ remote run gymnasium.sif CartPole-v1 --agent my_agents:ppo --pythonpath ./agents \\
        --episodes 100 --seed 0 --log runs/ppo.jsonl
  $ remote ps
  $ remote logs run-1234 -f
  $ remote help <command>      (or: remote <command> --help)

Exit status: 0 ok, 1 a check or run failed, 2 usage error, 3 runtime failure
(container, runtime, image or cache).
"""


# -- output helpers ------------------------------------------------------------------------------


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def _table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    """Print ``rows`` as aligned columns (keys are column names)."""
    cells = [columns] + [["" if row.get(c) is None else str(row[c]) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    for line in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


def _size(count: float | None) -> str:
    if count is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def parse_age(text: str) -> float:
    """Seconds in ``"30d"``, ``"12h"``, ``"90m"``, ``"45s"`` (a bare number: days)."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not found:
        raise argparse.ArgumentTypeError(f"{text!r} is not an age like 30d, 12h, 90m or 45s")
    return float(found.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "": 86400}[found.group(2)]


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(text)


def _key_values(pairs: Sequence[str], what: str, json_values: bool) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{what} {pair!r}: expected KEY=VALUE")
        if json_values:
            try:
                result[key] = json.loads(value)
            except ValueError:
                result[key] = value  # a plain string
        else:
            result[key] = value
    return result


def _runner_options(args: argparse.Namespace) -> dict[str, Any]:
    """RemoteRunner options from --bind, --env, --pythonpath, --runtime, --timeout."""
    env = _key_values(args.env, "--env", json_values=False)
    binds = list(args.bind)
    if args.pythonpath:
        folders = [os.path.abspath(p) for p in args.pythonpath]
        binds += [f"{folder}:{folder}:ro" for folder in folders]
        env["PYTHONPATH"] = os.pathsep.join([*folders, *filter(None, [env.get("PYTHONPATH")])])
    options: dict[str, Any] = {"binds": binds, "env": env, "runtime": args.runtime}
    if args.timeout is not None:
        options["timeout"] = args.timeout
    return options


# -- commands ------------------------------------------------------------------------------------


def cmd_pull(args: argparse.Namespace) -> int:
    from .images.sources import resolve_image

    image = resolve_image(args.source, sha256=args.sha256)
    if args.json:
        _print_json(asdict(image))
    else:
        print(f"{image.path}\nsha256 {image.sha256}")
    return OK


def cmd_build(args: argparse.Namespace) -> int:
    import warnings

    from .progress import Progress

    out, recipe = args.output or args.out, args.recipe
    if args.base is not None and recipe is not None and out is None:
        out, recipe = recipe, None  # remote build --from BASE OUT.sif --pip ...
    if args.output and args.out and args.output != args.out:
        raise ValueError(f"two outputs: {args.out!r} and -o {args.output!r}")
    if (args.pip or args.apt or args.files) and args.base is None:
        raise ValueError("--pip, --apt and --files add to a base: give it with --from BASE")
    if args.base is not None:
        from .images.build import build_derived

        if recipe is not None:
            raise ValueError(f"build either {recipe!r} or --from {args.base!r}, not both")
        with Progress(f"building from {Path(args.base).name}"):
            image = build_derived(args.base, pip=args.pip, apt=args.apt, files=args.files, out=out)
    elif recipe is None:
        raise ValueError("say what to build: RECIPE.def, a Dockerfile, or --from BASE --pip PKG ...")
    elif Path(recipe).suffix != ".def" and Path(recipe).is_file():  # a Dockerfile
        from .images.dockerfile import build_dockerfile

        build_args = _key_values(args.build_arg, "--build-arg", json_values=False)
        with warnings.catch_warnings():  # what the conversion leaves out, said before the build
            warnings.simplefilter("always", UserWarning)
            warnings.showwarning = lambda message, *_, **__: print(
                f"remote: warning: {message}", file=sys.stderr
            )
            with Progress(f"building {Path(recipe).name}"):
                image = build_dockerfile(recipe, out=out, context=args.context, build_args=build_args)
    else:
        from .images.sources import resolve_image

        if not Path(recipe).is_file():
            raise ValueError(f"{recipe!r} is not a recipe file (RECIPE.def) or a Dockerfile")
        build_args = _key_values(args.build_arg, "--build-arg", json_values=False)
        with Progress(f"building {Path(recipe).name}"):
            image = resolve_image(recipe, build_args=build_args)
        if out:
            shutil.copyfile(image.path, out)
    path = os.path.abspath(out) if out else image.path
    if args.json:
        _print_json({"path": path, "sha256": image.sha256, "cached": image.path})
    else:
        print(f"{path}\nsha256 {image.sha256}")
    return OK


def cmd_images_ls(args: argparse.Namespace) -> int:
    from . import images

    found = images.list()
    if args.json:
        _print_json([asdict(e) for e in found])
        return OK
    now = time.time()
    rows = [
        {
            "NAME": e.name,
            "SHA256": e.sha256[:12],
            "SIZE": _size(e.size),
            "LAST USED": _duration(now - e.last_used) + " ago",
            "SOURCE": e.source,
        }
        for e in found
    ]
    _table(rows, ["NAME", "SHA256", "SIZE", "LAST USED", "SOURCE"])
    return OK


def cmd_images_rm(args: argparse.Namespace) -> int:
    from . import images

    for entry in images.remove(args.ref):
        print(f"removed {entry.name} {entry.sha256[:12]} ({entry.source})")
    return OK


def cmd_images_prune(args: argparse.Namespace) -> int:
    from . import images
    from .manager.allocator import parse_size

    if args.older_than is None and args.max_size is None:
        raise ValueError("say what to prune: --older-than AGE and/or --max-size SIZE")
    max_size = parse_size(args.max_size) if args.max_size is not None else None
    removed = images.prune(older_than=args.older_than, max_size=max_size)
    for entry in removed:
        print(f"removed {entry.name} {entry.sha256[:12]} ({entry.source})")
    print(f"{len(removed)} image(s) removed, {_size(sum(e.size for e in removed))}")
    return OK


def cmd_codecs(args: argparse.Namespace) -> int:
    from .images import codecs

    found = codecs.pull(args.python or codecs.PYTHONS) if args.action == "pull" else codecs.status()
    if args.json:
        _print_json([asdict(c) for c in found])
    else:
        rows = [
            {
                "PYTHON": c.python,
                "MSGPACK": f"{codecs.VERSION} compiled" if c.module else "pure-python fallback",
                "MODULE": c.module or c.error or "not pulled: remote codecs pull",
            }
            for c in found
        ]
        _table(rows, ["PYTHON", "MSGPACK", "MODULE"])
    return OK if all(c.module for c in found) or args.action != "pull" else FAILED


def _python_version(text: str) -> str:
    if not re.fullmatch(r"3\.\d+", text):
        raise argparse.ArgumentTypeError(f"a CPython version as 3.13, not {text!r}")
    return text


def cmd_run(args: argparse.Namespace) -> int:
    from .manager import ContainerManager
    from .progress import Progress

    log = Path(os.path.abspath(args.log))
    log.parent.mkdir(parents=True, exist_ok=True)
    options = _runner_options(args)
    options["binds"].append(f"{log.parent}:{log.parent}:rw")  # the container writes the log
    if args.video_dir:
        video_dir = Path(os.path.abspath(args.video_dir))
        video_dir.mkdir(parents=True, exist_ok=True)
        options["binds"].append(f"{video_dir}:{video_dir}:rw")
    manager = ContainerManager(prefix=args.name, runtime=options.pop("runtime"), sample_interval=1.0)
    try:
        name = manager.create(os.getpid(), args.image, cpus=args.cpus, memory=args.memory, **options)
        manager.start(name)
        with Progress(f"run {args.env_id}", total=args.episodes, unit="episodes") as bar:
            summary = manager.runner(name).run(
                args.agent,
                args.episodes,
                env_id=args.env_id,
                env_kwargs=_key_values(args.env_arg, "--env-arg", json_values=True),
                agent_kwargs=_key_values(args.agent_arg, "--agent-arg", json_values=True),
                seed=args.seed,
                log=log,
                progress=lambda done, _: bar.update(done),
                resume=args.resume,
                checkpoint_every=args.checkpoint_every,
                checkpoint_every_sec=args.checkpoint_every_sec or None,
                video_every=args.video_every,
                video_dir=args.video_dir,
            )
    except ExperimentError as exc:
        print(f"remote: the experiment failed: {exc}", file=sys.stderr)
        return FAILED
    finally:
        manager.close()
    if args.json:
        _print_json(summary)
    elif not summary["episodes"]:
        print(f"no episode finished (stopped or cancelled)\nlog: {summary['log']}")
    else:
        print(
            f"{summary['episodes']} episodes of {summary['env_id']} in {summary['wall_time']:.1f} s: "
            f"mean return {summary['mean_return']:.2f} (min {summary['min_return']:.2f}, "
            f"max {summary['max_return']:.2f}), {summary['steps']} steps\nlog: {summary['log']}"
        )
    return OK


def cmd_ps(args: argparse.Namespace) -> int:
    containers, sessions = _ps_rows(args.all)
    if args.json:
        _print_json({"containers": containers, "sessions": sessions})
        return OK
    rows = [
        {
            "NAME": c["name"],
            "STATE": c["state"],
            "PID": c["pid"],
            "UPTIME": _duration(c["uptime"]),
            "CPU %": "-" if c["cpu_percent"] is None else f"{c['cpu_percent']:.1f}",
            "RSS": _size(c["rss"]),
            "RESTARTS": c["restarts"],
            "SESSIONS": c["sessions"],
            "OWNER": c["owner_pid"],
            "IMAGE": c["image"],
        }
        for c in containers
    ]
    _table(rows, ["NAME", "STATE", "PID", "UPTIME", "CPU %", "RSS", "RESTARTS", "SESSIONS", "OWNER", "IMAGE"])
    if sessions:
        print()
        now = time.time()
        session_rows = [
            {
                "SESSION": s["id"],
                "CONTAINER": s["container"],
                "ENV": s["env_id"],
                "SEED": s["seed"],
                "STEPS": s["steps"],
                "EPISODES": s["episodes"],
                "AGE": _duration(now - s["started"]),
                "STATE": s["status"] or ("open" if s["ended"] is None else "ended"),
            }
            for s in sessions
        ]
        _table(session_rows, ["SESSION", "CONTAINER", "ENV", "SEED", "STEPS", "EPISODES", "AGE", "STATE"])
    return OK


def _ps_rows(everything: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Containers (with live CPU % and RSS where they run, and ``sessions``: how many are
    open) and sessions from the record."""
    import psutil

    from .manager.processes import process_tree
    from .manager.record import Record
    from .runtime.processes import Owner

    record = Record()
    containers = record.containers_with_usage(everything)
    sessions = record.sessions_of([c["id"] for c in containers], open_only=not everything)
    record.close()
    trees: dict[int, list[psutil.Process]] = {}
    for c in containers:
        recorded = c["pid"] is not None and c["pid_started"] is not None
        if recorded and c["state"] in UP_STATES and Owner(c["pid"], c["pid_started"]).alive():
            trees[c["id"]] = process_tree(c["pid"])
            for process in trees[c["id"]]:
                try:
                    process.cpu_percent(None)  # the first call starts the measurement
                except psutil.Error:
                    continue
    if trees:
        time.sleep(0.3)
    now = time.time()
    for c in containers:
        c["sessions"] = sum(1 for s in sessions if s["container_id"] == c["id"] and s["ended"] is None)
        c["cpu_percent"], c["rss"], c["uptime"] = c.pop("sampled_cpu"), c.pop("sampled_rss"), None
        if c["id"] in trees:
            cpu, rss = 0.0, 0
            for process in trees[c["id"]]:
                try:
                    cpu += process.cpu_percent(None)
                    rss += process.memory_info().rss
                except psutil.Error:
                    continue
            c["cpu_percent"], c["rss"], c["uptime"] = cpu, rss, now - c["pid_started"]
        elif c["state"] in UP_STATES and not Owner(c["owner_pid"], c["owner_started"]).alive():
            c["state"] = "LOST"  # its host process died; `remote gc` notes it on the record
    return containers, sessions


def cmd_checkpoint(args: argparse.Namespace) -> int:
    from .manager import checkpoint_recorded
    from .manager.record import Record
    from .protocol.loop import checkpoint_folder, latest_checkpoint

    record = Record()
    logs = [
        session["config"].get("log")
        for session in record.sessions_of(
            [row["id"] for row in record.find_running(args.target)], open_only=True
        )
        if session.get("config")
    ]
    folders = [checkpoint_folder(log) for log in logs if log]
    before = {folder: _mtime(latest_checkpoint(folder)) for folder in folders}
    row = checkpoint_recorded(record, args.target)
    deadline = time.monotonic() + args.timeout
    waiting = list(folders)
    while waiting and time.monotonic() < deadline:
        for folder in list(waiting):
            newest = latest_checkpoint(folder)
            if newest is not None and _mtime(newest) != before[folder]:
                print(f"{row['name']}: {folder.name.removesuffix('.ckpt')} checkpointed at {newest.name}")
                waiting.remove(folder)
        time.sleep(0.05)
    if not folders:
        print(f"{row['name']}: asked its runs to checkpoint at the end of their episode")
    if waiting:
        print(
            f"remote: no new checkpoint within {args.timeout:g} s in {', '.join(map(str, waiting))}",
            file=sys.stderr,
        )
        return FAILED
    return OK


def _mtime(path: Path | None) -> float | None:
    return path.stat().st_mtime if path is not None else None


def cmd_stop(args: argparse.Namespace) -> int:
    from .manager import stop_recorded
    from .manager.record import Record

    name = stop_recorded(Record(), args.target, kill=args.command == "kill", timeout=args.timeout)
    print(f"{'killed' if args.command == 'kill' else 'stopped'} {name}")
    return OK


def cmd_logs(args: argparse.Namespace) -> int:
    from .errors import UnknownContainer
    from .manager.record import Record
    from .runtime.output import follow, rotated, tail
    from .runtime.processes import Owner

    record = Record()
    row = record.find_container(args.target)
    log = row["log"]
    if log is None or not (os.path.exists(log) or rotated(log).exists()):
        where = f"its log {log} is gone" if log else "it has no log on the record"
        raise UnknownContainer(
            f"container {row['name']} (id {row['id']}): {where} (it ran before remote kept logs, or "
            "`remote gc` removed it); `remote sessions` still shows what it ran"
        )

    def running() -> bool:
        now = record.container(row["id"])
        owner = Owner(now["owner_pid"], now["owner_started"])
        return now["state"] in UP_STATES and not now["lost"] and owner.alive()

    if not args.follow:
        sys.stdout.write(tail(log, args.tail))
        return OK
    for text in follow(log, running, lines=args.tail):
        sys.stdout.write(text)
        sys.stdout.flush()
    return OK


def cmd_sessions(args: argparse.Namespace) -> int:
    from .manager.record import Record
    from .runtime.processes import Owner

    record = Record()
    if args.name is not None:
        args.name = record.find_container(args.name)["name"]  # UnknownContainer if none
    sessions = record.list_sessions(args.name, everything=args.all)
    owners: dict[tuple[int, float], bool] = {}
    for s in sessions:
        owner = (s.pop("owner_pid"), s.pop("owner_started"))
        if s["status"] == "running":
            if owner not in owners:
                owners[owner] = Owner(*owner).alive()
            s["status"] = "running" if owners[owner] else "lost"  # until a sweep (`remote gc`) says so
    if args.json:
        _print_json(sessions)
        return OK

    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    rows = [
        {
            "ID": s["id"],
            "CONTAINER": s["container"],
            "ENV": s["env_id"],
            "AGENT": s["agent"] or "-",
            "STATUS": s["status"],
            "EPISODES": s["episodes"],
            "STEPS": s["steps"],
            "FINAL": number(s["final_return"]),
            "MEAN": number(s["mean_return"]),
            "CHECKPOINT": "-" if s["checkpoint"] is None else s["checkpoint"],
            "WALL": _duration(s["wall_time"] if s["ended"] is not None else time.time() - s["started"]),
        }
        for s in sessions
    ]
    columns = ["ID", "CONTAINER", "ENV", "AGENT", "STATUS", "EPISODES", "STEPS", "FINAL", "MEAN"]
    _table(rows, [*columns, "CHECKPOINT", "WALL"])
    return OK


def cmd_gc(args: argparse.Namespace) -> int:
    from . import images
    from .images import payload
    from .manager import ContainerManager
    from .manager.orphans import remove_logs, remove_stale_run_dirs

    manager = ContainerManager(sample_interval=0)  # its start-up sweep does orphans and run folders
    manager.close()
    folders = [*manager.removed_run_dirs, *remove_stale_run_dirs()]
    logs = remove_logs(manager.record, None if args.logs else LOG_DAYS * 86400)
    pruned = images.prune(older_than=args.older_than) if args.older_than else []
    payloads = payload.prune(older_than=LOG_DAYS * 86400)
    report = {
        "orphans": manager.swept,
        "run_dirs": [str(f) for f in folders],
        "logs": logs,
        "images": [asdict(e) for e in pruned],
        "payloads": [str(f) for f in payloads],
    }
    if args.json:
        _print_json(report)
    else:
        print(f"orphaned containers: {len(manager.swept)} {' '.join(manager.swept)}".rstrip())
        print(f"stale run folders removed: {len(folders)} {' '.join(map(str, folders))}".rstrip())
        ended = "every ended container" if args.logs else f"containers ended over {LOG_DAYS} days ago"
        print(f"output logs of {ended} removed: {len(logs)}")
        print(f"server code of older versions, unused for {LOG_DAYS} days, removed: {len(payloads)}")
        print(
            f"images unused for {args.older_than / 86400:g} days removed: {len(pruned)}, "
            f"{_size(sum(e.size for e in pruned))}"
        )
    return OK


def cmd_check(args: argparse.Namespace) -> int:
    from .check import check_image

    results = check_image(
        args.image,
        args.env_id,
        _key_values(args.env_arg, "--env-arg", json_values=True),
        **_runner_options(args),
    )
    passed = all(r.passed for r in results)
    server = results.server
    if args.json:
        _print_json(
            {
                "image": args.image,
                "env_id": args.env_id,
                "passed": passed,
                "results": [asdict(r) for r in results],
                "server": server,
            }
        )
    else:
        print(f"server: python {server.get('python')}, codec {server.get('codec')}")
        for result in results:
            print(result)
        failed = [r.name for r in results if not r.passed]
        print(
            f"{args.env_id}: all {len(results)} contracts hold"
            if passed
            else f"{args.env_id}: {len(failed)} of {len(results)} contracts broken: {', '.join(failed)}"
        )
    return OK if passed else FAILED


def cmd_inspect(args: argparse.Namespace) -> int:
    from .images.inspect import inspect_image

    report = inspect_image(args.image, imports=args.imports, sha256=args.sha256, **_runner_options(args))
    if args.json:
        _print_json(report.to_dict())
        return OK
    for line in _report_lines(report, args.ids, shutil.get_terminal_size((100, 24)).columns):
        print(line)
    return OK


def _report_lines(report: Any, all_ids: bool, width: int) -> list[str]:
    """``remote inspect``'s text: a header, then the ids by package (3 lines each unless ``all_ids``)."""
    import textwrap

    server = "import remote.server works" if report.server_error is None else f"fails: {report.server_error}"
    header = [
        ("image", report.image),
        ("sha256", report.sha256 or "-"),
        ("size", _size(report.size)),
        ("python", report.python),
        ("numpy", report.numpy or f"missing ({report.errors.get('numpy', '')})"),
        ("gymnasium", report.gymnasium or f"missing ({report.errors.get('gymnasium', '')})"),
        ("codec", f"msgpack {report.msgpack or '-'} (the {report.msgpack_from}'s), {report.codec}"),
        ("server", server),
    ]
    # Apptainer's own org.label-schema.* labels (arch, deffile, ...) only in --json, but the build date
    date = report.labels.get("org.label-schema.build-date")
    labels = [f"built: {date}"] if date else []
    labels += [f"{k}: {v}" for k, v in report.labels.items() if not k.startswith("org.label-schema.")]
    hidden = sum(1 for k in report.labels if k.startswith("org.label-schema.")) - bool(date)
    labels += [f"(and {hidden} org.label-schema.* labels: --json)"] if hidden else []
    header += [("labels" if i == 0 else "", label) for i, label in enumerate(labels)]
    lines = [f"{name:<10} {value}" for name, value in header]
    lines = [line if len(line) <= max(width, 60) else line[: max(width, 60) - 4] + " ..." for line in lines]
    if report.codec == "pure-python":  # what to do about it, under the codec line
        from .images.codecs import fallback_advice

        indent, at = " " * 11, [name for name, _ in header].index("codec") + 1
        lines[at:at] = textwrap.wrap(fallback_advice(report.python), max(width, 60), initial_indent=indent,
                                   subsequent_indent=indent)  # fmt: skip
    groups = [g for g in report.packages if g.ids or g.error]
    lines += ["", f"env ids: {len(report.ids)}, from {sum(1 for g in groups if g.ids)} package(s)"]
    for group in groups:
        title = f"{group.package} {group.version or ''}".rstrip()
        if group.error:
            lines.append(f"{title}: import failed: {group.error}")
            continue
        how = f", import {group.seconds:.2f} s" if group.imported else ""
        lines.append(f"{title} ({len(group.ids)} ids{how})")
        wrapped = textwrap.wrap("  ".join(group.ids), max(width - 4, 40), break_on_hyphens=False)
        if not all_ids and len(wrapped) > 3:
            shown = len(" ".join(wrapped[:3]).split())
            wrapped = [*wrapped[:3], f"... and {len(group.ids) - shown} more (--ids lists all)"]
        lines += [f"    {line}" for line in wrapped]
    if report.absent:
        lines += textwrap.wrap(f"not installed: {', '.join(report.absent)}", width, subsequent_indent="    ")
    return lines


def cmd_shell(args: argparse.Namespace) -> int:
    import signal
    import subprocess

    from .images.inspect import shell_command

    options = _runner_options(args)
    argv = shell_command(
        args.image, args.cmd, binds=options["binds"], env=options["env"], runtime=options["runtime"]
    )
    previous = signal.signal(signal.SIGINT, lambda signum, frame: None)  # Ctrl-C is the shell's
    try:
        code = subprocess.call(argv)
    finally:
        signal.signal(signal.SIGINT, previous)
    return code if code >= 0 else 128 - code


def cmd_bench(argv: list[str]) -> int:
    """``remote bench ARGS`` is ``python -m remote.bench ARGS``: every argument goes to it."""
    try:
        bench = importlib.import_module(f"{__package__}.bench")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}.bench":
            raise
        print(
            "remote: error: the benchmarks (remote.bench) are not in this installation of remote; "
            "install a version that has them",
            file=sys.stderr,
        )
        return RUNTIME
    return int(bench.main(argv) or 0)


# -- the parser ----------------------------------------------------------------------------------


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples and the command list as written."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30)


def _add_container_options(
    parser: argparse.ArgumentParser,
    runtimes: str = "apptainer (default), process, podman or docker",
    env_options: bool = True,
) -> None:
    """--runtime, --bind, --env, --pythonpath: what the container sees (as for the server);
    with ``env_options`` also --env-arg and --timeout, for the commands that make an env."""
    group = parser.add_argument_group("container options")
    group.add_argument("--runtime", help=runtimes)
    group.add_argument(
        "--bind",
        action="append",
        default=[],
        metavar="SRC[:DEST[:ro|rw]]",
        help="a host folder the container sees (repeatable)",
    )
    group.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a variable set in the container (repeatable)",
    )
    group.add_argument(
        "--pythonpath",
        action="append",
        default=[],
        metavar="DIR",
        help="a host folder bound read-only and put on PYTHONPATH (repeatable)",
    )
    if not env_options:
        return
    group.add_argument(
        "--env-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a keyword argument for the env (JSON value, or a string; repeatable)",
    )
    group.add_argument("--timeout", type=float, help="seconds any call may take (default 300)")


def _command(
    subparsers: Any, name: str, summary: str, handler: Callable[[argparse.Namespace], int], examples: str
) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name,
        prog=f"remote {name}",
        help=summary,
        description=summary,
        epilog=f"Examples:\n{examples}",
        formatter_class=_Formatter,
    )
    parser.set_defaults(handler=handler)
    subparsers.listing.append((name, summary))
    return parser


def _listing(commands: list[tuple[str, str]]) -> str:
    """The "available commands" section: one command and its summary a line."""
    width = max(len(name) for name, _ in commands) + 2
    return "available commands:\n" + "".join(f"  {name:<{width}}{summary}\n" for name, summary in commands)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="remote",
        usage="remote [-h] [--version] <command> [options...]",
        description=SUMMARY,
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"remote {__version__}")
    # listed in the epilog by _listing (argparse would add a header line of its own)
    commands = parser.add_subparsers(dest="command", metavar="<command>", help=argparse.SUPPRESS)
    commands.listing = []

    p = _command(
        commands,
        "pull",
        "Fetch an image into the cache",
        cmd_pull,
        "  $ remote pull https://example.org/envs.sif --sha256 <hex>\n"
        "  $ remote pull docker://python:3.11-slim",
    )
    p.add_argument("source", metavar="SOURCE", help="URL or reference of the image")
    p.add_argument("--sha256", help="the image's expected sha256 (required for https unless published)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = _command(
        commands,
        "build",
        "Build an image: a recipe, a Dockerfile, or a base plus packages",
        cmd_build,
        "  $ remote build recipes/gymnasium.def\n"
        "  $ remote build recipes/minimal.def minimal.sif --build-arg BASE=gymnasium.sif\n"
        "  $ remote build --from gymnasium.sif --pip tabulate 'numpy<2' --apt libgl1 -o mine.sif\n"
        "  $ remote build --from docker://python:3.11-slim --pip gymnasium --files envs:/opt/envs -o e.sif\n"
        "  $ remote build Dockerfile -o mine.sif       (FROM a .sif, a .def or a registry image)\n\n"
        "Rootless: as root a plain apptainer build, otherwise --fakeroot. pip in the build uses this\n"
        "machine's pip settings (index, CA bundle, constraints), and this machine's pip when the base\n"
        "has none; --apt uses this machine's Debian mirror. The same inputs are built once (cached).",
    )
    p.add_argument("recipe", metavar="RECIPE.def|Dockerfile", nargs="?")
    p.add_argument("out", metavar="OUT", nargs="?", help="also copy the built image here")
    p.add_argument("-o", "--output", metavar="OUT.sif", help="also copy the built image here")
    p.add_argument(
        "--from", dest="base", metavar="BASE", help="a .sif, .def, or docker://, oras://, library:// image"
    )
    for flag, what in (("--pip", "pip requirements"), ("--apt", "Debian/Ubuntu packages")):
        p.add_argument(flag, nargs="+", action="extend", default=[], metavar="PKG", help=f"{what} to add")
    p.add_argument(
        "--files", nargs="+", action="extend", default=[], metavar="SRC:DEST", help="files to copy in"
    )
    p.add_argument("--context", metavar="DIR", help="a Dockerfile's build context (default: its folder)")
    p.add_argument(
        "--build-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a {{ KEY }} of the recipe, or an ARG of the Dockerfile (repeatable)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = _command(
        commands,
        "images",
        "List, remove or prune the cached images",
        lambda a: USAGE,
        "  $ remote images ls\n  $ remote images rm 3f2a9c01\n"
        "  $ remote images prune --older-than 30d --max-size 20G",
    )
    actions = p.add_subparsers(dest="action", title="actions", metavar="<action>", required=True)
    q = actions.add_parser("ls", help="list cached images, most recently used first")
    q.add_argument("--json", action="store_true", help="print the list as JSON")
    q.set_defaults(handler=cmd_images_ls)
    q = actions.add_parser("rm", help="remove images by source, name or sha256 prefix (8+ digits)")
    q.add_argument("ref", metavar="REF")
    q.set_defaults(handler=cmd_images_rm)
    q = actions.add_parser("prune", help="remove images unused for a while, or beyond a total size")
    q.add_argument("--older-than", type=parse_age, metavar="AGE", help="e.g. 30d, 12h")
    q.add_argument("--max-size", metavar="SIZE", help="keep at most this much, e.g. 20G")
    q.set_defaults(handler=cmd_images_prune)

    p = _command(
        commands,
        "codecs",
        "List or fetch the compiled msgpack brought to images with another Python",
        cmd_codecs,
        "  $ remote codecs ls\n  $ remote codecs pull\n  $ remote codecs pull --python 3.13\n\n"
        "An image whose Python is not the host's cannot load the host's compiled msgpack and runs\n"
        "its pure-Python fallback (steps ~1.2-1.3x as long). `pull` downloads msgpack's wheels for\n"
        "Python 3.10-3.14 (pip download, with this machine's pip settings) into the cache, once; every\n"
        "container started afterwards gets them. Nothing is downloaded when a container starts: pull\n"
        "on a node with network (a cluster's login node) before starting jobs on nodes without.",
    )
    actions = p.add_subparsers(dest="action", title="actions", metavar="<action>", required=True)
    q = actions.add_parser("ls", help="what each Python gets: the compiled msgpack, or the fallback")
    q.add_argument("--json", action="store_true", help="print the list as JSON")
    q = actions.add_parser(
        "pull", help="download the compiled msgpack for each Python (once, into the cache)"
    )
    q.add_argument(
        "--python", nargs="+", type=_python_version, metavar="X.Y", help="only these Pythons (default: all)"
    )
    q.add_argument("--json", action="store_true", help="print the result as JSON")

    p = _command(
        commands,
        "run",
        "Run an experiment: an agent on an env, in the container",
        cmd_run,
        "  $ remote run gymnasium.sif CartPole-v1 --agent my_agents:ppo \\\n"
        "        --pythonpath ./agents"
        " --episodes 100 --seed 0 --log runs/ppo.jsonl\n\n"
        "The agent is a factory called as factory(env, **agent_args) that returns an object\n"
        "with act(obs) (and optionally observe(obs, action, reward, next_obs, terminated,\n"
        "truncated, info)) or a plain policy(obs). Each episode is a line of the JSON-lines log,\n"
        "written by the container as it ends: a killed run keeps every finished episode.\n"
        "The run checkpoints beside the log (LOG.ckpt; on SIGTERM too, and on `remote\n"
        "checkpoint NAME`); --resume continues it from there, as if it had not stopped.",
    )
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("env_id", metavar="ENV_ID")
    p.add_argument("--agent", required=True, metavar="MODULE:CALLABLE", help="the agent factory")
    p.add_argument("--episodes", required=True, type=_positive, metavar="N")
    p.add_argument(
        "--seed", type=int, default=0, metavar="S", help="episode i is reset with seed S+i (default 0)"
    )
    p.add_argument("--log", required=True, metavar="PATH", help="the JSON-lines log (checkpoints beside it)")
    p.add_argument(
        "--resume", action="store_true", help="continue the run of --log from its newest checkpoint"
    )
    p.add_argument("--checkpoint-every", type=_positive, metavar="N", help="checkpoint every N episodes")
    p.add_argument(
        "--checkpoint-every-sec",
        type=float,
        default=60.0,
        metavar="S",
        help="checkpoint at the first episode end S seconds after the last one (default 60; 0: off)",
    )
    p.add_argument("--video-every", type=_positive, metavar="N", help="film episodes 0, N, 2N... as MP4")
    p.add_argument("--video-dir", metavar="DIR", help="where the videos go (default LOG.videos)")
    p.add_argument(
        "--agent-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a keyword argument for the agent factory (JSON value, or a string)",
    )
    p.add_argument("--name", default="run", help="container name prefix on the record (default run)")
    p.add_argument("--cpus", type=float, default=0, help="CPUs to reserve and limit to (default: no limit)")
    p.add_argument("--memory", default="0", help="memory limit, e.g. 2G (default: none)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    _add_container_options(p)

    p = _command(
        commands,
        "ps",
        "List containers and sessions, with CPU and memory",
        cmd_ps,
        "  $ remote ps\n  $ remote ps --all --json",
    )
    p.add_argument("-a", "--all", action="store_true", help="also stopped, failed and lost containers")
    p.add_argument("--json", action="store_true", help="print containers and sessions as JSON")

    p = _command(
        commands,
        "checkpoint",
        "Checkpoint the runs in a container at the end of their episode",
        cmd_checkpoint,
        "  $ remote checkpoint run-4242\n\n"
        "Sends SIGUSR1 to the container's server, which checkpoints every run in it (remote run,\n"
        "RemoteRunner.run with an agent in the container) when its episode ends; waits for the\n"
        "new checkpoints of the runs on the record. SIGUSR1 to a host process in run() does the\n"
        "same for its run (an agent on the host too).",
    )
    p.add_argument("target", metavar="NAME|PID", help="a name or container pid from `remote ps`")
    p.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds to wait for the checkpoints (default 60)",
    )

    p = _command(
        commands,
        "logs",
        "Show what a container printed (its output log)",
        cmd_logs,
        "  $ remote logs ppo-0\n  $ remote logs ppo-0 --tail 50\n  $ remote logs 12345 -f\n\n"
        "A managed container's stdout and stderr, kept beside the record (logs/NAME-ID.log, at most\n"
        "$REMOTE_OUTPUT_MAX_BYTES, 10 MiB, with its rotated .1) after it exits. -f follows it, across\n"
        "rotation, until the container is no longer running.",
    )
    p.add_argument("target", metavar="NAME|PID", help="a container name (the latest of that name) or pid")
    p.add_argument("-f", "--follow", action="store_true", help="print new output as it comes")
    p.add_argument("--tail", type=_count, metavar="N", help="only the last N lines (default: all)")

    p = _command(
        commands,
        "sessions",
        "List sessions: envs and runs, their agent, status and returns",
        cmd_sessions,
        "  $ remote sessions\n  $ remote sessions ppo-0 --all\n  $ remote sessions --json\n\n"
        "By default the open sessions of the containers `remote ps` shows, and the last 20 ended.",
    )
    p.add_argument("name", metavar="NAME", nargs="?", help="only the sessions of containers of this name")
    p.add_argument("-a", "--all", action="store_true", help="every session on the record")
    p.add_argument("--json", action="store_true", help="print the sessions as JSON")

    for name, summary in (
        ("stop", "Stop a container gracefully (SIGTERM, then SIGKILL)"),
        ("kill", "Kill a container at once (SIGKILL)"),
    ):
        p = _command(commands, name, summary, cmd_stop, f"  $ remote {name} ppo-0\n  $ remote {name} 12345")
        p.add_argument("target", metavar="NAME|PID", help="a name or container pid from `remote ps`")
        p.add_argument(
            "--timeout",
            type=float,
            default=10.0,
            help=argparse.SUPPRESS if name == "kill" else "seconds to wait before killing (default 10)",
        )

    p = _command(
        commands,
        "gc",
        "Clean up orphans, stale run folders, old logs, images and server code",
        cmd_gc,
        "  $ remote gc\n  $ remote gc --older-than 7d --logs",
    )
    p.add_argument(
        "--older-than",
        type=parse_age,
        default=parse_age("30d"),
        metavar="AGE",
        help="remove cached images unused for this long (default 30d; 0 keeps all)",
    )
    p.add_argument(
        "--logs",
        action="store_true",
        help=f"remove the output logs of every ended container (default: ended over {LOG_DAYS} days ago)",
    )
    p.add_argument("--json", action="store_true", help="print what was removed as JSON")

    p = _command(
        commands,
        "check",
        "Check an env in an image against gymnasium's contracts",
        cmd_check,
        "  $ remote check gymnasium.sif CartPole-v1\n"
        "  $ remote check my.sif my_envs:GridEnv --pythonpath ./src --env-arg size=5 --json",
    )
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("env_id", metavar="ENV_ID", help="a registered id or 'module:Class'")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    _add_container_options(p)

    p = _command(
        commands,
        "inspect",
        "Show what an image has: versions, codec, env ids",
        cmd_inspect,
        "  $ remote inspect envs.sif\n"
        "  $ remote inspect envs.sif --ids --import my_envs --pythonpath ./src\n"
        "  $ remote inspect envs.sif --json\n\n"
        "One container run: Python, numpy, gymnasium and msgpack versions, the codec the server\n"
        "would use (compiled or pure-python), and the env ids the image registers, grouped by\n"
        "package: gymnasium's registry, then what importing each installed well-known package\n"
        "(ale_py, minigrid, dacbench, ...) and each --import adds. Each package shows its first\n"
        "3 lines of ids; --ids shows them all, --json everything.",
    )
    p.add_argument("image", metavar="IMAGE", help="a .sif, sandbox, URL, docker:// reference or recipe")
    p.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="also import this module and list the ids it registers (repeatable)",
    )
    p.add_argument("--ids", action="store_true", help="list every id (default: 3 lines per package)")
    p.add_argument("--sha256", help="the image's expected sha256")
    p.add_argument("--json", action="store_true", help="print the whole report as JSON")
    _add_container_options(p, "apptainer (default), singularity, process, podman or docker", False)
    p.add_argument("--timeout", type=float, help="seconds the probe may take (default 300)")

    p = _command(
        commands,
        "shell",
        "A shell in an image, as the server sees it",
        cmd_shell,
        "  $ remote shell envs.sif\n"
        "  $ remote shell envs.sif --pythonpath ./src -- python3 -c 'import my_envs'\n\n"
        "apptainer shell (or exec of CMD, after --) with the server's binds, --cleanenv and\n"
        "variables, the payload bound read-only and on PYTHONPATH (import remote.server works;\n"
        "its dependencies come after your --pythonpath folders, before the image's own copies).\n"
        "The exit status is the shell's or CMD's.",
    )
    p.usage = "remote shell [options] IMAGE [-- CMD [ARGS...]]"
    p.add_argument("image", metavar="IMAGE", help="a .sif, sandbox, URL, docker:// reference or recipe")
    cmd = p.add_argument("cmd", nargs="+", default=[], metavar="CMD", help="run this instead of a shell")
    cmd.required = False  # '+', not '*': argparse then keeps 'IMAGE --env K=V -- CMD' apart
    _add_container_options(p, "apptainer (default) or singularity", False)
    p.set_defaults(timeout=None)

    p = _command(
        commands,
        "bench",
        "Run the benchmarks (remote.bench)",
        lambda a: cmd_bench(a.args),
        "  $ remote bench --quick\n  $ remote bench --help      (remote.bench's options)",
    )
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for remote.bench")

    p = _command(commands, "help", "Show the help of a command", lambda a: USAGE, "  $ remote help run")
    p.add_argument("topic", metavar="<command>", nargs="?")
    parser.epilog = f"{_listing(commands.listing)}\n{EXAMPLES}"
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``remote`` command; returns its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # all its arguments are remote.bench's, --help too
        return cmd_bench(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None or args.command == "help":
        topic = getattr(args, "topic", None)
        if topic:
            parser.parse_args([topic, "--help"])  # prints the command's help and exits 0
        parser.print_help()
        return OK if args.command == "help" else USAGE
    try:
        return args.handler(args)
    except UnknownName as exc:  # a name on the command line that names nothing
        print(f"remote: error: {exc}", file=sys.stderr)
        return USAGE
    except RemoteError as exc:
        print(f"remote: error: {exc}", file=sys.stderr)
        return RUNTIME
    except (ValueError, KeyError) as exc:
        print(f"remote: error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        print("remote: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
