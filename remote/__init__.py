"""remote: gymnasium environments served from rootless Apptainer containers.

import remote
env = remote.make("CartPole-v1", image="gymnasium.sif")   # a real gymnasium.Env
obs, info = env.reset(seed=0)
"""

__version__ = "0.1.0"

from .check import CheckResult, check_image
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
from .pool import Pool, PooledEnv
from .registration import register, register_known
from .runner import RemoteRunner, make
from .server import RemoteEnvironmentServer, RemoteRunnerServer

__all__ = [
    "__version__",
    "make",
    "check_image",
    "CheckResult",
    "register",
    "RemoteRunner",
    "Pool",
    "PooledEnv",
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

register_known()
