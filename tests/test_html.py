"""`patchcollide report`: the static HTML page of a run and of a batch, checked in headless
Chromium (every image loads, the table sorts, the page is not blank), plus escaping and the
CLI's one-line errors in pure Python."""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from conftest import one_line, run_cli
from patchcollide.runs.report import ReportError, write_html

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
EVIL_ID = "<script>alert(1)</script>&"


def find_chromium() -> str | None:
    explicit = os.environ.get("CHROMIUM")  # a binary to use instead of the first found on PATH
    if explicit:
        return shutil.which(explicit)
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    """A function running headless Chromium on a page: dump-dom -> DOM text, or screenshot."""
    exe = find_chromium()
    if exe is None:
        if os.environ.get("CI"):  # in CI the browser checks must run: a skip there would pass without them
            pytest.fail("CI is set but no Chromium was found: the browser checks must run in CI; install it "
                        "(apt-get install chromium; .ci/run does) or set CHROMIUM to a browser binary")
        pytest.skip("no Chromium binary found (Debian: apt-get install chromium; .ci/run installs it)")
    profile = str(tmp_path_factory.mktemp("chromium-profile"))

    def run(url: str, screenshot: str | None = None, size: tuple[int, int] = (1280, 1600)) -> str:
        # No --allow-file-access-from-files: the page must work with a browser's default settings.
        cmd = [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
               f"--user-data-dir={profile}", "--virtual-time-budget=5000", f"--window-size={size[0]},{size[1]}"]
        cmd += ["--hide-scrollbars", f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
        r = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=90)
        assert r.returncode == 0, r.stderr[-2000:]
        return r.stdout

    return run


class Dom(HTMLParser):
    """The parts of a dumped DOM the tests look at."""

    def __init__(self, text: str):
        super().__init__()
        self.body, self.imgs, self.ids, self.scripts, self.links = {}, [], [], 0, []
        self.rows, self.heads, self.h2, self.table = [], {}, [], {}
        self._in_jobs = self._row = self._h2 = None
        self._cell = -1
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.body = a
        elif tag == "img":
            self.imgs.append(a)
        elif tag == "script":
            self.scripts += 1
        elif tag == "a":
            self.links.append(a.get("href"))
        elif tag == "h2":
            self._h2 = ""
        elif tag == "table" and a.get("id") == "jobs":
            self._in_jobs, self.table = True, a
        elif self._in_jobs and tag == "th" and "data-key" in a:
            self.heads[a["data-key"]] = a
        elif self._in_jobs and tag == "tr" and "data-order" in a:
            self._row, self._cell = {"class": a.get("class"), "cells": []}, -1
        elif self._row is not None and tag == "td":
            self._row["cells"].append(a.get("data-v"))

    def handle_endtag(self, tag):
        if tag == "table" and self._in_jobs:
            self._in_jobs = False
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None
        elif tag == "h2" and self._h2 is not None:
            self.h2.append(self._h2.strip())
            self._h2 = None

    def handle_data(self, data):
        if self._h2 is not None:
            self._h2 += data

    def row_ids(self) -> list[str]:
        return [r["cells"][1] for r in self.rows]  # cells: thumbnail, id, status, ...


def images_all_loaded(dom: Dom) -> int:
    total, loaded = int(dom.body["data-images-total"]), int(dom.body["data-images-loaded"])
    assert total == len(dom.imgs) > 0 and loaded == total, (loaded, total)
    return total


def run_metrics(report: dict) -> dict:
    from patchcollide.core.formats import metrics_of

    return metrics_of(report)  # every column a real batch writes: the widest jobs table


# Measures the layout once the page has loaded; the tests add it to a copy of a page, so the
# report itself carries no test code. Every table sits in a box: its right edge, its width
# against the box's, and whether the box scrolls sideways.
LAYOUT_PROBE = """<script>
window.addEventListener("load", function () {
  var tables = [], err = document.querySelector("#jobs th.err");
  document.querySelectorAll("table").forEach(function (t) {
    var box = t.parentElement;
    tables.push({name: t.id || t.className, box_right: box.getBoundingClientRect().right, width: t.scrollWidth,
                 box_width: box.clientWidth, overflow_x: getComputedStyle(box).overflowX});
  });
  document.body.setAttribute("data-layout", JSON.stringify({
    viewport: document.documentElement.clientWidth, page_width: document.documentElement.scrollWidth,
    tables: tables, error_column_right: err ? err.getBoundingClientRect().right : null}));
});
</script>"""


def layout(chromium, page: str, width: int) -> dict:
    probe = os.path.join(os.path.dirname(page), ".layout-probe.html")  # beside the page: its images load
    with open(page, encoding="utf-8") as fh:
        text = fh.read()
    with open(probe, "w", encoding="utf-8") as fh:
        fh.write(text.replace("</body>", LAYOUT_PROBE + "</body>"))
    try:
        dom = Dom(chromium("file://" + probe, size=(width, 1000)))
    finally:
        os.remove(probe)
    return json.loads(dom.body["data-layout"])


def verdict_of(page: str) -> str:
    m = re.search(r'<p class="verdict [^"]*" id="verdict">([^<]*)</p>', open(page, encoding="utf-8").read())
    assert m, "no verdict line"
    return html.unescape(m.group(1))


def job(id_, status, seconds, out=None, metrics=None, error=None, traceback=None, line=1):
    return {"id": id_, "line": line, "out": out or id_, "status": status, "seconds": seconds, "error": error,
            "traceback": traceback, "metrics": metrics}


def write_batch(d, jobs) -> None:
    os.makedirs(d, exist_ok=True)
    doc = {"kind": "patchcollide-batch", "jobs_file": "jobs.txt", "jobs_sha256": "0" * 64,
           "created": "2025-01-01T00:00:00", "updated": "2025-01-01T00:05:00",
           "options": {"mode": "pixel", "size": 32, "steps": 3},
           "model": {"arch": "vgg16", "layer": "fc6", "kind": "random", "name": "random(seed=0)"},
           "versions": {"patchcollide": "test"}, "jobs": jobs}
    with open(os.path.join(d, "batch.json"), "w") as fh:
        json.dump(doc, fh)


@pytest.fixture(scope="module")
def batch_dir(tmp_path_factory, photos_dir, query_image):
    """A batch of four jobs: a (done, polytope checked), b (done), a failed one with an id that
    needs escaping and a traceback file, d (pending, no run directory). Two real tiny runs with
    one random VGG-16 (pixel mode, 32 x 32, 3 steps, 3 and 2 vertices)."""
    from patchcollide.engine.config import CollideConfig
    from patchcollide.models.build import load_tap
    from patchcollide.runs.run import run_collide, run_sample
    from patchcollide.runs.inputs import read_report

    d = str(tmp_path_factory.mktemp("batch"))
    tap = load_tap("vgg16", "fc6", "random", seed=0)
    photos = sorted(os.path.join(photos_dir, n) for n in os.listdir(photos_dir))
    run_collide(query_image, photos[0], os.path.join(d, "a"),
                CollideConfig(mode="pixel", size=32, steps=3, vertices=3, device="cpu"), weights="random", tap=tap)
    run_collide(photos[1], query_image, os.path.join(d, "b"),  # device auto: the page shows what it became
                CollideConfig(mode="pixel", size=32, steps=3, vertices=2, device="auto"), weights="random", tap=tap)
    run_sample(os.path.join(d, "a"), samples=10, tap=tap)
    os.makedirs(os.path.join(d, "tracebacks"))
    with open(os.path.join(d, "tracebacks", "c.txt"), "w") as fh:
        fh.write("Traceback (most recent call last):\n  ...\nCollideError: boom\n")
    write_batch(d, [
        job("a", "done", 5.0, metrics=run_metrics(read_report(os.path.join(d, "a"))), line=1),
        job("b", "done", 12.5, metrics=run_metrics(read_report(os.path.join(d, "b"))), line=2),
        job(EVIL_ID, "failed", 0.9, out="c", error="CollideError: --source 'x & y.jpg' does not exist; give an image "
            "file of at least 32 x 32 pixels (PNG, JPEG, ...) or a folder of them, as the README's example does\nsecond line",
            traceback="tracebacks/c.txt", line=3),
        job("d", "pending", None, line=4),
    ])
    return d


@pytest.mark.slow
def test_batch_page_in_chromium(chromium, batch_dir, tmp_path):  # chromium first: skip before building runs
    page = write_html(batch_dir)
    assert page == os.path.join(batch_dir, "report.html")
    for run in ("a", "b"):
        assert os.path.isfile(os.path.join(batch_dir, run, "report.html"))
    url = "file://" + page
    dom = Dom(chromium(url))
    # thumbnails of the two done runs; none for the failed and the pending job (no run directory)
    assert images_all_loaded(dom) == 2
    assert {i["src"] for i in dom.imgs} == {"a/contact_sheet.png", "b/contact_sheet.png"}
    assert dom.row_ids() == ["a", "b", EVIL_ID, "d"] and dom.scripts == 1  # the id did not become a script
    assert [r["class"] for r in dom.rows] == ["st-done", "st-done", "st-failed", "st-pending"]
    assert "a/report.html" in dom.links and "b/report.html" in dom.links and "tracebacks/c.txt" in dom.links
    assert {"seconds", "share_target_class", "worst_rel_error", "mean_pairwise_l2"} <= set(dom.heads)

    # Sorting, by the page's own script clicking the header (#sort=KEY: once; #sort=-KEY: twice)
    dom = Dom(chromium(url + "#sort=seconds"))
    assert dom.row_ids() == [EVIL_ID, "a", "b", "d"]  # 0.9 < 5.0 < 12.5 (a text sort: 0.9, 12.5, 5.0); none last
    assert dom.heads["seconds"]["aria-sort"] == "ascending" and dom.table["data-sort-dir"] == "asc"
    dom = Dom(chromium(url + "#sort=-seconds"))
    assert dom.row_ids() == ["b", "a", EVIL_ID, "d"] and dom.heads["seconds"]["aria-sort"] == "descending"
    dom = Dom(chromium(url + "#sort=-share_target_class"))
    assert dom.row_ids() == ["a", "b", EVIL_ID, "d"]  # only a was sampled; missing values stay last
    dom = Dom(chromium(url + "#sort=-id"))
    assert dom.row_ids() == ["d", "b", "a", EVIL_ID] and dom.table["data-sort-key"] == "id"
    assert images_all_loaded(dom) == 2  # rows moved with their thumbnails

    shot = str(tmp_path / "batch.png")
    chromium(url, screenshot=shot, size=(1280, 900))
    with Image.open(shot) as im:
        a = np.asarray(im.convert("RGB"))
    assert a.shape == (900, 1280, 3) and len(np.unique(a.reshape(-1, 3), axis=0)) > 50  # not one colour


@pytest.mark.slow
def test_run_pages_in_chromium(chromium, batch_dir, tmp_path):
    write_html(batch_dir)
    # the page of a job in the batch: every image, the polytope table, a link back to the batch
    dom = Dom(chromium("file://" + os.path.join(batch_dir, "a", "report.html")))
    assert images_all_loaded(dom) == 8  # contact sheet, source, target, 3 vertices, indicator, loss
    assert {i["src"] for i in dom.imgs} == {"contact_sheet.png", "source.png", "target.png", "indicator.png",
                                            "loss.png"} | {f"vertex_{i}.png" for i in range(3)}
    assert all(i.get("alt") for i in dom.imgs)
    assert dom.h2 == ["Images", "Per-vertex metrics", "Polytope check", "Model", "Config", "Versions"]
    assert "../report.html" in dom.links
    # a run on its own (copied out of the batch): no polytope check was run, no batch to link to
    solo = str(tmp_path / "solo")
    shutil.copytree(os.path.join(batch_dir, "b"), solo)
    os.remove(os.path.join(solo, "report.html"))
    page = write_html(solo)
    text = open(page).read()
    assert "RANDOM WEIGHTS" in text and 'class="banner"' in text
    dom = Dom(chromium("file://" + page))
    assert images_all_loaded(dom) == 7 and "Polytope check" not in dom.h2 and "../report.html" not in dom.links
    shot = str(tmp_path / "run.png")
    chromium("file://" + page, screenshot=shot, size=(1000, 1400))
    with Image.open(shot) as im:
        a = np.asarray(im.convert("RGB"))
    assert len(np.unique(a.reshape(-1, 3), axis=0)) > 50


@pytest.mark.slow
@pytest.mark.parametrize("width", [1400, 800])
def test_pages_fit_their_width_in_chromium(chromium, batch_dir, width):
    """At 1,400 and 800 px the page never scrolls sideways: each table fits its box or scrolls
    inside it. At 1,400 the batch page's error column is on screen and the per-vertex table fits."""
    write_html(batch_dir)
    for page in (os.path.join(batch_dir, "report.html"), os.path.join(batch_dir, "a", "report.html")):
        got = layout(chromium, page, width)
        view = got["viewport"]  # the window less a vertical scroll bar
        assert width - 20 <= view <= width and got["page_width"] <= view, (page, got)
        assert got["tables"], page
        for t in got["tables"]:
            assert t["box_right"] <= view, (page, t)
            assert t["width"] <= t["box_width"] or t["overflow_x"] == "auto", (page, t)
        if width == 1400:
            assert all(t["width"] <= t["box_width"] for t in got["tables"] if t["name"] != "jobs"), (page, got)
            if page.endswith(os.path.join(batch_dir, "report.html")):
                assert got["error_column_right"] is not None and got["error_column_right"] <= view, got
    jobs = next(t for t in layout(chromium, os.path.join(batch_dir, "report.html"), width)["tables"] if t["name"] == "jobs")
    if width == 800:
        assert jobs["width"] > jobs["box_width"] and jobs["overflow_x"] == "auto"  # all 24 columns: it scrolls in its box


@pytest.mark.slow
def test_run_page_says_first_what_the_run_came_to(batch_dir):
    """The verdict line, the values the run used, git as text, and the random-weights notice
    once, at the top; the contact sheet says it in a strip of its own, and its target is "target"."""
    write_html(batch_dir)
    a, b = (os.path.join(batch_dir, n, "report.html") for n in ("a", "b"))
    tol = read_json(os.path.join(batch_dir, "a", "report.json"))["config"]["tol"]
    worst = max(read_json(os.path.join(batch_dir, "a", "report.json"))["vertices"]["png"]["rel_error"])
    assert worst > tol  # 3 steps
    assert verdict_of(a).startswith(f"not converged: worst rel. error {worst:.4g} > tol {tol:g} after 3 steps; ")
    assert re.search(r"; \d+\.\d% of 10 samples in the target's class, \d+\.\d% fool the net \(top-class prob\. "
                     r"within 0\.01 of the target's\)$", verdict_of(a)), verdict_of(a)
    assert verdict_of(b).endswith("; polytope not checked (patchcollide sample --out RUN)")
    assert verdict_of(os.path.join(batch_dir, "report.html")).startswith(
        "2 of 4 jobs done, 1 failed, 1 not run or not finished; 0 of 2 done converged, worst rel. error "
        + "{:.4g}".format(max(max(read_json(os.path.join(batch_dir, n, "report.json"))["vertices"]["png"]["rel_error"])
                              for n in "ab"))
        + "; " + verdict_of(a).split("; ")[1].split(" of ")[0] + " of samples in the target's class (1 of 2 done sampled)")
    text = open(b, encoding="utf-8").read()
    assert text.index('id="verdict"') < text.index('class="banner"') < text.index("<dl")
    assert text.count("RANDOM WEIGHTS") == 1  # the banner; no caption repeats it
    rows = dict(re.findall(r"<tr><th>([^<]*)</th><td>([^<]*)</td></tr>", text))
    assert rows["device"] == "cpu (auto)" and rows["lr"] == "0.01 (the pixel space&#x27;s default)"
    assert re.fullmatch(r"commit [0-9a-f]{40} \((clean tree|with uncommitted changes)\)", rows["git"]) or \
        rows["git"] == "not run from a git checkout", rows["git"]
    assert "<figcaption>target</figcaption>" in text
    timings = read_json(os.path.join(batch_dir, "b", "report.json"))["timings"]
    line = re.search(r"<dt>before the first step</dt><dd>([^<]*)</dd>", text).group(1)
    assert line.startswith(f"{sum(timings[k] for k in ('inputs', 'model', 'target', 'setup', 'first_step')):.2f} s: ")
    from patchcollide.runs.report import TIMING_LABELS

    shown = [k for k in TIMING_LABELS if timings[k] >= 0.005]
    assert "first_step" in shown and all(f"{TIMING_LABELS[k]} {timings[k]:.2f}" in line for k in shown), line
    from patchcollide.runs.pictures import BANNER_FILL, BANNER_HEIGHT

    with Image.open(os.path.join(batch_dir, "b", "contact_sheet.png")) as im:
        sheet = np.asarray(im.convert("RGB"))
    assert tuple(sheet[1, -2]) == BANNER_FILL and tuple(sheet[BANNER_HEIGHT + 1, -2]) == (255, 255, 255)


def test_verdict_of_converged_and_least_change_runs():
    from patchcollide.runs.report import verdict

    base = {"config": {"tol": 0.05}, "steps": 120, "vertices": {"png": {"rel_error": [0.01, 0.04]}}}
    assert verdict({**base, "converged": True}) == (
        "ok", "converged: worst rel. error 0.04 <= tol 0.05 after 120 steps; polytope not checked "
        "(patchcollide sample --out RUN)")
    lc = {**base, "converged": True, "vertices": {"png": {"rel_error": [0.2, 0.3]}}, "history": {"fooled": [1, 2]},
          "polytope": {"samples": 200, "share_target_class": 0.0}, "judge": {"n_reads_as_source": 2,
                                                                             "vertices": {"class": [3, 3]}}}
    cls, line = verdict(lc)
    assert cls == "bad" and line == (
        "converged at the net's decision: every vertex fools it at its last step, worst rel. error 0.3 (tol 0.05 not "
        "needed with least change) after 120 steps; 0.0% of 200 samples in the target's class; judge: 2 / 2 vertices "
        "read as the source")
    assert verdict({})[0] == "unknown"


def test_git_and_config_as_used_for_a_report_without_them(tmp_path):
    """An older report.json (no resolved values) and a dirty tree: readable text, never raw JSON."""
    d = tmp_path / "run"
    d.mkdir()
    (d / "report.json").write_text(json.dumps({
        "kind": "patchcollide-run", "config": {"mode": "patches", "lr": None, "device": "auto"},
        "versions": {"git": {"commit": "ab" * 20, "dirty": True}}, "vertices": {"png": {"rel_error": [0.5]}}}))
    text = open(write_html(str(d)), encoding="utf-8").read()
    rows = dict(re.findall(r"<tr><th>([^<]*)</th><td>([^<]*)</td></tr>", text))
    assert rows["git"] == f"commit {'ab' * 20} (with uncommitted changes)" and "{" not in rows["git"]
    assert rows["device"] == "auto" and rows["lr"].startswith("\u2013 (the search space")


def test_the_run_page_says_how_each_input_was_brought_to_size(tmp_path):
    """report.json's inputs.transform beside each input, and fit, fork and least_change auto as the run resolved them."""
    d = tmp_path / "run"
    d.mkdir()
    how = "imagenet: 451x300 resized to 109x73 (shorter side to 73, bilinear), centre 64x64"
    (d / "report.json").write_text(json.dumps({
        "kind": "patchcollide-run", "config": {"mode": "pixel", "size": 64, "fit": "auto", "fork": None,
                   "least_change": None},
        "resolved": {"fit": "imagenet", "fork": 0.8, "fork_step": 240, "least_change": 1.0}, "vertices": {"png": {"rel_error": [0.5]}},
        "inputs": {"source": "/x/a.png", "target": "/x/c.png", "transform": {
            "source": {"fit": "as given", "from": "64x64", "how": "as given (64x64)"},
            "target": {"fit": "imagenet", "from": "451x300", "how": how}}}}))
    text = html.unescape(open(write_html(str(d)), encoding="utf-8").read())
    rows = dict(re.findall(r"<tr><th>([^<]*)</th><td>([^<]*)</td></tr>", text))
    assert rows["fit"] == "auto: an input of 64 x 64 as given, any other imagenet"
    assert rows["fork"] == "0.8 (auto: trained weights; one vertex until step 240)"
    assert rows["least_change"] == "1 (auto: trained weights)"
    summary = dict(re.findall(r"<dt>([^<]*)</dt><dd>([^<]*)</dd>", text))
    assert summary["source"] == "/x/a.png (as given (64x64))" and summary["target"] == f"/x/c.png ({how})"


def read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def test_escaping_and_missing_runs(tmp_path):
    """Pure Python: strings from batch.json are escaped; a done job without its run directory
    renders without an <img> and says so; missing metrics show as a dash."""
    d = str(tmp_path / "b")
    os.makedirs(os.path.join(d, "tb"))
    open(os.path.join(d, "tb", "x y.txt"), "w").write("Traceback\n")
    write_batch(d, [
        job(EVIL_ID, "failed", 1.0, out="../x", error='bad <b>"input"</b> & more\nline two', traceback="tb/x y.txt"),
        job("gone", "done", 2.0, metrics={"steps": 3}),
        job("weird", "<i>status</i>", None, metrics=None),
        "not a job",
    ])
    text = open(write_html(d), encoding="utf-8").read()
    assert EVIL_ID not in text and "&lt;script&gt;alert(1)&lt;/script&gt;&amp;" in text
    assert text.count("<script") == 1 and "<b>" not in text and "<i>" not in text
    assert "bad &lt;b&gt;&quot;input&quot;&lt;/b&gt; &amp; more" in text and "line two</span>" not in text
    assert 'href="tb/x%20y.txt"' in text
    assert "<img" not in text and "run directory gone missing or unreadable" in text
    assert "\u2013" in text and 'class="status st-other"' in text
    assert not os.path.exists(os.path.join(d, "gone", "report.html"))


def test_cli_errors_touch_nothing(tmp_path):
    code, out = run_cli("report", tmp_path / "nope")
    assert code == 2 and "no such directory" in one_line(out)
    code, out = run_cli("report", tmp_path)
    assert code == 2 and "neither report.json nor batch.json" in one_line(out)
    (tmp_path / "f.txt").write_text("x")
    code, out = run_cli("report", tmp_path / "f.txt")
    assert code == 2 and "not a directory" in one_line(out)
    cases = {"report.json": ('{"kind": "patchcollide-run", "config": {"si', "not valid JSON"),
             "batch.json": ('{"kind": "patchcollide-batch", "jobs": {}}', "no list of jobs")}
    foreign = {"report.json": '{"kind": "something-else"}', "batch.json": "[1, 2]"}
    for name, (broken, needle) in cases.items():
        for content, want in ((broken, needle), (foreign[name], "not a patchcollide-")):
            d = tmp_path / name.replace(".", "_")
            d.mkdir(exist_ok=True)
            (d / name).write_text(content)
            (d / "report.html").write_text("old page")
            code, out = run_cli("report", d)
            assert code == 2 and want in one_line(out) and name in out
            assert (d / "report.html").read_text() == "old page"
            assert sorted(os.listdir(d)) == sorted([name, "report.html"])  # no temporary left behind
    with pytest.raises(ReportError):
        write_html(str(tmp_path / "nope"))


def test_cli_writes_and_prints_url(tmp_path):
    d = tmp_path / "batch dir"
    write_batch(str(d), [job("p", "pending", None)])
    code, out = run_cli("report", d)
    assert code == 0 and out.strip() == (d / "report.html").as_uri() and "batch%20dir" in out
    assert "<table id=\"jobs\"" in (d / "report.html").read_text()


def test_sparse_run_report(tmp_path):
    """A report.json with little in it and no pictures still gives a page: dashes, no <img>."""
    d = tmp_path / "run"
    d.mkdir()
    (d / "report.json").write_text(json.dumps({"kind": "patchcollide-run", "vertices": {"png": {"rel_error": [0.5]}}}))
    text = open(write_html(str(d)), encoding="utf-8").read()
    assert "<img" not in text and "vertex_0.png is missing" in text and "contact_sheet.png is missing" in text
    assert "Polytope check" not in text and "\u2013" in text


@pytest.mark.parametrize("ci", ["", "true"])
def test_without_a_browser_ci_fails_and_a_local_run_skips_with_its_reason(ci, tmp_path):
    env = {**os.environ, "CHROMIUM": "no-such-browser-here", "CI": ci}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        os.path.abspath(__file__), "-k", "test_run_pages_in_chromium"],
                       capture_output=True, text=True, env=env, cwd=os.path.dirname(os.path.dirname(__file__)))
    if ci:
        assert r.returncode == 1 and "the browser checks must run in CI" in r.stdout, r.stdout[-2000:]
    else:
        assert r.returncode == 0 and "SKIPPED" in r.stdout and "no Chromium binary found" in r.stdout, r.stdout[-2000:]
