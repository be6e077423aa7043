"""The declared dependency range is the tested one: pyproject.toml's lower bounds are versions.TESTED's lows, the
suite itself runs on versions inside TESTED, and the start-up check names a version outside it."""

from __future__ import annotations

import re

import pytest

from dcl_dist import versions
from helpers import REPO

tomllib = pytest.importorskip("tomllib")


def declared() -> dict[str, str]:
    """pyproject.toml's dependencies: distribution -> its specifier."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    out = {}
    for requirement in project["dependencies"]:
        name, spec = re.match(r"([A-Za-z0-9_.-]+)\s*(.*)", requirement).groups()
        out[name.lower().replace("-", "_")] = spec
    return out


def test_lower_bounds_are_the_lowest_tested_versions():
    specs = declared()
    for name, (low, _) in versions.TESTED.items():
        spec = specs[name.lower().replace("-", "_")]
        assert f">={low}" in spec.split(","), f"pyproject.toml declares {name}{spec}, tested from {low}"


def test_the_suite_runs_on_the_tested_versions():
    # this suite is what "tested" means: a library upgraded beyond TESTED must pass the whole suite, then widen TESTED
    outside = {
        name: versions.installed_version(name)
        for name, (low, high) in versions.TESTED.items()
        if versions.outside(versions.installed_version(name), low, high)
    }
    assert outside == {}, f"installed outside versions.TESTED: {outside}"
    assert versions.untested() == [] and versions.broken() == []


@pytest.mark.parametrize(
    "installed, low, high, out",
    [
        ("2.13.0+cpu", "2.13", "2.13", False),
        ("2.13.4", "2.13", "2.13", False),
        ("2.14.0", "2.13", "2.13", True),
        ("2.12.1", "2.13", "2.13", True),
        ("0.19.8", "0.19.8", "0.19.8", False),
        ("0.19.9", "0.19.8", "0.19.8", True),
        ("0.19.7", "0.19.8", "0.19.8", True),
        ("5.0.0rc1", "4.56", "5.24", False),
        ("6.0.0", "4.56", "5.24", True),
    ],
)
def test_outside(installed, low, high, out):
    assert versions.outside(installed, low, high) is out


def test_untested_and_broken_versions_are_named(monkeypatch):
    monkeypatch.setattr(versions, "installed_version", lambda name: {"deepspeed": "0.20.1"}.get(name))
    (message,) = versions.untested()
    assert "deepspeed 0.20.1 is outside the range dcl-dist is tested with (0.19.8)" in message
    assert "pip install 'deepspeed==0.19.8.*'" in message
    monkeypatch.setattr(versions, "KNOWN_BROKEN", {"deepspeed": ("0.20", "0.20")})
    (message,) = versions.broken()
    assert message == "deepspeed 0.20.1 is known not to work with dcl-dist (0.20 to 0.20): install another version"
