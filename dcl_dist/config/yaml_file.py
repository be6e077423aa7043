"""A YAML config file as nested dicts, with the file:line where each dotted key was set (for messages)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dcl_dist.errors import ConfigError


class _Located(dict):
    """A YAML mapping that remembers the line of each key (1-based)."""

    lines: dict[str, int]


def _construct(node: yaml.Node, loader: yaml.SafeLoader) -> Any:
    if isinstance(node, yaml.MappingNode):
        out = _Located()
        out.lines = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                raise yaml.MarkedYAMLError(problem="a key must be a plain name", problem_mark=key_node.start_mark)
            key = str(loader.construct_object(key_node, deep=True))
            if key in out:
                raise yaml.MarkedYAMLError(
                    problem=f"key '{key}' appears twice (lines {out.lines[key]} and {line}); keep one",
                    problem_mark=key_node.start_mark,
                )
            out[key] = _construct(value_node, loader)
            out.lines[key] = line
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(n, loader) for n in node.value]
    return loader.construct_object(node, deep=True)


def read_yaml(path: Path) -> tuple[dict, dict[str, str]]:
    """A YAML file as a nested dict, plus where each dotted key was set ("file:line")."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"config file {path} does not exist: check the path given to --config"]) from None
    except UnicodeDecodeError as e:
        raise ConfigError([f"{path}: not UTF-8 text ({e.reason} at byte {e.start}): save the file as UTF-8"]) from None
    loader = None
    try:
        loader = yaml.SafeLoader(text)
        node = loader.get_single_node()
        data = _construct(node, loader) if node is not None else {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or getattr(e, "reason", None) or str(e).splitlines()[0]
        raise ConfigError([f"{where}: not valid YAML ({problem}): fix the syntax there"]) from None
    finally:
        if loader is not None:
            loader.dispose()
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of sections (run:, model:, data:, ...)"])
    where: dict[str, str] = {}

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            key = prefix + str(k)
            where[key] = f"{path}:{getattr(d, 'lines', {}).get(str(k), '?')}"
            if isinstance(v, dict):
                walk(v, key + ".")

    walk(data, "")
    return data, where
