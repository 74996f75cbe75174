"""Apptainer (or SingularityCE): rootless, unprivileged ``exec`` of a ``.sif`` image."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..config import apptainer_executable
from .base import Bind, Runtime, cgroup_flags, register


class Apptainer(Runtime):
    """The Apptainer (or SingularityCE) runtime: rootless, unprivileged ``exec``. The image
    is a ``.sif`` file or a sandbox folder.

    Args:
        executable: path or name of ``apptainer``/``singularity``; default: ``$REMOTE_APPTAINER``,
            else the first of ``apptainer``, ``singularity`` on ``PATH``.
        extra_args: more ``exec`` flags, e.g. ``["--nv"]`` or ``["--userns"]``.
    """

    name = "apptainer"

    def __init__(self, executable: str | None = None, extra_args: Sequence[str] = ()) -> None:
        self.executable = apptainer_executable(executable)
        self.extra_args = list(extra_args)

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
        cmd = [self.executable, "exec", *flags, "--cleanenv", "--pid", *self.extra_args]
        for src, dest, mode in binds:
            cmd += ["--bind", f"{src}:{dest}:{mode}"]
        for key, value in (env or {}).items():
            cmd += ["--env", f"{key}={value}"]
        return [*cmd, image, python, *args]

    def limit_flags(self, cpus: float, memory: int, gpus: Sequence[str], enforcement: str) -> list[str]:
        """``--nv`` for GPUs; ``--cpus``/``--memory`` under cgroup enforcement."""
        return [*(["--nv"] if gpus else []), *cgroup_flags(cpus, memory, enforcement)]


register("apptainer", Apptainer)
register("singularity", lambda: Apptainer("singularity"))
