#!/usr/bin/env python
"""Colliders judged by trained networks: the digits world's 45 pairs, patch and pixel mode.

For each of 45 seeded pairs of *test* digits (one per unordered pair of distinct digits, the
direction drawn by the seed: ``world.World.pairs``) and each mode, one ``collide`` run at the
engine's defaults (``--set KEY=VALUE`` overrides) against the world's trained ``digits_vgg``
fc6, read by its judge (LeNet-5), then the polytope check with ``--samples`` samples.

A pair *succeeds* when
* every sample is in the target's class per the attacked net, with a top-class probability
  within 0.01 of the target's (``polytope.fools_net``), and
* at least 4 of the 5 vertices are read as the source's class by the judge.

Writes one record per (pair, mode) with ``mode``, ``success`` and the numbers behind it, the
per-mode summary (success rate, relative error, push, sharpness, distance to the source,
steps, seconds), the machine, versions and commit, into ``--out`` (JSON), and one contact
sheet per mode beside it. ``--resume`` keeps the records an earlier run of the same
settings finished.

    python scripts/bench_world.py                        # both modes, 45 pairs: about 40 minutes on 2 cores
    python scripts/bench_world.py --pairs 10 --modes pixel --set least_change=0.5 --out /tmp/sweep.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
import typing

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

MIN_READS = 4  # of 5 vertices read as the source by the judge


def parse_set(items: list[str]) -> dict:
    from patchcollide.engine.collide import CollideConfig
    from patchcollide.batch.jobfile import convert

    hints = typing.get_type_hints(CollideConfig)
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        if key not in hints:
            raise SystemExit(f"--set {item}: {key!r} is not a CollideConfig field")
        out[key] = convert(hints[key], json.loads(value) if value[:1] in "[{\"0123456789-." or value in
                           ("true", "false", "null") else value)
    return out


def summarise(records: list[dict]) -> dict:
    out = {}
    for mode in sorted({r["mode"] for r in records}):
        rs = [r for r in records if r["mode"] == mode]

        def stats(key):
            xs = [r[key] for r in rs if r.get(key) is not None]
            return None if not xs else {"mean": float(np.mean(xs)), "median": float(np.median(xs)),
                                        "min": float(np.min(xs)), "max": float(np.max(xs))}

        out[mode] = {"pairs": len(rs), "success_rate": sum(r["success"] for r in rs) / len(rs),
                     "fools_net_rate": sum(r["fools_net"] for r in rs) / len(rs),
                     "judge_ok_rate": sum(r["judge_reads_source"] >= MIN_READS for r in rs) / len(rs),
                     **{k: stats(k) for k in ("worst_rel_error_png", "min_push", "mean_sharpness", "mean_source_l2",
                                              "judge_reads_source", "share_target_close", "max_prob_gap", "steps",
                                              "seconds")}}
    return out


def contact_sheet(records: list[dict], mode: str, path: str, rows: int = 10) -> None:
    from PIL import Image, ImageDraw

    rs = [r for r in records if r["mode"] == mode][:rows]
    if not rs:
        return
    tiles = []
    for r in rs:
        names = ["source.png", "target.png", *(f"vertex_{i}.png" for i in range(r["vertices"]))]
        tiles.append([Image.open(os.path.join(r["run"], n)).convert("RGB") for n in names])
    side, pad, head = tiles[0][0].size[0], 4, 16
    cols = max(len(t) for t in tiles)
    sheet = Image.new("RGB", (cols * (side + pad) + pad, len(tiles) * (side + pad + head) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (r, row) in enumerate(zip(rs, tiles)):
        y = pad + i * (side + pad + head)
        jr = r["judge_classes"]
        draw.text((pad, y), f"{r['source_digit']} -> {r['target_digit']}: {'success' if r['success'] else 'fail'}; "
                            f"rel.err {r['worst_rel_error_png']:.2f}, fooling {100 * r['share_target_close']:.0f}%, "
                            f"judge reads {jr} (source {r['source_digit']})", fill="black")
        for j, im in enumerate(row):
            sheet.paste(im, (pad + j * (side + pad), y + head))
    sheet.save(path)


def combine(paths: list[str], out: str) -> int:
    """One result from several (e.g. one process per mode): records concatenated, the summary
    recomputed, each part's config, settings, machine and versions kept under ``parts``."""
    from patchcollide.core.files import write_json

    parts = [json.load(open(p)) for p in paths]
    records = [r for p in parts for r in p["records"]]
    result = {"benchmark": "bench_world", "world": parts[0]["world"], "success_rule": parts[0]["success_rule"],
              "summary": summarise(records), "records": records,
              "parts": [{k: p[k] for k in ("config", "settings", "machine", "versions", "seconds", "torch_threads")}
                        | {"file": os.path.basename(path)} for p, path in zip(parts, paths)]}
    write_json(out, result)
    print(json.dumps(result["summary"], indent=1))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", default=os.path.join(ROOT, "worlds", "digits"))
    ap.add_argument("--pairs", type=int, default=45)
    ap.add_argument("--pair-seed", type=int, default=0)
    ap.add_argument("--every", type=int, default=1,
                    help="keep every K-th of the pairs (a subset spread over all digits, for frontier points)")
    ap.add_argument("--modes", nargs="+", default=["patches", "pixel"], choices=["patches", "pixel"])
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="CollideConfig overrides")
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "bench_world-cpu.json"))
    ap.add_argument("--runs", default=None, help="where the run folders go [default: a temporary folder]")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--combine", nargs="+", metavar="JSON",
                    help="merge the records of runs made apart (one mode each, in parallel) into --out, and stop")
    args = ap.parse_args(argv)
    if args.combine:
        return combine(args.combine, args.out)

    import torch

    from patchcollide.engine.collide import CollideConfig
    from patchcollide.core.files import machine, versions, write_json
    from patchcollide.engine.judge import load_judge
    from patchcollide.offline.knn import PatchIndex
    from patchcollide.engine.models import load_tap
    from patchcollide.runs.run import run_collide, run_sample
    from patchcollide.papers.world import ATTACKED, JUDGE, world_at

    world = world_at(args.world)
    overrides = parse_set(args.set)
    tap = load_tap(ATTACKED, "fc6", world.weights)
    judge = load_judge(world.judge, JUDGE)
    pairs = world.pairs(args.pairs, args.pair_seed)
    if args.every < 1:
        ap.error(f"--every must be >= 1, got {args.every}")
    kept = list(range(0, len(pairs), args.every))
    runs = args.runs or tempfile.mkdtemp(prefix="bench_world-")
    settings = {"overrides": {k: v for k, v in overrides.items()}, "samples": args.samples,
                "pair_seed": args.pair_seed, "pairs": args.pairs, "every": args.every}
    records: list[dict] = []
    if args.resume and os.path.isfile(args.out):
        with open(args.out) as fh:
            old = json.load(fh)
        if old.get("settings") == json.loads(json.dumps(settings)):
            records = old["records"]
    done = {(r["pair"], r["mode"]) for r in records}
    t_all = time.time()
    with PatchIndex(world.index) as pindex:
        for mode in args.modes:
            config = CollideConfig(**{"mode": mode, "size": world.config.size, "device": "cpu",
                                      **{k: v for k, v in overrides.items() if k not in ("mode",)}})
            for i in kept:
                p = pairs[i]
                if (i, mode) in done:
                    continue
                out = os.path.join(runs, mode, f"{i:02d}-{p['source_digit']}to{p['target_digit']}")
                shutil.rmtree(out, ignore_errors=True)
                shutil.rmtree(out + ".partial", ignore_errors=True)  # a killed earlier run's checkpoint
                t0 = time.time()
                report = run_collide(p["source"], p["target"], out, config, arch=ATTACKED, weights=world.weights,
                                     index_dir=world.index, tap=tap, pindex=pindex, judge=judge)
                report = run_sample(out, samples=args.samples, device="cpu", tap=tap, judge=judge)
                poly, jd, v = report["polytope"], report["judge"], report["vertices"]
                mix = v.get("mixing") or {}
                reads = jd["n_reads_as_source"]
                rec = {
                    "pair": i, "mode": mode, "source": os.path.relpath(p["source"], world.root),
                    "target": os.path.relpath(p["target"], world.root), "source_digit": p["source_digit"],
                    "target_digit": p["target_digit"], "vertices": config.vertices,
                    "success": bool(poly["fools_net"] and reads >= MIN_READS),
                    "fools_net": bool(poly["fools_net"]), "share_target_class": poly["share_target_class"],
                    "share_target_close": poly["share_target_close"], "max_prob_gap": poly["max_prob_gap"],
                    "target_class": report["target"]["label"], "target_prob": report["target"]["top_prob"],
                    "judge_reads_source": reads, "judge_classes": jd["vertices"]["class"],
                    "judge_source_class": jd["source"]["class"], "judge_share_samples_source": poly["judge_share_source"],
                    "worst_rel_error_png": max(v["png"]["rel_error"]), "worst_rel_error": max(v["float"]["rel_error"]),
                    "samples_rel_error_max": poly["rel_error_max"], "min_push": min(v["png"]["push"]),
                    "mean_sharpness": float(np.mean(mix["sharpness"])) if mix else None,
                    "mean_source_l2": float(np.mean(report["distances"]["vertex_source_l2"])),
                    "source_target_l2": report["distances"]["source_target_l2"],
                    "steps": report["steps"], "converged": report["converged"],
                    "seconds": round(time.time() - t0, 2), "run": out,
                }
                records.append(rec)
                print(f"{mode:7s} pair {i:2d} {p['source_digit']}->{p['target_digit']}: "
                      f"{'OK  ' if rec['success'] else 'fail'} rel {rec['worst_rel_error_png']:.3f} "
                      f"fool {rec['share_target_close']:.3f} judge {reads}/5 L2src {rec['mean_source_l2']:.0f} "
                      f"push {rec['min_push']:.2f} steps {rec['steps']} {rec['seconds']:.0f}s", flush=True)
                result = {"benchmark": "bench_world", "world": world.record, "settings": settings,
                          "config": dataclasses.asdict(config) if len(args.modes) == 1 else
                          {m: dataclasses.asdict(dataclasses.replace(config, mode=m)) for m in args.modes},
                          "success_rule": f"every sample in the target's class with top prob. within 0.01 of the "
                                          f"target's (attacked net) and >= {MIN_READS} of 5 vertices read as the "
                                          "source by the judge",
                          "summary": summarise(records), "records": records, "machine": machine(),
                          "versions": versions(), "seconds": round(time.time() - t_all, 1),
                          "torch_threads": torch.get_num_threads()}
                write_json(args.out, result)
    base = os.path.splitext(args.out)[0]
    for mode in args.modes:
        contact_sheet(records, mode, f"{base}-{mode}.png")
    print(json.dumps(summarise(records), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
