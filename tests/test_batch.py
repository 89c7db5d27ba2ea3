"""`patchcollide batch`: the job file is checked as a whole, finished jobs are skipped, a
half-written or failed job is run again, shards and locks share one directory, and jobs that
share a target compute its activation once without changing the result. CPU, random VGG-16
at 32 x 32, a few steps."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from patchcollide.cli import cli
from patchcollide.batch.jobfile import in_shard, parse_shard, read_jobs
from patchcollide.batch.runner import JobLock, batch_lock

TINY = {"size": 32, "steps": 2, "min_steps": 0, "vertices": 2, "samples": 4}
METRICS = {"worst_rel_error", "worst_rel_error_png", "min_push", "all_own_unit_lowest", "mean_sharpness", "mean_sources",
           "worst_argmax_rel_error", "mean_pairwise_l2", "share_target_class", "mean_top_prob_samples",
           "top_prob_target", "target_label", "steps", "converged", "share_target_close", "mean_source_l2",
           "judge_reads_source", "judge_share_source"}


def batch(*args):
    return CliRunner().invoke(cli, ["-q", "batch", *map(str, args), "--weights", "random", "--device", "cpu"])


def lines(output: str) -> list[str]:
    return [ln for ln in output.strip().splitlines() if ln.strip()]


def write_jobs(path, jobs) -> str:
    Path(path).write_text("".join((j if isinstance(j, str) else json.dumps(j)) + "\n" for j in jobs))
    return str(path)


def read_json(path) -> dict:
    return json.loads(Path(path).read_text())


def mtimes(out, ids):
    return {i: os.stat(os.path.join(out, i, "report.json")).st_mtime_ns for i in ids}


def vertex_bytes(out, job):
    return [Path(out, job, f"vertex_{i}.png").read_bytes() for i in range(TINY["vertices"])]


def batch_json(out) -> dict:
    return read_json(os.path.join(out, "batch.json"))


def statuses(out) -> dict:
    return {e["id"]: e["status"] for e in batch_json(out)["jobs"]}


@pytest.fixture(scope="module")
def one_model():
    """Every batch in this module builds random VGG-16 once per seed (a few seconds each time otherwise)."""
    from patchcollide.batch import runner
    from patchcollide.models import build
    real, cache = build.load_tap, {}

    def load(arch="vgg16", layer="fc6", weights="imagenet", seed=0, allow_download=True):
        key = (arch, layer, weights, seed)
        if key not in cache:
            cache[key] = real(arch, layer, weights, seed=seed, allow_download=allow_download)
        return cache[key]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(build, "load_tap", load)
        mp.setattr(runner, "load_tap", load)  # the runner's own name for it
        yield


@pytest.fixture(scope="module")
def jobs_dir(tmp_path_factory, photos_dir, query_image):
    """A: patch mode, astronaut -> chelsea; B: pixel mode, coffee -> chelsea (the same target);
    C: pixel mode, camera -> rocket. abc.jsonl has all three, ab.jsonl A and B."""
    d = tmp_path_factory.mktemp("jobs")
    def p(name):
        return os.path.join(photos_dir, f"{name}.png")

    a = {"id": "A", "source": query_image, "target": p("chelsea"), "mode": "patches", "k": 2, **TINY}
    b = {"id": "B", "source": p("coffee"), "target": p("chelsea"), "mode": "pixel", **TINY}
    c = {"id": "C", "source": p("camera"), "target": p("rocket"), "mode": "pixel", **TINY}
    write_jobs(d / "abc.jsonl", [a, b, c])
    write_jobs(d / "ab.jsonl", [a, "", b])  # a blank line is allowed
    return d


@pytest.fixture(scope="module")
def base(tmp_path_factory, jobs_dir, flat_index, one_model):
    """One clean batch of abc.jsonl in which C fails (after its collide step), with calls of
    target_of counted."""
    import patchcollide.engine.collide as collide_mod
    import patchcollide.batch.runner as jobs_mod
    import patchcollide.runs.run as runs_mod

    out = str(tmp_path_factory.mktemp("base") / "out")
    calls = {"jobs": 0, "collide": 0}
    real_sample = runs_mod.run_sample

    def failing_sample(run_dir, *a, **kw):
        if os.path.join(".tmp", "C", "") in run_dir:
            raise RuntimeError("simulated failure\nsecond line")
        return real_sample(run_dir, *a, **kw)

    def counted(name, fn):
        def wrapper(*a, **kw):
            calls[name] += 1
            return fn(*a, **kw)
        return wrapper

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(jobs_mod, "run_sample", failing_sample)  # the runner's own name for it
        mp.setattr(jobs_mod, "target_of", counted("jobs", jobs_mod.target_of))
        mp.setattr(collide_mod, "target_of", counted("collide", collide_mod.target_of))
        r = CliRunner().invoke(cli, ["batch", str(jobs_dir / "abc.jsonl"), "--out", out, "-i", flat_index,
                                     "--weights", "random", "--device", "cpu"])
    return {"out": out, "result": r, "calls": calls}


def test_a_failing_job_is_recorded_and_the_batch_goes_on(base):
    r, out = base["result"], base["out"]
    assert r.exit_code == 1, r.output
    assert "1 failed" in lines(r.output)[-1] and "--retry-failed" in lines(r.output)[-1]
    assert "[3/3] C: failed" in r.output  # one line per job without a terminal
    # the summary table says which jobs met tol (2 steps: none did) and leaves the failed one blank
    table = {ln.split()[0]: ln.split() for ln in lines(r.output) if ln.split() and ln.split()[0] in "ABC"}
    assert "conv." in r.output and table["A"][3] == table["B"][3] == "NO" and table["C"][3] == "-", r.output
    data = batch_json(out)
    assert data["kind"] == "patchcollide-batch" and data["model"]["kind"] == "random"
    assert set(data) == {"kind", "jobs_file", "jobs_sha256", "created", "updated", "options", "model", "versions",
                         "jobs"}
    jobs = {e["id"]: e for e in data["jobs"]}
    assert [e["id"] for e in data["jobs"]] == ["A", "B", "C"]
    for e in data["jobs"]:
        assert set(e) == {"id", "line", "out", "status", "seconds", "error", "traceback", "metrics"}
    assert jobs["A"]["status"] == jobs["B"]["status"] == "done"
    assert set(jobs["A"]["metrics"]) == METRICS and jobs["A"]["metrics"]["steps"] == 2
    assert jobs["A"]["seconds"] > 0 and jobs["A"]["error"] is None
    c = jobs["C"]
    assert c["status"] == "failed" and c["error"] == "RuntimeError: simulated failure" and c["metrics"] is None
    assert "simulated failure" in Path(out, c["traceback"]).read_text()
    # the failed job left no directory that could pass for a finished one, and no scratch
    assert not os.path.exists(os.path.join(out, "C")) and not os.listdir(os.path.join(out, ".tmp"))
    rep = read_json(os.path.join(out, "A", "report.json"))
    assert rep["polytope"]["samples"] == 4 and rep["polytope"]["dataset_n_images"] == 6  # the index's images
    assert rep["batch"]["id"] == "A" and rep["config"]["mode"] == "patches"


def test_batch_csv_has_one_row_per_job_with_every_metric(base):
    import csv

    from patchcollide.core.formats import METRICS as CSV_METRICS

    out = base["out"]
    with open(os.path.join(out, "batch.csv"), newline="") as fh:
        rows = list(csv.DictReader(fh))
    data = {e["id"]: e for e in batch_json(out)["jobs"]}
    assert [r["id"] for r in rows] == ["A", "B", "C"] and set(CSV_METRICS) == METRICS
    assert list(rows[0]) == ["id", "line", "out", "status", "seconds", "error", *CSV_METRICS]
    for r in rows:
        e = data[r["id"]]
        assert r["status"] == e["status"] and r["line"] == str(e["line"])
        for k in CSV_METRICS:
            v = (e["metrics"] or {}).get(k)
            assert r[k] == ("" if v is None else str(v)), (r["id"], k)
    assert rows[2]["error"] == "RuntimeError: simulated failure" and rows[2]["worst_rel_error"] == ""
    assert float(rows[0]["worst_rel_error_png"]) == data["A"]["metrics"]["worst_rel_error_png"]


def test_jobs_that_share_a_target_compute_it_once(base, tmp_path, jobs_dir):
    from patchcollide.engine.config import CollideConfig
    from patchcollide.models.build import load_tap
    from patchcollide.runs.run import run_collide

    # A and B share chelsea at the same size and vertices: one target_of in the batch, none in collide
    assert base["calls"] == {"jobs": 2, "collide": 0}, base["calls"]  # chelsea once, rocket (C) once
    # B (which reused A's target) equals B collided on its own, the target computed inside collide
    job = json.loads(Path(jobs_dir / "abc.jsonl").read_text().splitlines()[1])
    cfg = {k: v for k, v in job.items() if k not in ("id", "source", "target", "samples")}
    run_collide(job["source"], job["target"], str(tmp_path / "B"), CollideConfig(device="cpu", **cfg),
                tap=load_tap("vgg16", "fc6", "random", seed=0))
    assert vertex_bytes(tmp_path, "B") == vertex_bytes(base["out"], "B")


def test_a_jobs_target_is_fitted_for_the_batchs_model_as_its_run_fits_it(tmp_path, photos_dir):
    """fit auto with the digits world's net: the shared target (a 451 x 300 photo) is brought to
    size as the run brings it, the centre square with no zoom, so the target's values in
    report.json are the net's on the run's target.png; a source at the size goes in as given."""
    import numpy as np
    import torch
    from PIL import Image

    from patchcollide.engine.collide import to_tensor
    from patchcollide.models.build import load_tap

    target = os.path.join(photos_dir, "chelsea.png")
    source = tmp_path / "square.png"
    Image.open(target).crop((100, 50, 212, 162)).save(source)  # 112 x 112
    jobs = write_jobs(tmp_path / "j.jsonl", [{"id": "a", "source": str(source), "target": target, "mode": "pixel",
                                              "size": 112, "steps": 1, "min_steps": 0, "vertices": 2, "samples": 0}])
    out = tmp_path / "out"
    r = batch(jobs, "--out", out, "--model", "digits_vgg")
    assert r.exit_code == 0, r.output
    rep = read_json(out / "a" / "report.json")
    assert {k: v["fit"] for k, v in rep["inputs"]["transform"].items()} == {"source": "as given", "target": "crop"}
    assert np.array_equal(np.asarray(Image.open(out / "a" / "source.png")), np.asarray(Image.open(source)))
    tap = load_tap("digits_vgg", "fc6", "random", seed=0)
    with torch.no_grad():
        z = tap.pre(to_tensor(np.asarray(Image.open(out / "a" / "target.png").convert("RGB"))))[0]
    assert torch.allclose(z[rep["target"]["units"]], torch.tensor(rep["target"]["unit_values"]), atol=1e-5)


def test_retry_failed_runs_only_the_failed_job(base, tmp_path, jobs_dir, flat_index):
    out = str(tmp_path / "out")
    shutil.copytree(base["out"], out)
    before = mtimes(out, ["A", "B"])
    r = batch(jobs_dir / "abc.jsonl", "--out", out, "-i", flat_index, "--retry-failed")
    assert r.exit_code == 0, r.output
    assert lines(r.output)[-1] == "all 3 jobs done, 1 run now"
    assert mtimes(out, ["A", "B"]) == before
    assert statuses(out) == {"A": "done", "B": "done", "C": "done"}
    assert not os.path.exists(os.path.join(out, ".failed", "C.json"))
    # a plain rerun of a finished batch runs nothing
    r = batch(jobs_dir / "abc.jsonl", "--out", out, "-i", flat_index)
    assert r.exit_code == 0 and "0 run now" in r.output and mtimes(out, ["A", "B"]) == before


def test_resume_runs_only_the_missing_job_and_equals_a_clean_run(base, tmp_path, jobs_dir, flat_index):
    out = str(tmp_path / "out")
    shutil.copytree(base["out"], out)
    shutil.rmtree(os.path.join(out, "B"))
    before = mtimes(out, ["A"])
    r = batch(jobs_dir / "ab.jsonl", "--out", out, "-i", flat_index)
    assert r.exit_code == 0, r.output
    assert "1 run now" in r.output and mtimes(out, ["A"]) == before
    assert vertex_bytes(out, "B") == vertex_bytes(base["out"], "B")


def test_a_half_written_job_is_not_done(base, tmp_path, jobs_dir, flat_index):
    out = str(tmp_path / "out")
    shutil.copytree(base["out"], out)
    # A's run without its polytope check (killed between collide and sample) and scratch left
    # behind by a killed process
    rep_path = os.path.join(out, "A", "report.json")
    rep = read_json(rep_path)
    del rep["polytope"]
    Path(rep_path).write_text(json.dumps(rep))
    os.makedirs(os.path.join(out, ".tmp", "A", "run"))
    os.makedirs(os.path.join(out, ".tmp", "gone-job"))
    before = mtimes(out, ["B"])
    r = batch(jobs_dir / "ab.jsonl", "--out", out, "-i", flat_index)
    assert r.exit_code == 0, r.output
    assert "1 run now" in r.output and mtimes(out, ["B"]) == before
    assert read_json(rep_path)["polytope"]["samples"] == 4
    assert vertex_bytes(out, "A") == vertex_bytes(base["out"], "A")
    assert os.listdir(os.path.join(out, ".tmp")) == []


def test_shards_share_one_directory(base, tmp_path, jobs_dir, flat_index):
    out = str(tmp_path / "out")
    r1 = batch(jobs_dir / "abc.jsonl", "--out", out, "-i", flat_index, "--shard", "1/2")  # A and C
    assert r1.exit_code == 0, r1.output
    assert "all 2 jobs of shard 1/2 done" in r1.output
    assert statuses(out) == {"A": "done", "B": "pending", "C": "done"}
    # while another process works on B, shard 2/2 reports it busy and leaves it alone
    lock = JobLock.acquire(out, "B")
    try:
        r2 = batch(jobs_dir / "abc.jsonl", "--out", out, "-i", flat_index, "--shard", "2/2")
        assert r2.exit_code == 1 and "1 busy" in lines(r2.output)[-1], r2.output
        assert statuses(out)["B"] == "busy" and not os.path.exists(os.path.join(out, "B"))
    finally:
        lock.release()
    r2 = batch(jobs_dir / "abc.jsonl", "--out", out, "-i", flat_index, "--shard", "2/2")
    assert r2.exit_code == 0, r2.output
    assert statuses(out) == {"A": "done", "B": "done", "C": "done"}
    # B ran alone here (its target computed afresh), A and B beside each other in the base run
    # (B reusing A's target): the same bytes
    for job in ("A", "B"):
        assert vertex_bytes(out, job) == vertex_bytes(base["out"], job)


def test_shard_assignment():
    assert parse_shard(None) is None and parse_shard("1/1") is None and parse_shard(" 2 / 3 ") == (2, 3)
    picked = [[p for p in range(10) if in_shard(p, (i, 3))] for i in (1, 2, 3)]
    assert picked == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]


def test_a_second_process_on_the_same_shard_is_refused(tmp_path, jobs_dir):
    out = tmp_path / "out"
    for shard, args in ((None, []), ((1, 2), ["--shard", "1/2"])):
        with batch_lock(str(out), shard):
            r = batch(jobs_dir / "abc.jsonl", "--out", out, *args)
        assert r.exit_code == 2, r.output
        assert len(lines(r.output)) == 1 and "another process is already running" in r.output, r.output
    assert sorted(os.listdir(out)) == [".lock-all", ".lock-shard-1-of-2"]  # nothing else written


def test_every_invalid_line_is_reported_and_nothing_runs(tmp_path, photos_dir, query_image, flat_index):
    img = os.path.join(photos_dir, "chelsea.png")
    ok = {"id": "ok", "source": query_image, "target": img, "mode": "pixel", **TINY}
    broken = tmp_path / "broken.png"  # a readable header, a truncated body: fails only when it runs
    broken.write_bytes(Path(img).read_bytes()[:300])
    (tmp_path / "notes.txt").write_text("not an image")
    jobs = write_jobs(tmp_path / "jobs.jsonl", [
        ok,                                                            # 1
        '{"id": "x", "source": ',                                      # 2 malformed
        {**ok, "id": "u", "stepz": 3},                                 # 3 unknown key
        {**ok, "id": "m", "source": "nope.png"},                       # 4 missing image
        {**ok},                                                        # 5 duplicate id
        {**ok, "id": "e", "out": "../x"},                              # 6 escapes DIR
        {**ok, "id": "abs", "out": "/tmp/abs"},                        # 7 absolute
        {**ok, "id": "s0", "steps": 0},                                # 8 bad override
        {**ok, "id": "t", "target": "notes.txt"},                      # 9 not an image (relative to the job file)
        {**ok, "id": "OK"},                                            # 10 "ok" ignoring case
        {**ok, "id": "f", "vertices": "2"},                            # 11 wrong type
        {**ok, "id": "bad-target", "target": str(broken)},             # 12 valid until it runs
    ])
    out = tmp_path / "out"
    r = batch(jobs, "--out", out)
    assert r.exit_code == 2, r.output
    got = lines(r.output)
    assert [ln.split(":")[1] for ln in got[:-1]] == ["2", "3", "4", "5", "6", "7", "8", "9", "10", "11"]
    assert all(ln.startswith(f"{jobs}:") for ln in got[:-1])
    needles = ["not valid JSON", "unknown key 'stepz' (did you mean 'stepz' -> 'steps'?); allowed: id, source", "does not exist",
               "duplicate id 'ok' (also on line 1)", "leads outside", "absolute path", '"steps" must be between 1 and 1,000,000',
               "not an image", "ignoring case", '"vertices" must be an integer']
    for ln, needle in zip(got[:-1], needles):
        assert needle in ln, (needle, ln)
    assert got[-1] == "Error: 10 invalid lines; fix them or pass --skip-invalid"
    assert not out.exists()
    # --skip-invalid: the valid jobs run, the invalid lines are listed as such
    r = batch(jobs, "--out", out, "--skip-invalid")
    assert r.exit_code == 1, r.output  # bad-target fails when it is decoded
    st = [(e["line"], e["status"]) for e in batch_json(out)["jobs"]]
    assert st == [(1, "done")] + [(n, "invalid") for n in range(2, 12)] + [(12, "failed")]
    err = statuses_error(out, "bad-target")
    assert "cannot decode" in err and not err.split(":")[0].endswith(("Error", "Error_", "Image")), err  # no class name


def statuses_error(out, job_id) -> str:
    return next(e["error"] for e in batch_json(out)["jobs"] if e["id"] == job_id)


@pytest.mark.parametrize("setup, args, needle", [
    (None, ["{tmp}/missing.jsonl"], "no such job file"),
    ("", ["{tmp}/jobs.jsonl"], "no jobs (the file is empty)"),
    (b"\xff\xfe{}\n", ["{tmp}/jobs.jsonl"], "not UTF-8"),
    ("{}\n", ["{tmp}/jobs.jsonl", "--shard", "0/2"], "between 1 and N"),
    ("{}\n", ["{tmp}/jobs.jsonl", "--shard", "a/b"], "--shard must look like I/N"),
    ("{}\n", ["{tmp}/jobs.jsonl", "--samples", "-1"], "'--samples': -1 is not in the range 0<=x<=1000000"),
    ("{}\n", ["{tmp}/jobs.jsonl", "--out-is-a-file"], "is a file"),
    ('[\n  {"id": "a",\n   "steps": 2},\n  {"id": "b"}\n]\n', ["{tmp}/jobs.jsonl"], "one JSON array of 2 jobs; write it as JSON Lines"),
    ('{\n "id": "a",\n "steps": 2\n}\n', ["{tmp}/jobs.jsonl"], "one JSON object over 4 lines"),
])
def test_user_errors_are_one_line(tmp_path, setup, args, needle):
    if setup is not None:
        (tmp_path / "jobs.jsonl").write_bytes(setup if isinstance(setup, bytes) else setup.encode())
    out = tmp_path / "out"
    if "--out-is-a-file" in args:
        args = [a for a in args if a != "--out-is-a-file"]
        out.write_text("a file")
    r = batch(*[a.format(tmp=tmp_path) for a in args], "--out", out)
    assert r.exit_code == 2, r.output
    assert len(lines(r.output)) == 1 and needle in r.output, r.output
    assert not out.is_dir()


def test_output_names_stay_inside_the_directory(tmp_path, query_image):
    def problems(**job):
        p = write_jobs(tmp_path / "j.jsonl", [{"id": "j", "source": query_image, "target": query_image, **job}])
        return [m for _, m in read_jobs(p, str(tmp_path / "out")).problems()]

    assert problems(out="b/") == []
    for out, needle in [("a/../b", "is not a plain name (it means 'b')"), ("", "non-empty"), (".", "itself"), ("a/b", "sub-folders"), (".tmp", "kept for the batch"),
                        ("Batch.json", "kept for the batch"), ("a\\b", "backslash"), (3, "non-empty directory name")]:
        got = problems(out=out)
        assert len(got) == 1 and needle in got[0], (out, got)
    assert "give the job an \"out\" name" in problems(id="x/y")[0]
    os.makedirs(tmp_path / "out" / "mine")
    (tmp_path / "out" / "mine" / "thesis.tex").write_text("precious")
    assert "not a patchcollide run" in problems(out="mine")[0]
    os.symlink(tmp_path, tmp_path / "out" / "link")
    assert "outside" in problems(out="link")[0]
