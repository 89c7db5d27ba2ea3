"""Settings as dataclass fields that carry what every interface shows of them, and the checks
that the metadata alone makes. Imports nothing of ours.

``setting(default, help, choices=..., bounds=..., flags=..., metavar=..., default_text=...)``
is a dataclass field; the CLI derives one option from it (``cli.common.config_options``: its
name, type, default and help), and ``check_fields(config, Error)`` checks the choices and
bounds of every field, raising ``Error`` about the field (``field_error``), whose ``field``
and ``problem`` the CLI turns into the option as the user spelled it."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
import typing

from .errors import PatchcollideError


def setting(default, help: str, *, choices=None, bounds: tuple | None = None, flags: tuple[str, ...] | None = None,
            metavar: str | None = None, default_text: str | None = None, cli: bool = True, hidden: bool = False):
    """A config field with what every interface shows of it: ``help`` (one paragraph),
    ``choices`` (a tuple, or a registry dict whose keys are the choices, read when asked; None
    among them: the word none), ``bounds`` (lo, hi), inclusive, either None for open,
    ``flags`` (the option's spellings where not ``--field-name``), ``metavar``,
    ``default_text`` (where the default is not a plain value), ``cli`` (False: no option),
    ``hidden`` (an option left out of --help: a knob for tests)."""
    meta = {"help": help, "choices": choices, "bounds": bounds, "flags": flags, "metavar": metavar,
            "default_text": default_text, "cli": cli, "hidden": hidden}
    return dataclasses.field(default=default, metadata=meta)


def field_error(error: type[PatchcollideError], field: str, problem: str) -> PatchcollideError:
    """``error`` about one config field: ``str(e)`` names the field; ``e.field`` and
    ``e.problem`` let the CLI and job files name their own spelling of it."""
    e = error(f"{field} {problem}")
    e.field, e.problem = field, problem
    return e


def show(value) -> str:
    """A choice or a bound as the user reads it: none, 2^63 - 1, 8,192."""
    if value is None:
        return "none"
    if isinstance(value, int) and value >= 2**16 - 1 and (value + 1) & value == 0:
        return f"2^{value.bit_length()} - 1"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _not_a_choice(choices, value, several: bool) -> str:
    """The problem of a ``value`` that is not among ``choices`` (a tuple or a registry)."""
    names = [show(c) for c in choices]
    fixed = len(names) == 2 and not isinstance(choices, Mapping)  # a registry can grow: "one of"
    got = f"{value!r}" + (" among them" if several else "")
    if not names:  # a registry with nothing registered
        return (f"must name a registered {getattr(choices, 'what', 'choice')}, and none is installed "
                f"(docs/extending.md), got {got}")
    want = " or ".join(names) if fixed else f"one of {', '.join(names)}"
    return f"must be {want}, got {got}"


def check_fields(config, error: type[PatchcollideError]) -> None:
    """The checks the fields' metadata states: a value among its ``choices``, within its ``bounds``."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value, choices, bounds = getattr(config, f.name), f.metadata.get("choices"), f.metadata.get("bounds")
        if choices is not None:
            several = typing.get_origin(hints[f.name]) is tuple  # tuple[str, ...]: each a choice
            if several and isinstance(value, str):
                raise field_error(error, f.name, f"must be a tuple of names, got the string {value!r}; give "
                                  f"({value!r},) for one")
            for v in (value if several else (value,)):
                if v not in choices:
                    raise field_error(error, f.name, _not_a_choice(choices, v, several))
        if bounds is not None and value is not None:
            lo, hi = bounds
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                want = (f"between {show(lo)} and {show(hi)}" if lo is not None and hi is not None
                        else f">= {show(lo)}" if lo is not None else f"<= {show(hi)}")
                if type(None) in typing.get_args(hints[f.name]):
                    want += " or 'none'"
                raise field_error(error, f.name, f"must be {want}, got {value}; give a value {want}")
