"""Process inspection for the clean-up tests (from /proc, no extra dependency)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def children(pid: int) -> list[int]:
    """All live descendants of ``pid``."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == current]
        found += kids
        frontier += kids
    return found


def process_state(pid: int) -> str:
    """The state letter of ``pid`` in /proc (R, S, T, Z, ...), or "" if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie, or a process gone while we look, does not)."""
    return process_state(pid) not in ("", "Z")


def wait_gone(pids: list[int], seconds: float = 5.0) -> list[int]:
    """Wait until none of ``pids`` is alive; return those still alive."""
    deadline = time.monotonic() + seconds
    while True:
        left = [p for p in pids if alive(p)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def apptainer_instances() -> str:
    out = subprocess.run(["apptainer", "instance", "list"], capture_output=True, text=True)
    return "\n".join(out.stdout.splitlines()[1:])


def lease_at_once(path: str, worker: int, barrier, ports, done) -> None:
    """A worker process for the port lease test (here, not in the test module, so that a
    forkserver child imports nothing heavy): lease a port when all are ready, report it,
    and hold it until ``done``."""
    from remote.manager.ports import instance_name, lease_ports
    from remote.manager.record import Record

    record = Record(path)
    barrier.wait()
    (lease,) = lease_ports(record, instance_name("w", worker))
    ports.put(lease.port)
    done.wait(60)


def server_pid(runner) -> int:
    """Host pid of the python server process (a container's PID 1 or init is not it; under
    Podman the server is no descendant of the runner's process, so search them all)."""
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ours = b"remote.server" in b" ".join(argv) and str(runner.run_dir).encode() in argv
        if ours and Path(argv[0].decode()).name.startswith("python"):
            return int(entry.name)
    raise AssertionError("server process not found")


def container_exists(runner) -> bool:
    """True if the podman/docker container of ``runner`` still exists (after 5 s of grace)."""
    runtime = runner._runtime
    if runtime.name not in ("podman", "docker"):
        return False
    name = f"remote-{runner.run_dir.name}"
    deadline = time.monotonic() + 5
    while True:
        ps = [runtime.executable, "ps", "-a", "-q", "--filter", f"name=^{name}$"]
        out = subprocess.run(ps, capture_output=True, text=True)
        if not out.stdout.strip() or time.monotonic() > deadline:
            return bool(out.stdout.strip())
        time.sleep(0.1)


def image_reference(image: str, request: dict) -> dict:
    """``request`` run by the image's own Python, without remote (tests/envs/reference.py)."""
    script = Path(__file__).resolve().parent / "envs" / "reference.py"
    done = subprocess.run(
        [
            "apptainer",
            "exec",
            "--cleanenv",
            image,
            "python3",
            "-W",
            "ignore",
            str(script),
            json.dumps(request),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, timeout: float = 300, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess:
    """Run `python -m remote.cli ARGS` (this checkout's code) in ``cwd`` and return what it did."""
    variables = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100", **env}
    return subprocess.run(
        [sys.executable, "-m", "remote.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=variables,
        cwd=cwd,
    )
