#!/usr/bin/env python
"""The digits world's frontier with success and extent as its axes: what holding the vertices
apart (the distinct term, ``--extent``) costs in success and in distance to the source.

Each point is a ``bench_world.py`` run of patchcollide over the same pairs with one setting
(``--set distinct=0``, ``--set extent=0.3``, ...); the records are read back from their JSON.
Per point: success rate, the share whose every sample fools the net, the share the judge
reads as the source, and the medians of the extent and of the L2 to the source; with a peer's
run (``--peer``), each point's median ratio of its L2 to the peer's on the pairs both have.
Writes one JSON (the points, recomputable from their records) and one figure.

    python scripts/bench_world.py --every 3 --modes pixel --methods patchcollide --set extent=0.3 \\
        --out benchmarks/results/bench_world-extent/pixel-extent0.3.json        # one point per setting
    python scripts/bench_world_extent.py --point "extent 0.15 (default)=benchmarks/results/..." \\
        --point "distinct off=..." --peer benchmarks/results/bench_world-peers-cpu.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
RESULTS = os.path.join(ROOT, "benchmarks", "results")


def point(records: list[dict], peer: dict[int, float] | None = None) -> dict:
    """One point of the frontier from bench_world records of one (method, mode, vertices)."""
    n = len(records)
    out = {"pairs": n, "pair_ids": sorted(r["pair"] for r in records),
           "success_rate": sum(r["success"] for r in records) / n,
           "fools_net_rate": sum(r["fools_net"] for r in records) / n,
           "judge_ok_rate": sum(r["judge_reads_source"] >= math.ceil(0.8 * r["vertices"]) for r in records) / n,
           "extent_median": statistics.median(r["extent"] for r in records),
           "source_l2_median": statistics.median(r["median_source_l2"] for r in records)}
    if peer:
        ratios = [r["median_source_l2"] / peer[r["pair"]] for r in records if r["pair"] in peer]
        out["l2_ratio_to_peer_median"] = statistics.median(ratios) if ratios else None
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--point", action="append", required=True, metavar="LABEL=JSON",
                    help="a bench_world run of one setting (repeatable)")
    ap.add_argument("--peer", default=None, help="a bench_world run holding the plain attack's records")
    ap.add_argument("--peer-method", default="plain")
    ap.add_argument("--out", default=os.path.join(RESULTS, "bench_world-extent-cpu.json"))
    args = ap.parse_args(argv)
    peer = None
    if args.peer:
        with open(args.peer) as fh:
            peer = {r["pair"]: r["median_source_l2"] for r in json.load(fh)["records"]
                    if r["method"] == args.peer_method}
    points = []
    for item in args.point:
        label, _, path = item.partition("=")
        with open(path) as fh:
            res = json.load(fh)
        recs = [r for r in res["records"] if r["method"] == "patchcollide"]
        p = point(recs, peer)
        p.update(label=label, file=os.path.relpath(path, ROOT), overrides=res["settings"]["overrides"],
                 modes=sorted({r["mode"] for r in recs}), vertices=sorted({r["vertices"] for r in recs}))
        points.append(p)
        print(f"{label:30s} success {p['success_rate']:.0%} fools {p['fools_net_rate']:.0%} "
              f"judge {p['judge_ok_rate']:.0%} extent {p['extent_median']:.3f} L2 {p['source_l2_median']:.0f}"
              + (f" ratio {p['l2_ratio_to_peer_median']:.2f}" if p.get("l2_ratio_to_peer_median") else ""))
    from patchcollide.core.files import write_json

    write_json(args.out, {"benchmark": "bench_world_extent", "peer": args.peer and os.path.relpath(args.peer, ROOT),
                          "points": points})
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for p in points:
        ax.scatter(p["extent_median"], 100 * p["success_rate"], s=60)
        note = f"{p['label']}\nL2 {p['source_l2_median']:,.0f}"
        if p.get("l2_ratio_to_peer_median"):
            note += f" ({p['l2_ratio_to_peer_median']:.2f}x plain)"
        ax.annotate(note, (p["extent_median"], 100 * p["success_rate"]), fontsize=7, xytext=(5, 5),
                    textcoords="offset points")
    ys = [100 * p["success_rate"] for p in points]
    ax.set_ylim(min(ys) - 5, max(ys) + 8)
    ax.set_xlim(-0.02, max(p["extent_median"] for p in points) + 0.12)
    ax.axvline(0.1, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("extent (median): closest two vertices in the 7 x 7 block view / source-target")
    ax.set_ylabel("success (%)")
    ax.set_title("digits world, 5 vertices: success against extent", fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.splitext(args.out)[0] + ".png", dpi=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
