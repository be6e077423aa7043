"""The library versions dcl-dist is tested with, and the start-up check that names any installed version outside them.

pyproject.toml's lower bounds are TESTED's lows (tests/unit/test_versions.py holds them equal), and the suite
fails when it runs on a version outside TESTED (the same test): so the declared range is the one the suite ran on.
engine.py and checkpoints.py reach into DeepSpeed's internals (its checkpoint writer, its universal-load config
switch, its ZeRO-3 universal-load slips), which 0.x releases change without notice: hence DeepSpeed's upper bound.
"""

from __future__ import annotations

import importlib.metadata

from packaging.version import Version

TESTED: dict[str, tuple[str, str]] = {
    "torch": ("2.13", "2.13"),
    "deepspeed": ("0.19.8", "0.19.8"),
    "transformers": ("5.24", "5.24"),
    "datasets": ("5.2", "5.2"),
    "peft": ("0.21", "0.21"),
    "huggingface_hub": ("2.4", "2.4"),
    "safetensors": ("0.8", "0.8"),
    "tensorboard": ("2.21", "2.21"),
    "scikit-learn": ("1.9", "1.9"),
    "matplotlib": ("3.11", "3.11"),
    "numpy": ("2.4", "2.4"),
}
"""Distribution -> (lowest, highest) release the whole suite passed on, to as many parts as matter: 0.19.8 for
DeepSpeed (its third number carries internal changes), major.minor for the others (patch releases only fix)."""

KNOWN_BROKEN: dict[str, tuple[str, str]] = {}
"""Distribution -> (first, last) release range known not to work (an error at start-up): none known today."""


def release_prefix(version: str, parts: int) -> tuple[int, ...]:
    """The first `parts` numbers of a version's release ("2.13.0+cpu", 2 -> (2, 13)), zero-padded."""
    release = Version(version).release
    return tuple((release + (0,) * parts)[:parts])


def outside(installed: str, low: str, high: str) -> bool:
    """Whether `installed` lies outside [low, high], each compared to the precision it is written with."""
    low_parts, high_parts = len(low.split(".")), len(high.split("."))
    return release_prefix(installed, low_parts) < release_prefix(low, low_parts) or release_prefix(
        installed, high_parts
    ) > release_prefix(high, high_parts)


def installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def untested() -> list[str]:
    """One message per installed library outside its tested range (a missing one is pip's to report)."""
    messages = []
    for name, (low, high) in TESTED.items():
        version = installed_version(name)
        if version is None or not outside(version, low, high):
            continue
        span = low if low == high else f"{low} to {high}"
        messages.append(
            f"{name} {version} is outside the range dcl-dist is tested with ({span}): it may work; if something"
            f" breaks, pip install '{name}=={high}.*' (or report the version that broke)"
        )
    return messages


def broken() -> list[str]:
    """One message per installed library in a range known not to work."""
    messages = []
    for name, (first, last) in KNOWN_BROKEN.items():
        version = installed_version(name)
        if version is not None and not outside(version, first, last):
            messages.append(
                f"{name} {version} is known not to work with dcl-dist ({first} to {last}): install another version"
            )
    return messages
