#!/usr/bin/env python
"""Vertex-loop benchmark: 5 vertices optimised as one batch against one vertex at a time.

Patch mode (k nearest patches from a Flat index over scikit-image's sample photos),
source astronaut, target chelsea, VGG-16 fc6. For each way: steps per second, steps and
seconds until every vertex reaches relative error <= --tol (or the error reached within
--steps), and the steps against the authors' 20,000. 224 x 224 on a GPU; a smaller --size
on CPU (VGG-16 forward + backward at 224 costs about 1.2 s per image on 2 cores).
Writes benchmarks/results/bench_collide-<machine>.json.

    python scripts/bench_collide.py                      # CPU: --size 64
    python scripts/bench_collide.py --size 224 --device cuda
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

AUTHORS_STEPS = 20_000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=None, help="input side (default 224 on GPU, 64 on CPU)")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--tol", type=float, default=1e-2)
    ap.add_argument("--vertices", type=int, default=5)
    ap.add_argument("--mode", default="patches", choices=["patches", "pixel"])
    ap.add_argument("--weights", default="random", help="random, imagenet or a state-dict path")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(HERE), "benchmarks", "results"))
    args = ap.parse_args()

    from bench_knn import machine

    from patchcollide.collide import CollideConfig, collide
    from patchcollide.demo import STORE_PHOTOS, write_sample_photos
    from patchcollide.extract import ExtractConfig, extract_store
    from patchcollide.images import Preprocess, load_rgb
    from patchcollide.knn import IndexConfig, PatchIndex, build_index
    from patchcollide.models import load_tap, resolve_device

    dev = resolve_device(args.device)
    size = args.size or (224 if dev.type == "cuda" else 64)
    work = tempfile.mkdtemp(prefix="bench_collide_")
    write_sample_photos(os.path.join(work, "photos"), STORE_PHOTOS)
    extract_store([os.path.join(work, "photos")], os.path.join(work, "patches.h5"), ExtractConfig(stride=8))
    build_index(work, None, IndexConfig())
    src_path, tgt_path = write_sample_photos(os.path.join(work, "q"), ("astronaut", "chelsea"))
    src = load_rgb(src_path, Preprocess(resize=size))[0]
    tgt = load_rgb(tgt_path, Preprocess(resize=size))[0]
    tap = load_tap("vgg16", "fc6", args.weights, seed=0)
    V = args.vertices

    def one(vertices: int, unit_offset: int = 0) -> dict:
        cfg = CollideConfig(mode=args.mode, vertices=vertices, steps=args.steps, tol=args.tol, size=size,
                            device=str(dev), first_unit=unit_offset, min_steps=0)
        times = []

        def prog(step, total, loss, worst):
            times.append((step, time.perf_counter(), worst))

        with PatchIndex(work) as pidx:
            t0 = time.perf_counter()
            res = collide(tap, src, tgt, cfg, index=pidx, progress=prog)
            total = time.perf_counter() - t0
        loop = times[-1][1] - times[0][1]
        # time to tolerance: from the end of the first step (setup and retrieval excluded) to
        # the first step at which every vertex met --tol; None if it never did
        hit = next((i for i, (_, _, worst) in enumerate(times) if worst <= args.tol), None)
        per_step = loop / max(1, len(times) - 1)
        return {"vertices": vertices, "steps": res.steps, "converged": res.converged, "seconds_total": total,
                "steps_per_s": 1.0 / per_step if len(times) > 1 else float("nan"),
                "steps_to_tol": None if hit is None else times[hit][0],
                "seconds_to_tol": None if hit is None else times[hit][1] - times[0][1] + per_step,
                "final_worst_rel_error": max(res.metrics["rel_error"]), "units": res.metrics["unit"]}

    if dev.type == "cuda":
        torch.cuda.synchronize()
    batched = one(V)
    print(f"batched: {batched['steps']} steps, {batched['steps_per_s']:.2f} steps/s, {batched['seconds_total']:.1f} s, "
          f"worst rel.err {batched['final_worst_rel_error']:.2e}", flush=True)
    # One at a time, each with its own unit (the same units as the batch), as the authors
    # stepped their vertices one after another.
    singles = [one(1, unit_offset=i) for i in range(V)]
    seq_time = sum(s["seconds_total"] for s in singles)
    reached = batched["seconds_to_tol"] is not None and all(s["seconds_to_tol"] is not None for s in singles)
    print(f"one at a time: {sum(s['steps'] for s in singles)} steps in {seq_time:.1f} s", flush=True)
    result = {
        "benchmark": "bench_collide", "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(),
        "setting": {"size": size, "mode": args.mode, "weights": args.weights, "tol": args.tol, "max_steps": args.steps,
                    "vertices": V, "source": "astronaut", "target": "chelsea", "device": str(dev)},
        "batched": batched, "one_at_a_time": singles,
        "seconds_per_vertex": {"batched": batched["seconds_total"] / V, "one_at_a_time": seq_time / V},
        "speedup_per_vertex": seq_time / batched["seconds_total"],
        "speedup_per_step_and_vertex": V * batched["steps_per_s"] / float(np.mean([s["steps_per_s"] for s in singles])),
        "tol_reached_by_all": reached,
        "speedup_to_tol_per_vertex": (sum(s["seconds_to_tol"] for s in singles) / batched["seconds_to_tol"])
        if reached else None,
        "steps_vs_authors": {"batched": batched["steps"], "authors": AUTHORS_STEPS},
        "target": "batched at least 2x faster per vertex than one at a time on GPU; CPU figures reported as measured",
    }
    os.makedirs(args.out, exist_ok=True)
    tag = "gpu" if dev.type == "cuda" else "cpu"
    path = os.path.join(args.out, f"bench_collide-{tag}-{size}.json")
    with open(path, "w") as fh:
        json.dump(result, fh, indent=2)
    print(f"speed-up per vertex {result['speedup_per_vertex']:.2f}x; wrote {path}")


if __name__ == "__main__":
    main()
