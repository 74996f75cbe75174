"""Remote envs as one Stable-Baselines3 ``VecEnv``, stepped as :mod:`remote.vector` steps them.

:func:`make_vec` is ``make_vec_env`` for envs in containers: ``n_envs`` copies of an env,
``envs_per_container`` to a container; one request steps all the envs of a container and
the containers step concurrently. The semantics are ``DummyVecEnv``'s over local envs
wrapped in SB3's ``Monitor``, as ``make_vec_env`` makes them: an env that ends is reset
within the step (in the container, no extra round trip), ``infos[i]["terminal_observation"]``
holds its last observation, ``infos[i]["TimeLimit.truncated"]`` says it was cut short, and
``infos[i]["episode"] = {"r", "l", "t"}`` closes each episode (``monitor=False``: not).
With the same seeds, trajectories and training runs equal those on local envs.

Stable-Baselines3 is an optional dependency (``pip install 'remote[rl]'``); importing this
module without it raises :class:`MissingDependency`.

Example::

    import remote.sb3
    from stable_baselines3 import PPO

    envs = remote.sb3.make_vec("CartPole-v1", 8, image="gymnasium.sif", envs_per_container=4, seed=0)
    PPO("MlpPolicy", envs, seed=0).learn(100_000)
    envs.close()
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .client import Arguments, RemoteAttribute, RemoteMethod, spec_from
from .errors import EnvCreationError, ProtocolError, RemoteError
from .protocol import codec
from .protocol.ops import AUTORESET_SAME_STEP, CALL_CALLABLE, CALL_OBJECT, CALL_VALUE
from .runner import WrapperSpec
from .server.attributes import MAX_DEPTH
from .vector import EnvGroups


class MissingDependency(RemoteError, ImportError):
    """An optional dependency of the feature used is not installed."""


try:
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import VecEnv
except ImportError as exc:
    raise MissingDependency(f"remote.sb3 needs stable-baselines3 ({exc}): pip install 'remote[rl]'") from exc

#: Attributes answered from the host's mirror of the first env, without a call.
MIRRORED = ("render_mode", "spec", "observation_space", "action_space")


class RemoteVecEnv(VecEnv):
    """``num_envs`` copies of an env in containers, as an SB3 ``VecEnv``; see :func:`make_vec`.

    ``step_wait`` returns observations batched as ``DummyVecEnv`` batches them (an array
    ``(num_envs, *shape)`` of the space's dtype, a dict or tuple of them), float32 rewards,
    bool dones and one info per env. ``get_attr``, ``set_attr`` and ``env_method`` reach the
    envs in the containers (values and results must travel: plain data and numpy arrays; an
    object comes back as a :class:`remote.client.RemoteAttribute`); ``close()`` stops the
    containers.
    """

    def __init__(
        self,
        env_id: str,
        num_envs: int,
        *,
        image: str | os.PathLike[str],
        envs_per_container: int | None = None,
        env_kwargs: Mapping[str, Any] | None = None,
        wrappers: Sequence[WrapperSpec] = (),
        monitor: bool = True,
        runner_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.groups = EnvGroups(
            env_id,
            num_envs,
            image=image,
            envs_per_container=envs_per_container,
            runner_options=runner_options,
            wrappers=wrappers,
            env_kwargs=env_kwargs,
        )
        description = self.groups.description
        self._spec = spec_from(description.get("spec"))
        super().__init__(num_envs, self.groups.single_observation_space, self.groups.single_action_space)
        self.metadata = dict(description.get("metadata") or {})  # DummyVecEnv's: the first env's
        #: Whether episodes end with ``infos[i]["episode"]``, as under SB3's ``Monitor``.
        self.monitor = monitor
        self._t_start = time.time()
        self._rewards: list[list[float]] = [[] for _ in range(num_envs)]
        self._actions: np.ndarray | None = None

    # -- stepping ----------------------------------------------------------------------------

    def reset(self) -> Any:
        """Reset every env with the seeds of :meth:`seed` and the options of
        :meth:`set_options` (used once, as ``DummyVecEnv`` uses them)."""
        options = [each or None for each in self._options]  # as DummyVecEnv: empty options, none
        observations, self.reset_infos = self.groups.reset(
            list(self._seeds), None if not any(options) else options
        )
        self._reset_seeds()
        self._reset_options()
        self._rewards = [[] for _ in range(self.num_envs)]
        return observations

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> tuple[Any, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        """Step every env; an env that ends is reset within the step (see :func:`make_vec`)."""
        actions, self._actions = self._actions, None
        if actions is None:
            raise RemoteError("step_wait() without step_async(actions): call step(actions)")
        observations, rewards, terminations, truncations, infos = self.groups.step(
            actions, autoreset=AUTORESET_SAME_STEP
        )
        dones = terminations | truncations
        episode_rewards, monitor = self._rewards, self.monitor
        for i, (reward, terminated, truncated) in enumerate(
            zip(rewards.tolist(), terminations.tolist(), truncations.tolist(), strict=True)
        ):
            if monitor:
                episode_rewards[i].append(reward)
            if not (terminated or truncated):
                infos[i]["TimeLimit.truncated"] = False
                continue
            reset_info = infos[i]
            try:
                last_obs, info = reset_info.pop("final_obs"), reset_info.pop("final_info")
            except KeyError:
                raise ProtocolError("a step reply lacks the final obs of an episode that ended") from None
            self.reset_infos[i] = reset_info
            if monitor:
                ended = episode_rewards[i]
                episode_rewards[i] = []
                info["episode"] = {
                    "r": round(sum(ended), 6),
                    "l": len(ended),
                    "t": round(time.time() - self._t_start, 6),
                }
            info["TimeLimit.truncated"] = truncated and not terminated
            info["terminal_observation"] = last_obs
            infos[i] = info
        return observations, rewards.astype(np.float32), dones, infos

    def close(self) -> None:
        """Close the envs and stop their containers. Safe to call more than once."""
        self.groups.close()

    # -- the envs in the containers ----------------------------------------------------------

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        """The attribute of each env (looked up through its wrappers, as ``get_wrapper_attr``);
        ``render_mode``, ``spec`` and the spaces come from the host's mirror."""
        if attr_name in MIRRORED:
            if attr_name == "render_mode":
                value: Any = self.groups.description.get("render_mode")
            elif attr_name == "spec":
                value = self._spec
            else:
                value = getattr(self.groups, f"single_{attr_name}")
            return [value for _ in self._get_indices(indices)]
        return [self._remote(i, attr_name, None) for i in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        """Set the attribute in each env, through gymnasium's ``set_wrapper_attr`` (on the
        wrapper or env that has it; ``value`` must travel)."""
        for i in self._get_indices(indices):
            self._remote(i, "set_wrapper_attr", ([attr_name, value], {}))

    def env_method(
        self, method_name: str, *method_args: Any, indices: Any = None, **method_kwargs: Any
    ) -> list[Any]:
        """Call the method of each env (found through its wrappers) with the arguments."""
        arguments = (method_args, method_kwargs)
        return [self._remote(i, method_name, arguments) for i in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type, indices: Any = None) -> list[bool]:
        """Whether each env is wrapped in ``wrapper_class``: SB3's ``Monitor`` is emulated on the
        host (``monitor=``); other wrappers are found in the container by class name."""
        targets = list(self._get_indices(indices))
        if self.monitor and issubclass(Monitor, wrapper_class):
            return [True] * len(targets)
        return [wrapper_class.__name__ in self._wrapper_names(i) for i in targets]

    def get_images(self) -> Sequence[np.ndarray | None]:
        """Each env's ``render()`` frame, with ``render_mode="rgb_array"`` (else None each)."""
        if self.render_mode != "rgb_array":
            warnings.warn(
                f"The render mode is {self.render_mode}, but this method assumes it is `rgb_array` "
                "to obtain images: make the envs with env_kwargs={'render_mode': 'rgb_array'}",
                stacklevel=2,
            )
            return [None] * self.num_envs
        return self.env_method("render")

    def _wrapper_names(self, index: int) -> list[str]:
        """The class names of the wrappers around env ``index`` in its container, outermost
        first: gymnasium's ``Wrapper.class_name()``, then the type of ``env``, ``env.env``, ..."""
        _, base = self._call(index, "unwrapped", None)
        try:
            names = [self._call(index, "class_name", ([], {}))[1]]
        except AttributeError:  # no wrapper at all
            return []
        for depth in range(1, MAX_DEPTH):
            kind, name = self._call(index, ".".join(["env"] * depth), None)
            if kind != CALL_OBJECT or name == base:
                break
            names.append(name)
        return names

    def _remote(self, index: int, path: str, arguments: Arguments | None) -> Any:
        """Read (``arguments`` None) or call ``path`` of env ``index``, as
        :meth:`remote.RemoteEnvironmentClient.call` does: its value, or a
        :class:`~remote.client.RemoteAttribute` / :class:`~remote.client.RemoteMethod`."""
        kind, data = self._call(index, path, arguments)
        if kind == CALL_VALUE:
            return data
        cls = RemoteMethod if kind == CALL_CALLABLE else RemoteAttribute
        return cls(path, data, lambda p, a: self._remote(index, p, a))

    def _call(self, index: int, path: str, arguments: Arguments | None) -> tuple[str, Any]:
        """The ``CALL`` of :mod:`remote.protocol.ops` on env ``index``: ``(kind, value or type name)``."""
        runner, handle = self.groups.locate(index)
        encoded = None
        if arguments is not None:
            try:
                encoded = codec.dumps([list(arguments[0]), dict(arguments[1])])
            except (TypeError, ValueError, OverflowError) as exc:
                raise TypeError(f"the arguments of {path}() cannot be sent: {exc}") from None
        reply = runner.call_env(handle, path, encoded)
        if type(reply) is list and len(reply) == 2:
            kind, data = reply
            if kind == CALL_VALUE or (kind in (CALL_CALLABLE, CALL_OBJECT) and type(data) is str):
                return kind, data
        raise ProtocolError(f"malformed reply to call {path}: {reply!r:.100}")

    @property
    def runners(self) -> list[Any]:
        """The runners of the containers, one per group of envs."""
        return list(self.groups.runners)

    def __repr__(self) -> str:
        return f"<RemoteVecEnv {self.num_envs} envs in {len(self.groups.group_sizes)} containers>"


def make_vec(
    env_id: str,
    n_envs: int,
    *,
    image: str | os.PathLike[str],
    envs_per_container: int | None = None,
    seed: int | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
    wrappers: Sequence[WrapperSpec] = (),
    monitor: bool = True,
    **runner_options: Any,
) -> RemoteVecEnv:
    """``n_envs`` copies of ``env_id`` in containers, as ``make_vec_env`` makes them locally.

    Args:
        envs_per_container: envs served by each container (default: all in one); with
            ``n_envs=5, envs_per_container=2`` three containers serve 2, 2 and 1 envs.
        seed: env ``i`` is reset with ``seed + i`` on the first reset (``VecEnv.seed``) and
            its action space seeded with it, as ``make_vec_env`` does.
        env_kwargs: the env's kwargs; ``render_mode`` is ``"rgb_array"`` unless given (as
            ``make_vec_env``'s), or None for an env that takes no render mode.
        wrappers: made around each env in its container (``"module:Wrapper"`` or
            ``("module:Wrapper", kwargs)``, as :meth:`remote.RemoteRunner.open_env`'s).
        monitor: end each episode's info with ``"episode": {"r", "l", "t"}``, as SB3's
            ``Monitor`` (which ``make_vec_env`` wraps every env in) does.
        **runner_options: :class:`remote.RemoteRunner` arguments (``transport``, ``timeout``,
            ``binds``, ``imports``, ...).

    Example::

        envs = remote.sb3.make_vec("CartPole-v1", 8, image="gymnasium.sif", envs_per_container=4, seed=0)
    """
    kwargs = dict(env_kwargs or {})
    options: dict[str, Any] = dict(image=image, envs_per_container=envs_per_container, wrappers=wrappers)
    options.update(monitor=monitor, runner_options=runner_options)
    if "render_mode" in kwargs:
        envs = RemoteVecEnv(env_id, n_envs, env_kwargs=kwargs, **options)
    else:
        try:
            envs = RemoteVecEnv(env_id, n_envs, env_kwargs={"render_mode": "rgb_array", **kwargs}, **options)
        except EnvCreationError as exc:  # as make_vec_env: an env without a render mode
            if "render_mode" not in str(exc):
                raise
            envs = RemoteVecEnv(env_id, n_envs, env_kwargs=kwargs, **options)
    if seed is not None:
        try:
            for i in range(n_envs):
                envs.env_method("action_space.seed", seed + i, indices=i)
        except BaseException:
            envs.close()
            raise
    envs.seed(seed)
    return envs
