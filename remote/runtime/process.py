"""No container: the server as a plain process of the host, on a given Python."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from ..errors import ImageNotFound
from ..images.sources import Image
from .base import Bind, Runtime, register


class Process(Runtime):
    """No container: the server runs as a plain process of the host, with the Python
    interpreter given as the image, e.g. a venv's ``bin/python`` or a conda env's
    ``bin/python``, with its own package versions (``python=`` of the runner is not used:
    the image is the interpreter). Starts fastest: the inner loop for developing an env.

    There is no mount namespace (a bind must keep its path; ``ro`` is not enforced) and no
    PID namespace: the server runs in its own process group, killed as a whole once the
    server exits or its host goes away.
    """

    name = "process"

    def resolve_image(self, image: str | os.PathLike[str], sha256: str | None = None) -> Image:
        if sha256 is not None:
            raise ValueError("sha256= pins an image file; the process runtime runs an interpreter")
        path = os.path.abspath(os.path.expanduser(os.fspath(image)))  # a venv's python is a symlink
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise ImageNotFound(
                f"no Python interpreter at {path!r}: with runtime='process' the image is a Python "
                "executable with numpy and gymnasium, e.g. .venv/bin/python or a conda env's bin/python"
            )
        return Image(path, None, os.fspath(image))

    def command(
        self,
        image: str,
        python: str,
        args: Sequence[str],
        binds: Sequence[Bind] = (),
        env: Mapping[str, str] | None = None,
        name: str = "",
        flags: Sequence[str] = (),
    ) -> list[str]:
        if flags:
            raise ValueError(f"the process runtime has no run/exec flags, not {list(flags)}")
        for src, dest, _ in binds:
            if os.path.abspath(src) != os.path.abspath(dest):
                raise ValueError(
                    f"bind {src}:{dest}: the process runtime has no container to mount into; "
                    "pass the folder by its host path (src:src)"
                )
        path = f"{os.path.dirname(image)}:{os.defpath.lstrip(':')}"
        base = {"PATH": path, "HOME": os.path.expanduser("~")}
        variables = [f"{key}={value}" for key, value in {**base, **(env or {})}.items()]
        return ["env", "-i", *variables, image, *args]


register("process", Process)
