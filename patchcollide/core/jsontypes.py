"""JSON values as the typed fields of a config dataclass: ``convert`` one value to a type hint's
type (int, float, str, X | None, tuple[A, B], tuple[A, ...]), ``describe`` what a hint accepts in
words. Job files and ``load_run`` read configs through it."""
from __future__ import annotations

import json
import math
import types
import typing


def is_number(v) -> bool:
    """A finite JSON number (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def convert(hint, v):
    """A JSON value as the config field of type ``hint`` wants it; TypeError when it does not fit.
    Types: int, float, str, X | None, tuple[A, B] and tuple[A, ...] (JSON arrays)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError
        return v
    if hint is float:
        if not is_number(v):
            raise TypeError
        return float(v)
    if hint is str:
        if not isinstance(v, str):
            raise TypeError
        return v
    if origin in (typing.Union, types.UnionType):
        if v is None and type(None) in args:
            return None
        return convert(next(a for a in args if a is not type(None)), v)
    if origin is tuple:
        if not isinstance(v, list):
            raise TypeError
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(convert(args[0], x) for x in v)
        if len(v) != len(args):
            raise TypeError
        return tuple(convert(a, x) for a, x in zip(args, v))
    raise TypeError


def describe(hint) -> str:
    """What ``convert`` accepts for ``hint``, in words."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    words = {int: "an integer", float: "a number", str: "a string"}
    if hint in words:
        return words[hint]
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) if a is not type(None) else "null" for a in args)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return f"an array of {describe(args[0])}"
    if origin is tuple:
        return "[" + ", ".join(describe(a) for a in args) + "]"
    return str(hint)


def canonical(obj) -> str:
    """One text for equal JSON values: sorted keys, tuples as arrays (for content keys and
    comparisons of configs and states)."""
    return json.dumps(obj, sort_keys=True, default=list)
