"""The typed config from nested dicts: each value checked against (and converted to) its key's type, each
problem worded with where the key was set."""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, Literal

from dcl_dist.config.keys import type_hints, type_name


def coerce(value: Any, hint: Any) -> tuple[bool, Any]:
    """(ok, value converted to hint). ints are accepted as floats; nothing else is converted."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True, value
    if origin is Literal:
        return value in typing.get_args(hint) and not isinstance(value, bool), value
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, typing.get_args(hint))
    if origin is dict:
        return _coerce_dict(value, *typing.get_args(hint))
    if origin is list:
        (inner,) = typing.get_args(hint)
        return _coerce_list(value, inner)
    return _coerce_scalar(value, hint)


def _coerce_union(value: Any, options: tuple[Any, ...]) -> tuple[bool, Any]:
    for option in options:
        if option is type(None):
            if value is None:
                return True, None
            continue
        ok, converted = coerce(value, option)
        if ok:
            return True, converted
    return False, value


def _coerce_dict(value: Any, key_hint: Any, value_hint: Any) -> tuple[bool, Any]:
    if not isinstance(value, dict):
        return False, value
    out = {}
    for k, v in value.items():
        ok_key, k = coerce(k, key_hint)
        ok_value, v = coerce(v, value_hint)
        if not (ok_key and ok_value):
            return False, value
        out[k] = v
    return True, out


def _coerce_list(value: Any, inner: Any) -> tuple[bool, Any]:
    if not isinstance(value, list):
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # a single value where a list is expected: a list of one
        else:
            return False, value
    out = []
    for v in value:
        ok, converted = coerce(v, inner)
        if not ok:
            return False, value
        out.append(converted)
    return True, out


def _coerce_scalar(value: Any, hint: Any) -> tuple[bool, Any]:
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, str):  # YAML 1.1 reads 3e-5 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                return False, value
        if isinstance(value, (int, float)):
            return math.isfinite(value), float(value)  # nan and inf are no settings
        return False, value
    if hint is str:
        return isinstance(value, str), value
    return isinstance(value, hint), value


def build_section(
    cls: type, data: dict, prefix: str, where: dict[str, str], problems: list[str], failed: set[str]
) -> Any:
    """An instance of the section cls from its dict; problems are appended, and keys whose value did not fit
    their type go in failed (the value checks leave them alone). Missing keys keep their defaults."""
    hints = type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = prefix + str(key)
        loc = where.get(dotted, "?")
        if key not in names:
            problems.append(f"{loc}: {_unknown(str(key), prefix, names)}")
            continue
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                problems.append(f"{loc}: '{dotted}' is a section: give it a mapping of keys, not {value!r}")
                continue
            kwargs[key] = build_section(hint, value, dotted + ".", where, problems, failed)
            continue
        ok, converted = coerce(value, hint)
        if not ok:
            problems.append(f"{loc}: '{dotted}' must be {type_name(hint)}, got {value!r}{_closest_choice(value, hint)}")
            failed.add(dotted)
            continue
        kwargs[key] = converted
    return cls(**kwargs)


def _unknown(key: str, prefix: str, names: list[str]) -> str:
    """The problem of a key the section does not have, with the closest one it has."""
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
    hint = f"did you mean '{prefix}{close[0]}'?" if close else f"valid keys: {', '.join(names)}"
    what = "section" if not prefix else "key"
    return f"unknown {what} '{prefix}{key}': {hint}"


def _closest_choice(value: Any, hint: Any) -> str:
    """'; did you mean ...?' for a string close to one of a Literal's choices, else ''."""
    if typing.get_origin(hint) is not Literal or not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value, [str(a) for a in typing.get_args(hint)], n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else ""
