"""Seeds for vector envs, spread over their envs as gymnasium's vector envs spread them."""

from __future__ import annotations

from collections.abc import Sequence


def seeds_for(seed: int | Sequence[int | None] | None, num_envs: int) -> list[int | None]:
    """One seed per env, as gymnasium's vector envs take them: None for all, an int ``s``
    (env ``i`` gets ``s + i``), or a list of ``num_envs`` seeds."""
    if seed is None:
        return [None] * num_envs
    if isinstance(seed, int):
        return [seed + i for i in range(num_envs)]
    seeds = list(seed)
    if len(seeds) != num_envs:
        raise ValueError(f"got {len(seeds)} seeds for {num_envs} envs")
    return seeds
