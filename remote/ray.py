"""Remote envs on a Ray cluster: containers in Ray actors, stepped as one vector env.

Each :class:`EnvActor` is a Ray actor that Ray's scheduler places on a node with the CPUs,
memory, GPUs (and, where nodes declare it, the custom ``apptainer`` resource) it asks for.
The actor runs one container on its node (a :class:`remote.ContainerManager` with a record on
that node, so the record says which node ran which container) and ``envs_per_actor`` envs
in it. :class:`RayVectorEnv` steps all envs at once: one call per actor, all issued before
any answer is awaited.

The image source string travels to the actor, which resolves it on its node: through the
node's cache (``$REMOTE_CACHE``, which may be a shared filesystem) or a path every node sees.

Ray is an optional dependency (``pip install remote[cluster]``); it is imported on first use.

Example::

    ray.init(address="auto")
    envs = remote.ray.make_vec("CartPole-v1", 8, image="https://.../gym.sif", sha256=..., envs_per_actor=2)
    obs, infos = envs.reset(seed=0)
"""

from __future__ import annotations

import contextlib
import secrets
import socket
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array, iterate

from .errors import ContainerDied, ContainerStartError, RemoteError
from .seeding import seeds_for

#: Event noted on the record when an actor's container starts: "ray node <id> on <host>".
PLACED = "PLACED"


class EnvActor:
    """The body of a Ray actor: one container on this node and ``count`` envs in it.

    Args:
        image: the image source (path, URL, reference), resolved on this node.
        env_id: the env to make, ``count`` times, with ``env_kwargs``.
        name: the worker id of its container on this node's record.
        runner_options: more :meth:`remote.ContainerManager.create` options (transport,
            runtime, sha256, timeout, env, binds, ...).
    """

    def __init__(
        self,
        image: str,
        env_id: str,
        count: int,
        name: str,
        env_kwargs: Mapping[str, Any],
        runner_options: Mapping[str, Any],
    ) -> None:
        import ray

        from .manager import ContainerManager

        self.node_id = ray.get_runtime_context().get_node_id()
        self.hostname = socket.gethostname()
        options = dict(runner_options)
        runtime = options.pop("runtime", None)
        self._manager = ContainerManager(prefix="ray", max_restarts=0, sample_interval=0, runtime=runtime)
        self.container = self._manager.create(name, image, cpus=0, **options)
        self._manager.start(self.container)
        self.record_id = self._manager.record.latest_container_id(self.container, self._manager.owner)
        self._manager.record.add_event(self.record_id, PLACED, f"ray node {self.node_id} on {self.hostname}")
        self._envs = [self._manager.make(self.container, env_id, **env_kwargs) for _ in range(count)]

    def describe(self) -> dict[str, Any]:
        """Where this actor runs, and its envs' spaces and metadata."""
        env = self._envs[0]
        return {
            "node_id": self.node_id,
            "hostname": self.hostname,
            "container": self.container,
            "record": str(self._manager.record.path),
            "record_id": self.record_id,
            "observation_space": env.observation_space,
            "action_space": env.action_space,
            "metadata": dict(env.metadata),
            "spec": env.spec,
        }

    def reset(self, seeds: Sequence[int | None], options: Mapping[str, Any] | None) -> list[tuple[Any, dict]]:
        """Reset every env, env ``i`` with ``seeds[i]``."""
        return [env.reset(seed=seed, options=options) for env, seed in zip(self._envs, seeds, strict=True)]

    def step(self, moves: Sequence[tuple[bool, Any]]) -> list[tuple[Any, float, bool, bool, dict]]:
        """Env ``i`` resets if ``moves[i]`` is ``(True, _)``, else steps with the action
        ``moves[i][1]``; a reset reports reward 0, not terminated, not truncated."""
        results = []
        for env, (reset, action) in zip(self._envs, moves, strict=True):
            if reset:
                obs, info = env.reset()
                results.append((obs, 0.0, False, False, info))
            else:
                results.append(env.step(action))
        return results

    def close(self) -> None:
        """Close the envs and stop the container."""
        for env in self._envs:
            env.close()
        self._manager.close()


class RayVectorEnv(VectorEnv):
    """``num_envs`` remote envs spread over Ray actors, stepped concurrently.

    Autoreset is gymnasium's NEXT_STEP mode, as in ``SyncVectorEnv``: the step after an env
    terminated or truncated resets it (reward 0), so trajectories equal local ones for the
    same seeds and actions. Made by :func:`make_vec`.

    If an actor is lost (its node or worker died), the call raises
    :class:`remote.ContainerDied` whose ``env_indices`` are the envs that were in it; the
    other actors are intact: :meth:`without_lost` continues with them.
    """

    metadata: dict[str, Any] = {"autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, actors: Sequence[Any], counts: Sequence[int], descriptions: Sequence[dict]) -> None:
        self._actors = list(actors)
        self._counts = list(counts)
        #: Per actor: node id, hostname, container name, record file and row.
        keys = ("node_id", "hostname", "container", "record", "record_id")
        self.placements = [{k: d[k] for k in keys} for d in descriptions]
        first = descriptions[0]
        self.num_envs = sum(self._counts)
        self.single_observation_space = first["observation_space"]
        self.single_action_space = first["action_space"]
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.metadata = {**first["metadata"], "autoreset_mode": AutoresetMode.NEXT_STEP}
        self.spec = first["spec"]
        self._autoreset = np.zeros(self.num_envs, dtype=bool)
        self._lost: dict[int, BaseException] = {}
        self.closed = False

    @property
    def env_nodes(self) -> list[str]:
        """The Ray node id of each env."""
        return [p["node_id"] for p, n in zip(self.placements, self._counts, strict=True) for _ in range(n)]

    def _indices(self, actor: int) -> list[int]:
        start = sum(self._counts[:actor])
        return list(range(start, start + self._counts[actor]))

    def _gather(self, futures: list[Any], what: str) -> list[Any]:
        """``ray.get`` every future; a lost actor becomes ContainerDied, an error raised in
        an actor (e.g. its container died) is re-raised as itself."""
        import ray

        try:
            return ray.get(futures)
        except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError):
            pass
        results = []
        for actor, future in enumerate(futures):
            try:
                results.append(ray.get(future))
            except ray.exceptions.RayActorError as exc:
                self._lost[actor] = exc
            except ray.exceptions.RayTaskError as exc:
                cause = exc.cause
                if isinstance(cause, RemoteError):
                    cause.env_indices = self._indices(actor)  # type: ignore[attr-defined]
                    raise cause from None
                raise
        raise self._lost_error(what)

    def _lost_error(self, what: str) -> ContainerDied:
        indices = sorted(i for actor in self._lost for i in self._indices(actor))
        where = "; ".join(
            f"envs {self._indices(a)} on node {self.placements[a]['node_id'][:12]} "
            f"({self.placements[a]['hostname']}): {type(exc).__name__}"
            for a, exc in sorted(self._lost.items())
        )
        error = ContainerDied(
            f"{what}: lost the Ray actors holding {where}. Their node or worker died and their "
            "containers with them. The other envs are intact: continue with vec.without_lost() "
            "(then reset it), or make a new vector env"
        )
        error.env_indices = indices  # type: ignore[attr-defined]
        return error

    def _check(self, what: str) -> None:
        if self.closed:
            raise RemoteError(f"{what}: this RayVectorEnv is closed")
        if self._lost:
            raise self._lost_error(what)

    def reset(
        self, *, seed: int | Sequence[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset every env; ``seed`` an int gives env ``i`` the seed ``seed + i``."""
        self._check("reset")
        seeds = seeds_for(seed, self.num_envs)
        futures = [
            actor.reset.remote([seeds[i] for i in self._indices(k)], options)
            for k, actor in enumerate(self._actors)
        ]
        results = [r for batch in self._gather(futures, "reset") for r in batch]
        self._autoreset[:] = False
        infos: dict[str, Any] = {}
        for i, (_, info) in enumerate(results):
            infos = self._add_info(infos, info, i)
        return self._batch([obs for obs, _ in results]), infos

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every env (or reset the ones that ended on the previous step)."""
        self._check("step")
        moves = list(zip(self._autoreset.tolist(), iterate(self.action_space, actions), strict=True))
        futures = [
            actor.step.remote([moves[i] for i in self._indices(k)]) for k, actor in enumerate(self._actors)
        ]
        results = [r for batch in self._gather(futures, "step") for r in batch]
        rewards = np.array([r[1] for r in results], dtype=np.float64)
        terminations = np.array([r[2] for r in results], dtype=np.bool_)
        truncations = np.array([r[3] for r in results], dtype=np.bool_)
        infos: dict[str, Any] = {}
        for i, result in enumerate(results):
            infos = self._add_info(infos, result[4], i)
        self._autoreset = terminations | truncations
        return self._batch([r[0] for r in results]), rewards, terminations, truncations, infos

    def _batch(self, observations: list[Any]) -> Any:
        out = create_empty_array(self.single_observation_space, n=self.num_envs, fn=np.zeros)
        return concatenate(self.single_observation_space, observations, out)

    def without_lost(self) -> RayVectorEnv:
        """A vector env of the envs whose actors are alive (this one is closed); reset it first."""
        keep = [k for k in range(len(self._actors)) if k not in self._lost]
        if not keep:
            raise ContainerDied("every actor of this RayVectorEnv is lost: make a new one")
        survivor = RayVectorEnv(
            [self._actors[k] for k in keep],
            [self._counts[k] for k in keep],
            [{**self.placements[k], **self._spaces()} for k in keep],
        )
        self._actors = [a for k, a in enumerate(self._actors) if k in self._lost]
        self.closed = True
        return survivor

    def _spaces(self) -> dict[str, Any]:
        return {
            "observation_space": self.single_observation_space,
            "action_space": self.single_action_space,
            "metadata": self.metadata,
            "spec": self.spec,
        }

    def close_extras(self, **kwargs: Any) -> None:
        """Stop every actor's container, then the actors."""
        import ray

        alive = [k for k in range(len(self._actors)) if k not in self._lost]
        futures = [self._actors[k].close.remote() for k in alive]
        # an actor that cannot close its envs still loses them when it is killed below
        with contextlib.suppress(ray.exceptions.RayError, TimeoutError):
            ray.get(futures, timeout=30)
        for actor in self._actors:
            ray.kill(actor)
        self._actors = []
        self.closed = True


def make_vec(
    env_id: str,
    num_envs: int,
    *,
    image: str,
    envs_per_actor: int = 1,
    num_cpus: float = 1,
    memory: int | None = None,
    num_gpus: float = 0,
    resources: Mapping[str, float] | Sequence[Mapping[str, float]] | None = None,
    scheduling_strategy: Any = "SPREAD",
    address: str | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
    **runner_options: Any,
) -> RayVectorEnv:
    """``num_envs`` envs ``env_id`` in containers of ``image``, on Ray actors over the cluster.

    Args:
        envs_per_actor: envs per actor (one container per actor); the last actor takes the rest.
        num_cpus, memory, num_gpus: what each actor asks Ray for (``memory`` in bytes).
        resources: custom Ray resources per actor, or one mapping per actor (to pin actors
            to nodes). When any node declares an ``apptainer`` resource (``ray start
            --resources='{"apptainer": 64}'``), each actor also asks for 0.01 of it, so
            actors land only on nodes that can run containers.
        scheduling_strategy: Ray's; the default ``"SPREAD"`` spreads actors over nodes.
        address: the cluster to join if Ray is not initialised yet (``"auto"``: the local
            node's cluster; None: Ray's default).
        env_kwargs: the env's constructor arguments.
        **runner_options: for each container (``sha256``, ``transport``, ``runtime``,
            ``timeout``, ``env``, ``binds``...); see :meth:`remote.ContainerManager.create`.

    Raises:
        ContainerStartError: an actor could not start its container (the message says
            which node and why).
    """
    import ray

    if num_envs < 1 or envs_per_actor < 1:
        raise ValueError("num_envs and envs_per_actor must be at least 1")
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False)
    counts = [envs_per_actor] * (num_envs // envs_per_actor)
    if num_envs % envs_per_actor:
        counts.append(num_envs % envs_per_actor)
    if isinstance(resources, Sequence):
        per_actor = [dict(r) for r in resources]
    else:
        per_actor = [dict(resources or {})] * len(counts)
    if len(per_actor) != len(counts):
        raise ValueError(f"resources: {len(per_actor)} mappings for {len(counts)} actors")
    needs_apptainer = "apptainer" in ray.cluster_resources()
    actor_class = ray.remote(EnvActor)
    actors = []
    for k, count in enumerate(counts):
        wanted = {**per_actor[k], **({"apptainer": 0.01} if needs_apptainer else {})}
        options: dict[str, Any] = {
            "num_cpus": num_cpus,
            "num_gpus": num_gpus,
            "resources": wanted,
            "max_restarts": 0,
            "scheduling_strategy": scheduling_strategy,
        }
        if memory:
            options["memory"] = memory
        actors.append(
            actor_class.options(**options).remote(
                str(image),
                env_id,
                count,
                f"{k}-{secrets.token_hex(3)}",
                dict(env_kwargs or {}),
                runner_options,
            )
        )
    try:
        descriptions = ray.get([actor.describe.remote() for actor in actors])
    except ray.exceptions.RayError as exc:
        for actor in actors:
            ray.kill(actor)
        raise ContainerStartError(
            f"a Ray actor could not start its container of {image} for {env_id}: {exc}"
        ) from None
    return RayVectorEnv(actors, counts, descriptions)
