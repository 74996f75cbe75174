"""Run a script in an image's own Python: the local reference for envs the host does not have."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from typing import Any


def image_command(image: str, script: str, args: Sequence[str] = (), binds: Sequence[str] = ()) -> list[str]:
    """The command that runs ``python3 -c script args`` in ``image``, as the image has it
    (this host's ``remote`` and environment are nowhere in it); ``binds``: host paths bound
    read-only at the same path (symlinks resolved)."""
    mounts = [f"--bind={path}:{path}:ro" for path in map(os.path.realpath, binds)]
    return ["apptainer", "exec", "--cleanenv", *mounts, image, "python3", "-c", script, *args]


def run_in_image(
    image: str, script: str, args: Sequence[str] = (), timeout: float = 900, binds: Sequence[str] = ()
) -> Any:
    """Run ``python3 -c script args`` in ``image``; return the JSON the script prints last.

    The script sees this host's ``remote`` nowhere: it measures the env as the image has it.
    ``binds``: host paths bound read-only at the same path (symlinks resolved), e.g. a
    directory of inputs or a site-packages the script appends to ``sys.path``.
    """
    command = image_command(image, script, args, binds)
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command[:3])} python3 failed ({done.returncode}): {done.stderr[-2000:]}"
        )
    return json.loads(done.stdout.strip().splitlines()[-1])
