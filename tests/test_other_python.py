"""An image whose Python is not the host's (python313.sif: Debian 13's 3.13) runs the compiled
msgpack the payload brings for it, and steps as the host's Python does; without it the
fallback runs and the host warns once, saying what to do."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import IN_CI, ROOT
from helpers import cli

import remote
from remote.images import codecs
from remote.protocol import codec


def trajectory(image: str) -> tuple[dict, list[bytes]]:
    """The server's INFO and CartPole-v1's reset and 200 steps of fixed actions, as codec bytes."""
    actions = np.random.default_rng(1).integers(0, 2, 200)
    with remote.make("CartPole-v1", image=image) as env:
        steps = [codec.dumps(env.reset(seed=7))]
        for action in actions:
            obs, reward, terminated, truncated, info = env.step(int(action))
            steps.append(codec.dumps([obs, reward, terminated, truncated, info]))
            if terminated or truncated:
                steps.append(codec.dumps(env.reset()))
        return env.runner.info, steps


def test_the_python313_image_runs_the_compiled_msgpack_and_steps_as_the_hosts_python(python313_image, image):
    (pulled,) = codecs.pull(["3.13"])  # what scripts/setup.sh did already: nothing to fetch then
    if pulled.module is None:
        message = f"no compiled msgpack for Python 3.13 could be pulled: {pulled.error}"
        pytest.fail(message) if IN_CI else pytest.skip(reason=message)
    info, steps = trajectory(python313_image)
    assert info["python"].startswith("3.13.") and info["codec"] == "compiled", info
    host_info, host_steps = trajectory(image)
    assert host_info["python"].startswith("3.11.") and host_info["codec"] == "compiled", host_info
    assert steps == host_steps


#: Two envs from the image in one process: their servers' codecs, then the host's log.
TWO_ENVS = """
import json, sys
import remote
codecs, options = [], {"env": json.loads(sys.argv[2])}
for _ in range(2):
    with remote.make("CartPole-v1", image=sys.argv[1], runner_options=options) as env:
        env.reset(seed=0)
        env.step(0)
        codecs.append(env.runner.info["codec"])
print(json.dumps(codecs))
"""


@pytest.mark.parametrize(
    ("pulled", "variables", "advice"),
    [
        (False, {}, "run `remote codecs pull` once"),  # a fresh cache: nothing pulled
        (True, {"MSGPACK_PUREPYTHON": "1"}, "did not load there"),  # pulled, but it does not load
    ],
    ids=["not-pulled", "does-not-load"],
)
def test_without_the_compiled_msgpack_the_fallback_runs_and_the_host_warns_once(
    python313_image, tmp_path, pulled, variables, advice
):
    cache = tmp_path / "cache"
    if pulled:
        target = codecs.folder()
        modules = {python: path for python, path in codecs.modules().items() if path.parent == target}
        if "3.13" not in modules:
            pytest.skip(reason="no compiled msgpack for Python 3.13 in the cache (remote codecs pull)")
        copy = cache / target.relative_to(target.parents[1])
        copy.mkdir(parents=True)
        (copy / modules["3.13"].name).write_bytes(modules["3.13"].read_bytes())
    env = {**os.environ, "REMOTE_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", TWO_ENVS, python313_image, json.dumps(variables)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == ["pure-python", "pure-python"]
    warnings = [line for line in done.stderr.splitlines() if "pure-Python fallback" in line]
    assert len(warnings) == 1, done.stderr
    assert "(its Python is 3.13." in warnings[0] and advice in warnings[0], warnings[0]


def test_a_pull_without_network_says_why_and_the_payload_does_without(tmp_path, monkeypatch):
    """A compute node without network: pip finds nothing, the pull reports it, nothing breaks."""
    monkeypatch.setenv("REMOTE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))  # an empty folder: no wheel anywhere
    (result,) = codecs.pull(["3.13"])
    assert result.module is None and "pip download" in result.error, result
    assert "3.13" not in codecs.modules()
    assert "remote codecs pull" in codecs.fallback_advice("3.13.5")
    assert "3.10-3.14 only" in codecs.fallback_advice("3.9.2")


def test_remote_codecs_ls_says_what_each_python_gets(tmp_path):
    done = cli("codecs", "ls", "--json", REMOTE_CACHE=str(tmp_path / "cache"))
    assert done.returncode == 0, done.stderr
    found = {entry["python"]: entry["module"] for entry in json.loads(done.stdout)}
    assert list(found) == list(codecs.PYTHONS)
    host = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert found[host] and found[host].endswith(".so")  # the host's own, in its msgpack package
    assert all(module is None for python, module in found.items() if python != host)  # nothing pulled
    text = cli("codecs", "ls", REMOTE_CACHE=str(tmp_path / "cache")).stdout
    assert "pure-python fallback" in text and "not pulled: remote codecs pull" in text
