#!/usr/bin/env python
"""The functional tolerance: how small must the relative fc6 error be for a collider to fool
the trained net?

On the digits world (``world.py``): for each of ``--pairs`` seeded test pairs, one pixel-mode
run at the engine's defaults (``--set`` overrides) with no early stop, and every ``--every``
steps a snapshot of the 8-bit vertices: their worst relative fc6 error, and ``--samples``
polytope samples classified by the attacked net. Two curves from the same snapshots:

* per snapshot (what ``--tol`` acts on): the vertices' worst relative error against the share
  of samples in the target's class, the share also within 0.01 of the target's top-class
  probability ("fooling"), and the largest probability gap;
* per sample: each sample's own relative error, binned, against the same two shares.

The supported tolerance is the largest worst-vertex error at or below which *every* snapshot
fooled the net with every one of its samples. Writes the JSON (config, curves, the chosen
tolerance, machine, versions, commit) and the figure beside it.

    python scripts/bench_tolerance.py                   # 15 pairs: about 6 minutes on 2 cores
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

BINS = (0.0, 0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 10.0)


def supported_tolerance(points: list[dict]) -> float:
    """The largest worst-vertex error e such that every snapshot with worst error <= e fooled
    the net with all its samples (0.0 when even the tightest did not)."""
    best = 0.0
    for p in sorted(points, key=lambda p: p["worst_rel_error"]):
        if p["share_target_close"] < 1.0:
            break
        best = p["worst_rel_error"]
    return best


def per_sample_curve(samples: dict) -> list[dict]:
    rel, inc, gap = (np.asarray(samples[k]) for k in ("rel_error", "in_class", "prob_gap"))
    out = []
    for lo, hi in zip(BINS[:-1], BINS[1:]):
        m = (rel >= lo) & (rel < hi)
        if m.any():
            out.append({"rel_error_from": lo, "rel_error_to": hi, "samples": int(m.sum()),
                        "share_target_class": float(inc[m].mean()),
                        "share_target_close": float((inc[m] & (gap[m] <= 0.01)).mean()),
                        "max_prob_gap": float(gap[m].max())})
    return out


def figure(points: list[dict], curve: list[dict], tol: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    x = [p["worst_rel_error"] for p in points]
    ax[0].scatter(x, [p["share_target_class"] for p in points], s=10, label="in the target's class", alpha=0.6)
    ax[0].scatter(x, [p["share_target_close"] for p in points], s=10, label="... and top p within 0.01", alpha=0.6)
    ax[0].axvline(tol, color="k", ls="--", lw=1, label=f"supported --tol {tol:.3g}")
    ax[0].set_xscale("log")
    ax[0].set_xlabel("worst vertex relative fc6 error (8-bit vertices)")
    ax[0].set_ylabel("share of polytope samples")
    ax[0].legend(fontsize=8)
    ax[0].set_title("per snapshot")
    mid = [(c["rel_error_from"] + min(c["rel_error_to"], 2.0)) / 2 for c in curve]
    ax[1].plot(mid, [c["share_target_class"] for c in curve], "o-", label="in the target's class")
    ax[1].plot(mid, [c["share_target_close"] for c in curve], "o-", label="... and top p within 0.01")
    ax[1].set_xscale("log")
    ax[1].set_xlabel("the sample's own relative fc6 error (binned)")
    ax[1].legend(fontsize=8)
    ax[1].set_title("per sample")
    fig.suptitle("digits world: digits_vgg fc6, trained (97% test accuracy)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> int:
    from bench_world import parse_set

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", default=os.path.join(ROOT, "worlds", "digits"))
    ap.add_argument("--pairs", type=int, default=15)
    ap.add_argument("--pair-seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "bench_tolerance-digits-cpu.json"))
    args = ap.parse_args(argv)

    import torch

    from patchcollide.engine.collide import least_change_anchor, make_param, optimise, quantise, target_of, to_tensor
    from patchcollide.engine.config import CollideConfig
    from patchcollide.engine.terms import concrete
    from patchcollide.core.files import machine, versions, write_json
    from patchcollide.models.build import load_tap
    from patchcollide.engine.polytope import sample_polytope
    from patchcollide.runs.run import load_pair
    from patchcollide.world.build import world_at
    from patchcollide.world.config import ATTACKED

    world = world_at(args.world)
    tap = load_tap(ATTACKED, "fc6", world.weights)
    config = concrete(CollideConfig(**{"mode": "pixel", "size": world.config.size, "device": "cpu",
                                       "steps": args.steps, "tol": 1e-9, **parse_set(args.set)}), tap)  # auto made concrete
    points, all_samples = [], {"rel_error": [], "in_class": [], "prob_gap": []}
    t0 = time.time()
    for i, p in enumerate(world.pairs(args.pairs, args.pair_seed)):
        src_u8, tgt_u8 = load_pair(p["source"], p["target"], config)
        src, tgt = to_tensor(src_u8), to_tensor(tgt_u8)
        target = target_of(tap, tgt, config.vertices, config.first_unit)
        param = make_param(config, src, tgt, None)
        anchor = least_change_anchor(config, src, None) if config.least_change > 0 else None
        post = target.post

        def snap(step, total, loss, worst, param=param, target=target, i=i, p=p):
            if step % args.every and step != 1:
                return
            with torch.no_grad():
                x = quantise(param())
                rel = (torch.relu(tap.pre(x)) - post).norm(dim=1) / post.norm()
            check = sample_polytope(tap, x, target, samples=args.samples, seed=step, keep_samples=True)
            for k in all_samples:
                all_samples[k] += check["per_sample"][k]
            points.append({"pair": i, "source_digit": p["source_digit"], "target_digit": p["target_digit"],
                           "step": step, "worst_rel_error": float(rel.max()), "mean_rel_error": float(rel.mean()),
                           "share_target_class": check["share_target_class"],
                           "share_target_close": check["share_target_close"], "max_prob_gap": check["max_prob_gap"],
                           "samples_rel_error_max": check["rel_error_max"]})

        optimise(tap, param, target, config, progress=snap, anchor=anchor)
        last = points[-1]
        print(f"pair {i:2d} {p['source_digit']}->{p['target_digit']}: final worst {last['worst_rel_error']:.3f} "
              f"fooling {last['share_target_close']:.3f} ({time.time() - t0:.0f} s)", flush=True)
    tol = supported_tolerance(points)
    curve = per_sample_curve(all_samples)
    result = {"benchmark": "bench_tolerance", "world": world.record, "config": dataclasses.asdict(config),
              "settings": vars(args), "prob_gap": 0.01, "supported_tol": tol,
              "rule": "the largest worst-vertex relative error at or below which every snapshot had every sample in "
                      "the target's class with a top-class probability within 0.01 of the target's",
              "per_sample_curve": curve, "snapshots": points, "machine": machine(), "versions": versions(),
              "seconds": round(time.time() - t0, 1)}
    write_json(args.out, result)
    figure(points, curve, tol, os.path.splitext(args.out)[0] + ".png")
    print(f"supported tolerance: {tol:.4f}")
    for c in curve:
        print(c)
    return 0


if __name__ == "__main__":
    sys.exit(main())
