"""Building an image from an Apptainer recipe (``.def``), and running ``apptainer`` to make one."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from ..config import apptainer_executable
from ..errors import CacheError, ImageBuildError
from . import cache


def build_command(recipe: Path, build_args: dict[str, str]) -> Callable[[Path], None]:
    """A function that builds ``recipe`` (an absolute path) into the file it is given."""
    # lz4: builds several times faster than the default gzip and starts faster; files are larger
    argv = [apptainer_executable(), "build", "--force", "--mksquashfs-args", "-comp lz4"]
    if os.geteuid() != 0:
        argv.append("--fakeroot")
    for key, value in sorted(build_args.items()):
        argv += ["--build-arg", f"{key}={value}"]
    return lambda out: run_apptainer(
        [*argv, str(out), str(recipe)], ImageBuildError, f"building {recipe}", _build_env()
    )


def run_apptainer(
    argv: list[str], error: type[ImageBuildError], what: str, env: dict[str, str] | None = None
) -> None:
    """Run ``apptainer pull``/``build``; a failure raises ``error`` with the end of its output."""
    if sys.stderr.isatty():
        sys.stderr.write(f"remote: {what} (this can take minutes)\n")
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip()
        tail = "\n".join(output.splitlines()[-25:])
        if "no space left on device" in output.lower():
            raise CacheError(
                f"{what}: no space left on device (the cache is at {cache.cache_dir()}, apptainer "
                "also uses APPTAINER_TMPDIR); free space or set REMOTE_CACHE to a folder with room"
            )
        raise error(f"{what} failed (apptainer exit code {done.returncode})", tail)


def recipe_key(recipe: Path, build_args: dict[str, str]) -> str:
    """What a build depends on: the recipe text, the build args and the files ``%files`` copies
    (by name, size and mtime; paths are relative to the current directory, as for apptainer)."""
    text = recipe.read_text()
    sources: dict[str, Path] = {}
    for line in _section(text, "files"):
        pattern = line.split()[0]
        for match in sorted(glob.glob(pattern)):
            sources[match] = Path(match)
    digest = hashlib.sha256(json.dumps([text, sorted(build_args.items())]).encode())
    digest.update(cache.fingerprint(sources).encode())
    return digest.hexdigest()[:16]


def _section(text: str, name: str) -> list[str]:
    """The non-comment lines of the recipe's ``%name`` sections (not ``%files from <stage>``)."""
    lines, inside = [], False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("%"):
            inside = line.split() == [f"%{name}"]
        elif inside and line and not line.startswith("#"):
            lines.append(line)
    return lines


#: Linux capability names by number, for APPTAINER_DROP_CAPS.
_CAPABILITIES = (
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
)


def _build_env() -> dict[str, str]:
    """The environment for ``apptainer build``. As root, ``APPTAINER_DROP_CAPS`` names the
    capabilities missing from this process's bounding set: apptainer asks for all of them for
    ``%post`` and fails where root lacks some (containers, some VMs)."""
    env = dict(os.environ)
    if os.geteuid() != 0 or env.get("APPTAINER_DROP_CAPS"):
        return env
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return env
    found = re.search(r"^CapBnd:\s*([0-9a-f]+)$", status, re.MULTILINE)
    bounding = int(found.group(1), 16) if found else -1
    missing = [f"CAP_{n}" for i, n in enumerate(_CAPABILITIES) if not bounding >> i & 1]
    if missing:
        env["APPTAINER_DROP_CAPS"] = ",".join(missing)
    return env
