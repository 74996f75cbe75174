"""Spaces survive the trip to the host (no container needed)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array, iterate

from remote.errors import ProtocolError, RemoteError
from remote.protocol import codec
from remote.protocol import spaces as space_codec
from remote.protocol.spaces import RemoteSpace

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


class Word(spaces.Space):
    """A custom space with no gymnasium base (as minigrid's MissionSpace): str values."""

    def __init__(self, words: tuple[str, ...] = ("key", "door", "goal")) -> None:
        super().__init__(dtype=str)
        self.words = words

    def sample(self, mask=None, probability=None) -> str:
        return self.words[int(self.np_random.integers(len(self.words)))]

    def contains(self, x) -> bool:
        return x in self.words


class Noise(spaces.Space):
    """A custom space of float32 arrays."""

    def __init__(self) -> None:
        super().__init__(shape=(2, 3), dtype=np.float32)

    def sample(self, mask=None, probability=None) -> np.ndarray:
        return self.np_random.standard_normal((2, 3)).astype(np.float32)


class Bare(spaces.Space):
    """A custom space that cannot sample."""


class Strange(spaces.Discrete):
    """A subclass of a gymnasium space travels as that space."""


def _through_the_wire(space: spaces.Space) -> spaces.Space:
    return space_codec.rebuild(codec.loads(codec.dumps(space_codec.describe(space, "observation_space"))))


def test_a_custom_space_travels_as_an_opaque_space():
    space = Word()
    space.seed(3)
    state = space.np_random.bit_generator.state
    back = _through_the_wire(space)
    assert space.np_random.bit_generator.state == state  # describing sampled nothing of the env's
    assert isinstance(back, RemoteSpace) and back.name == f"{__name__}.Word"
    assert f"{__name__}.Word" in repr(back) and back.example in space.words
    assert back == _through_the_wire(space) and back != _through_the_wire(Noise())
    assert back.contains("any str at all") and not back.contains(1) and not back.contains(b"key")
    assert back.sample() == back.example and back.contains(back.sample())
    assert back.dtype == np.dtype(str) and back.shape is None
    assert _through_the_wire(back) == back  # the host's copy travels as the container's space


def test_an_opaque_array_space_checks_dtype_and_shape():
    back = _through_the_wire(Noise())
    assert isinstance(back, RemoteSpace) and back.shape == (2, 3) and back.dtype == np.float32
    assert back.contains(np.zeros((2, 3), np.float32))
    assert not back.contains(np.zeros((2, 3), np.float64)) and not back.contains(np.zeros(6, np.float32))
    sample = back.sample()
    sample[0, 0] = 99.0
    assert back.sample()[0, 0] != 99.0  # a copy of the example each time


def test_an_opaque_space_without_example():
    back = _through_the_wire(Bare())
    assert isinstance(back, RemoteSpace) and not back.has_example
    assert not copy.deepcopy(back).has_example and copy.deepcopy(back) == back  # as batch_space copies
    assert _through_the_wire(back) == back and not _through_the_wire(back).has_example
    assert back.contains("anything") and back.contains(3)
    with pytest.raises(RemoteError, match="cannot be sampled") as caught:
        back.sample()
    assert isinstance(caught.value, NotImplementedError)  # as gymnasium's Space.sample


def test_gymnasiums_vector_utilities_treat_an_opaque_space_as_a_custom_space():
    space = spaces.Dict({"mission": _through_the_wire(Word()), "pos": spaces.Box(0, 1, (2,))})
    local = spaces.Dict({"mission": Word(), "pos": spaces.Box(0, 1, (2,))})
    batched = batch_space(space, 3)
    assert type(batched["mission"]) is type(batch_space(local, 3)["mission"]) is spaces.Tuple
    assert len(batched["mission"]) == 3 and all(s == space["mission"] for s in batched["mission"])
    out = create_empty_array(space, 3)
    assert out["mission"] is None is create_empty_array(local, 3)["mission"]
    observations = [
        {"mission": w, "pos": np.full(2, i / 2, np.float32)} for i, w in enumerate(["key", "door", "goal"])
    ]
    out = concatenate(space, observations, out)
    assert out["mission"] == ("key", "door", "goal") and out["pos"].shape == (3, 2)
    assert batched.contains(out)
    assert [o["mission"] for o in iterate(batched, out)] == ["key", "door", "goal"]
    batched.seed(0)
    assert batched.contains(batched.sample())


def test_a_subclass_travels_as_its_gymnasium_base():
    back = _through_the_wire(Strange(4))
    assert type(back) is spaces.Discrete and back == spaces.Discrete(4)


def test_what_cannot_travel_is_named_with_its_path():
    space = spaces.Dict({"pos": spaces.Box(0, 1, (2,)), "pair": spaces.Tuple((spaces.Discrete(2),))})
    space.spaces["pair"].spaces = (spaces.Discrete(2), object())  # as an env with an old gym space
    with pytest.raises(
        TypeError, match=r"observation_space\['pair'\]\[1\] is a builtins.object, not a gymnasium"
    ):
        space_codec.describe(space, "observation_space")
    keyed = spaces.Dict({"a": spaces.Discrete(2)})
    keyed.spaces[frozenset({1})] = spaces.Discrete(2)
    with pytest.raises(TypeError, match=r"action_space has a key that cannot be sent"):
        space_codec.describe(keyed, "action_space")


def test_malformed_descriptions_are_refused():
    with pytest.raises(ProtocolError):
        space_codec.rebuild({"type": "Nope"})
    with pytest.raises(ProtocolError):
        space_codec.rebuild({"type": "Box", "low": 1})
    with pytest.raises(ProtocolError):
        space_codec.rebuild({"type": "Opaque", "name": 3, "shape": None, "dtype": None})
