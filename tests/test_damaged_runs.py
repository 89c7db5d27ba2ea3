"""Damaged run folders (issue 28): a report.json that is valid JSON but not what a run writes, a
state.npz or a vertex PNG with changed bytes, and sample counts out of bounds are one line each
(exit 2), naming the file, the key and the fix; ``load_run`` raises a PatchcollideError; the run
page still renders and says what is missing. Every test here fails on the code before that issue."""
from __future__ import annotations

import html
import io
import json
import random
import re
import shutil

import numpy as np
import pytest
from PIL import Image

import patchcollide
from conftest import one_line, run_cli
from patchcollide.core.errors import PatchcollideError

FIX = "make the run again with `patchcollide collide`, or restore"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, query_image):
    """A real tiny run (pixel mode, 32 px, random weights, 2 vertices, 2 steps) to damage copies of."""
    from patchcollide.engine.config import CollideConfig
    from patchcollide.runs.run import run_collide

    d = tmp_path_factory.mktemp("damaged") / "run"
    run_collide(query_image, query_image, str(d),
                CollideConfig(mode="pixel", size=32, steps=2, vertices=2, device="cpu"), weights="random")
    return d


@pytest.fixture(scope="module")
def loaded(pristine):
    return patchcollide.load_run(str(pristine))


def copy_of(pristine, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(pristine, run)
    return run


def same_run(a, b) -> bool:
    """Two load_run results hold the same arrays and config."""
    return (a.config == b.config and a.exact == b.exact and np.array_equal(a.vertices, b.vertices)
            and np.array_equal(a.png, b.png) and a.mixing == b.mixing)


def _del(*path):
    def edit(r):
        for k in path[:-1]:
            r = r[k]
        del r[path[-1]]
    return edit


def _set(value, *path):
    def edit(r):
        for k in path[:-1]:
            r = r[k]
        r[path[-1]] = value
    return edit


def _longer(r):
    r["vertices"]["png"]["rel_error"].append(0.5)


REPORTS = {  # valid JSON, damaged structure: (edit, what the line says)
    "no vertices": (_del("vertices"), "vertices is missing"),
    "model without name": (_del("model", "name"), "model.name is missing"),
    "rel_error x": (_set("x", "vertices", "png", "rel_error", 1),
                    'vertices.png.rel_error[1] is "x", expected a number or null'),
    "rel_error too long": (_longer, "vertices.png.rel_error has 3 values, expected 2 (config.vertices)"),
    "unknown mode": (_set("voxels", "config", "mode"), "config.mode 'voxels' is a search space that is not installed "
                     "here; install the package that provides it (entry-point group patchcollide.search_spaces, "
                     "docs/extending.md)"),
    "config not a dict": (_set([32, "pixel"], "config"), 'config is [32, "pixel"], expected an object'),
    "top_prob a string": (_set("high", "target", "top_prob"), 'target.top_prob is "high", expected a number'),
    "inputs a string": (_set("astronaut.png", "inputs"), 'inputs is "astronaut.png", expected an object'),
    "model kind unknown": (_set("torchhub", "model", "kind"),
                           'model.kind is "torchhub", expected one of imagenet, random, file'),
    "label past any class": (_set(10**30, "target", "label"),
                             f"target.label is {10**30}, expected an index in 0..2**31-1"),
    "seed past torch's": (_set(2**64, "config", "seed"), f"config.seed must be between 0 and 2^63 - 1, got {2**64}"),
}


@pytest.mark.parametrize("case", list(REPORTS))
def test_a_damaged_report_is_one_line_for_sample_and_load_run_and_the_page_says_so(case, pristine, tmp_path):
    edit, says = REPORTS[case]
    run = copy_of(pristine, tmp_path)
    code, out = run_cli("report", run)  # the sound run's page has no note
    assert code == 0 and 'id="damaged"' not in (run / "report.html").read_text()
    report = json.loads((run / "report.json").read_text())
    edit(report)
    (run / "report.json").write_text(json.dumps(report))
    before = (run / "report.json").read_text()
    code, out = run_cli("sample", "--out", run, "--samples", "2", "--device", "cpu")
    line = one_line(out)
    assert code == 2 and f"{run / 'report.json'}: {says}; {FIX} report.json" in line, line
    assert (run / "report.json").read_text() == before  # nothing written
    with pytest.raises(PatchcollideError) as e:
        patchcollide.load_run(str(run))
    assert str(e.value) == line.removeprefix("Error: ")
    code, out = run_cli("report", run)  # the page renders what is there, and says what is wrong
    assert code in (0, 2) and "Traceback" not in out
    if code == 0:
        page = html.unescape((run / "report.html").read_text())
        assert 'id="damaged"' in page and says in page


def _state(run) -> dict:
    with np.load(run / "state.npz") as z:
        return {k: z[k] for k in z.files}


STATES = {  # state.npz as numpy writes it, with arrays that are not the run's: (edit, what the line says)
    "an object array": (lambda s: s.update(units=np.array([2648, "x"], dtype=object)),
                        "units is an array of Python objects, which is never read"),
    "no units": (lambda s: s.pop("units"), "has no units array"),
    "units of three": (lambda s: s.update(units=np.arange(3)), "units is int64 (3,), expected (2,) integers"),
    "units as floats": (lambda s: s.update(units=s["units"].astype(np.float32)), "units is float32 (2,), expected"),
    "units past the layer": (lambda s: s.update(units=np.array([0, 5000])), "units holds [0, 5000], outside the "
                                                                             "target's 4096 units"),
    "target_z 2-D": (lambda s: s.update(target_z=s["target_z"].reshape(64, 64)), "target_z is float32 (64, 64)"),
    "target_z shorter": (lambda s: s.update(target_z=s["target_z"][:100]), "target_z is float32 (100,), expected "
                                                                           "(4096,) floats"),
    "vertices of 64 px": (lambda s: s.update(vertices=np.zeros((2, 3, 64, 64), np.float32)),
                          "vertices is float32 (2, 3, 64, 64), expected (2, 3, 32, 32) floats"),
}


@pytest.mark.parametrize("case", list(STATES))
def test_a_state_npz_with_other_arrays_is_one_line(case, pristine, tmp_path):
    edit, says = STATES[case]
    run = copy_of(pristine, tmp_path)
    state = _state(run)
    edit(state)
    np.savez(run / "state.npz", **state)
    with pytest.raises(PatchcollideError) as e:
        patchcollide.load_run(str(run))
    assert "\n" not in str(e.value) and f"{run / 'state.npz'}: " in str(e.value) and says in str(e.value), str(e.value)
    assert str(e.value).endswith(f"{FIX} state.npz")


def test_sample_says_a_damaged_state_npz_in_one_line(pristine, tmp_path):
    run = copy_of(pristine, tmp_path)
    (run / "state.npz").write_bytes(b"not a zip file at all")
    code, out = run_cli("sample", "--out", run, "--samples", "2", "--device", "cpu")
    assert code == 2 and f"{run / 'state.npz'}: cannot be read (File is not a zip file); {FIX}" in one_line(out)


@pytest.mark.parametrize("damage, says", [
    ("garbage", "vertex_1.png: cannot be read as an image (cannot identify image file"),
    ("64 px", "vertex_1.png: is 64 x 64, expected 32 x 32 (config.size)"),
])
def test_a_vertex_png_that_does_not_decode_or_has_another_size_is_one_line(damage, says, pristine, tmp_path):
    run = copy_of(pristine, tmp_path)
    if damage == "garbage":
        (run / "vertex_1.png").write_bytes(b"\x89PNG nothing more")
    else:
        Image.new("RGB", (64, 64)).save(run / "vertex_1.png")
    code, out = run_cli("sample", "--out", run, "--samples", "2", "--device", "cpu")
    assert code == 2 and says in one_line(out) and FIX in out
    with pytest.raises(PatchcollideError, match="vertex_1.png"):
        patchcollide.load_run(str(run))


def _flipped(data: bytes, rng: random.Random, t: int) -> bytes:
    """``data`` cut short (every fifth case) or with one bit flipped."""
    if t % 5 == 0:
        return data[: rng.randrange(len(data))]
    b = bytearray(data)
    b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    return bytes(b)


def _keys(data: bytes) -> list[int]:
    """The offsets of the bytes of every object key of a JSON text, quotes included."""
    return [i for m in re.finditer(rb'"[^"\\]*"(?=\s*:)', data) for i in range(m.start(), m.end())]


def _fuzz(name: str, pristine, tmp_path, loaded, seed: int, n: int = 20) -> dict:
    """n seeded flips or cuts of the run's file ``name``: each is one line naming that file, or a
    run that loads with the pristine one's arrays (``same_run``). Anything else propagates.
    Four of five of report.json's flips are in its keys (their places do not depend on the
    values); its digest makes any flip an error.
    Returns the outcome counts."""
    run = copy_of(pristine, tmp_path)
    data = (pristine / name).read_bytes()
    rng, counts = random.Random(seed), {"error": 0, "identical": 0, "loads, values changed": 0}
    keys = _keys(data) if name == "report.json" else None
    for t in range(n):
        if keys and t % 5:
            b = bytearray(data)
            b[keys[rng.randrange(len(keys))]] ^= 1 << rng.randrange(8)
            (run / name).write_bytes(bytes(b))
        else:
            (run / name).write_bytes(_flipped(data, rng, t))
        try:
            got = patchcollide.load_run(str(run))
        except PatchcollideError as e:
            assert "\n" not in str(e) and (name in str(e) or "report.json" in str(e)), str(e)
            counts["error"] += 1
            continue
        if same_run(got, loaded) and got.report == loaded.report:
            counts["identical"] += 1
        else:
            assert name == "report.json", name  # a changed number in report.json is still a report
            assert np.array_equal(got.vertices, loaded.vertices) and np.array_equal(got.png, loaded.png)
            counts["loads, values changed"] += 1
        if name == "report.json":
            from patchcollide.runs.report import write_html

            write_html(str(run))  # the page renders whatever loads
    return counts


def test_fuzzed_state_npz_is_an_error_line_or_the_same_run(pristine, tmp_path, loaded, record_property):
    assert loaded.exact and loaded.vertices.shape == (2, 3, 32, 32) and loaded.png.shape == (2, 32, 32, 3)
    counts = _fuzz("state.npz", pristine, tmp_path, loaded, seed=28)
    print("state.npz", counts)
    record_property("outcomes", json.dumps(counts))
    assert counts["error"] >= 15 and counts["loads, values changed"] == 0, counts


def test_fuzzed_report_json_is_an_error_line_or_the_same_arrays(pristine, tmp_path, loaded, record_property):
    counts = _fuzz("report.json", pristine, tmp_path, loaded, seed=28)
    print("report.json", counts)
    record_property("outcomes", json.dumps(counts))
    assert counts["error"] >= 15 and counts["loads, values changed"] == 0, counts  # the digest catches the rest


def test_a_report_json_changed_where_nothing_reads_is_refused_by_its_digest(pristine, tmp_path, loaded):
    """A value nothing checks (a loss in the history) edited by hand: the structure is sound, so
    only the digest sees it. load_run, sample and the run page each say so in one line; the same
    report written again through write_report loads as before."""
    from patchcollide.core.files import DIGEST, digest_of, write_report
    from patchcollide.runs.report import write_html

    run = copy_of(pristine, tmp_path)
    report = json.loads((run / "report.json").read_text())
    assert report[DIGEST] == digest_of(report)
    report["history"]["pos"][0] += 1.0
    (run / "report.json").write_text(json.dumps(report))
    with pytest.raises(PatchcollideError, match=r"report.json: its content does not match its digest .*make the run "
                                                r"again with `patchcollide collide`"):
        patchcollide.load_run(str(run))
    before = (run / "report.json").read_bytes()
    code, out = run_cli("sample", "--out", run, "--device", "cpu")
    assert code == 2 and "does not match its digest" in one_line(out)
    assert (run / "report.json").read_bytes() == before  # nothing written
    assert "does not match its digest" in open(write_html(str(run))).read()
    del report[DIGEST]
    (run / "report.json").write_text(json.dumps(report))
    with pytest.raises(PatchcollideError, match="report.json: has no digest"):
        patchcollide.load_run(str(run))
    write_report(str(run / "report.json"), report)  # the edit, digested: a run that says what it holds
    assert patchcollide.load_run(str(run)).report["history"]["pos"][0] == report["history"]["pos"][0]


def test_fuzzed_vertex_png_is_an_error_line_or_the_same_run(pristine, tmp_path, loaded, record_property):
    counts = _fuzz("vertex_1.png", pristine, tmp_path, loaded, seed=28)
    print("vertex_1.png", counts)
    record_property("outcomes", json.dumps(counts))
    assert counts["error"] >= 15 and counts["loads, values changed"] == 0, counts


@pytest.mark.parametrize("args, says", [
    (["--samples", "10000000000"], "--samples must be between 1 and 1,000,000, got 10,000,000,000; give a count"),
    (["--samples", "0"], "--samples must be between 1 and 1,000,000, got 0"),
    (["--batch-size", "0"], "--batch-size must be between 1 and 1024, got 0"),
    (["--batch-size", "100000000"], "--batch-size must be between 1 and 1024, got 100,000,000; give one in that range"),
])
def test_sample_counts_out_of_bounds_are_one_line_before_any_work(args, says, pristine, tmp_path):
    run = copy_of(pristine, tmp_path)
    before = (run / "report.json").read_bytes()
    code, out = run_cli("sample", "--out", run, "--device", "cpu", *args)
    assert code == 2 and says in one_line(out)
    assert (run / "report.json").read_bytes() == before


def test_run_sample_checks_its_counts_first(tmp_path):
    from patchcollide.runs.run import run_sample

    with pytest.raises(PatchcollideError, match="^samples must be between 1 and 1,000,000"):
        run_sample(str(tmp_path / "no-such-run"), samples=10**10)


def test_a_report_json_that_is_not_an_object_is_not_a_run(tmp_path):
    (tmp_path / "report.json").write_text("[1, 2]")
    code, out = run_cli("sample", "--out", tmp_path, "--samples", "2")
    assert code == 2 and "not a finished patchcollide run (no valid report.json)" in one_line(out)


def test_read_npz_refuses_a_header_that_promises_more_than_the_file_holds(tmp_path):
    """A crafted member whose header claims 10**12 floats: one error, no allocation."""
    from patchcollide.runs.inputs import STATE_ERRORS, read_npz

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (10**12,)})
    import zipfile

    with zipfile.ZipFile(tmp_path / "state.npz", "w") as zf:
        zf.writestr("target_z.npy", buf.getvalue() + b"\0" * 16)
    with pytest.raises(STATE_ERRORS, match="promises 4000000000000 bytes"):
        read_npz(str(tmp_path / "state.npz"))
