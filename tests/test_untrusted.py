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


@pytest.mark.parametrize("field, value, says", [
    ("steps", 10**12, "must be between 1 and 1,000,000"), ("tol", 1e6, "must be in (0, 1]"),
    ("seed", 2**63, "must be between 0 and 2^63 - 1"), ("first_unit", 10**9, "must be between 0 and 1,000,000"),
])
def test_config_values_have_upper_bounds(field, value, says):
    from patchcollide.engine.config import CollideConfig, CollideError

    with pytest.raises(CollideError, match=None) as e:
        CollideConfig(**{field: value})
    assert e.value.field == field and says in str(e.value)


def test_a_window_beyond_memory_is_refused_before_any_allocation():
    from patchcollide.engine.config import CollideConfig, CollideError

    with pytest.raises(CollideError) as e:
        CollideConfig(mode="patches", size=64, window=1024)  # 25 x 32 windows of 1024^2: 21 GiB
    assert e.value.field == "window" and "GiB for the patch mixture, more than" in str(e.value) and "--window" in str(e.value)


def test_huge_values_in_a_job_file_and_on_the_command_line_are_one_line(tmp_path, query_image):
    shutil.copy(query_image, tmp_path / "a.png")
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"id": "a", "source": "a.png", "target": "a.png", "steps": 1000000000000}\n'
                    '{"id": "b", "source": "a.png", "target": "a.png", "samples": 10000000000}\n'
                    '{"id": "c", "source": "a.png", "target": "a.png", "tol": 1000000.0}\n')
    r = CliRunner().invoke(cli, ["batch", str(jobs), "--out", str(tmp_path / "out")])
    assert r.exit_code == 2 and '"steps" must be between 1 and 1,000,000' in r.output
    assert '"samples" must be an integer from 0' in r.output and '"tol" must be in (0, 1]' in r.output
    for args in (["collide", "--source", str(tmp_path / "a.png"), "--target", str(tmp_path / "a.png"), "--out",
                  str(tmp_path / "o"), "--seed", str(2**64)],
                 ["batch", str(jobs), "--out", str(tmp_path / "o2"), "--samples", str(10**10)]):
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output, r.output


def test_more_units_than_the_target_has_inactive_says_how_many(tmp_path):
    import torch

    from patchcollide.engine.collide import target_of
    from patchcollide.engine.config import CollideError
    from patchcollide.models.build import load_tap

    tap = load_tap("vgg16", "fc6", "random", seed=0)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with pytest.raises(CollideError) as e:
        target_of(tap, x, vertices=5, first_unit=5000)
    assert "inactive units at fc6, fewer than --first-unit 5000 + --vertices 5" in str(e.value)
    assert "ask for at most" in str(e.value) and "that many vertices" not in str(e.value)


def test_a_fifo_and_an_empty_file_are_named_alike_everywhere(tmp_path, query_image):
    fifo, empty = tmp_path / "pipe.png", tmp_path / "empty.png"
    os.mkfifo(fifo)
    empty.write_bytes(b"")
    shutil.copy(query_image, tmp_path / "a.png")
    for bad, says in ((fifo, "is not a regular file (a FIFO)"), (empty, "is an empty file (0 bytes)")):
        r = CliRunner().invoke(cli, ["collide", "--source", str(bad), "--target", str(tmp_path / "a.png"), "--out",
                                     str(tmp_path / "o"), "--mode", "pixel"])
        assert r.exit_code == 2 and says in r.output, r.output
        (tmp_path / "jobs.jsonl").write_text(f'{{"id": "a", "source": "{bad.name}", "target": "a.png"}}\n')
        r = CliRunner().invoke(cli, ["batch", str(tmp_path / "jobs.jsonl"), "--out", str(tmp_path / "b")])
        assert r.exit_code == 2 and says in r.output, r.output


def test_a_jobs_error_names_its_keys_not_the_cli_options():
    from patchcollide.batch.folder import job_words

    assert job_words("--source 'x.png': cannot decode; give -k <= 3, --min-steps 2 or --weights PATH") == \
        "\"source\" 'x.png': cannot decode; give \"k\" <= 3, \"min_steps\" 2 or --weights PATH"


def test_a_thin_strip_and_an_animated_gif_are_described_truly(tmp_path, caplog):
    import logging

    import numpy as np
    from PIL import Image

    from patchcollide.core.images import fit_square
    from patchcollide.runs.inputs import read_input

    _, said, _ = fit_square(np.zeros((40, 20000, 3), np.uint8), 32, "crop")
    assert "only the centre 0.2% of its width is kept" in said[0], said
    frames = [Image.new("RGB", (64, 64), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    with caplog.at_level(logging.WARNING, logger="patchcollide"):
        read_input(str(tmp_path / "anim.gif"), "--source")
    assert any("is animated (2 frames): its first frame is used" in r.getMessage() for r in caplog.records)
