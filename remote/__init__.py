"""remote: gymnasium environments served from rootless Apptainer containers.

import remote
env = remote.make("CartPole-v1", image="gymnasium.sif")   # a real gymnasium.Env
obs, info = env.reset(seed=0)

Images come from a path, an https URL (sha256-verified), a registry or a recipe, through a
per-user cache (``remote.images``); ``remote.experiments`` pins an experiment to one image.
"""

__version__ = "0.1.0"

from . import experiments, images
from .check import CheckResult, check_image
from .client import RemoteEnvironmentClient
from .errors import (
    AuthenticationError,
    CacheError,
    CallTimeout,
    ChecksumMismatch,
    ContainerDied,
    ContainerStartError,
    DownloadError,
    EnvCreationError,
    IllegalTransition,
    ImageBuildError,
    ImageNotFound,
    ImagePullError,
    InvalidAction,
    OutOfMemory,
    ProtocolError,
    RecordError,
    RemoteEnvError,
    RemoteError,
    ResourceUnavailable,
    RuntimeNotAvailable,
    UnknownExperiment,
    VersionMismatch,
)
from .image import Image, resolve_image
from .pool import Pool, PooledEnv
from .registration import register, register_known
from .runner import RemoteRunner, close_all, make
from .server import RemoteEnvironmentServer, RemoteRunnerServer

#: Imported on first use: they need psutil, which the server side (in the image) lacks.
_HOST_ONLY = {
    "ContainerManager": "manager",
    "ContainerStatus": "manager",
    "State": "manager",
    "ResourceAllocator": "allocator",
}


def __getattr__(name: str) -> object:
    if name in _HOST_ONLY:
        import importlib

        return getattr(importlib.import_module(f".{_HOST_ONLY[name]}", __name__), name)
    raise AttributeError(f"module 'remote' has no attribute {name!r}")


__all__ = [
    "__version__",
    "make",
    "close_all",
    "check_image",
    "CheckResult",
    "register",
    "RemoteRunner",
    "Pool",
    "PooledEnv",
    "resolve_image",
    "Image",
    "images",
    "experiments",
    "RemoteEnvironmentClient",
    "ContainerManager",
    "ContainerStatus",
    "State",
    "ResourceAllocator",
    "RemoteRunnerServer",
    "RemoteEnvironmentServer",
    "RemoteError",
    "ImageNotFound",
    "ChecksumMismatch",
    "DownloadError",
    "ImageBuildError",
    "ImagePullError",
    "CacheError",
    "UnknownExperiment",
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
    "ResourceUnavailable",
    "RecordError",
]

register_known()
