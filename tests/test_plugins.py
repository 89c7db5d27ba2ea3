"""Extensions from another package (issue 29, item 1): a throw-away plug-in package, installed
the way pip installs one (its code and a ``*.dist-info`` with ``entry_points.txt`` in a folder on
the path), adds a search space, an objective and a loss term with an option of their own, and an
executor. Every
command runs as a user runs it, in a fresh process that knows the plug-in only from its entry
points: ``collide``, ``sample``, ``report``, ``batch`` (local, the plug-in's executor, and Ray,
whose workers import everything afresh) and ``load_run``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PLUGIN = '''
"""A plug-in of patchcollide: a grey search space, a scaled objective, a darkness term, a last-first
executor."""
import contextlib
import os

import torch
import torch.nn as nn

from patchcollide.batch.events import run_here
from patchcollide.engine.objective_traits import Objective
from patchcollide.engine.objectives import Relative
from patchcollide.engine.params import SearchSpace
from patchcollide.engine.term_traits import Term
from patchcollide.offline.extract import write_parts_here


class GreyParam(SearchSpace):
    summary = "one grey channel per vertex"
    default_lr = 0.02

    @classmethod
    def from_config(cls, config, source, target, candidates):
        init = (source if config.init == "source" else target).mean(1, keepdim=True)
        return cls(init.expand(config.vertices, -1, -1, -1))

    def __init__(self, init):
        super().__init__()
        self.grey = nn.Parameter(init.detach().clone())

    def forward(self):
        return self.grey.expand(-1, 3, -1, -1)

    @torch.no_grad()
    def project(self):
        self.grey.clamp_(0, 1)


class Scaled(Objective):
    summary = "the relative objective with L+ times scale"
    options = {"scale": 1.0}
    pushes = True

    @classmethod
    def check_options(cls, settings):
        if settings["scale"] <= 0:
            raise ValueError(f"scale must be > 0, got {settings['scale']}")

    def __call__(self, z, target):
        pos, neg = Relative(self.push_margin)(z, target)
        return self.settings["scale"] * pos, neg


class Darkness(Term):
    key = "darkness"
    summary = "darker vertices"
    options = {"weight": 0.0}

    def value(self, ctx):
        return ctx.x.mean((1, 2, 3))

    def weight(self, ctx):
        return self.settings["weight"]


class LastFirst:
    name = "lastfirst"
    summary = "the jobs in this process, last first"
    local = True
    driver_device = None
    options = ()

    def connect(self):
        return contextlib.nullcontext()

    def run_jobs(self, runner, todo, events):
        todo = list(reversed(todo))
        with open(os.path.join(runner.out_dir, "order.txt"), "w") as fh:
            fh.write(" ".join(job.id for job in todo))
        return run_here(runner, todo, events)

    def write_parts(self, writer, selected, roots, label_of, config, n_parts, done, progress, workers):
        return write_parts_here(writer, selected, roots, label_of, config, n_parts, done, progress, workers)
'''

ENTRY_POINTS = """
[patchcollide.search_spaces]
grey = pcplug_demo:GreyParam
broken = pcplug_missing:Nothing

[patchcollide.objectives]
scaled = pcplug_demo:Scaled

[patchcollide.terms]
darkness = pcplug_demo:Darkness

[patchcollide.executors]
lastfirst = pcplug_demo:LastFirst
"""

COMMON = ["--model", "digits_vgg", "--weights", "random", "--device", "cpu"]
RUN = ["--mode", "grey", "--objective", "scaled", "--objective-option", "scale:2", "--terms", "darkness",
       "--term-option", "darkness.weight:50", "--size", "32", "--vertices", "2", "--steps", "3", "--min-steps", "0",
       *COMMON]


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> str:
    """A folder as ``pip install --target`` leaves it: the package and its dist-info."""
    site = tmp_path_factory.mktemp("site")
    (site / "pcplug_demo").mkdir()
    (site / "pcplug_demo" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    info = site / "pcplug_demo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pcplug-demo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    return str(site)


def run(args: list[str], cwd, site: str, code: str | None = None) -> subprocess.CompletedProcess:
    """``patchcollide ARGS`` (or the Python ``code``) in a fresh process with the plug-in installed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, site]), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "patchcollide", *args]
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("inputs")
    g = np.random.default_rng(0)
    for name in ("s", "t"):
        Image.fromarray(g.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / f"{name}.png")
    return str(d)


def grey_pngs(run_dir: str) -> bool:
    pngs = [np.asarray(Image.open(os.path.join(run_dir, f))) for f in sorted(os.listdir(run_dir))
            if f.startswith("vertex_")]
    return len(pngs) == 2 and all((p[..., 0] == p[..., 1]).all() and (p[..., 1] == p[..., 2]).all() for p in pngs)


LOADED = """
import json, sys
from patchcollide.cli import cli
try:
    cli.main(sys.argv[1:], prog_name="patchcollide")
except SystemExit:
    pass
print(json.dumps({"torch": "torch" in sys.modules, "plugin": "pcplug_demo" in sys.modules}))
"""


def test_help_lists_the_plugins_without_loading_them(plugin, tmp_path):
    r = run(["collide", "--help"], tmp_path, plugin, LOADED)
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {"torch": False, "plugin": False}, r.stderr
    assert "[patches|pixel|grey|broken]" in r.stdout and "[relative|paper|post|scaled]" in r.stdout
    assert "grey: from package pcplug-demo" in " ".join(r.stdout.split())
    assert "darkness: from package pcplug-demo" in " ".join(r.stdout.split())
    r = run(["batch", "--help"], tmp_path, plugin, LOADED)
    assert "[local|ray|lastfirst]" in r.stdout and json.loads(r.stdout.strip().splitlines()[-1])["torch"] is False


def test_collide_sample_report_and_load_run_use_the_plugins(plugin, inputs, tmp_path):
    out = str(tmp_path / "run")
    r = run(["-q", "collide", "--source", "s.png", "--target", "t.png", "-o", out, *RUN], inputs, plugin)
    assert r.returncode == 0, r.stderr
    rep = json.load(open(os.path.join(out, "report.json")))
    assert rep["config"]["mode"] == "grey" and rep["config"]["objective"] == "scaled"
    assert rep["config"]["objective_options"] == [["scale", 2.0]] and rep["resolved"]["lr"] == 0.02
    assert rep["config"]["terms"] == ["darkness"] and rep["config"]["term_options"] == [["darkness.weight", 50.0]]
    assert rep["resolved"]["term_settings"] == {"darkness": {"weight": 50.0}}
    dark = rep["history"]["darkness"]
    assert len(dark) == 3 and dark[-1] < dark[0]  # the term is in the loss: the vertices darken
    assert grey_pngs(out)
    r = run(["-q", "sample", "--out", out, "--samples", "4", "--device", "cpu"], inputs, plugin)
    assert r.returncode == 0, r.stderr
    assert json.load(open(os.path.join(out, "report.json")))["polytope"]["samples"] == 4
    r = run(["report", out], inputs, plugin)
    assert r.returncode == 0 and os.path.isfile(os.path.join(out, "report.html")), r.stderr
    code = ("import json, sys\nfrom patchcollide.runs.run import load_run\nr = load_run(sys.argv[1])\n"
            "v = r.vertices\nprint(json.dumps({'mode': r.config.mode, 'options': r.config.objective_options, "
            "'mixing': r.mixing, 'grey': bool((v[:, 0] == v[:, 1]).all()), 'shape': list(v.shape)}))")
    r = run([out], tmp_path, plugin, code)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"mode": "grey", "options": [["scale", 2.0]], "mixing": None, "grey": True,
                                    "shape": [2, 3, 32, 32]}
    # without the plug-in installed, the run is refused in one line that names the fix
    env = {**os.environ, "PYTHONPATH": REPO}
    r = subprocess.run([sys.executable, "-c", code, out], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode != 0 and (f"{out}/report.json: config.mode 'grey' is a search space that is not installed "
                                  "here; install the package that provides it (entry-point group "
                                  "patchcollide.search_spaces, docs/extending.md); make the run again") in r.stderr, r.stderr


def jobs_file(d, inputs: str, n: int = 2) -> str:
    p = os.path.join(d, "jobs.jsonl")
    with open(p, "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"j{i}", "source": os.path.join(inputs, "s.png"),
                                 "target": os.path.join(inputs, "t.png"), "mode": "grey", "objective": "scaled",
                                 "objective_options": [["scale", 2]], "size": 32, "vertices": 2, "steps": 2,
                                 "min_steps": 0, "seed": i, "samples": 0, "terms": ["darkness"],
                                 "term_options": [["darkness.weight", 50]]}) + "\n")
    return p


def test_a_batch_runs_on_the_plugins_executor(plugin, inputs, tmp_path):
    jobs, out = jobs_file(str(tmp_path), inputs), str(tmp_path / "out")
    r = run(["-q", "batch", jobs, "-o", out, "--executor", "lastfirst", *COMMON], tmp_path, plugin)
    assert r.returncode == 0, r.stderr
    assert open(os.path.join(out, "order.txt")).read() == "j1 j0"
    assert [j["status"] for j in json.load(open(os.path.join(out, "batch.json")))["jobs"]] == ["done", "done"]
    assert grey_pngs(os.path.join(out, "j0")) and grey_pngs(os.path.join(out, "j1"))
    r = run(["-q", "batch", jobs, "-o", out, "--executor", "lastfirst", "--address", "auto", *COMMON], tmp_path, plugin)
    assert r.returncode == 2 and r.stderr.strip() == ("Error: --address is not an option of --executor lastfirst; "
                                                      "add --executor ray or leave out --address")


def test_a_ray_batch_resolves_the_plugins_in_its_workers(plugin, inputs, tmp_path):
    pytest.importorskip("ray")
    jobs, out = jobs_file(str(tmp_path), inputs, n=1), str(tmp_path / "out")
    r = run(["-q", "batch", jobs, "-o", out, "--executor", "ray", "--cpus-per-job", "1", *COMMON], tmp_path, plugin)
    assert r.returncode == 0, r.stderr
    assert [j["status"] for j in json.load(open(os.path.join(out, "batch.json")))["jobs"]] == ["done"]
    rep = json.load(open(os.path.join(out, "j0", "report.json")))
    assert rep["config"]["mode"] == "grey" and rep["config"]["objective_options"] == [["scale", 2.0]]
    assert rep["config"]["terms"] == ["darkness"] and len(rep["history"]["darkness"]) == 2
    assert grey_pngs(os.path.join(out, "j0"))


def test_a_plugin_that_cannot_load_or_a_bad_option_is_one_line(plugin, inputs, tmp_path):
    base = ["collide", "--source", "s.png", "--target", "t.png", "-o", str(tmp_path / "r"), "--size", "32"]
    r = run([*base, "--mode", "broken"], inputs, plugin)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("Error: search space 'broken' (pcplug_missing:Nothing, from pcplug-demo) cannot be "
                               "loaded: ModuleNotFoundError") and lines[0].endswith("reinstall or fix that package, "
                                                                                    "or uninstall it")
    r = run([*base, "--mode", "pixel", "--objective", "scaled", "--objective-option", "scale:-1"], inputs, plugin)
    assert r.returncode == 2 and r.stderr.strip() == "Error: --objective-option scale must be > 0, got -1.0", r.stderr
    r = run([*base, "--mode", "pixel", "--objective", "scaled", "--objective-option", "scale"], inputs, plugin)
    assert r.returncode == 2 and "--objective-option 'scale': give NAME:VALUE" in r.stderr, r.stderr
    r = run([*base, "--mode", "pixel", "--terms", "darkness", "--term-option", "weight:2"], inputs, plugin)
    assert r.returncode == 2 and r.stderr.strip() == ("Error: --term-option 'weight' is no option of a term the run "
                                                      "adds (darkness); name one as TERM.NAME"), r.stderr
    r = run([*base, "--mode", "pixel", "--terms", "darkness,light"], inputs, plugin)
    assert r.returncode == 2 and r.stderr.strip() == ("Error: --terms must be one of darkness, got 'light' among "
                                                      "them"), r.stderr
