"""The package's one architecture rule, read from the source by ``ast`` (like the rename test):

* every module sits in a stage folder, and the folders are floors (``FLOORS``, lowest first);
  a module imports only from its own folder and from the floors below it, and folders that
  share a floor never import each other;
* no import cycle between modules, imports inside functions counted;
* no ``_private`` name imported from another module;
* no import of patchcollide's own modules inside a function (only third-party packages are
  imported lazily: Ray, faiss GPU, matplotlib, ...). The exceptions: the package root's lazy
  loader of its public names (``patchcollide/__init__.py``), and the commands of ``cli/``
  (``LAZY_FOLDERS``), which import the modules that load torch in their own bodies, after the
  checks of the command line, the job file and the inputs (tests/test_startup.py). Their
  imports still point down and count for cycles.

The checker also runs on small planted trees, so each rule is shown to catch what it names.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import patchcollide

FLOORS = (
    ("core",),
    ("models",),
    ("offline", "engine"),
    ("runs",),
    ("batch",),
    ("executors",),
    ("exact", "papers"),
    ("world",),
    ("demo",),
    ("cli",),
    ("__init__", "__main__"),
)
LAZY_ROOT = "__init__.py"  # the root's __getattr__ loads its public names on first use
LAZY_FOLDERS = ("cli",)  # a command imports what loads torch after its checks: --help and input errors come first


def modules(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package at ``root``."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        rel = path.relative_to(root).with_suffix("")
        parts = [package, *rel.parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def folder_of(module: str, mods: dict[str, Path], package: str) -> str:
    """The stage folder a module belongs to: its first component under the package (for a module
    at the top, its own name; the root package itself is ``__init__``)."""
    parts = module.split(".")[1:]
    return parts[0] if parts else "__init__"


def imports(module: str, path: Path, mods: dict[str, Path], package: str) -> list[dict]:
    """Every import of one of the package's modules in ``module``: target module, imported name
    (None for a whole module), whether inside a function, line."""
    tree = ast.parse(path.read_text())
    in_function = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function.update(id(n) for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom)))
    is_pkg = path.name == "__init__.py"
    here = module if is_pkg else module.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target != package and not target.startswith(package + "."):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in mods:
                    out.append({"target": sub, "name": None, "in_function": id(node) in in_function,
                                "line": node.lineno})
                else:
                    out.append({"target": target, "name": alias.name, "in_function": id(node) in in_function,
                                "line": node.lineno})
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == package or alias.name.startswith(package + "."):
                    out.append({"target": alias.name, "name": None, "in_function": id(node) in in_function,
                                "line": node.lineno})
    return out


def violations(root: Path, package: str = "patchcollide", floors=FLOORS) -> list[str]:
    """Every breach of the rules in the module docstring, one line each."""
    floor = {name: i for i, names in enumerate(floors) for name in names}
    mods = modules(root, package)
    problems = []
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for module, path in mods.items():
        mine = folder_of(module, mods, package)
        where = f"{path.relative_to(root.parent)}"
        if mine not in floor:
            problems.append(f"{where}: folder {mine!r} is on no floor; add it to FLOORS (and the README's map)")
            continue
        for imp in imports(module, path, mods, package):
            target = imp["target"]
            if target not in mods:
                continue
            if target != module:
                graph[module].add(target)
            theirs = folder_of(target, mods, package)
            at = f"{where}:{imp['line']}"
            if theirs != mine and theirs in floor:
                if floor[theirs] > floor[mine]:
                    problems.append(f"{at}: {mine} imports {target}, a floor above it")
                elif floor[theirs] == floor[mine]:
                    problems.append(f"{at}: {mine} imports {target}, a sibling on its floor")
            name = imp["name"]
            if name and name.startswith("_") and not (name.startswith("__") and name.endswith("__")):
                problems.append(f"{at}: imports the private name {name} from {target}")
            if imp["in_function"] and not (path.name == LAZY_ROOT and path.parent == root) and mine not in LAZY_FOLDERS:
                problems.append(f"{at}: imports {target} inside a function; import it at the top")
    # cycles (Tarjan's strongly connected components)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                problems.append("import cycle: " + " -> ".join(sorted(comp)))

    for v in graph:
        if v not in index:
            visit(v)
    return problems


PACKAGE_ROOT = Path(patchcollide.__file__).parent


def test_the_package_keeps_the_rule():
    assert violations(PACKAGE_ROOT) == []


def test_every_module_lives_in_a_stage_folder_or_is_a_named_top_module():
    top = {p.stem for p in PACKAGE_ROOT.glob("*.py")}
    assert top == {"__init__", "__main__", "demo"}, "a new top-level module: give it a stage folder"
    folders = {p.name for p in PACKAGE_ROOT.iterdir() if p.is_dir() and p.name != "__pycache__"}
    named = {name for names in FLOORS for name in names}
    assert folders <= named, folders - named


def plant(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    for d in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
        (d / "__init__.py").touch()
    return root


@pytest.mark.parametrize("files, expected", [
    ({"core/a.py": "from ..engine import b\n", "engine/b.py": ""}, "core imports pkg.engine.b, a floor above it"),
    ({"engine/a.py": "from ..offline.b import x\n", "offline/b.py": "x = 1\n"},
     "engine imports pkg.offline.b, a sibling on its floor"),
    ({"engine/a.py": "from .b import _hidden\n", "engine/b.py": "_hidden = 1\n"},
     "imports the private name _hidden from pkg.engine.b"),
    ({"engine/a.py": "def f():\n    from ..core import c\n", "core/c.py": ""},
     "imports pkg.core.c inside a function; import it at the top"),
    ({"engine/a.py": "def f():\n    from . import b\n", "engine/b.py": "from . import a\n"},
     "import cycle: pkg.engine.a -> pkg.engine.b"),
    ({"stray/a.py": ""}, "folder 'stray' is on no floor"),
])
def test_each_rule_catches_what_it_names(tmp_path, files, expected):
    root = plant(tmp_path, files)
    found = violations(root, "pkg")
    assert any(expected in line for line in found), found


def test_allowed_imports_pass_on_a_planted_tree(tmp_path):
    root = plant(tmp_path, {
        "core/a.py": "import json\n",
        "engine/b.py": "from ..core.a import json\nfrom ..core import a\ndef f():\n    import numpy\n",
        "cli/c.py": "from ..engine.b import f\nfrom ..core.a import __doc__\ndef g():\n    from ..engine import b\n",
        "__init__.py": "def __getattr__(name):\n    from .engine.b import f\n    return f\n",
    })
    assert violations(root, "pkg") == []


def test_the_public_names_stay_and_are_listed():
    from patchcollide.engine.collide import collide
    from patchcollide.engine.config import CollideConfig
    from patchcollide.runs.run import load_run

    assert patchcollide.collide is collide and patchcollide.CollideConfig is CollideConfig
    assert patchcollide.load_run is load_run
    assert {"collide", "CollideConfig", "load_run", "__version__"} <= set(dir(patchcollide))
    assert all(f"{f} = " in CollideConfig.__doc__ for f in CollideConfig.__dataclass_fields__)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        patchcollide.nothing  # noqa: B018
