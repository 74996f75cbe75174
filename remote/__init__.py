"""remote: gymnasium environments served from rootless Apptainer containers.

import remote
env = remote.make("CartPole-v1", image="gymnasium.sif")   # a real gymnasium.Env
obs, info = env.reset(seed=0)
"""

__version__ = "0.1.0"

from .allocator import ResourceAllocator
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
from .manager import ContainerManager, ContainerStatus, State
from .runner import RemoteRunner, make
from .server import RemoteEnvironmentServer, RemoteRunnerServer

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
