"""Gymnasium spaces as plain data, so the host can rebuild the container's spaces locally.

:func:`describe` turns a space into a dict of plain values (arrays included) that the
wire codec carries; :func:`rebuild` turns that dict back into an equal space. Supported:
Box, Discrete, MultiDiscrete, MultiBinary, Text, Tuple, Dict, Sequence, Graph and OneOf,
nested to any depth.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from ..errors import ProtocolError


def describe(space: spaces.Space) -> dict[str, Any]:
    """Plain-data description of ``space``; raise TypeError for a space type with no rule."""
    if isinstance(space, spaces.Box):
        return {"type": "Box", "low": space.low, "high": space.high, "dtype": space.dtype.str}
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": space.nvec, "start": space.start, "dtype": space.dtype.str}
    if isinstance(space, spaces.MultiBinary):
        n = space.n
        return {"type": "MultiBinary", "n": int(n) if np.ndim(n) == 0 else [int(k) for k in n]}
    if isinstance(space, spaces.Text):
        charset = "".join(getattr(space, "character_list", None) or sorted(space.character_set))
        return {
            "type": "Text",
            "max_length": int(space.max_length),
            "min_length": int(space.min_length),
            "charset": charset,
        }
    if isinstance(space, spaces.Tuple):
        return {"type": "Tuple", "spaces": [describe(s) for s in space.spaces]}
    if isinstance(space, spaces.Dict):
        return {"type": "Dict", "spaces": [[k, describe(s)] for k, s in space.spaces.items()]}
    if isinstance(space, spaces.Sequence):
        return {
            "type": "Sequence",
            "space": describe(space.feature_space),
            "stack": bool(getattr(space, "stack", False)),
        }
    if isinstance(space, spaces.Graph):
        edge = space.edge_space
        return {
            "type": "Graph",
            "node_space": describe(space.node_space),
            "edge_space": None if edge is None else describe(edge),
        }
    one_of = getattr(spaces, "OneOf", None)
    if one_of is not None and isinstance(space, one_of):
        return {"type": "OneOf", "spaces": [describe(s) for s in space.spaces]}
    raise TypeError(
        f"space {type(space).__name__} cannot be sent to the host; use one of the gymnasium "
        "spaces Box, Discrete, MultiDiscrete, MultiBinary, Text, Tuple, Dict, Sequence, "
        "Graph, OneOf"
    )


def rebuild(desc: dict[str, Any]) -> spaces.Space:
    """Rebuild a space from :func:`describe`'s output; raise ProtocolError if malformed."""
    try:
        return _rebuild(desc)
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(f"malformed space description {desc!r:.200}: {exc}") from None


def _rebuild(desc: dict[str, Any]) -> spaces.Space:
    kind = desc["type"]
    if kind == "Box":
        return spaces.Box(low=desc["low"], high=desc["high"], dtype=np.dtype(desc["dtype"]))
    if kind == "Discrete":
        return spaces.Discrete(desc["n"], start=desc["start"])
    if kind == "MultiDiscrete":
        return spaces.MultiDiscrete(desc["nvec"], dtype=np.dtype(desc["dtype"]), start=desc["start"])
    if kind == "MultiBinary":
        return spaces.MultiBinary(desc["n"])
    if kind == "Text":
        return spaces.Text(desc["max_length"], min_length=desc["min_length"], charset=desc["charset"])
    if kind == "Tuple":
        return spaces.Tuple([_rebuild(d) for d in desc["spaces"]])
    if kind == "Dict":
        return spaces.Dict({k: _rebuild(d) for k, d in desc["spaces"]})
    if kind == "Sequence":
        return spaces.Sequence(_rebuild(desc["space"]), stack=desc["stack"])
    if kind == "Graph":
        edge = desc["edge_space"]
        return spaces.Graph(_rebuild(desc["node_space"]), None if edge is None else _rebuild(edge))
    if kind == "OneOf":
        return spaces.OneOf([_rebuild(d) for d in desc["spaces"]])
    raise ProtocolError(f"unknown space type {kind!r}")
