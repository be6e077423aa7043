"""The schema read back: each attribute's docstring, every dotted key with its type, default and docstring
(`dcl-dist keys`), and short names of types for messages."""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import types
import typing
from typing import Any, Literal

from dcl_dist.config.schema import Config


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each attribute of a dataclass (and of its bases)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(inspect.getsource(klass))
        body = tree.body[0].body
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


@functools.cache
def type_hints(cls: type) -> dict[str, Any]:
    """The resolved type of each attribute of a dataclass (the schema's hints are strings)."""
    return typing.get_type_hints(cls)


def schema_keys(cls: type = Config, prefix: str = "") -> dict[str, tuple[Any, Any, str]]:
    """Every dotted leaf key -> (type, default, doc)."""
    out: dict[str, tuple[Any, Any, str]] = {}
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        hint = type_hints(cls)[f.name]
        key = prefix + f.name
        if dataclasses.is_dataclass(hint):
            out.update(schema_keys(hint, key + "."))
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            out[key] = (hint, default, docs.get(f.name, ""))
    return out


def type_name(hint: Any) -> str:
    """A short human name for a type hint: int, float or null, one of mean|cls, list of str."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + "|".join(str(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else type_name(a) for a in typing.get_args(hint))
    if origin is list:
        return "list of " + type_name(typing.get_args(hint)[0])
    if origin is dict:
        key_hint, value_hint = typing.get_args(hint)
        return f"mapping ({type_name(key_hint)} -> {type_name(value_hint)})"
    return getattr(hint, "__name__", str(hint))
