"""The vertex loss as terms (engine/terms.py): the loop's loss is the sum of weight * value over
the terms, each term moves the vertices the way it should (drop it and the outcome changes in
its direction), and the least-change weight rule is one method to replace. Random AlexNet at
64 x 64 in patch mode (every term is on there), k = 4."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import sample
from patchcollide.core.images import resize_crop
from patchcollide.engine import terms
from patchcollide.engine.collide import (alone, collide, least_change_anchor, make_param, optimise,
                                         retrieve_candidates, target_of, to_tensor)
from patchcollide.engine.config import CollideConfig
from patchcollide.models.build import load_tap
from patchcollide.engine.objectives import push_ratio
from patchcollide.engine.distance import relative_error
from patchcollide.engine.polytope import extent

S = 64
# patch mode with every term on: least change (random weights: it follows the collision within
# tol, loose enough here that its weights rise and fall), the push, TV and entropy heavier than the
# defaults so that 40 steps show what each does, the distinct term's extent above where the
# distinct start already puts the vertices (0.16) so that it acts; prunes at steps 13 and 20,
# settle factor after
BASE = CollideConfig(mode="patches", vertices=2, steps=40, size=S, k=4, device="cpu", tol=0.6, tv=0.03,
                     entropy=0.03, settle_factor=0.5, loss_early=(1.0, 1.0), extent=0.4,
                     prune=((0.33, 8), (0.5, 4)), least_change=0.1)  # 0.1: auto's value with random weights


def photo(name: str) -> np.ndarray:
    return np.asarray(resize_crop(Image.fromarray(sample(name)).convert("RGB"), S))


@pytest.fixture(scope="module")
def tap():
    return load_tap("alexnet", "fc6", "random", seed=0)


@pytest.fixture(scope="module")
def setting(tap, flat_index):
    """What optimise takes for BASE: the target, the candidates and the source."""
    from patchcollide.offline.knn import PatchIndex

    src, tgt = photo("astronaut"), photo("chelsea")
    with PatchIndex(flat_index) as pidx:
        cands = retrieve_candidates(pidx, src, BASE.k, BASE.grid_stride, BASE.window, tgt)
    return {"source": to_tensor(src), "target_img": to_tensor(tgt), "candidates": cands,
            "target": target_of(tap, to_tensor(tgt), BASE.vertices)}


def run(tap, setting, config=BASE, drop: str | None = None, progress=None) -> dict:
    """optimise on the built terms, less the one whose history column is ``drop``; the outcome
    measured on the final vertices. A forked config's space is built with one vertex (``alone``)."""
    param = make_param(alone(config), setting["source"], setting["target_img"], setting["candidates"])
    anchor = least_change_anchor(config, setting["source"], setting["candidates"]) if config.least_change else None
    target = setting["target"]
    setup = terms.Setup(config, tap, target, param, anchor, setting["source"], setting["target_img"])
    built = [t for t in terms.build_terms(setup) if t.key != drop]
    assert len(built) == len(terms.BUILT_INS) - (drop is not None)
    hist, steps, _ = optimise(tap, param, target, config, progress=progress, anchor=anchor, terms=built)
    with torch.no_grad():
        x = param()
        z = tap.pre(x)
        centre = float(relative_error(tap.pre(x.mean(0, keepdim=True)), target).max())
        u8 = lambda a: (a.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()  # noqa: E731
        spread = extent(u8(x), u8(setting["source"])[0], u8(setting["target_img"])[0])["extent"]
        return {"history": hist, "steps": steps, "vertices": len(x), "rel_error": float(relative_error(z, target).max()),
                "centroid_rel_error": centre, "extent": spread,
                "push": float(push_ratio(z, target).min()),
                "distance": float(terms.least_change_distance(x, setting["source"]).mean()),
                "tv": float(param.total_variation().mean()), "entropy": float(param.entropy().mean())}


@pytest.fixture(scope="module")
def full(tap, setting):
    losses = []
    out = run(tap, setting, progress=lambda step, total, loss, worst: losses.append(loss))
    return {**out, "losses": losses}


def test_the_loss_is_the_sum_of_weight_times_value_over_the_terms(full):
    """One vertex's loss, rebuilt at every step from the history (each term's value, its weight
    rule by phase, the least-change weight the step used), equals the loss the loop stepped on."""
    cfg, h = BASE, full["history"]
    ph = cfg.phases()
    assert full["steps"] == cfg.steps == len(full["losses"])
    assert len(set(map(tuple, h["least_change_weight"]))) > 2  # the least-change weights moved
    assert 0 < h["tv"][-1] and 0 < h["entropy"][-1]
    for i, loss in enumerate(full["losses"]):
        step = i + 1
        late = step > ph["switch"]
        a, b = cfg.loss_late if late else cfg.loss_early
        calm = cfg.settle_factor if step > ph["last_prune"] else 1.0
        lcw = h["least_change_weight"][i - 1] if i else [cfg.least_change] * cfg.vertices
        # the history holds each term's mean over the 2 vertices; the loss sums over them, and
        # the least-change weights differ per vertex: bound that term by its weights' extremes
        fixed = 2 * (a * h["pos"][i] + b * h["neg"][i] + calm * cfg.tv * h["tv"][i]
                     + calm * cfg.entropy * late * h["entropy"][i] + cfg.polytope * h["polytope"][i]
                     + cfg.distinct * h["distinct"][i])
        lo, hi = (fixed + 2 * w * h["least_change"][i] for w in (min(lcw), max(lcw)))
        assert lo * (1 - 1e-5) - 1e-6 <= loss <= hi * (1 + 1e-5) + 1e-6, (step, loss, lo, hi)


def test_one_vertex_loss_equals_the_terms_exactly(tap, setting):
    """With one vertex every term's value is its history entry: the loss is their weighted sum."""
    cfg = dataclasses.replace(BASE, vertices=1, steps=24)
    one = {**setting, "target": target_of(tap, setting["target_img"], 1)}
    losses = []
    h = run(tap, one, cfg, progress=lambda step, total, loss, worst: losses.append(loss))["history"]
    ph = cfg.phases()
    for i, loss in enumerate(losses):
        step = i + 1
        late = step > ph["switch"]
        a, b = cfg.loss_late if late else cfg.loss_early
        calm = cfg.settle_factor if step > ph["last_prune"] else 1.0
        lcw = h["least_change_weight"][i - 1][0] if i else cfg.least_change
        want = (a * h["pos"][i] + b * h["neg"][i] + lcw * h["least_change"][i] + calm * cfg.tv * h["tv"][i]
                + calm * cfg.entropy * late * h["entropy"][i])
        assert loss == pytest.approx(want, rel=1e-5, abs=1e-7), step


def test_a_forked_run_is_one_vertex_until_the_fork_then_spreads(tap, setting):
    """``fork``: until its step the run is exactly a 1-vertex run (the same history), then the
    vertex becomes V copies that the distinct term moves apart where a person sees it."""
    cfg = dataclasses.replace(BASE, fork=0.5, vertices=3, steps=40)
    fork = cfg.phases()["fork"]
    assert fork == 20
    three = {**setting, "target": target_of(tap, setting["target_img"], 3)}
    one = {**setting, "target": target_of(tap, setting["target_img"], 1)}
    forked = run(tap, three, cfg)
    single = run(tap, one, dataclasses.replace(cfg, vertices=1))
    h, h1 = forked["history"], single["history"]
    assert [len(w) for w in h["least_change_weight"]] == [1] * (fork - 1) + [3] * (cfg.steps - fork + 1)
    for key in ("pos", "neg", "least_change", "worst_rel_error", "tv"):
        assert h[key][: fork - 1] == h1[key][: fork - 1], key
        assert h[key][fork:] != h1[key][fork:], key
    assert h["distinct"][fork - 1] > 0  # the copies start within --extent of each other: the term pushes
    together = run(tap, three, dataclasses.replace(cfg, distinct=0.0))  # the copies differ by the noise only
    assert forked["vertices"] == together["vertices"] == 3
    assert forked["extent"] > 0.1 > 0.02 > together["extent"], (forked["extent"], together["extent"])
    assert alone(cfg).vertices == 1 and alone(dataclasses.replace(cfg, fork=0.0)).vertices == 3


def test_fork_and_least_change_auto_follow_the_weights_and_bad_forks_are_refused():
    from types import SimpleNamespace

    from patchcollide.engine.terms import fork_of, least_change_of
    from patchcollide.engine.config import AUTO_FORK, CollideError

    random, trained = (SimpleNamespace(weights=SimpleNamespace(kind=k)) for k in ("random", "file"))
    assert fork_of(BASE, random) == 0.0 and fork_of(BASE, trained) == AUTO_FORK
    assert fork_of(dataclasses.replace(BASE, fork=0.2), random) == 0.2
    auto = dataclasses.replace(BASE, least_change=None)
    assert least_change_of(auto, random) == 0.1 and least_change_of(auto, trained) == 1.0
    assert least_change_of(dataclasses.replace(BASE, least_change=0.0), trained) == 0.0  # off stays off
    assert dataclasses.replace(BASE, fork=0.5, vertices=1).phases()["fork"] == 0  # one vertex: nothing to fork
    for bad in (1.0, -0.1):
        with pytest.raises(CollideError, match=r"fork.*must be in \[0, 1\) \(0: no fork\)"):
            dataclasses.replace(BASE, fork=bad)


@pytest.mark.slow
@pytest.mark.parametrize("drop, measure, direction", [
    ("pos", "rel_error", "up"),  # no collision: the vertices stay far from the target's features
    ("neg", "push", "down"),  # no push: each vertex's own unit is not driven below the target's (0.99 vs 1.10)
    ("least_change", "distance", "up"),  # no least change: farther from the source
    ("tv", "tv", "up"),  # no TV: more seams in the mixing weights
    ("entropy", "entropy", "up"),  # no entropy: blurrier mixtures
    ("polytope", "centroid_rel_error", "up"),  # no polytope term: the inside of the polytope collides less
    ("distinct", "extent", "down"),  # no distinct term: the vertices closer together in the block view
])
def test_each_term_moves_the_vertices_its_way(tap, setting, full, drop, measure, direction):
    without = run(tap, setting, drop=drop)
    assert drop not in without["history"] or not without["history"][drop]  # the term is gone from the loss
    got, base = without[measure], full[measure]
    assert (got > base * 1.05) if direction == "up" else (got < base * 0.95), (measure, got, base)


def test_the_least_change_weight_rule_is_one_method_to_replace(tap, monkeypatch):
    """Step 3 of issue 26 replaces the rule: a subclass with its own ``next_weights``."""
    class Halving(terms.LeastChange):
        def next_weights(self, ctx, fooled):
            w = ctx.history["least_change_weight"]
            return [v / 2 for v in (w[-1] if w else [self.config.least_change] * len(fooled))]

    monkeypatch.setitem(terms.BUILT_INS, "least_change", Halving)
    g = np.random.default_rng(0)
    src, tgt = (g.integers(0, 256, (S, S, 3), dtype=np.uint8) for _ in range(2))
    cfg = CollideConfig(mode="pixel", vertices=2, steps=4, min_steps=4, size=S, least_change=4.0, device="cpu")
    res = collide(tap, src, tgt, cfg)
    assert res.history["least_change_weight"] == [[2.0, 2.0], [1.0, 1.0], [0.5, 0.5], [0.25, 0.25]]


def test_the_learning_rate_decays_over_the_last_share_of_the_steps():
    from patchcollide.engine.collide import learning_rate

    c = CollideConfig(mode="pixel", steps=100, decay=0.3, lr=0.02)
    rates = [learning_rate(c, s) for s in range(1, 101)]
    assert rates[:70] == [0.02] * 70 and rates[-1] == pytest.approx(0.002)  # a tenth at the last step
    assert all(a >= b for a, b in zip(rates, rates[1:]))  # never rises
    assert [learning_rate(dataclasses.replace(c, decay=0.0), s) for s in (1, 100)] == [0.02, 0.02]


def test_the_polytope_samples_are_drawn_from_the_seed_and_the_step():
    a, b = terms.polytope_samples(4, 0, 7), terms.polytope_samples(4, 0, 7)
    assert torch.equal(a, b) and not torch.equal(a, terms.polytope_samples(4, 0, 8))  # a resume draws the same
    assert torch.allclose(a.sum(1), torch.ones(2)) and (a >= 0).all() and torch.equal(a[0], torch.full((4,), 0.25))
    assert terms.polytope_samples(1, 0, 7).shape == (1, 1)  # one vertex: the vertex itself


def test_the_push_margin_auto_pushes_with_random_weights_only():
    from types import SimpleNamespace

    from patchcollide.engine.terms import push_margin_of
    from patchcollide.engine.config import AUTO_PUSH

    random, trained = (SimpleNamespace(weights=SimpleNamespace(kind=k)) for k in ("random", "file"))
    assert push_margin_of(BASE, random) == AUTO_PUSH and push_margin_of(BASE, trained) == 0.0
    given = dataclasses.replace(BASE, push_margin=1.5)
    assert push_margin_of(given, random) == push_margin_of(given, trained) == 1.5  # a value given is kept


def test_the_distinct_view_auto_is_strokes_in_pixel_mode_on_a_trained_net_only():
    from types import SimpleNamespace

    from patchcollide.engine.config import CollideError
    from patchcollide.engine.terms import concrete, distinct_view_of

    random, trained = (SimpleNamespace(weights=SimpleNamespace(kind=k)) for k in ("random", "file"))
    pixel, patches = (dataclasses.replace(BASE, mode=m, distinct_view="auto") for m in ("pixel", "patches"))
    assert distinct_view_of(pixel, trained) == "strokes"
    assert distinct_view_of(pixel, random) == distinct_view_of(patches, trained) == "blocks"
    assert distinct_view_of(dataclasses.replace(patches, distinct_view="strokes"), random) == "strokes"  # given: kept
    assert concrete(pixel, trained).distinct_view == "strokes"
    with pytest.raises(CollideError, match="distinct_view"):
        dataclasses.replace(BASE, distinct_view="edges")


def two_strokes(side: int = 56) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A source (1, 3, side, side) with one bright vertical stroke on black, a target with a
    horizontal one, and two copies of the source with a little seeded noise everywhere (2, 3,
    side, side), as a fork leaves them."""
    src, tgt = torch.zeros(2, 1, 3, side, side)
    src[..., 8:-8, side // 2 - 3 : side // 2 + 3] = 1.0
    tgt[..., side // 2 - 3 : side // 2 + 3, 8:-8] = 1.0
    g = torch.Generator().manual_seed(0)
    copies = (src.repeat(2, 1, 1, 1) + 0.01 * torch.randn(2, 3, side, side, generator=g)).clamp(0, 1)
    return src, tgt, copies


@pytest.mark.parametrize("view", ["strokes", "blocks"])
def test_the_strokes_view_spreads_vertices_on_the_strokes_and_nowhere_else(view):
    """The distinct term alone, minimised from two near-copies of a one-stroke source: in the
    strokes view the copies come apart on and near the stroke only (off it their difference is
    the start noise's, to the bit) and hold ``extent`` there; in the blocks view they come apart
    off the stroke too (on the black background, and in colour)."""
    from types import SimpleNamespace

    src, tgt, copies = two_strokes()
    cfg = dataclasses.replace(BASE, mode="pixel", vertices=2, distinct=1.0, extent=0.15, distinct_view=view)
    term = terms.Distinct.from_config(terms.Setup(cfg, None, None, None, source=src, target_image=tgt))
    x = copies.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.01)
    for _ in range(200):
        opt.zero_grad()
        loss = term.value(SimpleNamespace(x=x)).sum()
        if loss.item() == 0:
            break
        loss.backward()
        opt.step()
    assert loss.item() == 0  # the two are extent apart in the term's view
    start, end = copies[0] - copies[1], (x[0] - x[1]).detach()
    far = (terms.StrokeView(src).mask == 0).expand_as(start[None])[0]  # more than the nearness off the stroke
    moved_off = float((end - start)[far].abs().max())
    moved_on = float((end - start)[~far].abs().max())
    if view == "strokes":
        assert far.float().mean() > 0.5 and moved_off == 0.0 and moved_on > 0.1, (moved_off, moved_on)
    else:
        assert moved_off > 0.05, moved_off
