"""The extension points, used as the README says: a third search space, a third objective, a
sixth loss term and a third executor, each one class or function plus one registration line,
run through the same loop, batch and run folder as the built-in ones."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.nn as nn

from patchcollide.batch.folder import BatchOptions
from patchcollide.batch.jobfile import read_jobs
from patchcollide.batch.runner import run_here, run_batch
from patchcollide.engine import objectives, params, terms
from patchcollide.engine.collide import CollideConfig, CollideError, collide
from patchcollide.engine.models import load_tap
from patchcollide.executors import EXECUTORS, make_executor


class GreyParam(params.PixelParam):
    """A third search space: one grey channel per vertex, shown as RGB."""

    default_lr = 1e-2

    @classmethod
    def from_config(cls, config, source, target, candidates):
        init = (source if config.init == "source" else target).mean(1, keepdim=True)
        return cls(init.expand(config.vertices, -1, -1, -1))

    def forward(self) -> torch.Tensor:
        return self.x.expand(-1, 3, -1, -1)


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
    assert cfg.learning_rate == 1e-2


def test_an_unregistered_search_space_is_a_one_line_error():
    with pytest.raises(CollideError, match=r"^mode must be patches or pixel, got 'grey'$"):
        CollideConfig(mode="grey")


def test_a_third_objective_is_one_function_and_its_decorator(monkeypatch):
    monkeypatch.setattr(objectives, "OBJECTIVES", dict(objectives.OBJECTIVES))
    calls = []

    @objectives.objective("collision_only")
    def collision_only(z, target, push_margin):
        calls.append(z.shape)
        pos, _ = objectives.OBJECTIVES["relative"](z, target, push_margin)
        return pos, torch.zeros_like(pos)

    import patchcollide.engine.config as config_mod
    monkeypatch.setattr(config_mod, "OBJECTIVES", objectives.OBJECTIVES)  # the config checks the registry
    tap = load_tap("digits_vgg", "fc6", "random", seed=0)
    src, tgt = images(1)
    res = collide(tap, src, tgt, CollideConfig(mode="pixel", objective="collision_only", size=64, vertices=2,
                                               steps=5, min_steps=5, least_change=0, device="cpu"))
    assert len(calls) == 5 and res.history["neg"] == [0.0] * 5


class Brightness(terms.Term):
    """A sixth loss term: the vertices' mean brightness (V,), raised (the loss adds its negative)."""

    key = "brightness"  # its history column

    def value(self, ctx):
        return -ctx.x.mean((1, 2, 3))

    def weight(self, ctx):
        return 100.0


def test_a_loss_term_is_one_class_and_one_line(monkeypatch):
    tap = load_tap("digits_vgg", "fc6", "random", seed=0)
    src, tgt = images(2)
    cfg = CollideConfig(mode="pixel", size=64, vertices=2, steps=10, min_steps=10, least_change=0, device="cpu")
    plain = collide(tap, src, tgt, cfg)
    monkeypatch.setitem(terms.TERMS, "brightness", Brightness)  # the registration line
    bright = collide(tap, src, tgt, cfg)
    h = bright.history
    assert len(h["brightness"]) == 10 and h["brightness"][-1] < h["brightness"][0]  # recorded, and it fell
    assert list(h)[-1] == "brightness" and "brightness" not in plain.history
    gain = (bright.vertices - plain.vertices).flatten(1).mean(1)
    assert torch.all(gain > 0.02), gain  # every vertex brighter than without the term


class ReverseExecutor:
    """A third executor: the jobs in this process, last first."""

    name = "reverse"
    local = True
    driver_device = None
    order: list[str] = []

    def __init__(self, address=None, gpus_per_job=None, cpus_per_job=None):
        pass

    def connect(self):
        import contextlib
        return contextlib.nullcontext()

    def run_jobs(self, runner, todo, events):
        ReverseExecutor.order = [j.id for j in reversed(todo)]
        return run_here(runner, list(reversed(todo)), events)

    def write_parts(self, *a, **kw):
        raise NotImplementedError


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
