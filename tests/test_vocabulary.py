"""One name for one thing: every collide setting is a CollideConfig field, a CLI option of the
same name and a job-file key of the same name; renamed options keep working with a notice."""
from __future__ import annotations

import dataclasses
import json
import re
import pytest

from click.testing import CliRunner

from patchcollide.cli import cli
from patchcollide.cli.online import RUN_OPTIONS, collide
from patchcollide.cli.common import flag_of
from patchcollide.engine.config import CollideConfig
from patchcollide.batch.jobfile import BATCH_WIDE, JOB_FIELDS, config_fields, job_keys, read_jobs


def _fields() -> set[str]:
    return {f.name for f in dataclasses.fields(CollideConfig)}


def test_every_config_field_has_its_cli_option_and_every_option_a_field():
    params = {p.name: p for p in collide.params if p.name != "help"}
    assert _fields() - set(params) == set(), "config fields without a collide option"
    extra = set(params) - _fields() - set(RUN_OPTIONS)
    assert extra == set(), "collide options that map to no config field"
    for name in _fields():  # the option is spelled as the field: min_steps -> --min-steps
        assert flag_of(name) in params[name].opts, (name, params[name].opts)
        default = CollideConfig.__dataclass_fields__[name].default
        if params[name].default not in (None, ()) and not params[name].multiple:
            assert params[name].default == default, (name, params[name].default, default)


def test_job_keys_are_the_config_fields_checked_by_their_types(tmp_path, query_image):
    assert set(job_keys()) == set(JOB_FIELDS) | (_fields() - set(BATCH_WIDE))
    assert set(config_fields()) == _fields() - set(BATCH_WIDE)
    # a job that sets every field to its default gives the default config
    defaults = {k: json.loads(json.dumps(v)) for k, v in dataclasses.asdict(CollideConfig()).items()
                if k not in BATCH_WIDE}
    line = {"id": "all", "source": query_image, "target": query_image, **defaults}
    bad = {"id": "bad", "source": query_image, "target": query_image, "steps": "many", "prune": [[0.5]],
           "loss_early": [1, "x"], "lr": "fast"}
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps(line) + "\n" + json.dumps(bad) + "\n")
    jf = read_jobs(str(jobs), str(tmp_path / "out"), device="cpu")
    assert [j.id for j in jf.jobs] == ["all"] and jf.jobs[0].config == CollideConfig(device="cpu")
    msg = jf.invalid[0].error
    for needle in ('"steps" must be an integer', '"prune" must be an array of [a number, an integer]',
                   '"loss_early" must be [a number, a number]', '"lr" must be a number or null'):
        assert needle in msg, msg


def test_config_errors_name_the_key_in_jobs_and_the_option_in_the_cli(tmp_path, query_image):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"id": "a", "source": query_image, "target": query_image, "min_steps": -1,
                                "device": "cpu"}) + "\n")
    jf = read_jobs(str(jobs), str(tmp_path / "out"))
    msg = jf.invalid[0].error
    assert '"min_steps" must be >= 0' in msg and "--min-steps" not in msg
    assert "'device' is set for the whole batch: use --device" in msg
    r = CliRunner().invoke(cli, ["-q", "collide", "--source", query_image, "--target", query_image, "--out",
                                 str(tmp_path / "r"), "--min-steps", "-1", "--weights", "random"])
    assert r.exit_code == 2 and "--min-steps must be >= 0" in r.output


@pytest.mark.parametrize("args", [
    ["collide", "--loss", "2", "0.5"], ["sample", "--n", "3"], ["sample", "RUN"], ["demo", "--n", "3"],
    ["nullspace", "--arch", "resnet18"], ["nullspace", "--image", "x.png"], ["nullity", "--json=t.json"],
    ["index", "search", "x.png", "--stride", "16"], ["index", "eval", "--queries", "x.png", "--stride", "16"],
])
def test_the_old_spellings_are_gone(tmp_path, args):
    """The renamed options and sample's positional RUN are no longer accepted: click's one line."""
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2, r.output
    assert any(w in r.stderr for w in ("No such option", "unexpected extra argument", "does not take a value")), \
        r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "deprecated" not in r.output


def test_the_old_loss_key_of_a_job_file_is_unknown(tmp_path, query_image):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"id": "a", "source": query_image, "target": query_image, "loss": [2, 0.5]}) + "\n")
    jf = read_jobs(str(jobs), str(tmp_path / "out"))
    assert not jf.jobs and jf.notices == [] and "loss" in jf.invalid[0].error, jf.invalid


def test_batch_help_lists_every_job_key():
    from patchcollide.cli.batch import batch

    r = CliRunner().invoke(batch, ["--help"])
    text = " ".join(r.output.split())
    missing = [k for k in job_keys() if not re.search(rf"\b{k}\b", text)]
    assert r.exit_code == 0 and not missing, missing


def test_push_margin_zero_with_several_vertices_is_warned_in_the_cli_and_the_job_file(tmp_path, query_image):
    from patchcollide.engine.config import CollideConfig

    assert CollideConfig().doubts() == [] and CollideConfig(push_margin=0, vertices=1).doubts() == []
    assert CollideConfig(push_margin=0, vertices=3).doubts() == []  # the distinct term still holds them apart
    assert [f for f, _ in CollideConfig(push_margin=0, distinct=0, vertices=3).doubts()] == ["push_margin"]
    r = CliRunner().invoke(
        cli, ["collide", "--source", query_image, "--target", query_image, "--out", str(tmp_path / "r"),
              "--mode", "pixel", "--weights", "random", "--size", "64", "--steps", "1", "--min-steps", "0",
              "--push-margin", "0", "--distinct", "0", "--vertices", "2", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert r.stderr.splitlines()[0].startswith("warning: --push-margin 0 with 2 vertices and no distinct term: "
                                               "nothing pushes the vertices apart"), r.stderr
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"id": "a", "source": query_image, "target": query_image, "push_margin": 0,
                                "distinct": 0}) + "\n")
    jf = read_jobs(str(jobs), str(tmp_path / "out"))
    assert len(jf.notices) == 1 and jf.notices[0][1].startswith('"push_margin" 0 with 5 vertices')


def _commands(group, prefix=()):
    import click

    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*prefix, name))
        else:
            yield (*prefix, name), cmd


def test_one_spelling_for_the_output_the_run_and_the_source_in_every_command(tmp_path, query_image):
    """Every output is -o/--out; sample names its run --out as collide does; an input image is
    --source."""
    outs = {}
    for path, cmd in _commands(cli):
        for p in cmd.params:
            if "--out" in getattr(p, "opts", []):
                outs[" ".join(path)] = p.opts
            assert "--image" not in p.opts, (path, p.opts)
    assert {"collide", "sample", "batch", "extract", "demo", "nullspace", "nullity", "index search",
            "world build"} <= set(outs), outs
    assert all(opts == ["-o", "--out"] for opts in outs.values()), outs
    nullspace = dict(_commands(cli))[("nullspace",)]
    assert any(p.opts == ["--source"] for p in nullspace.params)
    r = CliRunner().invoke(cli, ["sample"])
    assert r.exit_code == 2 and "no run given; name it with --out RUN" in r.output


def test_fit_has_one_set_of_choices_in_the_cli_the_job_file_and_the_api(tmp_path, query_image):
    """fit: auto (the default), imagenet, crop, pad; a bad value is one line naming them all."""
    import pytest

    from patchcollide.engine.config import FITS, CollideError

    assert FITS == ("auto", "imagenet", "crop", "pad") and CollideConfig().fit == "auto"
    assert [CollideConfig(fit=f).fit for f in FITS] == list(FITS)
    with pytest.raises(CollideError, match="fit must be one of auto, imagenet, crop, pad, got 'zoom'"):
        CollideConfig(fit="zoom")
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(json.dumps({"id": f, "source": query_image, "target": query_image, "fit": f}) + "\n"
                            for f in (*FITS, "zoom")))
    jf = read_jobs(str(jobs), str(tmp_path / "out"))
    assert [j.config.fit for j in jf.jobs] == list(FITS)
    assert [i.line for i in jf.invalid] == [5]
    assert "\"fit\" must be one of auto, imagenet, crop, pad, got 'zoom'" in jf.invalid[0].error
    r = CliRunner().invoke(cli, ["-q", "collide", "--source", query_image, "--target", query_image, "--out",
                                 str(tmp_path / "r"), "--fit", "zoom", "--weights", "random"])
    out = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(out) == 1, r.output
    assert "'zoom' is not one of 'auto', 'imagenet', 'crop', 'pad'" in out[0]
