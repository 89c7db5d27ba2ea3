"""The peers (papers/peers.py) on a small trained net: scikit-learn's 8 x 8 digits at 32 x 32,
``digits_vgg`` trained on them for a few seconds, collisions at its fc6 after the ReLU.

Each test asserts what a broken attack would miss: the collider is much closer to the target
at fc6 than the source was, lam moves it towards the source, the sweep keeps the largest lam
that fools, and ART's collider is a changed image closer to the target's features."""
from __future__ import annotations

import os
import sys

import pytest
import torch
import torch.nn.functional as F

from patchcollide.engine.collide import quantise, target_of
from patchcollide.models.build import Tap, imagenet_normalise
from patchcollide.models.weights import WeightsInfo
from patchcollide.models.digits import DigitVGG
from patchcollide.engine.polytope import sample_polytope
from patchcollide.papers import peers

SIDE = 32  # the smallest side digits_vgg takes; 3,072 inputs against fc6's 256 units


def digits(n: int = 600) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n of scikit-learn's digits as (n, 3, 32, 32) float in [0, 1] (bilinear, grey in
    three channels) and their labels (n,) int64."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images[:n] / 16.0).float()[:, None]
    x = F.interpolate(x, size=(SIDE, SIDE), mode="bilinear", align_corners=False).clamp(0, 1)
    return x.expand(-1, 3, -1, -1).contiguous(), torch.from_numpy(d.target[:n]).long()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """torch on one thread: the net is tiny, and two threads on 2 shared cores wait on each other
    (a training batch 8 times slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def world(one_thread):
    """A digits_vgg trained for 4 epochs on 600 digits (seeded), its fc6 tap, and the digits."""
    x, y = digits()
    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):  # the init and dropout draws; the caller's stream is left alone
        torch.manual_seed(0)
        model = DigitVGG()
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        model.train()
        for _ in range(4):
            perm = torch.randperm(len(y), generator=gen)
            for s in range(0, len(y), 32):
                idx = perm[s : s + 32]
                loss = F.cross_entropy(model(imagenet_normalise(x[idx])), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
    tap = Tap(model, "digits_vgg", "fc6", WeightsInfo("random", "test", None, False, "trained in the test"))
    with torch.no_grad():
        acc = float((tap.logits(x).argmax(1) == y).float().mean())
    assert acc > 0.9, f"the stand-in net did not train ({acc:.2f})"
    return tap, x, y


def pair(world, a: int = 1, b: int = 0):
    """(1, 3, 32, 32) source of digit a and target of digit b."""
    _, x, y = world
    return x[(y == a).nonzero()[0]], x[(y == b).nonzero()[0]]


def rel(tap, x, t) -> float:
    pt = peers.fc6_post(tap, t)
    return float((peers.fc6_post(tap, x) - pt).norm() / pt.norm())


def l2(x, s) -> float:
    return float(((x - s) * 255).norm())


def test_the_plain_attack_collides_and_lam_keeps_it_near_the_source(world):
    tap, _, _ = world
    s, t = pair(world)
    low = peers.plain_attack(tap, s, t, lam=0.3, steps=300)
    high = peers.plain_attack(tap, s, t, lam=30.0, steps=300)
    assert low.shape == s.shape and low.dtype == torch.float32 and 0 <= low.min() and low.max() <= 1
    assert rel(tap, low, t) < rel(tap, s, t) / 5  # the collision: fc6 error down by a large factor
    assert l2(high, s) < 0.7 * l2(low, s)  # lam matters: a larger weight keeps it nearer the source
    assert rel(tap, high, t) > rel(tap, low, t)
    assert torch.equal(peers.plain_attack(tap, s, t, lam=0.3, steps=300), low)  # nothing random
    with pytest.raises(peers.PeerError, match="lam must be >= 0"):
        peers.plain_attack(tap, s, t, lam=-1)
    with pytest.raises(peers.PeerError, match=r"\(1, 3, H, W\)"):
        peers.plain_attack(tap, s[0], t, lam=1)


def test_the_sweep_keeps_the_largest_lam_that_fools(world):
    tap, _, _ = world
    s, t = pair(world)
    lams = (0.3, 3.0, 1000.0)  # 1,000 holds the source: it cannot fool
    sweep = peers.lam_sweep(tap, s, t, lams=lams, steps=300)
    fools = [r["fools"] for r in sweep.per_lam]
    assert fools[0] and not fools[-1], fools
    assert sweep.fools and sweep.lam == max(lam for lam, f in zip(lams, fools) if f)
    assert torch.equal(sweep.collider, sweep.colliders[lams.index(sweep.lam)])
    assert torch.equal(sweep.collider, quantise(sweep.collider))  # on the 8-bit levels
    check = sample_polytope(tap, sweep.collider, target_of(tap, t, 1), samples=1)
    assert check["fools_net"] and check["rel_error_max"] == pytest.approx(sweep.per_lam[lams.index(sweep.lam)]["rel_error"])
    assert sweep.seconds >= sum(r["seconds"] for r in sweep.per_lam) * 0.99
    none = peers.lam_sweep(tap, s, t, lams=(1000.0, 3000.0), steps=20)  # none fools: the smallest lam, marked
    assert not none.fools and none.lam == 1000.0


def test_art_moves_the_source_towards_the_target_in_feature_space(world):
    pytest.importorskip("art", reason="ART is an optional extra: pip install 'patchcollide[peers]'")
    tap, _, _ = world
    s, t = pair(world)
    net = peers.art_network(tap)
    assert torch.equal(net(s), tap.logits(s))  # the wrapper is the same net, [0, 1] inputs
    assert list(dict(net.named_children()))[5] == peers.ART_FEATURE_LAYER
    assert torch.equal(net[:6](s), peers.fc6_post(tap, s))  # ART's feature layer: fc6 after its ReLU
    # ART's proximal weight is similarity_coeff * (256 / inputs)^2: at 32 px this coefficient gives
    # it the value the default 256 has at the world's 112 px (37,632 inputs)
    coeff = 256.0 * (3 * SIDE * SIDE / 37632) ** 2
    y = peers.art_feature_collision(tap, s, t, learning_rate=0.3, max_iter=300, similarity_coeff=coeff)
    assert y.shape == s.shape and 0 <= y.min() and y.max() <= 1
    assert l2(y, s) > 1000  # a different image
    assert rel(tap, y, t) < 0.3 * rel(tap, s, t)  # much nearer the target at fc6 after the ReLU
    again = peers.art_feature_collision(tap, s, t, learning_rate=0.3, max_iter=300, similarity_coeff=coeff)
    assert torch.equal(again, y)  # no state kept between calls (ART halves its rate in place)


def test_without_art_the_error_names_the_extra(world, monkeypatch):
    monkeypatch.setitem(sys.modules, "art.attacks.poisoning", None)  # the import fails as if ART were absent
    tap, _, _ = world
    s, t = pair(world)
    with pytest.raises(peers.PeerError, match=r"pip install 'patchcollide\[peers\]'"):
        peers.art_feature_collision(tap, s, t)


def test_the_benchmark_rule_and_summary_per_method():
    """scripts/bench_world.py: ceil(0.8 V) vertices must read as the source, and the summary and
    table keep one row per (method, mode, vertices), successes over the group's total seconds."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
    import bench_world

    assert [bench_world.min_reads(v) for v in (1, 2, 3, 4, 5, 10)] == [1, 2, 3, 4, 4, 8]

    def rec(pair, method, V, success, reads, seconds, **kw):
        return {"pair": pair, "method": method, "mode": "pixel", "vertices": V, "success": success,
                "fools_net": success, "judge_reads_source": reads, "seconds": seconds, "median_source_l2": 100.0 * pair,
                "extent": 0.0 if V == 1 else 0.1, **kw}

    art = {"learning_rate": 100.0, "max_iter": 1000}
    records = [rec(0, "patchcollide", 5, True, 4, 10.0, attack_seconds=4.0),
               rec(1, "patchcollide", 5, False, 3, 30.0, attack_seconds=7.0),
               rec(0, "patchcollide", 1, True, 1, 5.0), rec(0, "art", 1, False, 0, 20.0, **art),
               rec(1, "art", 1, True, 1, 20.0, **art)]
    s = bench_world.summarise(records)
    assert list(s) == ["patchcollide/pixel/5", "patchcollide/pixel/1", "art/pixel/1"]
    five = s["patchcollide/pixel/5"]
    assert five["judge_ok_rate"] == 0.5 and five["success_per_second"] == pytest.approx(1 / 40)
    assert five["median_source_l2"] == 50.0 and five["median_seconds"] == 20.0
    assert s["art/pixel/1"]["label"] == "ART FeatureCollisionAttack, lr 100, 1,000 iterations (tuned)"
    md = bench_world.table({"benchmark": "bench_world", "success_rule": "rule", "summary": s, "records": records})
    rows = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [r.split(" | ")[0] for r in rows] == ["| patchcollide, 5 vertices", "| patchcollide, 1 vertex",
                                                 "| ART FeatureCollisionAttack, lr 100, 1,000 iterations (tuned)"]
    assert "**50%** (1/2)" in rows[0] and "0.025" in rows[0]
    assert five["median_attack_seconds"] == 5.5 and "| 5.5 |" in rows[0]  # the attack alone, beside the whole pair's
    assert s["art/pixel/1"]["median_attack_seconds"] is None and "| 20 | - |" in rows[2]  # none recorded: a dash
    assert len({bench_world.key_of(r) for r in records}) == len(records)  # V = 5 and V = 1 of one pair: two keys
    # per pair: 5 vertices' attack seconds over 1 vertex's (pair 0 only: pair 1 has no 1-vertex run), and
    # the 5-vertex L2 over the plain attack's (pairs 0 and 1: 0 / 40 and 100 / 60)
    records += [rec(0, "patchcollide", 1, True, 1, 5.0, attack_seconds=2.0) | {"pair": 0},
                rec(0, "plain", 1, True, 1, 9.0) | {"median_source_l2": 40.0},
                rec(1, "plain", 1, True, 1, 9.0) | {"median_source_l2": 60.0}]
    records = [r for r in records if not (r["method"] == "patchcollide" and r["vertices"] == 1
                                          and "attack_seconds" not in r)]
    got = {c["key"]: c for c in bench_world.comparisons(records)}
    assert got["attack_seconds"]["median_ratio"] == 2.0 and got["attack_seconds"]["pairs"] == 1
    assert got["median_source_l2"]["pairs"] == 2 and got["median_source_l2"]["median_ratio"] == pytest.approx(
        (0 / 40 + 100 / 60) / 2)
    md = bench_world.table({"benchmark": "bench_world", "success_rule": "rule", "summary": s, "records": records,
                            "comparisons": list(got.values())})
    assert "* pixel, 5 vertices: attack seconds over 1 vertex's, median over 1 pairs: **2.00**" in md
    # --combine of a result that is itself combined keeps its parts' commits, not a part without one
    one = {"versions": {"git": {"commit": "abc"}}, "machine": {"cpu": "x"}, "records": []}
    both = {"parts": [{"versions": {"git": {"commit": "def"}}, "file": "a.json"}], "records": []}
    parts = bench_world.parts_of(one, "one.json") + bench_world.parts_of(both, "both.json")
    assert [p["file"] for p in parts] == ["one.json", "both.json: a.json"]
    assert [bench_world.commit_of(p) for p in parts] == ["abc", "def"]
