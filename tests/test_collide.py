"""The online stage on CPU with random VGG-16 at 64 x 64: convergence, the patch mixture's
convexity, the PNG round trip, the polytope count, run directories and CLI errors."""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import on_a_terminal, sample
from patchcollide.cli import cli
from patchcollide.engine.collide import collide, target_of, to_tensor
from patchcollide.engine.config import CollideConfig
from patchcollide.core.images import resize_crop
from patchcollide.models.build import load_tap
from patchcollide.engine.objectives import choose_units, loss_terms
from patchcollide.engine.target import Target
from patchcollide.engine.params import PatchParam
from patchcollide.engine.polytope import difference_boxes, sample_polytope

S = 64


def photo(name: str, size: int = S) -> np.ndarray:
    from PIL import Image

    return np.asarray(resize_crop(Image.fromarray(sample(name)).convert("RGB"), size))


@pytest.fixture(scope="module")
def tap():
    return load_tap("vgg16", "fc6", "random", seed=0)


def _rel(tap, x, target):
    with torch.no_grad():
        z = tap.pre(x)
    return ((torch.relu(z) - target.post).norm(dim=1) / target.post.norm()).numpy()


@pytest.mark.slow
def test_pixel_mode_error_falls_tenfold(tap):
    src, tgt = photo("astronaut"), photo("chelsea")
    cfg = CollideConfig(mode="pixel", vertices=2, steps=150, size=S, tol=1e-3, device="cpu", push_margin=0.0)
    target = target_of(tap, to_tensor(tgt), 2)
    start = _rel(tap, to_tensor(src), target)[0]
    res = collide(tap, src, tgt, cfg)
    final = np.asarray(res.metrics["rel_error"])
    assert final.shape == (2,)
    assert np.all(final <= start / 10), (start, final)
    assert len(set(res.metrics["unit"])) == 2 and np.all(np.asarray(res.metrics["unit_value"]) < 0)


def test_loss_terms_match_the_paper():
    z_t = torch.tensor([2.0, -1.0, 0.5, -3.0, -0.2])
    t = Target(z_t, choose_units(z_t, 2), 0, 1.0)
    assert t.units.tolist() == [3, 1]  # most negative first
    z = torch.tensor([[1.0, 0.5, 0.5, -2.0, 0.3], [2.0, -1.0, 0.5, -3.0, -0.2]])
    pos, neg = loss_terms(z, t, "paper")
    assert torch.allclose(pos, torch.tensor([0.5 * 1.0, 0.0]))
    # vertex 0 (unit 3): z[3] + |z[1]| + |z[4]| ; vertex 1 (unit 1): z[1] + |z[3]| + |z[4]|
    assert torch.allclose(neg, torch.tensor([-2.0 + 0.5 + 0.3, -1.0 + 3.0 + 0.2]))


def test_relative_objective_is_normalised_and_the_push_is_a_hinge():
    z_t = torch.tensor([2.0, -1.0, 0.5, -3.0, -0.2])
    z = torch.tensor([[2.0, -1.0, 0.5, -9.0, 0.0], [2.0, 0.5, 0.5, -3.0, -0.2], [1.0, -2.5, 0.5, -3.0, 0.3]])
    t3 = Target(z_t, torch.tensor([3, 1, 1]), 0, 1.0)
    pos, neg = loss_terms(z, t3, "relative", push_margin=2.0)
    post = torch.relu(z_t).norm()
    # L+ is the relative error: 0 on a collision, the norm of the mismatch over ||relu(z_t)|| otherwise
    assert float(pos[0]) == 0.0
    assert float(pos[1]) == pytest.approx(float(torch.tensor([0.0, 0.5]).norm() / post))  # inactive unit 1 on
    assert float(pos[2]) == pytest.approx(float(torch.tensor([1.0, 0.3]).norm() / post))
    # the hinge: zero once z[j] <= 2 z_t[j] (vertex 0 at 3x), linear in z[j] / z_t[j] below it
    assert float(neg[0]) == 0.0
    assert float(neg[1]) == pytest.approx(2.0 - (-0.5))  # z[1] = 0.5 against z_t[1] = -1: ratio -0.5
    assert float(neg[2]) == 0.0  # 2.5x is past the margin
    # scale-free: the same inputs scaled give the same terms
    pos10, neg10 = loss_terms(10 * z, Target(10 * z_t, t3.units, 0, 1.0), "relative", push_margin=2.0)
    assert torch.allclose(pos10, pos) and torch.allclose(neg10, neg)


def test_push_and_own_unit_metrics():
    from patchcollide.engine.objectives import collision_metrics, own_unit_lowest

    z_t = torch.tensor([1.0, -1.0, -2.0])
    t = Target(z_t, torch.tensor([1, 2]), 0, 1.0)
    z = torch.tensor([[1.0, -3.0, -2.5], [1.0, -1.5, -5.0]])
    m = collision_metrics(z, None, t)
    assert m["push"] == pytest.approx([3.0, 2.5]) and m["own_unit_lowest"] == [True, True]
    assert own_unit_lowest(z[[1, 0]], t.units).tolist() == [False, False]


def _mixture(V=2, K=3, size=48, seed=0, **kw):
    from patchcollide.core.images import grid_positions

    g = torch.Generator().manual_seed(seed)
    yx = grid_positions((size, size), 8, cover=True)
    cand = torch.rand(len(yx), K, 3, 32, 32, generator=g)
    return PatchParam(cand, yx, (size, size), vertices=V, seed=seed, **kw), cand, yx


def test_patch_mixture_is_convex_and_sums_to_one():
    p, cand, yx = _mixture(noise=1.0, slots=0)
    rng = torch.Generator().manual_seed(1)
    with torch.no_grad():
        p.theta.add_(torch.randn(p.theta.shape, generator=rng) * 3)
        img = p()
        w = p.mixing_weights()  # (V, H*W, slots)
    assert torch.allclose(w.sum(2), torch.ones(2, 48 * 48), atol=1e-5)  # weights of each pixel sum to 1
    assert (~p.valid).any() and float(w[~p.valid].abs().max()) == 0.0  # corner pixels have padding slots
    # every output pixel is the weighted sum of the candidate pixels covering it, within their range
    table = cand.permute(0, 1, 3, 4, 2).reshape(-1, 3)
    recon = torch.einsum("vpm,vpmc->vcp", w, table[p.entries]).reshape(2, 3, 48, 48)
    assert torch.allclose(recon, img, atol=1e-5)
    lo = torch.full((48 * 48, 3), 9.0)
    hi = torch.full((48 * 48, 3), -9.0)
    for (y, x), c in zip(yx, cand):  # the candidates' pixel range over each image pixel, by brute force
        block = c.permute(0, 2, 3, 1)  # (K, 32, 32, 3)
        idx = ((torch.arange(32)[:, None] + int(y)) * 48 + torch.arange(32)[None] + int(x)).reshape(-1)
        lo[idx] = torch.minimum(lo[idx], block.amin(0).reshape(-1, 3))
        hi[idx] = torch.maximum(hi[idx], block.amax(0).reshape(-1, 3))
    flat = img.permute(0, 2, 3, 1).reshape(2, -1, 3)
    assert (flat >= lo - 1e-5).all() and (flat <= hi + 1e-5).all()


def test_shared_logits_move_a_whole_block_and_survive_prune_and_restore():
    p, cand, _ = _mixture(start="distinct", spatial=4.0, slots=16, block=8)
    assert not hasattr(p, "theta") and [n for n, _ in p.named_parameters()] == ["shared"]
    start = p.logits().detach().clone()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        p.shared.add_(torch.randn(p.shared.shape, generator=g))
    moved = p.logits().detach() - start
    # one learnt value per (vertex, 8 x 8 square, candidate): equal across the square's pixels
    cid = p.entries // (32 * 32)
    y, x = torch.arange(48 * 48) // 48, torch.arange(48 * 48) % 48
    square = ((y // 8) * 6 + x // 8)[None, :, None].expand_as(cid)
    for v in range(2):
        for key in torch.unique(square[v] * 10_000 + cid[v])[:50]:
            m = (square[v] * 10_000 + cid[v]) == key
            assert torch.allclose(moved[v][m], moved[v][m][0], atol=1e-5)  # (offset + s) - offset: rounding
    assert len(torch.unique(p.inv)) < p.inv.numel() / 10  # far fewer learnt values than slots
    p.prune(4)
    q, _, _ = _mixture(start="distinct", spatial=4.0, slots=16, block=8)
    q.restore(p.core_state())
    assert torch.equal(q.logits(), p.logits()) and torch.equal(q(), p())


def test_prune_keeps_the_heaviest_entries_and_argmax_is_a_pure_composition():
    p, cand, _ = _mixture(start="distinct", spatial=4.0, slots=16)
    w0 = p.mixing_weights().detach()
    p.prune(3)
    assert p.theta.shape[2] == 3 and int(p.valid.sum(2).max()) <= 3
    # the kept entries are each pixel's three heaviest, with the same logits as before
    top = torch.topk(w0, 3, dim=2)
    kept = p.mixing_weights().detach()
    assert torch.allclose(kept, top.values / top.values.sum(2, keepdim=True), atol=1e-5)
    # the argmax image takes every pixel from one stored candidate pixel, exactly
    hard = p.argmax_image().permute(0, 2, 3, 1).reshape(2, -1, 3)
    table = cand.permute(0, 1, 3, 4, 2).reshape(-1, 3)
    best = p.entries.gather(2, kept.argmax(2, keepdim=True)).squeeze(2)
    assert torch.equal(hard, table[best])


def test_sharp_start_differs_per_vertex_and_tent_start_is_a_blend():
    distinct, _, _ = _mixture(V=2, start="distinct", spatial=4.0, slots=32)
    tent_start, _, _ = _mixture(V=2, start="tent", spatial=1.0, slots=0)
    d = distinct.mixing_stats()
    t = tent_start.mixing_stats()
    assert min(d["sharpness"]) > 2 * max(t["sharpness"]) and max(d["sources"]) < min(t["sources"]) / 2
    with torch.no_grad():
        img = distinct()
    assert float((img[0] - img[1]).abs().mean()) > 0.05  # vertex 0 on rank 0, vertex 1 on rank 1


def test_covering_entries_match_the_definition():
    """Every pixel's entries, by brute force: each (location, candidate) in order whose window
    covers the pixel gives its flat index into (L, K, side, side); windows reach past the image
    (a context window's corner lies outside it), and pixels are covered unevenly."""
    from patchcollide.engine.params import covering_entries

    H, W, side, K = 11, 9, 4, 3
    yx = torch.tensor([[y, x] for y in (-2, 1, 4, 7, 8) for x in (-1, 2, 5, 6)] + [[3, 3]])
    entries, valid = covering_entries(yx, K, (H, W), side)
    want = [[] for _ in range(H * W)]
    for loc, (y0, x0) in enumerate(yx.tolist()):
        for k in range(K):
            for r in range(side):
                for c in range(side):
                    y, x = y0 + r, x0 + c
                    if 0 <= y < H and 0 <= x < W:
                        want[y * W + x].append(((loc * K + k) * side + r) * side + c)
    assert entries.shape == valid.shape == (H * W, max(map(len, want)))
    for p in range(H * W):
        n = len(want[p])
        assert entries[p, :n].tolist() == want[p] and valid[p, :n].all() and not valid[p, n:].any()
        assert (entries[p, n:] == 0).all()
    assert len({len(w) for w in want}) > 2  # uneven coverage was tried


def test_seam_tables_match_the_pairwise_definition():
    """The sorted search gives what comparing every slot with every slot gives (which at 256
    slots and 128 x 128 once needed 23 GB in one piece): for each of a's ids the first slot of
    b holding it (or -1), and b's slots a does not hold; with padding ids (negative, one per
    slot), ids shared by many pixels, and a duplicate."""
    from patchcollide.engine.params import _seam_tables

    g = torch.Generator().manual_seed(0)
    V, h, w, M = 2, 5, 6, 7
    a, b = (torch.randint(0, 12, (V, h, w, M), generator=g) for _ in range(2))
    pad = -1 - torch.arange(M)
    a[0, 0, 0, 4:], b[0, 0, 0, 3:] = pad[4:], pad[3:]  # padded slots meet padded slots of the same index
    b[1, 2, 3, 5] = b[1, 2, 3, 1]  # a repeated id: the first slot holding it is the match
    eq = a[..., :, None] == b[..., None, :]
    want_match = torch.where(eq.any(-1), eq.to(torch.uint8).argmax(-1), -1)
    match, alone = _seam_tables(a, b)
    assert torch.equal(match, want_match) and torch.equal(alone, ~eq.any(-2))
    assert (match == -1).any() and (match >= 0).any() and alone.any() and (~alone).any()


def test_total_variation_counts_seams():
    """A tiling (each pixel from the rank-0 candidate of the location whose centre is nearest) has
    seams only every 8 pixels; the same tiling with every other column from rank 1 is speckle."""
    K, S = 2, 48
    p, _, yx = _mixture(V=1, K=K, size=S, slots=0)
    _, P, M = p.theta.shape
    cid = p.entries[0] // 1024  # (P, M): location * K + rank
    loc, rank = cid // K, cid % K
    centre = torch.as_tensor(yx, dtype=torch.float32) + 15.5
    py, px = (torch.arange(P) // S).float(), (torch.arange(P) % S).float()
    dist = (centre[loc][..., 0] - py[:, None]).abs() + (centre[loc][..., 1] - px[:, None]).abs()
    dist = dist.masked_fill(~p.valid[0], 1e9)
    tiles = dist.masked_fill(rank != 0, 1e9).argmin(1)  # (P,) slot of the nearest location's rank 0
    twin = dist.masked_fill(rank != 1, 1e9).argmin(1)  # the same location's rank 1
    speckle = torch.where(px % 2 == 1, twin, tiles)

    def one_hot(slot):
        return torch.zeros(1, P, M).scatter_(2, slot.view(1, P, 1), 1.0)

    def seams(slot):  # neighbour pairs (right, down) whose pixels come from different candidates, by brute force
        c = cid.gather(1, slot[:, None]).view(S, S)
        return int((c[:, 1:] != c[:, :-1]).sum() + (c[1:] != c[:-1]).sum())

    tv_tiles, tv_speckle = float(p.total_variation(one_hot(tiles))), float(p.total_variation(one_hot(speckle)))
    assert seams(tiles) > 0
    assert tv_tiles == pytest.approx(2 * seams(tiles) / P) and tv_speckle == pytest.approx(2 * seams(speckle) / P)
    assert tv_speckle > 0.9 and tv_tiles < 0.3 * tv_speckle  # nearly every horizontal pair is a seam


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tap, flat_index):
    """A finished patch-mode run at 64 x 64 with few steps (random weights)."""
    from patchcollide.offline.knn import PatchIndex
    from patchcollide.runs.run import run_collide
    from PIL import Image

    d = tmp_path_factory.mktemp("run")
    Image.fromarray(sample("astronaut")).save(d / "src.png")
    Image.fromarray(sample("chelsea")).save(d / "tgt.png")
    cfg = CollideConfig(mode="patches", vertices=3, steps=60, size=S, k=4, device="cpu")
    with PatchIndex(flat_index) as pidx:
        run_collide(str(d / "src.png"), str(d / "tgt.png"), str(d / "run"), cfg, tap=tap, pindex=pidx,
                    index_dir=flat_index)
    return d / "run"


def test_patch_mode_error_falls_and_outputs_are_complete(run_dir):
    rep = json.load(open(run_dir / "report.json"))
    hist = rep["history"]["worst_rel_error"]
    assert hist[-1] < hist[0] / 2, (hist[0], hist[-1])
    for f in ("source.png", "target.png", "vertex_0.png", "vertex_2.png", "indicator.png", "contact_sheet.png",
              "loss.png", "state.npz"):
        assert os.path.getsize(run_dir / f) > 0, f
    assert rep["notice"] and "RANDOM" in rep["notice"] and rep["model"]["kind"] == "random"
    with np.load(run_dir / "state.npz") as z:
        assert z["theta"].shape[:2] == (3, 64 * 64) and z["entries"].shape == z["theta"].shape
        assert z["candidate_ids"].shape == (25, 8)  # 5 x 5 locations; k = 4 of the source's, then 4 of the target's
    assert len(rep["target"]["unit_values"]) == 3 and all(v < 0 for v in rep["target"]["unit_values"])
    mixing = rep["vertices"]["mixing"]
    for key in ("sharpness", "sources", "argmax_rel_error"):
        assert len(mixing[key]) == 3
    assert os.path.getsize(run_dir / "argmax_2.png") > 0


def test_png_round_trip_is_measured(run_dir, tap):
    from patchcollide.engine.collide import quantised_metrics
    from patchcollide.runs.pictures import read_png

    rep = json.load(open(run_dir / "report.json"))
    f, p = np.asarray(rep["vertices"]["float"]["rel_error"]), np.asarray(rep["vertices"]["png"]["rel_error"])
    # the PNG metrics are those of the files on disk, recomputed here independently
    with np.load(run_dir / "state.npz") as z:
        target = Target(torch.from_numpy(z["target_z"]), torch.from_numpy(z["units"]), rep["target"]["label"], 1.0)
    back = np.stack([read_png(str(run_dir / f"vertex_{i}.png")) for i in range(3)])
    again = quantised_metrics(tap, back, target, "cpu")
    assert np.allclose(again["rel_error"], p, rtol=1e-5)
    # 8-bit rounding moves the activation measurably but only slightly
    assert not np.allclose(p, f, rtol=0, atol=0)
    assert np.all(np.abs(p - f) <= 0.2 * f + 1e-3), (f, p)


def test_saved_vertices_are_convex_combinations_of_the_retrieved_patches(run_dir, flat_index):
    """Every pixel of every vertex PNG lies within the range of the retrieved candidates'
    pixels covering it (up to the 8-bit rounding)."""
    from patchcollide.offline.knn import PatchIndex
    from patchcollide.runs.pictures import read_png

    with np.load(run_dir / "state.npz") as z, PatchIndex(flat_index) as pidx:
        ids, yx = z["candidate_ids"], z["candidate_yx"]
        cand = pidx.store.get(ids.ravel()).reshape(*ids.shape, 32, 32, 3).astype(int)
    lo, hi = np.full((S, S, 3), 255), np.zeros((S, S, 3), int)
    for (y, x), c in zip(yx, cand):
        lo[y : y + 32, x : x + 32] = np.minimum(lo[y : y + 32, x : x + 32], c.min(0))
        hi[y : y + 32, x : x + 32] = np.maximum(hi[y : y + 32, x : x + 32], c.max(0))
    for i in range(3):
        v = read_png(str(run_dir / f"vertex_{i}.png")).astype(int)
        assert (v >= lo - 1).all() and (v <= hi + 1).all()


def test_sample_shows_a_bar_on_a_terminal_and_timed_lines_elsewhere(run_dir, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    # click's bar shows an ETA from its first update a second or more after the start: enough
    # samples that the check lasts several seconds on a fast machine too
    shown = on_a_terminal(["sample", "--out", str(run), "--samples", "512", "--batch-size", "8", "--device", "cpu"])
    import re

    assert "polytope samples" in shown and "512/512" in shown and re.search(r"\d\d:\d\d:\d\d", shown), shown  # ETA
    assert on_a_terminal(["-q", "sample", "--out", str(run), "--samples", "16", "--batch-size", "8", "--device", "cpu"]) == ""
    r = CliRunner().invoke(cli, ["sample", "--out", str(run), "--samples", "16", "--batch-size", "8", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    # not a terminal: no bar drawing in the log, but timed lines: the first and the last at least
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("polytope samples: ")]
    assert 2 <= len(lines) <= 3 and "\r" not in r.stderr and lines[-1].startswith("polytope samples: 16/16 (100%), "), lines
    assert all(re.search(r"\d+:\d\d elapsed", ln) for ln in lines)


def test_load_run_gives_the_float_vertices_and_their_real_patches(run_dir, flat_index):
    import patchcollide
    from patchcollide.offline.knn import PatchIndex
    from patchcollide.runs.pictures import to_uint8

    run = patchcollide.load_run(str(run_dir))
    assert run.exact and run.config == CollideConfig(mode="patches", vertices=3, steps=60, size=S, k=4, device="cpu")
    assert run.vertices.shape == (3, 3, S, S) and np.array_equal(to_uint8(run.vertices), run.png)
    arrays = [run.vertices, run.png, run.mixing["weights"], run.mixing["patch_ids"], run.mixing["pixel"]]
    assert all(isinstance(a, np.ndarray) for a in arrays) and run.vertices.dtype == np.float32  # numpy throughout
    text = repr(run)  # a short summary, not the report and the arrays
    assert len(text.splitlines()) <= 8 and len(text) < 1000 and text.startswith(f"Run({str(run_dir)!r})"), text
    assert "3 vertices" in text and f"{S} x {S}" in text and "PNG relative error" in text
    w, ids, pix = run.mixing["weights"], run.mixing["patch_ids"], run.mixing["pixel"]
    assert np.allclose(w.sum(2), 1, atol=1e-5) and (w[ids < 0] == 0).all()
    # every float pixel is the weighted sum of the stored pixels its mixture names
    with PatchIndex(flat_index) as pidx:
        patches = pidx.store.get(np.unique(ids[ids >= 0]))
        row = {int(i): r for r, i in enumerate(np.unique(ids[ids >= 0]))}
    lut = np.vectorize(lambda i: row.get(int(i), 0))(ids)
    colours = patches[lut, pix[..., 0], pix[..., 1]].astype(np.float32) / 255  # (V, P, M, 3)
    again = np.einsum("vpm,vpmc->vcp", w, colours).reshape(3, 3, S, S)
    assert np.abs(again - run.vertices).max() < 1e-5
    assert run.metrics["png"]["rel_error"] == json.loads((run_dir / "report.json").read_text())["vertices"]["png"][
        "rel_error"]


def test_sample_cli_adds_the_polytope_check(run_dir):
    r = CliRunner().invoke(cli, ["-q", "sample", "--out", str(run_dir), "--samples", "40", "--device", "cpu"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rep = json.load(open(run_dir / "report.json"))
    check = rep["polytope"]
    assert check["samples"] == 40 and check["target_class"] == rep["target"]["label"]
    assert "polytope" in r.output and "RANDOM WEIGHTS" in r.output
    # the dataset distance defaults to the run index's images (6 photos), far above the vertices'
    assert check["dataset_n_images"] == 6
    assert check["dataset_mean_pairwise_l2"] > check["vertex_mean_pairwise_l2"]
    # the same seed gives the same check
    r2 = CliRunner().invoke(cli, ["-q", "sample", "--out", str(run_dir), "--samples", "40", "--device", "cpu"], catch_exceptions=False)
    assert json.load(open(run_dir / "report.json"))["polytope"] == check and r2.exit_code == 0


def test_early_stop_and_first_unit(tap):
    src, tgt = photo("astronaut"), photo("chelsea")
    # init=target starts at zero error: the run must still take min_steps steps (and finish the
    # separate phase, a third of the steps), then stop (the tol stop: without the least-change term)
    cfg = CollideConfig(mode="pixel", vertices=2, steps=60, min_steps=5, tol=0.05, size=S, init="target",
                        device="cpu", first_unit=3, push_margin=0.0, least_change=0.0)
    res = collide(tap, src, tgt, cfg)
    assert res.converged and cfg.phases()["settle"] == 21 <= res.steps < 60
    # with it, the run holds at the edge of the collision (random weights: tol) for all its steps
    held = collide(tap, src, tgt, dataclasses.replace(cfg, least_change=3.0))
    assert held.steps == 60 and len(held.history["least_change_weight"]) == 60
    default_units = choose_units(target_of(tap, to_tensor(tgt), 5).z, 5)
    assert res.metrics["unit"] == default_units[3:5].tolist()
    assert np.all(np.asarray(res.metrics["unit_value"]) < 0)


def test_push_moves_each_vertex_to_its_own_corner(tap):
    """With L-^i each vertex drives its own unit below twice the target's value and below every
    other vertex there; without it (push margin 0) the units stay near the target's value."""
    src, tgt = photo("astronaut"), photo("chelsea")
    base = dict(mode="pixel", vertices=3, steps=80, size=S, device="cpu", tol=1e-6, polytope=0.0,
                distinct=0.0)  # the push alone (the other terms that spread or pull the vertices off)
    pushed = collide(tap, src, tgt, CollideConfig(**base)).metrics
    control = collide(tap, src, tgt, CollideConfig(**base, push_margin=0.0)).metrics
    assert min(pushed["push"]) >= 1.6 and all(pushed["own_unit_lowest"]), pushed["push"]
    assert max(control["push"]) < 1.3, control["push"]


def _patch_run(tap, flat_index, **kw):
    from patchcollide.offline.knn import PatchIndex

    cfg = CollideConfig(**{**dict(mode="patches", vertices=2, steps=60, size=S, k=4, device="cpu", tol=1e-6), **kw})
    with PatchIndex(flat_index) as pidx:
        return collide(tap, photo("astronaut"), photo("chelsea"), cfg, index=pidx)


@pytest.fixture(scope="module")
def sharp_run(tap, flat_index):
    return _patch_run(tap, flat_index)


def test_default_patch_mixture_is_sharp_and_uniform_mixing_is_not(tap, flat_index, sharp_run):
    # the authors' start (a tent blend of every candidate) with nothing to sharpen it stays a blend
    blend = _patch_run(tap, flat_index, start="tent", spatial=1.0, slots=256, prune=(), entropy=0.0, tv=0.0, lr=1e-4)
    assert min(sharp_run.mixing["sharpness"]) >= 0.75 and max(sharp_run.mixing["sources"]) <= 2.2, sharp_run.mixing
    assert max(blend.mixing["sharpness"]) < 0.2 and min(blend.mixing["sources"]) > 4, blend.mixing
    # the pure composition is reported, and it is further from the collision than the mixture
    assert all(a > f for a, f in zip(sharp_run.mixing["argmax_rel_error"], sharp_run.metrics["rel_error"]))


def test_shared_block_logits_make_fewer_seams(tap, flat_index, sharp_run):
    blocks = _patch_run(tap, flat_index, block=8)
    assert blocks.history["tv"][-1] < 0.6 * sharp_run.history["tv"][-1], (blocks.history["tv"][-1],
                                                                          sharp_run.history["tv"][-1])


def test_tv_term_makes_fewer_seams(tap, flat_index, sharp_run):
    no_tv = _patch_run(tap, flat_index, tv=0.0)
    strong = _patch_run(tap, flat_index, tv=0.05)
    assert sharp_run.history["tv"][-1] > 0
    assert strong.history["tv"][-1] < 0.8 * no_tv.history["tv"][-1] or no_tv.history["tv"][-1] == 0, \
        (strong.history["tv"][-1], no_tv.history["tv"][-1])


def test_unconverged_run_warns_and_strict_exits_3(tmp_path, query_image):
    from patchcollide.cli.online import NOT_CONVERGED_EXIT

    args = ["-q", "collide", "--source", query_image, "--target", query_image, "--mode", "pixel", "--weights",
            "random", "--size", "64", "--steps", "2", "--min-steps", "0", "--tol", "1e-9"]
    r = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "a")])
    assert r.exit_code == 0 and "warning: not converged" in r.output and "--steps" in r.output, r.output
    r = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "b"), "--strict"])
    assert r.exit_code == NOT_CONVERGED_EXIT == 3, r.output
    assert (tmp_path / "b" / "report.json").is_file()  # the run is kept
    r = CliRunner().invoke(cli, [*args[:-1], "1", "--out", str(tmp_path / "c"), "--strict"])  # tol 1: met
    assert r.exit_code == 0 and "not converged" not in r.output, r.output


def test_overwrite_replaces_runs_only(tmp_path, query_image, run_dir):
    import shutil

    def run(out, *extra):
        return CliRunner().invoke(cli, ["-q", "collide", "--source", query_image, "--target", query_image, "--mode",
                                        "pixel", "--weights", "random", "--size", "64", "--steps", "2",
                                        "--min-steps", "0", "--out", str(out), *extra])

    old = tmp_path / "old_run"
    shutil.copytree(run_dir, old)
    r = run(old, "--overwrite")
    assert r.exit_code == 0, r.output
    assert json.load(open(old / "report.json"))["config"]["mode"] == "pixel"  # replaced by the new run
    assert not [p for p in os.listdir(tmp_path) if ".old-" in p or ".tmp-" in p]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    r = run(mine, "--overwrite")
    assert r.exit_code == 2 and "only replaces runs" in r.output
    assert (mine / "thesis.tex").read_text() == "precious"


class _Toy(torch.nn.Module):
    """Two classes: class 0 when the image mean exceeds 0.5; 'pre' is the mean itself."""

    def pre_and_logits(self, x):
        m = x.mean((1, 2, 3))
        return m[:, None], torch.stack([10 * (m - 0.5), torch.zeros_like(m)], 1)


def test_polytope_count_on_a_constructed_case():
    bright, dark = torch.full((3, 8, 8), 0.9), torch.full((3, 8, 8), 0.1)
    target = Target(torch.tensor([0.9]), torch.tensor([0]), label=0, prob=1.0)
    out = sample_polytope(_Toy(), torch.stack([bright, dark]), target, samples=500, seed=7, batch_size=64)
    w = np.random.default_rng(7).dirichlet(np.ones(2), size=500)
    expected = int((0.9 * w[:, 0] + 0.1 * w[:, 1] > 0.5).sum())
    assert out["share_target_class"] == expected / 500
    assert 0.35 < out["share_target_class"] < 0.65


def test_difference_boxes_find_the_changed_window():
    v = np.zeros((3, 64, 64, 3), np.uint8)
    v[1, 10:42, 20:52] = 200
    assert difference_boxes(v, n_boxes=1)[0] == (10, 20)


def test_bad_collide_arguments(tmp_path, flat_index, query_image, small_store):
    def run(*args):
        return CliRunner().invoke(cli, ["-q", "collide", *map(str, args)])

    base = ["--out", tmp_path / "r", "--weights", "random", "--size", "64", "--steps", "1"]
    (tmp_path / "notes.txt").write_text("not an image")
    wrong = tmp_path / "alexnet.pth"
    torch.save(load_tap("alexnet", "fc6", "random").model.state_dict(), wrong)
    import shutil

    from patchcollide.offline.extract import ExtractConfig, extract_store

    mismatched = tmp_path / "mismatched"
    shutil.copytree(flat_index, mismatched)  # its manifest points at a store that is not beside it
    extract_store([os.path.dirname(query_image)], str(mismatched / "patches.h5"), ExtractConfig(stride=32))
    m = json.load(open(mismatched / "index.json"))
    m["store"]["path"] = "patches.h5"  # another store, beside the index: refused by id and fingerprint
    json.dump(m, open(mismatched / "index.json", "w"))
    moved = tmp_path / "moved"  # the index folder alone, away from the store its manifest points at
    moved.mkdir()
    for name in ("index.json", "index.faiss"):
        shutil.copy(os.path.join(flat_index, name), moved / name)
    cases = [
        (["--source", query_image, "--target", query_image, "--index", moved, *base],
         "move the index folder back beside its store"),
        (["--source", tmp_path / "nope.png", "--target", query_image, *base], "does not exist"),
        (["--source", tmp_path, "--target", query_image, *base], "is a folder; pass one image file"),
        (["--source", query_image, "--target", query_image, "--layer", "fc9", "--mode", "pixel", *base], "unknown layer"),
        (["--source", query_image, "--target", query_image, "--vertices", "0", *base], "--vertices"),
        (["--source", query_image, "--target", query_image, "-k", "100000", *base], "lower -k"),
        (["--source", query_image, "--target", query_image, "--model", "alexnet", "--size", "40", "--mode", "pixel",
          *base[:2], "--weights", "random", "--steps", "1"], "cannot take a 40x40 input"),
        (["--source", query_image, "--target", query_image, "--index", tmp_path / "noindex", *base], "no built index"),
        (["--source", query_image, "--target", query_image, "--mode", "pixel", "--out", tmp_path / "r2",
          "--weights", tmp_path / "missing.pth", "--size", "64"], "no such file"),
        (["--source", query_image, "--target", query_image, "--mode", "pixel", "--out", tmp_path / "r2",
          "--weights", wrong, "--size", "64"], "does not fit vgg16"),
        (["--source", query_image, "--target", query_image, "--index", mismatched, *base], "was built for store"),
        (["--source", query_image, "--target", tmp_path / "notes.txt", "--mode", "pixel", *base], "not an image"),
    ]
    for args, needle in cases:
        r = run(*args)
        assert r.exit_code == 2, (args, r.output)
        lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
        assert len(lines) == 1 and needle in lines[0], r.output
        assert "--store" not in r.output, r.output  # collide has no --store: never suggest it
    # an existing run is never overwritten without --overwrite
    (tmp_path / "r3").mkdir()
    (tmp_path / "r3" / "keep.txt").write_text("mine")
    r = run("--source", query_image, "--target", query_image, "--mode", "pixel", "--out", tmp_path / "r3",
            "--weights", "random", "--size", "64", "--steps", "1")
    assert r.exit_code == 2 and "already exists" in r.output
    assert (tmp_path / "r3" / "keep.txt").read_text() == "mine"


def test_library_calls_leave_the_callers_world_as_they_found_it(tap, tmp_path):
    """Two collide() calls with different seeds, between draws of the caller's own, leave the
    caller's torch and numpy streams where they would be without them; loss_plot leaves the
    caller's matplotlib backend."""
    import matplotlib

    from patchcollide.runs.pictures import loss_plot

    src, tgt = photo("astronaut"), photo("chelsea")

    def draws(with_calls: bool):
        torch.manual_seed(123)
        np.random.seed(123)
        out = [torch.rand(3), np.random.rand(3)]
        if with_calls:
            for seed in (1, 2):
                collide(tap, src, tgt, CollideConfig(mode="pixel", vertices=2, steps=2, min_steps=0, size=S,
                                                     device="cpu", seed=seed))
        out += [torch.rand(3), np.random.rand(3)]
        return out

    want, got = draws(False), draws(True)
    for a, b in zip(want, got):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    backend = matplotlib.get_backend()
    h = {"pos": [1.0, 0.5], "neg": [-1.0, -2.0], "worst_rel_error": [0.3, 0.2], "mean_rel_error": [0.2, 0.1]}
    loss_plot(h, str(tmp_path / "loss.png"))
    assert matplotlib.get_backend() == backend and (tmp_path / "loss.png").stat().st_size > 1000


def test_context_window_candidates_come_from_their_source_images(tmp_path, tap, flat_index):
    """--window 48: each candidate is the stored patch's 48 x 48 context in its source photo (the
    patch in the middle, the rest the photo's own pixels); a run's float vertices re-render from
    those windows through load_run's (patch id, pixel) pairs; a moved photo gives one line."""
    import patchcollide
    from patchcollide.offline.extract import ExtractError, context_windows
    from patchcollide.core.images import Preprocess, load_rgb
    from patchcollide.offline.knn import PatchIndex
    from patchcollide.runs.run import run_collide
    from PIL import Image

    with PatchIndex(flat_index) as pidx:
        ids = np.array([0, 7, 130, len(pidx.store) - 1])
        win = context_windows(pidx.store, ids, 48)
        assert np.array_equal(win[:, 8:40, 8:40], pidx.store.get(ids))
        img_idx, y, x = (int(v) for v in pidx.store.provenance[130])
        rec = pidx.store.image_record(img_idx)
        photo_px = load_rgb(rec["abspath"], Preprocess(**pidx.store.config["preprocess"]))[0]
        assert y >= 8 and x >= 8  # an inner patch: its window is the photo itself, no mirroring
        assert np.array_equal(win[2], photo_px[y - 8:y + 40, x - 8:x + 40])
        Image.fromarray(sample("astronaut")).save(tmp_path / "src.png")
        Image.fromarray(sample("chelsea")).save(tmp_path / "tgt.png")
        cfg = CollideConfig(mode="patches", vertices=2, steps=4, min_steps=0, size=S, k=1, window=48, device="cpu")
        run_collide(str(tmp_path / "src.png"), str(tmp_path / "tgt.png"), str(tmp_path / "run"), cfg, tap=tap,
                    pindex=pidx, index_dir=flat_index)
        run = patchcollide.load_run(str(tmp_path / "run"))
        w, pid, pix = run.mixing["weights"], run.mixing["patch_ids"], run.mixing["pixel"]
        assert pix.max() == 47  # entries reach past the 32 x 32 patch into its context
        used = np.unique(pid[pid >= 0])
        wins = context_windows(pidx.store, used, 48)
        lut = np.searchsorted(used, np.where(pid >= 0, pid, used[0]))
        again = np.einsum("vpm,vpmc->vcp", w, wins[lut, pix[..., 0], pix[..., 1]].astype(np.float32) / 255)
        assert np.abs(again.reshape(2, 3, S, S) - run.vertices).max() < 1e-5
        moved = rec["abspath"] + ".moved"
        os.rename(rec["abspath"], moved)
        try:
            with pytest.raises(ExtractError, match=r"cannot be read .*; restore the store's image folders or use "
                                                   r"--window 32$"):
                context_windows(pidx.store, [130], 48)
        finally:
            os.rename(moved, rec["abspath"])


def test_progress_from_python_takes_a_callback_or_a_tqdm_like_bar():
    from patchcollide.engine.collide import collide, progress_callback
    from patchcollide.engine.config import CollideError
    from patchcollide.models.build import load_tap

    class Bar:  # what tqdm offers: total, update(n), set_postfix_str
        total, n, postfix = None, 0, ""

        def update(self, k):
            self.n += k

        def set_postfix_str(self, s, refresh=True):
            self.postfix = s

    tap = load_tap("alexnet", "fc6", "random", seed=0)
    img = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    cfg = CollideConfig(mode="pixel", vertices=1, steps=6, min_steps=6, size=64, tol=1e-9, device="cpu")
    bar, calls = Bar(), []
    collide(tap, img, img[::-1].copy(), cfg, progress=bar)
    assert bar.total == 6 and bar.n == 6 and bar.postfix.startswith("worst rel.err")
    collide(tap, img, img[::-1].copy(), cfg, progress=lambda *a: calls.append(a[:2]))
    assert calls == [(s, 6) for s in range(1, 7)]
    assert progress_callback(None) is None
    with pytest.raises(CollideError, match="progress must be a callable"):
        progress_callback(42)


def test_each_patch_run_reports_its_retrieval_quality_and_warns_on_a_store_unsuited_to_the_source(tmp_path, flat_index,
                                                                                                   photos_dir, caplog):
    """The mean distance from the source's patches to their neighbours, against the store's own:
    low for a photo the store was cut from, far above for a source it does not cover (noise),
    with one warning there."""
    import logging

    from PIL import Image

    from patchcollide.models.build import load_tap
    from patchcollide.offline.knn import PatchIndex
    from patchcollide.runs.run import run_collide

    tap = load_tap("alexnet", "fc6", "random", seed=0)
    photo = sorted(os.path.join(photos_dir, f) for f in os.listdir(photos_dir))[0]
    noise = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.png")
    cfg = CollideConfig(mode="patches", vertices=1, steps=1, min_steps=0, size=224, k=4, device="cpu")
    reps = {}
    with PatchIndex(flat_index) as pidx, caplog.at_level(logging.WARNING, logger="patchcollide.runs.run"):
        for name, src in (("photo", photo), ("noise", str(tmp_path / "noise.png"))):
            caplog.clear()
            reps[name] = run_collide(src, photo, str(tmp_path / name), cfg, tap=tap, pindex=pidx,
                                     index_dir=flat_index)["retrieval"]
            reps[name]["warned"] = [r.getMessage() for r in caplog.records if "covers this source poorly" in r.getMessage()]
        n = len(pidx.store)
    assert reps["photo"]["store_patches"] == n and reps["photo"]["ratio"] < 1.5 and not reps["photo"]["warned"], reps
    assert reps["noise"]["ratio"] > 1.5 and len(reps["noise"]["warned"]) == 1, reps
    assert reps["noise"]["store_typical_distance"] == reps["photo"]["store_typical_distance"]  # the store's, seeded
    assert json.loads((tmp_path / "noise" / "report.json").read_text())["retrieval"]["ratio"] == reps["noise"]["ratio"]
