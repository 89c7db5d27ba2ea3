#!/usr/bin/env python
"""The patch mixture's set-up (PatchParam at 128 x 128, k = 16, source+target: 512 entries per
pixel, 32 slots, 5 vertices) with the seam tables of 7e6fe95 (sort and search) against those
before it (the M x M comparison, chunked), paired in one process: A B A B ..., medians.
Candidates: astronaut over the bench_startup store (run scripts/bench_startup.py first, or
give --index). Adds ``seam_tables`` to benchmarks/results/bench_startup-<tag>.json.

    python scripts/bench_seam_tables.py --pairs 5
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)


def pairwise_seam_tables(a: torch.Tensor, b: torch.Tensor, budget: int = 1 << 27):
    """The seam tables as they were computed before 7e6fe95: every slot against every slot."""
    V, h, w, M = a.shape
    rows = max(1, budget // max(1, V * w * M * M))
    match = torch.empty(V, h, w, M, dtype=torch.int64)
    alone = torch.empty(V, h, w, M, dtype=torch.bool)
    for r in range(0, h, rows):
        eq = a[:, r:r + rows, :, :, None] == b[:, r:r + rows, :, None, :]
        match[:, r:r + rows] = torch.where(eq.any(-1), eq.to(torch.uint8).argmax(-1), -1)
        alone[:, r:r + rows] = ~eq.any(-2)
    return match, alone


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--index", default=os.path.join(tempfile.gettempdir(), "bench_startup", "index"))
    ap.add_argument("--tag", default="cpu")
    a = ap.parse_args()
    from PIL import Image
    from skimage import data

    from patchcollide.core.files import versions
    from patchcollide.engine import params
    from patchcollide.engine.collide import make_param, retrieve_candidates, to_tensor
    from patchcollide.engine.config import CollideConfig
    from patchcollide.offline.knn import PatchIndex

    cfg = CollideConfig(size=128)
    src, tgt = (np.asarray(Image.fromarray(getattr(data, n)()).convert("RGB").resize((128, 128), Image.BICUBIC))
                for n in ("astronaut", "chelsea"))
    with PatchIndex(a.index) as idx:
        cand = retrieve_candidates(idx, src, cfg.k, cfg.grid_stride, cfg.window, tgt)
    sorted_tables = params._seam_tables
    times: dict[str, list[float]] = {"sort_and_search": [], "pairwise": []}
    made = {}
    for _ in range(a.pairs):
        for name, fn in (("sort_and_search", sorted_tables), ("pairwise", pairwise_seam_tables)):
            params._seam_tables = fn
            t = time.perf_counter()
            p = make_param(cfg, to_tensor(src), to_tensor(tgt), cand)
            times[name].append(round(time.perf_counter() - t, 3))
            made[name] = p
    params._seam_tables = sorted_tables
    same = all(torch.equal(getattr(made["pairwise"], f"{s}_{k}"), getattr(made["sort_and_search"], f"{s}_{k}"))
               for s in ("right", "down") for k in ("match", "alone"))
    result = {"what": __doc__.strip().splitlines()[0], "pairs": a.pairs, "git": versions()["git"],
              "seconds": times, "median": {k: statistics.median(v) for k, v in times.items()}, "same_tables": same}
    path = os.path.join(REPO, "benchmarks", "results", f"bench_startup-{a.tag}.json")
    with open(path) as fh:
        doc = json.load(fh)
    doc["seam_tables"] = result
    with open(path, "w") as fh:
        json.dump(doc, fh, indent=1)
        fh.write("\n")
    print(json.dumps(result["median"]), "same tables:", same)


if __name__ == "__main__":
    main()
