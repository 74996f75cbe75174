"""The env stream through a real container: large observations out of band, and arrays of
every awkward kind (0-d, empty, non-contiguous, big-endian) bit-identical both ways."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import remote


def _local_echo(nbytes: int):
    from conftest import TEST_ENVS

    sys.path.insert(0, str(TEST_ENVS))
    import testenvs

    return testenvs.EchoEnv(nbytes)


@pytest.mark.parametrize("nbytes", [28 * 1024, 1024 * 1024, 3 * 1024 * 1024 + 7])
def test_large_observations_bit_identical(image, test_env_options, nbytes):
    with remote.RemoteRunner(image, **test_env_options) as runner:
        env = runner.make("testenvs:EchoEnv", nbytes=nbytes)
        local = _local_echo(nbytes)
        for got, want in [(env.reset(seed=5)[0], local.reset(seed=5)[0])] + [
            (env.step(1)[0], local.step(1)[0]) for _ in range(3)
        ]:
            assert got.dtype == np.uint8 and got.shape == (nbytes,) and got.flags.writeable
            assert got.tobytes() == want.tobytes()


def _awkward_arrays() -> dict:
    rng = np.random.default_rng(1)
    big = rng.standard_normal((600, 700))
    return {
        "zero_d": np.array(3.25),
        "zero_d_big_endian": np.array(7, dtype=">i4"),
        "empty": np.zeros((0, 3), dtype=np.int32),
        "empty_large_dims": np.zeros((4096, 0), dtype=np.float64),
        "non_contiguous": np.arange(40, dtype=np.int16).reshape(5, 8)[::2, 1::3],
        "non_contiguous_large": big[::2, ::3],  # out of band after a copy
        "transposed_large": big.T,
        "big_endian_small": np.arange(5, dtype=">f8"),
        "big_endian_large": np.arange(100_000, dtype=">u4"),
        "bools": rng.integers(0, 2, 10_000).astype(bool),
        "datetimes_large": np.arange(1000).astype("datetime64[ns]")[::-1],  # no buffer protocol
        "complex": (rng.standard_normal(3000) + 1j).astype(np.complex64),
        "scalar": np.float32(1.5),
        "nested": (big[:3, :3], [np.arange(5000, dtype=np.uint8)], {"k": (np.int8(-1),)}),
    }


def _same(got, want) -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys()
        for key in want:
            _same(got[key], want[key])
    elif isinstance(want, (tuple, list)):
        assert type(got) is type(want) and len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            _same(g, w)
    elif isinstance(want, np.ndarray):
        assert type(got) is np.ndarray and got.dtype == want.dtype and got.shape == want.shape
        assert got.tobytes() == want.tobytes() and got.flags.writeable
    else:
        assert type(got) is type(want) and got == want


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_awkward_arrays_round_trip_through_a_container(image, test_env_options, transport):
    arrays = _awkward_arrays()
    with remote.RemoteRunner(image, transport=transport, **test_env_options) as runner:
        env = runner.make("testenvs:EchoEnv", nbytes=16)
        for _ in range(2):  # twice: the reused receive buffers must not leak between calls
            _, info = env.reset(options={"echo": arrays})
            _same(info["echo"], arrays)
        _, info = env.reset(options={"echo": arrays["zero_d"]})  # small frames after large ones
        _same(info["echo"], arrays["zero_d"])
