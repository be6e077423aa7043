"""Dotted `key=value` overrides from the command line, applied to a config's nested dicts."""

from __future__ import annotations

import yaml


def apply_overrides(data: dict, where: dict[str, str], overrides: list[str]) -> list[str]:
    """Apply `a.b.c=value` overrides (value parsed as YAML) in place; returns the malformed ones as problems."""
    problems = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            problems.append(f"command line: '{item}' is not key=value: write it like cl.lr=1e-5")
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
        where[key] = "command line"
    return problems
