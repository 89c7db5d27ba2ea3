"""The README and the pages under docs/ say what is true.

* The Python examples of docs/ run as written, in order, in an empty folder (docs/offline.md's
  builds the index docs/colliders.md's uses, then docs/exact.md's).
* The README's set-up commands are the ones CI runs (.ci/run runs the second verbatim).
* Every relative link of the README, docs/*.md and the two folder READMEs leads to a file.
* The README's map of docs/ lists every page, and the README stays a front page.
* Every option of every ``patchcollide`` command line in a bash block is an option of that command.
"""
import glob
import os
import re
import shlex

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
DOCS = os.path.join(ROOT, "docs")

# The pages whose ```python blocks run, in this order (each may use what an earlier one made).
PYTHON_PAGES = ("docs/offline.md", "docs/colliders.md", "docs/exact.md", "docs/extending.md")  # extending: its classes define

# Pages the README's map links that another branch adds (wt-plugins writes docs/extending.md).
# Empty this once they are in: a link to a missing page then fails like any other.
PENDING_PAGES: set[str] = set()


def read(rel: str) -> str:
    with open(os.path.join(ROOT, rel)) as fh:
        return fh.read()


def markdown_files() -> list[str]:
    """README.md, docs/*.md and the folder READMEs, relative to the repository root."""
    pages = ["README.md", "benchmarks/README.md", "index/README.md"]
    pages += sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(DOCS, "*.md")))
    return [p for p in pages if os.path.isfile(os.path.join(ROOT, p))]


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def python_blocks() -> list[tuple[str, str]]:
    """(where, code) for each python block of PYTHON_PAGES, in order."""
    out = []
    for page in PYTHON_PAGES:
        for i, block in enumerate(blocks(read(page), "python")):
            out.append((f"{page} python block {i + 1}", block))
    return out


def test_every_python_block_is_run():
    """No page holds a python block that the run below would skip."""
    for page in markdown_files():
        if blocks(read(page), "python"):
            assert page in PYTHON_PAGES, f"{page} has a python block; add it to PYTHON_PAGES in its order"


def test_docs_have_the_api_examples():
    found = python_blocks()
    assert len(found) >= 3
    joined = "\n".join(code for _, code in found)
    for name in ("extract_store", "build_index", "run_collide", "run_sample", "run_nullspace"):
        assert name in joined, name


@pytest.mark.slow
def test_docs_python_blocks_run_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for where, block in python_blocks():
        try:
            exec(compile(block, where, "exec"), namespace)
        except Exception as e:  # name the block that broke
            raise AssertionError(f"{where} failed: {type(e).__name__}: {e}\n{block}") from e
    # what the blocks say they produce is there
    assert os.path.isfile("index/patches.h5") and os.path.isfile("runs/astronaut2chelsea/report.json")
    assert namespace["patches"].shape == (16, 32, 32, 3)
    assert os.path.isfile("runs/ns-vit/report.json") and "summary" in namespace["report"]["result"]
    import json

    run = json.load(open("runs/astronaut2chelsea/report.json"))
    assert run["polytope"]["samples"] == 200 and len(run["vertices"]["mixing"]["sharpness"]) == 3


def test_readme_setup_commands_are_the_ones_ci_runs():
    first = blocks(read("README.md"), "bash")[0].strip().splitlines()
    assert first == [
        "python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/patchcollide demo",
        "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test,ray]' && .venv/bin/python -m pytest -q",
    ]
    ci = read(".ci/run").splitlines()
    verbatim = ci[ci.index("# The README's second command, verbatim:") + 1]
    assert verbatim == first[1]


def relative_links(text: str) -> list[str]:
    """Targets of [text](target) and ![alt](target) that are neither URLs nor in-page anchors."""
    out = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        out.append(target.split("#", 1)[0])
    return out


def test_every_relative_link_resolves():
    broken = []
    checked = 0
    for page in markdown_files():
        for target in relative_links(read(page)):
            path = os.path.normpath(os.path.join(os.path.dirname(page), target))
            checked += 1
            if not os.path.exists(os.path.join(ROOT, path)) and path not in PENDING_PAGES:
                broken.append(f"{page}: ({target}) -> {path}")
    assert checked >= 20
    assert not broken, "\n".join(broken)


def test_readme_is_a_front_page_that_maps_every_doc():
    text = read("README.md")
    assert len(text) <= 15_000, f"README.md is {len(text)} characters; move detail to a page under docs/"
    docs_map = text.split("\n## Documentation\n", 1)[1]
    mapped = {os.path.normpath(t) for t in relative_links(docs_map) if t.startswith("docs/")}
    pages = {os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(DOCS, "*.md"))}
    assert pages <= mapped, f"pages missing from the README's map: {sorted(pages - mapped)}"
    # each page has a title and a one-line intro (reliability-details.md is reliability.md's tail)
    for page in sorted(pages - {"docs/reliability-details.md"}):
        head = read(page).split("\n")
        assert head[0].startswith("# ") and head[1] == "" and head[2].strip(), page
    # one picture, committed
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert pictures and all(os.path.isfile(os.path.join(ROOT, p)) for p in pictures)


def command_lines() -> list[tuple[str, list[str]]]:
    """(page, tokens) of every ``patchcollide ...`` line in the bash blocks of README.md and docs/."""
    out = []
    for page in markdown_files():
        for block in blocks(read(page), "bash"):
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                if words and words[0] in ("patchcollide", ".venv/bin/patchcollide"):
                    out.append((page, words))
    return out


def test_every_documented_option_exists():
    import click

    from patchcollide.cli import cli

    lines = command_lines()
    assert len(lines) >= 25
    problems = []
    for page, words in lines:
        command, rest = cli, words[1:]
        ctx = click.Context(cli, info_name="patchcollide")
        while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
            sub = command.get_command(ctx, rest[0])
            if sub is None:
                problems.append(f"{page}: {' '.join(words)}: no command {rest[0]!r}")
                break
            command, rest = sub, rest[1:]
        else:
            known = {"--help", "-h"}
            for param in command.params:
                known.update(getattr(param, "opts", []))
                known.update(getattr(param, "secondary_opts", []))
            for word in rest:
                if re.match(r"--?[A-Za-z]", word):
                    name = word.split("=", 1)[0]
                    if name not in known:
                        problems.append(f"{page}: {' '.join(words)}: {command.name} has no option {name}")
    assert not problems, "\n".join(problems)
