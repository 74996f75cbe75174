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
from .protocol.channel import REQUEST_POLL_NS, polling
from .protocol.ops import (
    AUTORESET_NEXT_STEP,
    CLOSE,
    CLOSE_REPLY_SIZE,
    RESET,
    RESET_REPLY_SIZE,
    STEP,
    STEP_REPLY_SIZE,
)
from .runner import DEFAULT_TIMEOUT, RemoteRunner, WrapperSpec
from .seeding import seeds_for

#: Spaces whose batch is one array, split into actions row by row.
_ARRAY_SPACES = (Box, MultiDiscrete, MultiBinary)


class EnvGroups:
    """``num_envs`` copies of an env in containers of ``envs_per_container`` envs each, one
    stream per container: the core of :class:`RemoteVectorEnv` and of
    :class:`remote.sb3.RemoteVecEnv`.

    The containers start concurrently; each request goes to every container before any reply
    is read. Observations are batched with gymnasium's ``batch_space``/``concatenate`` rules
    (``(num_envs, *shape)`` arrays, a dict or tuple of them), new for every call: the
    caller owns them.
    """

    def __init__(
        self,
        env_id: str,
        num_envs: int,
        *,
        image: str | os.PathLike[str],
        envs_per_container: int | None = None,
        runner_options: Mapping[str, Any] | None = None,
        wrappers: Sequence[WrapperSpec] = (),
        env_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        per = num_envs if envs_per_container is None else envs_per_container
        if num_envs < 1 or per < 1:
            raise ValueError("num_envs and envs_per_container must be at least 1")
        self.num_envs = num_envs
        #: Envs per container, and their ``(start, stop)`` indices.
        self.group_sizes = [min(per, num_envs - start) for start in range(0, num_envs, per)]
        self.slices = [(start, min(start + per, num_envs)) for start in range(0, num_envs, per)]
        #: Per container: its runner, the handles of its envs (for ``runner.call_env``), its stream.
        self.runners: list[RemoteRunner] = []
        self.handles: list[list[int]] = []
        self.streams: list[EnvStream] = []
        options, kwargs = dict(runner_options or {}), dict(env_kwargs or {})
        # one container polls as one env's; several poll for their next request only if all
        # of them could spin at once beside this process; see request() for its own polls
        k = len(self.group_sizes)
        server_poll_ns = None if k == 1 else polling(REQUEST_POLL_NS, busy=k)

        def start(size: int) -> tuple[RemoteRunner, list[int], dict[str, Any], EnvStream]:
            runner = RemoteRunner(image, **options)
            try:
                return runner, *runner.open_group(
                    env_id, size, kwargs, wrappers, server_poll_ns=server_poll_ns
                )
            except BaseException:
                runner.close()
                raise

        with ThreadPoolExecutor(max_workers=len(self.group_sizes)) as pool:
            futures = [pool.submit(start, size) for size in self.group_sizes]
        started = [f.result() for f in futures if f.exception() is None]
        for runner, handles, _, stream in started:
            self.runners.append(runner)
            self.handles.append(handles)
            self.streams.append(stream)
        if k > 1:
            for i, stream in enumerate(self.streams):  # the replies are read in this order
                stream.poll_while(busy=k - i)
        failed = [f.exception() for f in futures if f.exception() is not None]
        if failed:
            self.close()
            raise failed[0]  # type: ignore[misc]

        #: The first env's description (spaces, metadata, render mode, spec).
        self.description: dict[str, Any] = started[0][2]
        self.single_observation_space = space_codec.rebuild(self.description["observation_space"])
        self.single_action_space = space_codec.rebuild(self.description["action_space"])
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._observations = create_empty_array(self.single_observation_space, n=num_envs, fn=np.zeros)

    def reset(
        self, seeds: list[int | None], options: dict[str, Any] | list[dict[str, Any] | None] | None
    ) -> tuple[Any, list[dict[str, Any]]]:
        """Reset every env, env ``i`` with ``seeds[i]`` and ``options`` (or ``options[i]``):
        the batched observations and one info per env."""
        if type(options) is list:
            if len(options) != self.num_envs:
                raise ValueError(f"got {len(options)} options for {self.num_envs} envs")
            args = [[seeds[a:b], options[a:b]] for a, b in self.slices]
        else:
            args = [[seeds[a:b], options] for a, b in self.slices]
        replies = self.request(RESET, args, RESET_REPLY_SIZE)
        for (a, b), reply in zip(self.slices, replies, strict=True):
            self._check_lists(reply, b - a, RESET)
        return self._batch([r[1] for r in replies]), [info for r in replies for info in r[2]]

    def step(
        self, actions: Any, autoreset: str = AUTORESET_NEXT_STEP
    ) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        """Step every env with its row of ``actions`` (of the batched action space): the
        batched observations, rewards (float64), terminations and truncations (bool), and
        one info per env. ``autoreset``: when an env that ended is reset, see
        :mod:`remote.protocol.ops` (``AUTORESET_SAME_STEP``: in this step, its info then
        holds ``"final_obs"`` and ``"final_info"``)."""
        if type(actions) is np.ndarray and isinstance(self.action_space, _ARRAY_SPACES):
            if actions.shape[:1] != (self.num_envs,):
                raise ValueError(f"actions of shape {actions.shape} for {self.num_envs} envs")
            each: Any = actions  # the server splits rows as gymnasium's iterate does
        else:
            each = list(iterate(self.action_space, actions))
        if autoreset == AUTORESET_NEXT_STEP:  # the request as before
            args = [each[a:b] for a, b in self.slices]
        else:
            args = [{"actions": each[a:b], "autoreset": autoreset} for a, b in self.slices]
        replies = self.request(STEP, args, STEP_REPLY_SIZE)
        for (a, b), reply in zip(self.slices, replies, strict=True):
            self._check_lists(reply, b - a, STEP)
            for column in (2, 3, 4):
                value = reply[column]
                if type(value) is not np.ndarray or value.shape != (b - a,):
                    raise ProtocolError(f"malformed step reply: {value!r:.80}")
        if len(replies) == 1:  # one container: its arrays as they came
            _, obs, rewards, terminations, truncations, infos = replies[0]
            return (
                self._batch([obs]),
                rewards.astype(np.float64, copy=False),
                terminations.astype(np.bool_, copy=False),
                truncations.astype(np.bool_, copy=False),
                infos,
            )
        return (
            self._batch([r[1] for r in replies]),
            np.concatenate([r[2] for r in replies]).astype(np.float64, copy=False),
            np.concatenate([r[3] for r in replies]).astype(np.bool_, copy=False),
            np.concatenate([r[4] for r in replies]).astype(np.bool_, copy=False),
            [info for r in replies for info in r[5]],
        )

    def request(self, op: str, args: list[Any], size: int) -> list[list[Any]]:
        """Send ``op`` to every container (``args[g]`` to container ``g``), then read every
        reply (``size`` items each). Every stream is read even when one fails, so all stay
        in step; the first error is raised after. The wait for reply ``g`` polls only where
        the CPUs outnumber the containers that may still be stepping (``len - g``): a poll
        beside them would take the CPU one of them needs."""
        error: BaseException | None = None
        sent = 0
        try:
            for stream, group_args in zip(self.streams, args, strict=True):
                stream.send(op, group_args)
                sent += 1
        except TypeError as exc:
            error = InvalidAction(f"action cannot be sent: {exc}")
        except RemoteError as exc:
            error = exc
        replies = []
        for stream in self.streams[:sent]:
            try:
                replies.append(stream.receive(op, size))
            except RemoteError as exc:
                error = error or exc
        if error is not None:
            raise error
        return replies

    def locate(self, index: int) -> tuple[RemoteRunner, int]:
        """The runner of env ``index`` and the env's handle in its container."""
        if not 0 <= index < self.num_envs:
            raise IndexError(f"env index {index} out of range for {self.num_envs} envs")
        group, offset = divmod(index, self.group_sizes[0])
        return self.runners[group], self.handles[group][offset]

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
        """Batch the groups' observations (each stacked in one array, or a list) as
        gymnasium's ``concatenate`` does, in memory the caller owns: the one group's array as
        it came (new memory from the wire) where it has the batch's dtype and shape, else a
        new array, or a copy of the buffer of a dict or tuple space."""
        buffer = self._observations
        if isinstance(buffer, np.ndarray) and all(type(g) is np.ndarray for g in groups):
            if len(groups) == 1 and groups[0].dtype == buffer.dtype and groups[0].shape == buffer.shape:
                return groups[0]
            return np.concatenate(groups, axis=0, out=np.empty_like(buffer))  # as np.stack(out=) casts
        observations = [obs for group in groups for obs in group]
        self._observations = concatenate(self.single_observation_space, observations, buffer)
        return deepcopy(self._observations)

    def close(self) -> None:
        """Close the envs and stop their containers. Safe to call more than once."""
        for stream in self.streams:
            if stream.open:
                with contextlib.suppress(RemoteError):
                    stream.call(CLOSE, None, CLOSE_REPLY_SIZE)
                stream.drop("the vector env is closed")
        if self.runners:
            with ThreadPoolExecutor(max_workers=len(self.runners)) as pool:
                list(pool.map(RemoteRunner.close, self.runners))


class RemoteVectorEnv(VectorEnv):
    """``num_envs`` copies of an env, ``envs_per_container`` to a container; see :func:`make_vec`.

    Observations are batched with gymnasium's ``batch_space``/``concatenate`` rules, in new
    memory at every call (``copy`` is accepted as ``SyncVectorEnv``'s and changes nothing:
    what a copy would protect is never overwritten); ``step`` returns float64 rewards and
    bool terminations/truncations, infos merged as gymnasium's vector envs do. ``close()``
    stops the containers.
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
        self.copy = copy
        self.groups = EnvGroups(
            env_id,
            num_envs,
            image=image,
            envs_per_container=envs_per_container,
            runner_options={"transport": transport, "timeout": timeout, **(runner_options or {})},
            wrappers=wrappers,
            env_kwargs=env_kwargs,
        )
        groups = self.groups
        self.num_envs = num_envs
        self.group_sizes = groups.group_sizes
        self._runners, self._streams = groups.runners, groups.streams
        description = groups.description
        self.single_observation_space = groups.single_observation_space
        self.single_action_space = groups.single_action_space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = groups.action_space
        self.metadata = {**(description.get("metadata") or {}), "autoreset_mode": AutoresetMode.NEXT_STEP}
        self.render_mode = description.get("render_mode")
        self.spec = spec_from(description.get("spec"))

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset every env; ``seed`` an int (env i gets ``seed + i``) or one seed per env."""
        seeds = seeds_for(seed, self.num_envs)
        if options is not None and "reset_mask" in options:
            raise ValueError("options['reset_mask'] is not supported by remote vector envs")
        observations, each = self.groups.reset(seeds, options)
        return observations, self._merged(each)

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every env (an env that ended on the previous step is reset instead)."""
        observations, rewards, terminations, truncations, each = self.groups.step(actions)
        return observations, rewards, terminations, truncations, self._merged(each)

    def _merged(self, each: list[dict[str, Any]]) -> dict[str, Any]:
        """One info per env, merged as gymnasium's vector envs merge them (``_add_info``);
        at once, key by key, where every env's info has the same keys of plain numbers."""
        merged = merged_numbers(each)
        if merged is not None:
            return merged
        infos: dict[str, Any] = {}
        for i, info in enumerate(each):
            infos = self._add_info(infos, info, i)
        return infos

    def close_extras(self, **kwargs: Any) -> None:
        """Close the envs and stop their containers."""
        groups = self.__dict__.get("groups")  # absent if the containers did not start
        if groups is not None:
            groups.close()

    @property
    def runners(self) -> list[RemoteRunner]:
        """The runners of the containers, one per group of envs."""
        return list(self.groups.runners)

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


#: The types ``_add_info`` batches in an array of their own type.
_NUMBERS = (int, float, bool)


def merged_numbers(each: list[dict[str, Any]]) -> dict[str, Any] | None:
    """What gymnasium's ``_add_info`` makes of ``each`` (every env's info: ``{key: array of
    the first env's value's type, "_key": all True}``, in its keys' order), or None unless
    every info has the same keys in the same order (none the mask of another) and every value is
    an int, float, bool or numpy number its first env's type holds."""
    first = each[0]
    keys = list(first)
    for info in each:
        if list(info) != keys:
            return None
    if any(f"_{key}" in first for key in keys):  # a key that is another's mask: gymnasium's merge
        return None
    merged: dict[str, Any] = {}
    n = len(each)
    for key in keys:
        values = [info[key] for info in each]
        kind = type(values[0])
        if not (kind in _NUMBERS or issubclass(kind, np.number)):
            return None
        try:
            merged[key] = np.array(values, dtype=kind)
        except (OverflowError, ValueError):  # a number the first's type cannot hold: gymnasium's
            return None  # env-by-env merge raises what gymnasium raises, for the env it meets first
        merged[f"_{key}"] = np.ones(n, dtype=np.bool_)
    return merged
