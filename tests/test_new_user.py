"""What a new user hit (issue 27): each message names the right option and the right fix, and
the terminal says what the run came to. Every test here fails on the code before that issue."""
from __future__ import annotations

import json
import os
import re
import shutil

import click
import numpy as np
import pytest
from click.testing import CliRunner

from patchcollide.cli import cli


def _commands(cmd, path=()):
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            yield from _commands(sub, (*path, name))
    else:
        yield path, cmd


def test_every_visible_option_has_help_and_resume_needs_no_source():
    missing = [(" ".join(path), p.opts[0]) for path, cmd in _commands(cli) for p in cmd.params
               if isinstance(p, click.Option) and not p.hidden and not (p.help or "").strip()]
    assert missing == []
    collide = dict(_commands(cli))[("collide",)]
    helps = {p.name: p.help for p in collide.params if isinstance(p, click.Option)}
    for name in ("source", "target", "out"):
        assert "[required unless --resume]" in helps[name], helps[name]
    assert "digits_vgg" in helps["arch"]  # --model
    r = CliRunner().invoke(cli, ["demo", "--help"])
    assert "runs/demo; with --world digits: runs/world-demo" in " ".join(r.output.split())


def test_the_run_verdict_says_how_many_samples_fool_the_net():
    from patchcollide.runs.report import verdict

    rep = {"config": {"tol": 0.03}, "steps": 300, "converged": True, "history": {"fooled": [5]},
           "vertices": {"png": {"rel_error": [0.33, 0.35]}},
           "polytope": {"samples": 2000, "share_target_class": 1.0, "share_target_close": 0.975, "prob_gap": 0.01},
           "judge": {"n_reads_as_source": 5, "vertices": {"class": [3] * 5}}}
    line = verdict(rep)[1]
    assert "100.0% of 2000 samples in the target's class, 97.5% fool the net (top-class prob. within 0.01" in line
    assert line.endswith("judge: 5 / 5 vertices read as the source")


def test_batch_verdict_has_the_judge_and_the_page_shows_shares_as_percent(tmp_path):
    from patchcollide.runs.report import batch_verdict, write_html

    m = {"converged": True, "worst_rel_error_png": 0.3, "share_target_class": 1.0, "share_target_close": 0.11,
         "judge_reads_source": 0.8, "judge_share_source": 0.9}
    jobs = [{"id": "a", "line": 1, "out": "a", "status": "done", "seconds": 3.0, "metrics": m}]
    line = batch_verdict(jobs)[1]
    assert "0 of 1 sampled fool the net with every sample" in line
    assert "judge: 80.0% of the vertices read as the source" in line
    doc = {"kind": "patchcollide-batch", "jobs": jobs, "options": {}, "versions":
           {"patchcollide": "t", "git": {"commit": "abcdef1234567890", "dirty": False}}}
    os.makedirs(tmp_path / "b")
    (tmp_path / "b" / "batch.json").write_text(json.dumps(doc))
    page = open(write_html(str(tmp_path / "b")), encoding="utf-8").read()
    for shown in ("11.0%", "80.0%", "90.0%"):
        assert shown in page, shown
    assert '{"commit"' not in page and "{&quot;commit" not in page and "abcdef1234" in page


def test_report_finds_the_runs_inside_a_demo_folder(tmp_path, query_image):
    from patchcollide.engine.config import CollideConfig
    from patchcollide.runs.run import run_collide

    demo = tmp_path / "demo"
    for name in ("patches", "pixel"):  # the world demo's layout: one run per mode
        run_collide(query_image, query_image, str(demo / name),
                    CollideConfig(mode="pixel", size=32, steps=2, vertices=2, device="cpu"), weights="random")
    (demo / "mosaic.png").write_bytes(b"")
    r = CliRunner().invoke(cli, ["report", str(demo)])
    assert r.exit_code == 0, r.output
    top = (demo / "report.html").read_text()
    assert 'href="patches/report.html"' in top and 'href="pixel/report.html"' in top and "verdict" in top
    assert (demo / "pixel" / "report.html").is_file() and "all runs" in (demo / "pixel" / "report.html").read_text()
    empty = tmp_path / "empty"
    empty.mkdir()
    r = CliRunner().invoke(cli, ["report", str(empty)])
    assert r.exit_code == 2 and "nor in a folder inside it" in r.output


def test_collide_and_sample_end_with_the_verdict_line(tmp_path, query_image):
    out = str(tmp_path / "r")
    r = CliRunner().invoke(cli, ["-q", "collide", "--source", query_image, "--target", query_image, "--out", out,
                                 "--mode", "pixel", "--weights", "random", "--size", "32", "--steps", "2",
                                 "--vertices", "2", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    from patchcollide.runs.report import verdict

    lines = r.stdout.strip().splitlines()
    assert lines[-1] == "verdict: " + verdict(json.load(open(os.path.join(out, "report.json"))))[1]
    assert "converged=" not in r.stdout and f"patchcollide report {out}" in r.stdout
    r = CliRunner().invoke(cli, ["-q", "sample", "--out", out, "--samples", "8", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("verdict: ") and "of 8 samples in the target's class" in last


def test_the_hint_does_not_overstate_a_small_fall():
    from patchcollide.cli.online import convergence_hint

    slow = [0.5 / (1 + i) for i in range(100)] + [0.150 - 0.0001 * i for i in range(80)]  # ~5% over the last quarter
    hint = convergence_hint({"worst_rel_error": slow}, "pixel")
    assert re.search(r"it fell only [1-9]% over the last 45 steps", hint), hint
    assert "would help little" in hint and "will not help" not in hint, hint


def test_semi_transparent_pixels_are_called_so():
    from patchcollide.core.images import fit_square

    img = np.full((40, 40, 3), 100, np.uint8)
    _, said, _ = fit_square(img, 40, "as given", alpha=np.full((40, 40), 128 / 255, np.float32))
    assert said == ["100% of its pixels are semi-transparent: composited on R G B 255 255 255 (--background)"]
    alpha = np.ones((40, 40), np.float32)
    alpha[:10] = 0
    alpha[10:20] = 0.5
    _, said, _ = fit_square(img, 40, "as given", alpha=alpha)
    assert said[0].startswith("25% of its pixels are transparent and 25% of its pixels are semi-transparent")


def test_a_misspelled_job_key_gets_the_close_one(tmp_path, query_image):
    jobs = tmp_path / "jobs.jsonl"
    shutil.copy(query_image, tmp_path / "a.png")
    jobs.write_text('{"id": "x", "source": "a.png", "target": "a.png", "vertice": 3}\n')
    r = CliRunner().invoke(cli, ["batch", str(jobs), "--out", str(tmp_path / "b")])
    assert r.exit_code == 2 and "did you mean 'vertice' -> 'vertices'?" in r.output, r.output


def test_load_run_of_a_missing_folder_says_so(tmp_path):
    from patchcollide import load_run
    from patchcollide.core.errors import PatchcollideError

    with pytest.raises(PatchcollideError, match="no such directory"):
        load_run(str(tmp_path / "nope"))


def test_dir_of_the_package_shows_the_public_names():
    import patchcollide

    shown = [n for n in dir(patchcollide) if not n.startswith("__")]
    assert shown == ["CollideConfig", "collide", "load_run"]


def test_ctrl_c_is_a_stop_not_an_error():
    import signal

    from patchcollide.cli.common import user_errors
    from patchcollide.engine.checkpoints import Interrupted

    @click.command()
    def stopper():
        with user_errors():
            raise Interrupted("stopped by Ctrl-C (SIGINT) at step 11/30: checkpoint saved in x", signal.SIGINT)

    r = CliRunner().invoke(stopper, [], standalone_mode=True)
    assert r.exit_code == 130 and r.output.strip().startswith("stopped by Ctrl-C") and "Error" not in r.output


def test_a_job_whose_checkpoint_cannot_continue_says_it_starts_over(tmp_path, query_image, caplog):
    import logging

    from patchcollide.engine.checkpoints import Checkpointer, partial_dir
    from patchcollide.engine.config import CollideConfig
    from patchcollide.runs.inputs import Resume
    from patchcollide.runs.run import run_collide

    out = str(tmp_path / "job")
    old = Checkpointer(partial_dir(out), {"inputs": {}, "config": {"steps": 99}, "model": {}})
    assert old.save({"step": 7}) is not None  # a checkpoint of the job with other settings
    with caplog.at_level(logging.WARNING, logger="patchcollide"):
        run_collide(query_image, query_image, out, CollideConfig(mode="pixel", size=32, steps=2, vertices=1,
                                                                 device="cpu"), weights="random", resume=Resume.IF_SAME_RUN)
    said = [r.getMessage() for r in caplog.records if "starting from step 1" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(f"{out}: starting from step 1") and "deleted" in said[0], said
    assert not os.path.exists(os.path.join(partial_dir(out), "checkpoint.pt"))


def _strict(path: str):
    def refuse(name):
        raise ValueError(f"{path}: {name} is not JSON")

    with open(path, encoding="utf-8") as fh:
        return json.loads(fh.read(), parse_constant=refuse)


def test_every_json_file_a_one_vertex_batch_writes_is_strict_json(tmp_path, query_image):
    """Issue 28: a one-vertex run wrote "mean_pairwise_l2": NaN, which strict parsers refuse."""
    shutil.copy(query_image, tmp_path / "a.png")
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"id": "one", "source": "a.png", "target": "a.png", "mode": "pixel", "vertices": 1, '
                    '"steps": 2, "size": 32}\n')
    r = CliRunner().invoke(cli, ["batch", str(jobs), "--out", str(tmp_path / "b"), "--weights", "random",
                                 "--samples", "8", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    files = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "b") for f in fs if f.endswith(".json")]
    assert any(f.endswith("report.json") for f in files) and any(f.endswith("batch.json") for f in files)
    for f in files:
        _strict(f)
    rep = _strict(next(f for f in files if f.endswith("report.json")))
    assert rep["vertices"]["mean_pairwise_l2"] is None and rep["polytope"]["vertex_mean_pairwise_l2"] is None
    run = os.path.dirname(next(f for f in files if f.endswith("report.json")))
    r = CliRunner().invoke(cli, ["sample", "--out", run, "--samples", "8", "--device", "cpu"])
    assert r.exit_code == 0 and "vertices none (one vertex)" in r.output, r.output


def test_write_json_turns_nan_and_infinity_into_null(tmp_path):
    from patchcollide.core.files import write_json

    p = str(tmp_path / "x.json")
    write_json(p, {"a": float("nan"), "b": [1.0, float("inf")], "c": np.array([np.nan, 2.0]), "d": np.float32("inf")})
    assert _strict(p) == {"a": None, "b": [1.0, None], "c": [None, 2.0], "d": None}


def test_an_index_names_its_image_size_and_the_demo_chooses_its_own(flat_index, caplog):
    import logging

    from patchcollide.runs.sizes import chosen, warn_size, working_size

    side, (why, cost) = working_size(flat_index)
    assert side == 224 and why.endswith("were cut from 224 x 224 images") and "scale" in cost
    with caplog.at_level(logging.WARNING, logger="patchcollide"):
        warn_size(112, flat_index)
        warn_size(112, flat_index)  # once
        chosen(96, flat_index)  # the photo demo's own choice: nothing said
        warn_size(96, flat_index)
    said = [r.getMessage() for r in caplog.records if "were cut from" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("--size 112: the patches of the index in ") and "use --size 224" in said[0]
