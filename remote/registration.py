"""Remote envs under gymnasium's registry: ``gymnasium.make("remote/CartPole-v1", image=...)``.

Importing :mod:`remote` mirrors every id already registered in gymnasium as
``remote/<id>``; :func:`register` adds ids known only inside an image (an env package the
host does not have). The image comes from the ``image=`` keyword or ``$REMOTE_IMAGE``;
the other keywords are :func:`remote.make`'s (``wrappers=``, ``runner_options=``) and the
env's kwargs.

A gymnasium id has at most one namespace (``remote/ALE/Breakout-v5`` is malformed), so a
namespaced id is registered with a dot for its slash: ``remote.register("ALE.Breakout-v5")``
registers ``remote/ALE.Breakout-v5``, which makes ``ALE/Breakout-v5`` in the container.
A ``module:`` in front (``"ale_py:ALE.Breakout-v5"``) is imported in the container first and
is not part of the registered id::

    remote.register("ale_py:ALE.Breakout-v5", image="envs.sif")
    env = gymnasium.make("remote/ALE.Breakout-v5")
"""

from __future__ import annotations

import re
from typing import Any

import gymnasium as gym
from gymnasium.envs.registration import registry

from .config import default_image

NAMESPACE = "remote"

#: A namespace of gymnasium's id grammar (without the ``:`` it allows, which means a module here).
_NAMESPACE = re.compile(r"[\w-]+")


def make_registered(remote_env_id: str, image: str | None = None, **kwargs: Any) -> gym.Env:
    """Entry point of every ``remote/...`` id: start a container and make the env in it."""
    from .runner import make

    image = image or default_image()
    if not image:
        raise ValueError(
            f"{NAMESPACE}/{remote_env_id} needs an image: pass image='path/to.sif' (or set REMOTE_IMAGE)"
        )
    return make(remote_env_id, image=image, **kwargs)


def container_id(env_id: str) -> tuple[str, str]:
    """``(registered id, id in the container)`` of an id as :func:`register` takes it:
    ``"ALE.Breakout-v5"`` → ``("remote/ALE.Breakout-v5", "ALE/Breakout-v5")``,
    ``"ale_py:ALE.Breakout-v5"`` → ``("remote/ALE.Breakout-v5", "ale_py:ALE/Breakout-v5")``."""
    module, sep, name = env_id.rpartition(":")
    namespace, dot, rest = name.partition(".")
    inner = f"{namespace}/{rest}" if dot and rest and _NAMESPACE.fullmatch(namespace) else name
    return f"{NAMESPACE}/{name}", f"{module}{sep}{inner}"


def register(env_id: str, *, image: str | None = None, **kwargs: Any) -> str:
    """Register ``remote/<env_id>``; ``image`` and ``kwargs`` become its defaults.

    A namespaced id is written with a dot for its slash (``"ALE.Breakout-v5"``, see the
    module's docstring). Returns the registered id. Re-registering the same id replaces it.
    """
    if "/" in env_id:
        dotted = env_id.replace("/", ".", 1)
        raise ValueError(
            f"{env_id!r} has a namespace, and a gymnasium id has at most one ({NAMESPACE}/): register "
            f"it as {dotted!r}, then gymnasium.make('{NAMESPACE}/{dotted.rpartition(':')[2]}', ...) "
            f"makes {env_id!r} (or use remote.make({env_id!r}, image=...))"
        )
    remote_id, inner = container_id(env_id)
    return _register(remote_id, inner, image, kwargs)


def _register(remote_id: str, inner: str, image: str | None, kwargs: dict[str, Any]) -> str:
    """Register ``remote_id`` to make ``inner`` in the container (see :func:`register`)."""
    defaults: dict[str, Any] = {"remote_env_id": inner, **kwargs}
    if image is not None:
        defaults["image"] = image
    local = registry.get(inner.rpartition(":")[2])
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
            _register(f"{NAMESPACE}/{env_id}", env_id, None, {})
