"""remote: gymnasium environments served from rootless Apptainer containers.

import remote
env = remote.make("CartPole-v1", image="gymnasium.sif")   # a real gymnasium.Env
obs, info = env.reset(seed=0)

Images come from a path, an https URL (sha256-verified), a registry or a recipe, through a
per-user cache (``remote.images``); ``remote.experiments`` pins an experiment to one image.
"""

__version__ = "0.1.0"

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .errors import (
    AuthenticationError,
    CacheError,
    CallTimeout,
    ChecksumMismatch,
    ContainerDied,
    ContainerStartError,
    DownloadError,
    EnvCreationError,
    ExperimentError,
    IllegalTransition,
    ImageBuildError,
    ImageNotFound,
    ImagePullError,
    InvalidAction,
    NotInArrayJob,
    OutOfMemory,
    ProtocolError,
    RecordError,
    RemoteEnvError,
    RemoteError,
    ResourceUnavailable,
    RuntimeNotAvailable,
    UnknownContainer,
    UnknownExperiment,
    UnknownImage,
    UnknownName,
    VersionMismatch,
    VideoError,
)

if TYPE_CHECKING:
    from . import experiments, images
    from .check import CheckResult, check_image
    from .client import RemoteEnvironmentClient
    from .images.inspect import ImageReport, inspect_image
    from .images.sources import Image, resolve_image
    from .manager import ContainerManager, ContainerStatus, State
    from .manager.allocator import ResourceAllocator
    from .pool import Pool, PooledEnv
    from .protocol.runlog import read_log
    from .registration import register
    from .runner import RemoteRunner, close_all, make
    from .server import RemoteEnvironmentServer, RemoteRunnerServer
    from .vector import RemoteVectorEnv, make_vec

#: Public name → module that defines it, imported on first use: the server in the container
#: (``import remote.server``) then skips the host side's imports at start, and needs none of
#: the host-only dependencies (psutil, requests).
_LAZY = {
    "make": "runner",
    "close_all": "runner",
    "RemoteRunner": "runner",
    "make_vec": "vector",
    "RemoteVectorEnv": "vector",
    "RemoteEnvironmentClient": "client",
    "RemoteRunnerServer": "server",
    "RemoteEnvironmentServer": "server",
    "Pool": "pool",
    "PooledEnv": "pool",
    "check_image": "check",
    "CheckResult": "check",
    "read_log": "protocol.runlog",
    "register": "registration",
    "resolve_image": "images.sources",
    "Image": "images.sources",
    "inspect_image": "images.inspect",
    "ImageReport": "images.inspect",
    "ContainerManager": "manager",
    "ContainerStatus": "manager",
    "State": "manager",
    "ResourceAllocator": "manager.allocator",
}
_MODULES = {"images", "experiments"}


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        value: Any = import_module(f".{name}", __name__)
    elif name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
    else:
        raise AttributeError(f"module 'remote' has no attribute {name!r}")
    globals()[name] = value
    return value


__all__ = [
    "__version__",
    "make",
    "close_all",
    "RemoteRunner",
    "make_vec",
    "RemoteVectorEnv",
    "RemoteEnvironmentClient",
    "RemoteRunnerServer",
    "RemoteEnvironmentServer",
    "Pool",
    "PooledEnv",
    "check_image",
    "CheckResult",
    "read_log",
    "register",
    "resolve_image",
    "Image",
    "inspect_image",
    "ImageReport",
    "ContainerManager",
    "ContainerStatus",
    "State",
    "ResourceAllocator",
    "experiments",
    "images",
    "AuthenticationError",
    "CacheError",
    "CallTimeout",
    "ChecksumMismatch",
    "ContainerDied",
    "ContainerStartError",
    "DownloadError",
    "EnvCreationError",
    "ExperimentError",
    "IllegalTransition",
    "ImageBuildError",
    "ImageNotFound",
    "ImagePullError",
    "InvalidAction",
    "OutOfMemory",
    "ProtocolError",
    "RecordError",
    "VideoError",
    "RemoteEnvError",
    "RemoteError",
    "ResourceUnavailable",
    "RuntimeNotAvailable",
    "NotInArrayJob",
    "UnknownContainer",
    "UnknownExperiment",
    "UnknownImage",
    "UnknownName",
    "VersionMismatch",
]

from .registration import register_known  # noqa: E402 (after the names above, as it uses none)

register_known()  # gymnasium.make("remote/<id>", image=...) for every id gymnasium knows
