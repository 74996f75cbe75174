"""The compliance check passes on sound envs and names the contract a broken one breaks."""

from __future__ import annotations

import remote


def test_check_passes_on_the_shipped_image(image):
    results = remote.check_image(image, "CartPole-v1")
    assert [r.name for r in results if not r.passed] == [], "\n".join(map(str, results))
    assert len(results) == 7
    assert results.server["codec"] == "compiled" and results.server["python"], results.server


def test_check_passes_with_dict_spaces_and_render(image, test_env_options):
    results = remote.check_image(
        image, "testenvs:DictTupleEnv", {"render_mode": "rgb_array"}, **test_env_options
    )
    assert all(r.passed for r in results), "\n".join(map(str, results))


def test_check_names_the_broken_contract(image, test_env_options):
    results = {r.name: r for r in remote.check_image(image, "testenvs:SeedIgnoringEnv", **test_env_options)}
    broken = results["seeding determinism"]
    assert not broken.passed and "seed is ignored" in broken.detail
    assert results["step contract"].passed and results["close"].passed
    assert "FAIL  seeding determinism" in str(broken)


def test_check_reports_an_env_that_cannot_be_created(image):
    results = remote.check_image(image, "NoSuchEnv-v0")
    assert results and not any(r.passed for r in results)
    assert "could not create" in results[0].detail
