"""Spaces survive the trip to the host (no container needed)."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium import spaces

from remote.errors import ProtocolError
from remote.protocol import codec
from remote.protocol import spaces as space_codec

SPACES = [
    spaces.Box(-1.0, 1.0, (3, 2), np.float32),
    spaces.Box(np.array([0, -5]), np.array([1, 5]), dtype=np.int64),
    spaces.Box(0, 255, (4, 4, 3), np.uint8),
    spaces.Box(-np.inf, np.inf, (2,), np.float64),
    spaces.Discrete(5),
    spaces.Discrete(3, start=-1),
    spaces.MultiDiscrete([3, 4, 2]),
    spaces.MultiDiscrete(np.array([[2, 3], [4, 5]]), start=np.array([[1, 1], [0, 0]])),
    spaces.MultiBinary(6),
    spaces.MultiBinary([2, 3]),
    spaces.Text(8, min_length=2, charset="abc"),
    spaces.Tuple((spaces.Discrete(2), spaces.Box(0, 1, (2,)))),
    spaces.Dict({"b": spaces.Discrete(2), "a": spaces.Dict({"x": spaces.MultiBinary(2)})}),
    spaces.Sequence(spaces.Discrete(4)),
    spaces.Sequence(spaces.Box(0, 1, (2,)), stack=True),
    spaces.Graph(spaces.Box(0, 1, (3,)), spaces.Discrete(2)),
    spaces.Graph(spaces.Discrete(3), None),
    spaces.OneOf((spaces.Discrete(2), spaces.Box(0, 1, (2,)))),
]


@pytest.mark.parametrize("space", SPACES, ids=[repr(s)[:40] for s in SPACES])
def test_space_round_trips_through_the_wire(space):
    back = space_codec.rebuild(codec.loads(codec.dumps(space_codec.describe(space))))
    assert back == space
    assert type(back) is type(space)
    if isinstance(space, spaces.Dict):
        assert list(back.spaces) == list(space.spaces)  # key order kept
    space.seed(0)
    sample = space.sample()
    assert back.contains(sample)


def test_unknown_space_is_refused():
    class Odd(spaces.Space):
        pass

    with pytest.raises(TypeError, match="cannot be sent"):
        space_codec.describe(Odd())
    with pytest.raises(ProtocolError):
        space_codec.rebuild({"type": "Nope"})
    with pytest.raises(ProtocolError):
        space_codec.rebuild({"type": "Box", "low": 1})
