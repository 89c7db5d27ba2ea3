"""The README's Python examples run as written, in order, in an empty folder (the first
builds the index the second uses)."""
import os
import re

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def python_blocks() -> list[str]:
    with open(README) as fh:
        return re.findall(r"```python\n(.*?)```", fh.read(), flags=re.S)


def test_readme_has_the_api_examples():
    blocks = python_blocks()
    assert len(blocks) >= 3
    joined = "\n".join(blocks)
    for name in ("extract_store", "build_index", "run_collide", "run_sample", "run_nullspace"):
        assert name in joined, name


@pytest.mark.slow
def test_readme_python_blocks_run_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, block in enumerate(python_blocks()):
        try:
            exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
        except Exception as e:  # name the block that broke
            raise AssertionError(f"README python block {i + 1} failed: {type(e).__name__}: {e}\n{block}") from e
    # what the blocks say they produce is there
    assert os.path.isfile("index/patches.h5") and os.path.isfile("runs/astronaut2chelsea/report.json")
    assert namespace["patches"].shape == (16, 32, 32, 3)
    assert os.path.isfile("runs/ns-vit/report.json") and "summary" in namespace["report"]["result"]
    import json

    run = json.load(open("runs/astronaut2chelsea/report.json"))
    assert run["polytope"]["samples"] == 200 and len(run["vertices"]["mixing"]["sharpness"]) == 3
