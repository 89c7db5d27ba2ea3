"""The extension points, used as docs/extending.md says: a third search space, a third objective, a
sixth loss term and a third executor, each one class plus one registration line in this process,
run through the same loop, batch and run folder as the built-in ones (tests/test_plugins.py
registers them from another package, through entry points)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.nn as nn

from patchcollide.batch.folder import BatchOptions
from patchcollide.batch.jobfile import read_jobs
from patchcollide.batch.events import run_here
from patchcollide.batch.runner import run_batch
from patchcollide.engine import objectives, params, polytope, term_traits
from patchcollide.engine.collide import collide
from patchcollide.engine.config import CollideConfig, CollideError
from patchcollide.models.build import load_tap
from patchcollide.offline.extract import write_parts_here
from patchcollide.executors import EXECUTORS, ExecutorError, make_executor


class GreyParam(params.SearchSpace):
    """A third search space, its logic only: one grey channel per vertex, shown as RGB."""

    default_lr = 2e-2

    @classmethod
    def from_config(cls, config, source, target, candidates):
        init = (source if config.init == "source" else target).mean(1, keepdim=True)
        return cls(init.expand(config.vertices, -1, -1, -1))

    def __init__(self, init: torch.Tensor):
        super().__init__()
        self.grey = nn.Parameter(init.detach().clone())

    def forward(self) -> torch.Tensor:
        return self.grey.expand(-1, 3, -1, -1)

    @torch.no_grad()
    def project(self) -> None:
        self.grey.clamp_(0, 1)


def images(seed: int, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    return tuple(g.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(2))


def test_a_third_search_space_is_one_class_and_one_line(monkeypatch):
    monkeypatch.setitem(params.SPACES, "grey", GreyParam)  # the registration line
    tap = load_tap("digits_vgg", "fc6", "random", seed=0)
    src, tgt = images(0)
    cfg = CollideConfig(mode="grey", size=64, vertices=2, steps=20, min_steps=20, least_change=0, device="cpu")
    res = collide(tap, src, tgt, cfg)
    v = res.vertices
    assert torch.equal(v[:, 0], v[:, 1]) and torch.equal(v[:, 1], v[:, 2])  # grey, as the space renders it
    assert res.mixing is None and res.argmax_vertices is None
    assert res.history["pos"][-1] < res.history["pos"][0]  # the loop optimised it
    assert cfg.learning_rate == 2e-2
    state = res.param_state  # SearchSpace's default core_state: its parameters by name
    assert list(state) == ["grey"] and state["grey"].shape == (2, 1, 64, 64)


def test_a_third_search_space_forks_by_the_default_fork(monkeypatch):
    """``--fork`` on a space that writes no ``fork`` of its own: SearchSpace's default repeats the
    one vertex's parameters with seeded noise each, and the distinct term moves the copies apart."""
    monkeypatch.setitem(params.SPACES, "grey", GreyParam)
    tap = load_tap("digits_vgg", "fc6", "random", seed=0)
    src, tgt = images(0)
    cfg = CollideConfig(mode="grey", size=64, vertices=3, steps=20, min_steps=20, least_change=0, fork=0.5,
                        device="cpu")
    res = collide(tap, src, tgt, cfg)
    assert res.param_state["grey"].shape == (3, 1, 64, 64) and res.vertices.shape[0] == 3
    d = res.history["distinct"]
    assert d[:9] == [0.0] * 9 and d[9] > 0  # one vertex until step 10, then three copies within --extent
    v = res.vertices
    assert not torch.equal(v[1], v[2]) and torch.equal(v[1, 0], v[1, 1])  # the default fork's noise: apart, still grey
    u8 = (v.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    assert polytope.extent(u8, src, tgt)["extent"] > 0.01


def test_an_unregistered_search_space_is_a_one_line_error():
    names = ", ".join(params.SPACES)  # the built-ins and whatever installed packages add
    with pytest.raises(CollideError, match=rf"^mode must be one of {names}, got 'grey'$"):
        CollideConfig(mode="grey")


class CollisionOnly(objectives.Objective):
    """A third objective with an option of its own: the relative L+ times ``scale``, no push."""

    summary = "the relative L+ times scale, no push"
    options = {"scale": 1.0}
    calls: list = []

    @classmethod
    def check_options(cls, settings):
        if settings["scale"] <= 0:
            raise ValueError(f"scale must be > 0, got {settings['scale']}")

    def __call__(self, z, target):
        CollisionOnly.calls.append(z.shape)
        pos, _ = objectives.Relative(self.push_margin)(z, target)
        return self.settings["scale"] * pos, torch.zeros_like(pos)


def test_a_third_objective_is_one_class_and_one_line(monkeypatch):
    monkeypatch.setitem(objectives.OBJECTIVES, "collision_only", CollisionOnly)  # the registration line
    tap = load_tap("digits_vgg", "fc6", "random", seed=0)
    src, tgt = images(1)
    base = dict(mode="pixel", size=64, vertices=2, steps=5, min_steps=5, least_change=0, device="cpu")
    res = collide(tap, src, tgt, CollideConfig(objective="collision_only", **base))
    assert len(CollisionOnly.calls) == 5 and res.history["neg"] == [0.0] * 5
    scaled = collide(tap, src, tgt, CollideConfig(objective="collision_only", objective_options=(("scale", 3.0),),
                                                  **base))
    assert scaled.history["pos"][0] == pytest.approx(3 * res.history["pos"][0], rel=1e-5)  # the option is used
    assert CollideConfig(objective="collision_only", push_margin=0, distinct=0, vertices=3).doubts() == []  # no push
    with pytest.raises(CollideError, match=r"^objective_options 'size': objective collision_only has the options "
                                           r"scale$"):
        CollideConfig(objective="collision_only", objective_options=(("size", 2.0),))
    with pytest.raises(CollideError, match=r"^objective_options scale must be > 0, got -1.0$"):
        CollideConfig(objective="collision_only", objective_options=(("scale", -1.0),))
    with pytest.raises(CollideError, match=r"^objective_options 'scale': objective relative has no options$"):
        CollideConfig(objective_options=(("scale", 2.0),))


class Brightness(term_traits.Term):
    """An added loss term: the vertices' mean brightness (V,), raised (the loss adds its negative)."""

    key = "brightness"  # its history column
    summary = "brighter vertices"
    options = {"weight": 1.0}

    @classmethod
    def check_options(cls, settings):
        if settings["weight"] < 0:
            raise ValueError(f"weight must be >= 0, got {settings['weight']}")

    def value(self, ctx):
        return -ctx.x.mean((1, 2, 3))

    def weight(self, ctx):
        return self.settings["weight"]


def test_a_loss_term_is_one_class_and_one_name(monkeypatch):
    tap = load_tap("digits_vgg", "fc6", "random", seed=0)
    src, tgt = images(2)
    cfg = CollideConfig(mode="pixel", size=64, vertices=2, steps=10, min_steps=10, least_change=0, device="cpu")
    plain = collide(tap, src, tgt, cfg)
    monkeypatch.setitem(term_traits.TERMS, "brightness", Brightness)  # the registration line
    assert collide(tap, src, tgt, cfg).history.keys() == plain.history.keys()  # registered: added only by name
    bright = collide(tap, src, tgt, CollideConfig(**{**vars(cfg), "terms": ("brightness",),
                                                     "term_options": (("brightness.weight", 100.0),)}))
    h = bright.history
    assert len(h["brightness"]) == 10 and h["brightness"][-1] < h["brightness"][0]  # recorded, and it fell
    assert list(h)[-1] == "brightness" and "brightness" not in plain.history
    gain = (bright.vertices - plain.vertices).flatten(1).mean(1)
    assert torch.all(gain > 0.02), gain  # every vertex brighter than without the term
    weak = collide(tap, src, tgt, CollideConfig(**{**vars(cfg), "terms": ("brightness",)}))  # its default weight 1
    assert torch.all((weak.vertices - plain.vertices).flatten(1).mean(1) < gain / 3)  # the option is used
    with pytest.raises(CollideError, match=r"^term_options 'brightness.size': term brightness has the options "
                                           r"weight$"):
        CollideConfig(terms=("brightness",), term_options=(("brightness.size", 2.0),))
    with pytest.raises(CollideError, match=r"^term_options weight must be >= 0, got -1.0$"):
        CollideConfig(terms=("brightness",), term_options=(("brightness.weight", -1.0),))
    with pytest.raises(CollideError, match=r"^term_options 'brightness.weight' is no option of a term the run adds "
                                           r"\(it adds none\); name one as TERM.NAME$"):
        CollideConfig(term_options=(("brightness.weight", 2.0),))
    with pytest.raises(CollideError, match=r"^terms must be a tuple of names, got the string 'brightness'; give "
                                           r"\('brightness',\) for one$"):
        CollideConfig(terms="brightness")
    with pytest.raises(CollideError, match=r"^terms must be one of brightness, got 'dim' among them$"):
        CollideConfig(terms=("brightness", "dim"))
    with pytest.raises(CollideError, match=r"^terms 'brightness' is given 2 times; give it once$"):
        CollideConfig(terms=("brightness", "brightness"))

    class Shadow(Brightness):
        key = "tv"  # a built-in column

    monkeypatch.setitem(term_traits.TERMS, "shadow", Shadow)
    monkeypatch.setitem(term_traits.TERMS, "twin", type("Twin", (Brightness,), {}))  # the same key
    monkeypatch.setitem(term_traits.TERMS, "my.light", type("Light", (Brightness,), {"key": "light"}))
    with pytest.raises(CollideError, match=r"^terms 'brightness' and 'twin' both write the history column "
                                           r"'brightness'; add one of them, or give one a key of its own$"):
        CollideConfig(terms=("brightness", "twin"))
    dotted = CollideConfig(terms=("my.light",), term_options=(("my.light.weight", 2.0),))  # a name with dots
    assert dotted.term_settings("my.light") == {"weight": 2.0}
    with pytest.raises(CollideError, match=r"^terms 'shadow' is not a loss term: its key 'tv' is a column of the "
                                           r"built-in loss; give it a name of its own; see docs/extending.md$"):
        CollideConfig(terms=("shadow",))


def test_no_term_installed_is_said():
    with pytest.raises(CollideError, match=r"^terms must name a registered loss term, and none is installed "
                                           r"\(docs/extending.md\), got 'dim' among them$"):
        CollideConfig(terms=("dim",))


class ReverseExecutor:
    """A third executor: the jobs in this process, last first."""

    name = "reverse"
    summary = "the jobs in this process, last first"
    local = True
    driver_device = None
    options = ()  # none of --address, --gpus-per-job, --cpus-per-job
    order: list[str] = []

    def connect(self):
        import contextlib
        return contextlib.nullcontext()

    def run_jobs(self, runner, todo, events):
        ReverseExecutor.order = [j.id for j in reversed(todo)]
        return run_here(runner, list(reversed(todo)), events)

    def write_parts(self, writer, selected, roots, label_of, config, n_parts, done, progress, workers):
        return write_parts_here(writer, selected, roots, label_of, config, n_parts, done, progress, workers)


def test_a_third_executor_is_one_class_and_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(EXECUTORS, "reverse", ReverseExecutor)  # the registration line
    paths = []
    for i in range(2):
        s, t = images(10 + i)
        for name, img in (("s", s), ("t", t)):
            from PIL import Image
            p = tmp_path / f"{name}{i}.png"
            Image.fromarray(img).save(p)
            paths.append(str(p))
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(json.dumps({"id": f"j{i}", "source": paths[2 * i], "target": paths[2 * i + 1],
                                        "mode": "pixel", "size": 64, "vertices": 2, "steps": 3, "min_steps": 3,
                                        "samples": 0}) + "\n" for i in range(2)))
    out = str(tmp_path / "out")
    res = run_batch(read_jobs(str(jobs), out, device="cpu"), out,
                    BatchOptions(arch="digits_vgg", weights="random", device="cpu"),
                    executor=make_executor("reverse"))
    assert ReverseExecutor.order == ["j1", "j0"] and sorted(res.ran) == ["j0", "j1"]
    assert [e["status"] for e in res.batch["jobs"]] == ["done", "done"]
    assert os.path.isfile(os.path.join(out, "j0", "report.json"))
    with pytest.raises(ExecutorError, match=r"^--address is not an option of --executor reverse; add --executor ray "
                                            r"or leave out --address$"):
        make_executor("reverse", address="auto")


def test_a_recorded_run_names_the_plugin_it_needs():
    from patchcollide.engine.config import not_installed

    assert not_installed({"mode": "patches", "objective": "relative", "terms": []}) is None
    assert not_installed({"mode": "pixel", "objective": "relative", "terms": ["dim"]}) == (
        "terms", "'dim' is a loss term that is not installed here; install the package that provides it (entry-point "
        "group patchcollide.terms, docs/extending.md)")
    assert not_installed({"mode": "grey"})[1].startswith("'grey' is a search space that is not installed here")
