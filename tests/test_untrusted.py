"""Untrusted files (issue 28): every value read from a file is checked like one typed on the
command line, and damage gives one line naming the file and the fix, never a traceback."""
from __future__ import annotations

import os
import shutil

import pytest
from click.testing import CliRunner

from patchcollide.cli import cli


@pytest.mark.parametrize("line, says", [
    ('{"id": "a", "source": "a.png", "target": "a.png", "steps": 5, "steps": 7}', "key 'steps' is given twice"),
    ('{"id": "a", "source": "a.png", "target": "a.png", "prune": ' + "[" * 1000 + "]" * 1000 + "}",
     "nested deeper than"),
    ('{"id": "a", "source": "a.png", "target": "a.png", "prune": [[[0.5, 2]]]}', "nested 4 levels deep"),
    ('{"id": "\\ud800", "source": "a.png", "target": "a.png"}', "'id' is not UTF-8 text"),
    ('{"id": "a", "out": "x\\udfff", "source": "a.png", "target": "a.png"}', "'out' is not UTF-8 text"),
    ('{"id": "sub/../x", "source": "a.png", "target": "a.png"}', "is not a plain name (it means 'x')"),
])
def test_bad_job_lines_are_one_line_each(tmp_path, query_image, line, says):
    shutil.copy(query_image, tmp_path / "a.png")
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(line + "\n", encoding="utf-8")
    r = CliRunner().invoke(cli, ["batch", str(jobs), "--out", str(tmp_path / "out")])
    assert r.exit_code == 2 and says in r.output and "Traceback" not in r.output, r.output
    assert len(r.output.strip().splitlines()) <= 2, r.output  # the line's error (and the summary)
    assert not os.path.exists(tmp_path / "out" / "x")
