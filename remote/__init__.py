"""remote: gymnasium environments served from rootless Apptainer containers.

import remote
env = remote.make("CartPole-v1", image="gymnasium.sif")   # a real gymnasium.Env
obs, info = env.reset(seed=0)
"""

__version__ = "0.1.0"

from importlib import import_module
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from .client import RemoteEnvironmentClient
    from .runner import RemoteRunner, make
    from .server import RemoteEnvironmentServer, RemoteRunnerServer
    from .vector import RemoteVectorEnv, make_vec

#: Public name → module that defines it. Imported on first use, so that the server in the
#: container (``import remote.server``) does not pay for the host side's imports at start.
_LAZY = {
    "make": "runner",
    "RemoteRunner": "runner",
    "RemoteEnvironmentClient": "client",
    "RemoteRunnerServer": "server",
    "RemoteEnvironmentServer": "server",
    "make_vec": "vector",
    "RemoteVectorEnv": "vector",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'remote' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


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
