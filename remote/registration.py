"""Remote envs under gymnasium's registry: ``gymnasium.make("remote/CartPole-v1", image=...)``.

Importing :mod:`remote` mirrors every id already registered in gymnasium as
``remote/<id>``; :func:`register` adds ids known only inside an image (an env package the
host does not have). The image comes from the ``image=`` keyword or ``$REMOTE_IMAGE``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
from gymnasium.envs.registration import registry

from .config import default_image

NAMESPACE = "remote"


def make_registered(remote_env_id: str, image: str | None = None, **kwargs: Any) -> gym.Env:
    """Entry point of every ``remote/...`` id: start a container and make the env in it."""
    from .runner import make

    image = image or default_image()
    if not image:
        raise ValueError(
            f"{NAMESPACE}/{remote_env_id} needs an image: pass image='path/to.sif' (or set REMOTE_IMAGE)"
        )
    return make(remote_env_id, image=image, **kwargs)


def register(env_id: str, *, image: str | None = None, **kwargs: Any) -> str:
    """Register ``remote/<env_id>``; ``image`` and ``kwargs`` become its defaults.

    Returns the registered id. Re-registering the same id replaces it. gymnasium ids have
    at most one namespace, so a namespaced id (``"ns/Env-v0"``) cannot be mirrored: use
    :func:`remote.make` for those.
    """
    if "/" in env_id:
        raise ValueError(f"{env_id!r} has a namespace already; use remote.make({env_id!r}, image=...)")
    remote_id = f"{NAMESPACE}/{env_id}"
    defaults: dict[str, Any] = {"remote_env_id": env_id, **kwargs}
    if image is not None:
        defaults["image"] = image
    local = registry.get(env_id)
    registry.pop(remote_id, None)
    gym.register(
        id=remote_id,
        entry_point="remote.registration:make_registered",
        reward_threshold=local.reward_threshold if local else None,
        nondeterministic=local.nondeterministic if local else False,
        kwargs=defaults,
        disable_env_checker=True,  # the env in the container is checked by its own gymnasium.make
    )
    return remote_id


def register_known() -> None:
    """Mirror every gymnasium id registered so far (outside our namespace) as ``remote/<id>``."""
    for env_id, spec in list(registry.items()):
        if spec.namespace is None and f"{NAMESPACE}/{env_id}" not in registry:
            register(env_id)
