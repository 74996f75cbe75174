"""remote: gymnasium environments served from rootless Apptainer containers.

import remote
env = remote.make("CartPole-v1", image="gymnasium.sif")   # a real gymnasium.Env
obs, info = env.reset(seed=0)
"""

__version__ = "0.1.0"

from .client import RemoteEnvironmentClient
from .errors import (
    AuthenticationError,
    CallTimeout,
    ChecksumMismatch,
    ContainerDied,
    ContainerStartError,
    EnvCreationError,
    IllegalTransition,
    ImageNotFound,
    InvalidAction,
    OutOfMemory,
    ProtocolError,
    RecordError,
    RemoteEnvError,
    RemoteError,
    ResourceUnavailable,
    RuntimeNotAvailable,
    VersionMismatch,
)
from .runner import RemoteRunner, make
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
    "RemoteRunner",
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
