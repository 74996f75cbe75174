"""The exceptions of remote: one base class, one class per way things go wrong.

Every error the library raises on purpose derives from :class:`RemoteError`, so
``except remote.RemoteError`` catches them all; transport internals (Pyro5 errors,
``CalledProcessError``, ``ConnectionResetError``) never reach the caller.

An exception raised by the environment inside the container arrives as a
:class:`RemoteEnvError`. When the remote type is a Python built-in exception the
local class also derives from it, so ``except ValueError`` keeps working::

    try:
        env.step(99)
    except remote.InvalidAction as e:
        print(e.remote_traceback)
"""

from __future__ import annotations

import builtins

__all__ = [
    "RemoteError",
    "ImageNotFound",
    "ChecksumMismatch",
    "DownloadError",
    "ImageBuildError",
    "ImagePullError",
    "CacheError",
    "UnknownName",
    "UnknownExperiment",
    "UnknownImage",
    "UnknownContainer",
    "NotInArrayJob",
    "RuntimeNotAvailable",
    "ContainerStartError",
    "ContainerDied",
    "OutOfMemory",
    "IllegalTransition",
    "CallTimeout",
    "ProtocolError",
    "VersionMismatch",
    "AuthenticationError",
    "RemoteEnvError",
    "EnvCreationError",
    "InvalidAction",
    "ExperimentError",
    "ResourceUnavailable",
    "RecordError",
    "VideoError",
]


class RemoteError(Exception):
    """Base class of every error raised by remote."""


class ImageNotFound(RemoteError):
    """The container image does not exist where it was looked for."""


class ChecksumMismatch(RemoteError):
    """A downloaded or pinned image does not have the expected sha256."""


class DownloadError(RemoteError):
    """An image download failed (network, HTTP error, transfer cut short) after its retries."""


class ImageBuildError(RemoteError):
    """``apptainer build`` of a recipe failed. ``log_tail`` holds the end of its output."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(message + (f"\n--- last build output ---\n{log_tail}" if log_tail else ""))
        self.log_tail = log_tail


class ImagePullError(ImageBuildError):
    """``apptainer pull`` of an ``oras://``, ``library://``, ``docker://`` or archive source failed."""


class CacheError(RemoteError):
    """The image cache cannot be written (read-only, full, over quota) or locked."""


class UnknownName(RemoteError, KeyError):
    """A name that names nothing: no such experiment, cached image or container. Also a
    ``KeyError``, as a lookup that misses is in Python."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnknownExperiment(UnknownName):
    """The experiment id is not in the experiments lock file."""


class UnknownImage(UnknownName):
    """Nothing in the image cache matches the reference (source, name or sha256 prefix)."""


class UnknownContainer(UnknownName):
    """No container has that name (or pid): in a manager, or running on the record."""


class NotInArrayJob(RemoteError, RuntimeError):
    """A Slurm array task id was asked for outside a Slurm array job, and none was given."""


class RuntimeNotAvailable(RemoteError):
    """The runtime (Apptainer, Podman, Docker) is missing or cannot run here."""


class ContainerStartError(RemoteError):
    """The container or the server inside it did not come up.

    ``log_tail`` holds the last lines the container printed.
    """

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(message + (f"\n--- last container output ---\n{log_tail}" if log_tail else ""))
        self.log_tail = log_tail


class ContainerDied(RemoteError):
    """The container exited while it was in use.

    ``returncode`` is the exit code, or ``-N`` when it was killed by signal N.
    """

    def __init__(self, message: str, returncode: int | None = None, log_tail: str = "") -> None:
        super().__init__(message + (f"\n--- last container output ---\n{log_tail}" if log_tail else ""))
        self.returncode = returncode
        self.log_tail = log_tail


class OutOfMemory(ContainerDied):
    """The container was killed for using more memory than its limit."""


class IllegalTransition(RemoteError):
    """A container was asked to do what its state does not allow (e.g. pause a stopped one)."""


class CallTimeout(RemoteError, TimeoutError):
    """A call to the container got no answer within its timeout."""


class ProtocolError(RemoteError):
    """A message broke the wire protocol (malformed, too large, or unexpected)."""


class VersionMismatch(ProtocolError):
    """Host and container speak different protocol versions."""


class AuthenticationError(ProtocolError):
    """The server refused the connection: wrong or missing session secret."""


class ResourceUnavailable(RemoteError):
    """Not enough CPUs, memory, GPUs or ports are free for the request."""


class RecordError(RemoteError):
    """The record file (SQLite) cannot be used: another schema version, or not a database."""


class VideoError(RemoteError):
    """An episode could not be encoded to MP4 or an MP4 read back: imageio is missing
    (``pip install 'remote[video]'``), ffmpeg failed, or a recording file is not one."""


class RemoteEnvError(RemoteError):
    """An exception raised inside the container by the environment.

    Attributes:
        remote_type: qualified name of the exception class raised remotely.
        remote_traceback: the formatted traceback, as text, from the container.
    """

    def __init__(self, message: str, remote_type: str = "", remote_traceback: str = "") -> None:
        text = message
        if remote_traceback:
            text += f"\n--- remote traceback ({remote_type}) ---\n{remote_traceback.rstrip()}"
        super().__init__(text)
        self.remote_message = message
        self.remote_type = remote_type
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class EnvCreationError(RemoteEnvError):
    """The server could not create the requested environment (unknown id, bad kwargs, ...)."""


class InvalidAction(RemoteEnvError, ValueError):
    """The action is not an element of the environment's action space."""


class ExperimentError(RemoteEnvError):
    """An experiment loop in the container failed: its agent could not be imported or made,
    or the agent or the env raised (see :meth:`remote.RemoteRunner.run`)."""


_local_classes: dict[tuple[str, type[RemoteEnvError]], type[RemoteEnvError]] = {}


def remote_exception(
    remote_type: str,
    message: str,
    remote_traceback: str,
    base: type[RemoteEnvError] = RemoteEnvError,
) -> RemoteEnvError:
    """Build the local exception for an error raised in the container.

    ``remote_type`` is ``"module.QualName"``. A built-in exception type (``ValueError``,
    ``KeyError``, ...) becomes a class deriving from both ``base`` and that built-in.
    """
    module, _, name = remote_type.rpartition(".")
    ours = globals().get(name) if module == __name__ else None
    if isinstance(ours, type) and issubclass(ours, base):
        base = ours
    builtin = getattr(builtins, name, None) if module == "builtins" else None
    cls: type[RemoteEnvError] = base
    if isinstance(builtin, type) and issubclass(builtin, Exception) and not issubclass(base, builtin):
        key = (name, base)
        cls = _local_classes.get(key)  # type: ignore[assignment]
        if cls is None:
            try:
                cls = type(f"Remote{name}", (base, builtin), {"__module__": __name__})
            except TypeError:  # layout conflict (e.g. OSError subclasses): keep the base
                cls = base
            _local_classes[key] = cls
    return cls(message, remote_type, remote_traceback)
