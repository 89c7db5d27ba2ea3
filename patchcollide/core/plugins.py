"""Plug-ins from other packages: the registries of named extensions, filled from entry points.

Four entry-point groups (the way simonw/llm loads its plug-ins), one registry each; the
built-ins are entries of the same registries, under the same names in every interface:

    patchcollide.search_spaces  --mode, a job's "mode"            engine.spaces.SPACES
    patchcollide.objectives     --objective, a job's "objective"  engine.objective_traits.OBJECTIVES
    patchcollide.terms          --terms, a job's "terms"          engine.term_traits.TERMS
    patchcollide.executors      --executor                        executors.EXECUTORS

A package declares its extensions in its ``pyproject.toml``::

    [project.entry-points."patchcollide.search_spaces"]
    grey = "patchcollide_grey:GreyParam"

and every process that imports patchcollide sees them: the CLI, a job file's checks,
``load_run`` in a fresh interpreter, the workers of a Ray cluster (where the package must be
installed too). docs/extending.md has the contracts.

When what loads: a ``Registry``'s names (the CLI's choices and help, the checks of a name) come
from the installed packages' metadata, read once per process on first use, without importing
any plug-in. A plug-in's module is imported when its name is first resolved (``registry[name]``):
the check of a config that names it, ``make_executor``, a run. So ``--help`` and the checks of
runs that use only built-ins never import a plug-in (nor torch through one); a run with a
plug-in imports the plug-in's module at the check of its config.

Nothing here imports torch, or anything of patchcollide's but its errors.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, MutableMapping
from importlib.metadata import EntryPoint, entry_points

from .errors import PatchcollideError, first_line

log = logging.getLogger(__name__)


class PluginError(PatchcollideError):
    """A plug-in that cannot be loaded or is not what its group asks for (one line: the name,
    the package and the fix)."""


class Registry(MutableMapping):
    """Name -> extension (a class), for one entry-point ``group``.

    ``builtins``: the package's own entries (objects). ``what``: the kind, in messages
    ("search space"). ``option``: the CLI option that takes a name (``--mode``). ``check(obj)``:
    None where ``obj`` is a proper extension of this kind, else what is wrong with it (one
    phrase); it runs on every plug-in when it loads. Code can register an entry too
    (``registry[name] = cls``: this process only; other processes, Ray workers among them, see
    only what entry points declare). A plug-in does not replace a built-in of the same name
    (logged and left out)."""

    def __init__(self, group: str, what: str, option: str, builtins: dict,
                 check: Callable[[object], str | None] | None = None):
        self.group, self.what, self.option, self.check = group, what, option, check
        self._entries: dict = dict(builtins)
        self._builtin = frozenset(builtins)
        self._found: dict[str, EntryPoint] | None = None

    def entry_points(self) -> dict[str, EntryPoint]:
        """The group's installed entry points by name (read once per process, nothing imported)."""
        if self._found is None:
            found: dict[str, EntryPoint] = {}
            for ep in entry_points(group=self.group):
                if ep.name in self._builtin or ep.name in found:
                    log.warning("%s %r of %s is left out: the name is taken by %s", self.what, ep.name,
                                package_of(ep), "a built-in" if ep.name in self._builtin else package_of(found[ep.name]))
                    continue
                found[ep.name] = ep
            self._found = found
        return self._found

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys([*self._entries, *self.entry_points()]))

    def __len__(self) -> int:
        return len(dict.fromkeys([*self._entries, *self.entry_points()]))

    def __contains__(self, name) -> bool:
        return name in self._entries or name in self.entry_points()

    def __getitem__(self, name: str):
        if name in self._entries:
            return self._entries[name]
        ep = self.entry_points().get(name)
        if ep is None:
            raise KeyError(name)
        obj = self.load(ep)
        self._entries[name] = obj
        return obj

    def __setitem__(self, name: str, obj) -> None:
        self._entries[name] = obj

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def load(self, ep: EntryPoint):
        """The object an entry point names, imported and checked; PluginError otherwise."""
        where = f"{self.what} {ep.name!r} ({ep.value}, from {package_of(ep)})"
        try:
            obj = ep.load()
        except Exception as e:  # a plug-in's import may raise anything: one line, naming it
            raise PluginError(f"{where} cannot be loaded: {type(e).__name__}: {first_line(e, 160)}; reinstall or "
                              f"fix that package, or uninstall it") from None
        problem = self.check(obj) if self.check else None
        if problem:
            raise PluginError(f"{where} is not a {self.what}: {problem}; see docs/extending.md")
        return obj

    def origin(self, name: str) -> str:
        """Where ``name`` comes from: "built in", "package X" or "registered in code"."""
        if name in self._builtin:
            return "built in"
        ep = self.entry_points().get(name)
        return f"package {package_of(ep)}" if ep is not None else "registered in code"

    def describe(self) -> str:
        """Every name with its ``summary`` (a class attribute), for help texts. A plug-in that is
        not loaded yet is named with its package instead (listing loads nothing)."""
        if not len(self):
            return f"None is installed (entry-point group {self.group})."
        parts = []
        for name in self:
            obj = self._entries.get(name)
            summary = getattr(obj, "summary", "") if obj is not None else ""
            parts.append(f"{name}: {summary or 'from ' + self.origin(name)}")
        return "; ".join(parts) + "."

    def unknown(self, name: str) -> str:
        """The one-line message for a name that is not registered."""
        return (f"{self.option} {name!r}: unknown; use one of {', '.join(self)}, or install the package that provides "
                f"it (entry-point group {self.group}, docs/extending.md)")


def package_of(ep: EntryPoint) -> str:
    """The distribution an entry point comes from (its name), or its module where unknown."""
    dist = getattr(ep, "dist", None)
    return dist.name if dist is not None and getattr(dist, "name", None) else ep.value.split(":")[0]
