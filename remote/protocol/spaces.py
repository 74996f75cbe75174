"""Gymnasium spaces as plain data, so the host can rebuild the container's spaces locally.

:func:`describe` turns a space into a dict of plain values (arrays included) that the
wire codec carries; :func:`rebuild` turns that dict back into an equal space. Supported:
Box, Discrete, MultiDiscrete, MultiBinary, Text, Tuple, Dict, Sequence, Graph and OneOf,
nested to any depth; a subclass of one of them travels as that space.

Any other space (a direct ``gymnasium.spaces.Space`` subclass such as minigrid's
``MissionSpace``) travels as an *opaque* space: ``{"type": "Opaque", "name":
"module.QualName", "shape": [int, ...] | None, "dtype": str | None, "example": value}``,
``example`` a value sampled from a copy of the space (left out when sampling fails or the
value cannot travel). The host rebuilds it as a :class:`RemoteSpace`.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
from gymnasium import spaces

from ..errors import ProtocolError, RemoteError
from . import codec

#: The ``type`` of an opaque space's description.
OPAQUE = "Opaque"


def describe(space: spaces.Space, path: str = "space") -> dict[str, Any]:
    """Plain-data description of ``space``, called ``path`` in errors (``"observation_space"``).

    Raises:
        TypeError: ``space`` (or a space inside it) is no gymnasium space, or its
            parameters cannot travel; the message names it by its path
            (``observation_space['mission']``) and says why.
    """
    if not isinstance(space, spaces.Space):
        raise TypeError(
            f"{path} is a {_qualname(space)}, not a gymnasium.spaces.Space, so it cannot be sent "
            "to the host (an env written for the old gym package needs a gymnasium port or shimmy)"
        )
    if isinstance(space, spaces.Tuple):
        return {"type": "Tuple", "spaces": [describe(s, f"{path}[{i}]") for i, s in enumerate(space.spaces)]}
    if isinstance(space, spaces.Dict):
        for key in space.spaces:
            try:
                codec.dumps(key)
            except TypeError as exc:
                raise TypeError(f"{path} has a key that cannot be sent to the host: {exc}") from None
        return {
            "type": "Dict",
            "spaces": [[k, describe(s, f"{path}[{k!r}]")] for k, s in space.spaces.items()],
        }
    if isinstance(space, spaces.Sequence):
        return {
            "type": "Sequence",
            "space": describe(space.feature_space, f"{path}.feature_space"),
            "stack": bool(getattr(space, "stack", False)),
        }
    if isinstance(space, spaces.Graph):
        edge = space.edge_space
        return {
            "type": "Graph",
            "node_space": describe(space.node_space, f"{path}.node_space"),
            "edge_space": None if edge is None else describe(edge, f"{path}.edge_space"),
        }
    one_of = getattr(spaces, "OneOf", None)
    if one_of is not None and isinstance(space, one_of):
        return {"type": "OneOf", "spaces": [describe(s, f"{path}[{i}]") for i, s in enumerate(space.spaces)]}
    desc = _describe_leaf(space)
    try:
        codec.dumps(desc)
    except TypeError as exc:
        raise TypeError(f"{path}, a {_qualname(space)}, cannot be sent to the host: {exc}") from None
    return desc


def _describe_leaf(space: spaces.Space) -> dict[str, Any]:
    """A space that holds no other spaces: one of gymnasium's, or an opaque one."""
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
    if isinstance(space, RemoteSpace):
        return space.description()  # the container's space, as it came: a round trip is exact
    return _describe_opaque(space)


def _describe_opaque(space: spaces.Space) -> dict[str, Any]:
    try:
        shape = space.shape
    except Exception:  # a subclass's property that cannot answer
        shape = None
    dtype = getattr(space, "dtype", None)
    desc: dict[str, Any] = {
        "type": OPAQUE,
        "name": _qualname(space),
        "shape": None if shape is None else [int(n) for n in shape],
        "dtype": None if dtype is None else np.dtype(dtype).str,
    }
    try:
        example = _sample_quietly(space)
        codec.dumps(example)
    except Exception:  # no sample (NotImplementedError), or a value the codec cannot carry
        return desc
    desc["example"] = example
    return desc


def _sample_quietly(space: spaces.Space) -> Any:
    """``space.sample()``, leaving the space's generator in the state it was in (the env's
    own samples stay those of a local env)."""
    generator = space.np_random.bit_generator
    state = generator.state
    try:
        return space.sample()
    finally:
        generator.state = state


def _qualname(value: Any) -> str:
    cls = type(value)
    return f"{cls.__module__}.{cls.__qualname__}"


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
    if kind == OPAQUE:
        if not isinstance(desc["name"], str):
            raise ProtocolError(f"an opaque space's name must be a str, not {desc['name']!r:.40}")
        if "example" in desc:
            return RemoteSpace(desc["name"], desc["shape"], desc["dtype"], desc["example"])
        return RemoteSpace(desc["name"], desc["shape"], desc["dtype"])
    raise ProtocolError(f"unknown space type {kind!r}")


class NoExample(RemoteError, NotImplementedError):
    """A :class:`RemoteSpace` without an example cannot be sampled on the host."""


_NO_EXAMPLE: Any = object()


class RemoteSpace(spaces.Space):
    """The host's stand-in for a space of the container with no gymnasium base (such as
    minigrid's ``MissionSpace``): the remote class's name, its shape and dtype, and an
    example value sampled in the container.

    ``contains(x)`` accepts values of the example's kind: a str for a str example, an
    ndarray of the same dtype and shape for an array, else a value of the same type
    (anything, when there is no example). ``sample()`` returns a copy of the example.
    gymnasium's vector utilities treat it as any custom space (``batch_space`` gives a
    ``Tuple`` of copies, ``concatenate`` a tuple).
    """

    def __init__(
        self,
        name: str,
        shape: Any = None,
        dtype: Any = None,
        example: Any = _NO_EXAMPLE,
        seed: int | np.random.Generator | None = None,
    ) -> None:
        super().__init__(None if shape is None else tuple(int(n) for n in shape), dtype, seed)
        #: The qualified name of the space's class in the container.
        self.name = name
        #: Whether the container sent an example value (its sample travelled).
        self.has_example = example is not _NO_EXAMPLE
        #: The example value (None without one).
        self.example = example if self.has_example else None
        #: The example as codec bytes (b"" without one): what equality compares.
        self.example_key = b"=" + codec.dumps(example) if self.has_example else b""

    def description(self) -> dict[str, Any]:
        """The description this space was rebuilt from (see :func:`describe`)."""
        desc: dict[str, Any] = {
            "type": OPAQUE,
            "name": self.name,
            "shape": None if self.shape is None else list(self.shape),
            "dtype": None if self.dtype is None else self.dtype.str,
        }
        if self.has_example:
            desc["example"] = self.example
        return desc

    def sample(self, mask: Any | None = None, probability: Any | None = None) -> Any:
        """A copy of the example (``mask`` and ``probability`` are not supported and ignored)."""
        if not self.has_example:
            raise NoExample(
                f"{self.name} sent no example value from the container, so it cannot be sampled "
                "on the host; sample in the container (a wrapper), or give the env a gymnasium space"
            )
        return copy.deepcopy(self.example)

    def contains(self, x: Any) -> bool:
        if not self.has_example:
            return True
        example = self.example
        if isinstance(example, str):
            return isinstance(x, str)
        if isinstance(example, np.ndarray):
            return isinstance(x, np.ndarray) and x.dtype == example.dtype and x.shape == example.shape
        return type(x) is type(example)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, RemoteSpace)
            and self.name == other.name
            and self.shape == other.shape
            and self.dtype == other.dtype
            and self.example_key == other.example_key
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, equal by value, as gymnasium's spaces

    def __repr__(self) -> str:
        example = f", example={self.example!r:.60}" if self.has_example else ""
        return f"RemoteSpace({self.name}{example})"
