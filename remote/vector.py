"""Many environments in few containers, as one ``gymnasium.vector.VectorEnv``.

:func:`make_vec` spreads ``num_envs`` copies of an env over containers of
``envs_per_container`` envs each. One request steps all the envs of a container (the
server steps them one after the other, as ``SyncVectorEnv`` does); the containers step
concurrently: the request goes to every container before any reply is read.
Autoreset follows gymnasium's ``NEXT_STEP`` mode, so trajectories equal those of
``gymnasium.vector.SyncVectorEnv`` over local envs with the same seeds.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from copy import deepcopy
from typing import Any

import numpy as np
from gymnasium.spaces import Box, MultiBinary, MultiDiscrete
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array, iterate

from .client import EnvStream, spec_from
from .errors import InvalidAction, ProtocolError, RemoteError
from .protocol import spaces as space_codec
from .protocol.ops import CLOSE, CLOSE_REPLY_SIZE, RESET, RESET_REPLY_SIZE, STEP, STEP_REPLY_SIZE
from .runner import DEFAULT_TIMEOUT, RemoteRunner, WrapperSpec
from .seeding import seeds_for

#: Spaces whose batch is one array, split into actions row by row.
_ARRAY_SPACES = (Box, MultiDiscrete, MultiBinary)


class RemoteVectorEnv(VectorEnv):
    """``num_envs`` copies of an env, ``envs_per_container`` to a container; see :func:`make_vec`.

    Observations are batched with gymnasium's ``batch_space``/``concatenate`` rules;
    ``step`` returns float64 rewards and bool terminations/truncations, infos merged as
    gymnasium's vector envs do. ``close()`` stops the containers.
    """

    def __init__(
        self,
        env_id: str,
        num_envs: int,
        *,
        image: str | os.PathLike[str],
        envs_per_container: int | None = None,
        copy: bool = True,
        transport: str = "unix",
        timeout: float = DEFAULT_TIMEOUT,
        runner_options: Mapping[str, Any] | None = None,
        wrappers: Sequence[WrapperSpec] = (),
        **env_kwargs: Any,
    ) -> None:
        per = num_envs if envs_per_container is None else envs_per_container
        if num_envs < 1 or per < 1:
            raise ValueError("num_envs and envs_per_container must be at least 1")
        self.num_envs = num_envs
        self.copy = copy
        self.group_sizes = [min(per, num_envs - start) for start in range(0, num_envs, per)]
        self._slices = [(start, min(start + per, num_envs)) for start in range(0, num_envs, per)]
        self._runners: list[RemoteRunner] = []
        self._streams: list[EnvStream] = []
        options = {"transport": transport, "timeout": timeout, **(runner_options or {})}

        def start(size: int) -> tuple[RemoteRunner, dict[str, Any], EnvStream]:
            runner = RemoteRunner(image, **options)
            try:
                description, stream = runner.open_group(env_id, size, env_kwargs, wrappers)
            except BaseException:
                runner.close()
                raise
            return runner, description, stream

        with ThreadPoolExecutor(max_workers=len(self.group_sizes)) as pool:
            futures = [pool.submit(start, size) for size in self.group_sizes]
        started = [f.result() for f in futures if f.exception() is None]
        self._runners = [runner for runner, _, _ in started]
        self._streams = [stream for _, _, stream in started]
        failed = [f.exception() for f in futures if f.exception() is not None]
        if failed:
            self.close_extras()
            raise failed[0]  # type: ignore[misc]

        description = started[0][1]
        self.single_observation_space = space_codec.rebuild(description["observation_space"])
        self.single_action_space = space_codec.rebuild(description["action_space"])
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.metadata = {**(description.get("metadata") or {}), "autoreset_mode": AutoresetMode.NEXT_STEP}
        self.render_mode = description.get("render_mode")
        self.spec = spec_from(description.get("spec"))
        self._observations = create_empty_array(self.single_observation_space, n=num_envs, fn=np.zeros)

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset every env; ``seed`` an int (env i gets ``seed + i``) or one seed per env."""
        seeds = seeds_for(seed, self.num_envs)
        if options is not None and "reset_mask" in options:
            raise ValueError("options['reset_mask'] is not supported by remote vector envs")
        replies = self._on_all(RESET, [[seeds[a:b], options] for a, b in self._slices], RESET_REPLY_SIZE)
        observations, infos = [], {}
        for (a, b), reply in zip(self._slices, replies, strict=True):
            self._check_lists(reply, b - a, RESET)
            observations.append(reply[1])
            for i, info in enumerate(reply[2], start=a):
                infos = self._add_info(infos, info, i)
        return self._batch(observations), infos

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every env (an env that ended on the previous step is reset instead)."""
        if type(actions) is np.ndarray and isinstance(self.action_space, _ARRAY_SPACES):
            if actions.shape[:1] != (self.num_envs,):
                raise ValueError(f"actions of shape {actions.shape} for {self.num_envs} envs")
            each: Any = actions  # the server splits rows as gymnasium's iterate does
        else:
            each = list(iterate(self.action_space, actions))
        replies = self._on_all(STEP, [each[a:b] for a, b in self._slices], STEP_REPLY_SIZE)
        observations, infos = [], {}
        for (a, b), reply in zip(self._slices, replies, strict=True):
            self._check_lists(reply, b - a, STEP)
            for column in (2, 3, 4):
                value = reply[column]
                if type(value) is not np.ndarray or value.shape != (b - a,):
                    raise ProtocolError(f"malformed step reply: {value!r:.80}")
            observations.append(reply[1])
            for i, info in enumerate(reply[5], start=a):
                infos = self._add_info(infos, info, i)
        rewards = np.concatenate([r[2] for r in replies]).astype(np.float64, copy=False)
        terminations = np.concatenate([r[3] for r in replies]).astype(np.bool_, copy=False)
        truncations = np.concatenate([r[4] for r in replies]).astype(np.bool_, copy=False)
        return self._batch(observations), rewards, terminations, truncations, infos

    def _on_all(self, op: str, args: list[Any], size: int) -> list[list[Any]]:
        """Send ``op`` to every container, then read every reply (``size`` items each). Every
        stream is read even when one fails, so all stay in step; the first error is raised after."""
        error: BaseException | None = None
        sent = 0
        try:
            for stream, group_args in zip(self._streams, args, strict=True):
                stream.send(op, group_args)
                sent += 1
        except TypeError as exc:
            error = InvalidAction(f"action cannot be sent: {exc}")
        except RemoteError as exc:
            error = exc
        replies = []
        for stream in self._streams[:sent]:
            try:
                replies.append(stream.receive(op, size))
            except RemoteError as exc:
                error = error or exc
        if error is not None:
            raise error
        return replies

    @staticmethod
    def _check_lists(reply: list[Any], count: int, op: str) -> None:
        """Observations (one stacked array or a list) and infos for ``count`` envs."""
        observations, infos = reply[1], reply[-1]
        stacked = type(observations) is np.ndarray and observations.ndim > 0
        if not ((stacked or type(observations) is list) and type(infos) is list):
            raise ProtocolError(f"malformed {op} reply for {count} envs")
        if not len(observations) == len(infos) == count:
            raise ProtocolError(f"malformed {op} reply for {count} envs")

    def _batch(self, groups: list[Any]) -> Any:
        """Batch the groups' observations (each stacked in one array, or a list)."""
        if all(type(g) is np.ndarray for g in groups) and isinstance(self._observations, np.ndarray):
            np.concatenate(groups, axis=0, out=self._observations)  # as concatenate's np.stack(out=)
        else:
            observations = [obs for group in groups for obs in group]
            self._observations = concatenate(self.single_observation_space, observations, self._observations)
        return deepcopy(self._observations) if self.copy else self._observations

    def close_extras(self, **kwargs: Any) -> None:
        """Close the envs and stop their containers."""
        for stream in self._streams:
            if stream.open:
                with contextlib.suppress(RemoteError):
                    stream.call(CLOSE, None, CLOSE_REPLY_SIZE)
                stream.drop("the vector env is closed")
        if self._runners:
            with ThreadPoolExecutor(max_workers=len(self._runners)) as pool:
                list(pool.map(RemoteRunner.close, self._runners))

    @property
    def runners(self) -> list[RemoteRunner]:
        """The runners of the containers, one per group of envs."""
        return list(self._runners)

    def __repr__(self) -> str:
        return f"<RemoteVectorEnv {self.num_envs} envs in {len(self.group_sizes)} containers>"


def make_vec(
    env_id: str,
    num_envs: int,
    *,
    image: str | os.PathLike[str],
    envs_per_container: int | None = None,
    backend: str = "local",
    **kwargs: Any,
) -> VectorEnv:
    """``num_envs`` copies of ``env_id`` as one ``gymnasium.vector.VectorEnv``.

    Args:
        envs_per_container: envs served by each container (default: all in one). With
            ``num_envs=5, envs_per_container=2`` three containers serve 2, 2 and 1 envs.
        backend: ``"local"``: containers on this machine (:class:`RemoteVectorEnv`);
            ``"ray"``: containers in Ray actors placed over a Ray cluster's nodes
            (:func:`remote.ray.make_vec`, which takes its own options: ``num_cpus``,
            ``resources``, ``address``, ``env_kwargs``, ...).
        **kwargs: ``copy``, ``transport``, ``timeout``, ``runner_options`` (more
            :class:`remote.RemoteRunner` arguments, e.g. ``binds``, ``imports``,
            ``preload``), ``wrappers`` (made around each env in its container, as
            :meth:`remote.RemoteRunner.open_env`'s), and the env's kwargs.

    Example::

        envs = remote.make_vec("CartPole-v1", 16, image="gymnasium.sif", envs_per_container=8)
        obs, infos = envs.reset(seed=0)
    """
    if backend == "ray":
        from . import ray

        return ray.make_vec(
            env_id, num_envs, image=os.fspath(image), envs_per_actor=envs_per_container or 1, **kwargs
        )
    if backend != "local":
        raise ValueError(f"backend must be 'local' or 'ray', not {backend!r}")
    return RemoteVectorEnv(env_id, num_envs, image=image, envs_per_container=envs_per_container, **kwargs)
