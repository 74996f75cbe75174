"""SIGTERM to the host (a Slurm job being cancelled) stops its containers and updates the record."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
from helpers import wait_gone

from remote.manager.record import Record

ROOT = Path(__file__).resolve().parent.parent

HOST = """
import sys, time
sys.path.insert(0, {root!r})
from remote.manager import ContainerManager
from remote.manager.record import Record
manager = ContainerManager(Record({path!r}), prefix="job", sample_interval=0)
for worker in range(4):
    name = manager.create(worker, {image!r}, cpus=0.25)  # 4 fit on 2 cores
    manager.start(name)
    manager.make(name, "CartPole-v1").reset(seed=worker)
    print(manager.status(name).pid, flush=True)
time.sleep(120)
"""


def test_sigterm_to_the_host_stops_its_4_containers_and_updates_the_record(tmp_path, image):
    path = tmp_path / "record.sqlite"
    host = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(HOST.format(root=str(ROOT), path=str(path), image=image))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = [host.stdout.readline() for _ in range(4)]
        assert all(lines), host.stderr.read() if host.poll() is not None else "no pid printed"
        pids = [int(line) for line in lines]
        trees = [p for pid in pids for p in [pid, *(c.pid for c in psutil.Process(pid).children(True))]]
        started = time.monotonic()
        host.send_signal(signal.SIGTERM)
        assert host.wait(10) == -signal.SIGTERM, "the host should still die of SIGTERM"
        assert wait_gone(trees, seconds=10 - (time.monotonic() - started)) == []
        elapsed = time.monotonic() - started
        print(f"4 containers stopped {elapsed:.2f} s after SIGTERM")
    finally:
        host.kill()
    rows = Record(path).query("SELECT name, state, lost FROM containers ORDER BY name")
    assert [(r["name"], r["state"], r["lost"]) for r in rows] == [
        (f"job-{i}", "STOPPED", 0) for i in range(4)
    ], "the record should say the containers were stopped, not lost"


def test_an_existing_sigterm_handler_is_left_alone(image):
    script = textwrap.dedent(f"""
        import signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        import remote
        mine = lambda *a: None
        signal.signal(signal.SIGTERM, mine)
        with remote.RemoteRunner({image!r}):
            print(signal.getsignal(signal.SIGTERM) is mine)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "True", out.stderr
