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
    ImageNotFound,
    InvalidAction,
    ProtocolError,
    RemoteEnvError,
    RemoteError,
    ResourceUnavailable,
    RuntimeNotAvailable,
    VersionMismatch,
)
from .runner import RemoteRunner, make
from .server import RemoteEnvironmentServer, RemoteRunnerServer
from .vector import RemoteVectorEnv, make_vec

__all__ = [
    "__version__",
    "make",
    "make_vec",
    "RemoteVectorEnv",
    "RemoteRunner",
    "RemoteEnvironmentClient",
    "RemoteRunnerServer",
    "RemoteEnvironmentServer",
    "RemoteError",
    "ImageNotFound",
    "ChecksumMismatch",
    "RuntimeNotAvailable",
    "ContainerStartError",
    "ContainerDied",
    "CallTimeout",
    "ProtocolError",
    "VersionMismatch",
    "AuthenticationError",
    "RemoteEnvError",
    "EnvCreationError",
    "InvalidAction",
    "ResourceUnavailable",
]
