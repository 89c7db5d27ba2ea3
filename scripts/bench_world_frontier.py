"""The digits world's frontier with success as its axis: success, fooling and look against the
start weight of the least-change term, per mode. The previous engine's (its committed points in
``benchmarks/results/bench_world-frontier/``; the default point came from the 45-pair run at
commit 289723c): the least-change rule it measured was replaced in issue 26, whose frontier is
``scripts/bench_world_extent.py``.

Each point is a ``bench_world.py`` run over the same 15 of the 45 seeded pairs (``--every 3``,
spread over all digits) with one ``least_change`` value; the default's point (3) is the same 15
pairs taken from the 45-pair run at the defaults. Writes one JSON (the points, recomputable
from their records) and one figure.

    python scripts/bench_world.py --every 3 --modes pixel --methods patchcollide --set least_change=10 \\
        --out benchmarks/results/bench_world-frontier/pixel-lc10.json        # one point (repeat per value)
    python scripts/bench_world_frontier.py                                      # the summary and the figure
"""
from __future__ import annotations

import argparse
import glob
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")


def point(records: list[dict]) -> dict:
    n = len(records)
    return {"pairs": n, "success_rate": sum(r["success"] for r in records) / n,
            "fools_net_rate": sum(r["fools_net"] for r in records) / n,
            "judge_ok_rate": sum(r["judge_reads_source"] >= 4 for r in records) / n,
            "pair_ids": sorted(r["pair"] for r in records)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", default=os.path.join(RESULTS, "bench_world-frontier"))
    ap.add_argument("--default-run", default=os.path.join(RESULTS, "bench_world-cpu.json"))
    ap.add_argument("--out", default=os.path.join(RESULTS, "bench_world-frontier-cpu.json"))
    args = ap.parse_args(argv)
    curves: dict[str, list[dict]] = {}
    for path in sorted(glob.glob(os.path.join(args.points, "*.json"))):
        with open(path) as fh:
            d = json.load(fh)
        engine = [r for r in d["records"] if r.get("method", "patchcollide") == "patchcollide"]  # not the peers
        for mode in {r["mode"] for r in engine}:
            recs = [r for r in engine if r["mode"] == mode]
            curves.setdefault(mode, []).append({"least_change": float(d["settings"]["overrides"]["least_change"]),
                                                "file": os.path.relpath(path, ROOT), "commit": d["versions"]["git"],
                                                **point(recs)})
    with open(args.default_run) as fh:
        base = json.load(fh)
    default_lc = float(base["parts"][0]["config"]["least_change"])
    for mode, pts in curves.items():
        ids = set(pts[0]["pair_ids"])
        if any(set(p["pair_ids"]) != ids for p in pts):
            raise SystemExit(f"{mode}: the points were run on different pairs")
        recs = [r for r in base["records"] if r["mode"] == mode and r["pair"] in ids
                and r.get("method", "patchcollide") == "patchcollide"]
        pts.append({"least_change": default_lc, "file": os.path.relpath(args.default_run, ROOT),
                    "commit": base["parts"][0]["versions"]["git"], **point(recs)})
        pts.sort(key=lambda p: p["least_change"])
    best = {m: max(pts, key=lambda p: (p["success_rate"], -abs(p["least_change"] - default_lc)))["least_change"]
            for m, pts in curves.items()}
    out = {"benchmark": "bench_world_frontier", "axis": "success rate against the least-change start weight",
           "success_rule": base["success_rule"], "default_least_change": default_lc, "best": best, "curves": curves,
           "world": base["world"]}
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=1)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 4), squeeze=False)
    for ax, (mode, pts) in zip(axes[0], sorted(curves.items())):
        x = [max(p["least_change"], 0.3) for p in pts]  # 0 (off) drawn at 0.3 on the log axis
        for key, label, style in (("success_rate", "success (both)", "o-"), ("fools_net_rate", "every sample fools the net", "s--"),
                                  ("judge_ok_rate", ">= 4 of 5 vertices read as the source", "^--")):
            ax.plot(x, [p[key] for p in pts], style, label=label)
        ax.axvline(default_lc, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_xticks(x, ["off" if p["least_change"] == 0 else f"{p['least_change']:g}" for p in pts])
        ax.set_ylim(0, 1)
        ax.set_xlabel("least-change start weight (grey: the default)")
        ax.set_title(f"{mode}: {pts[0]['pairs']} pairs")
        ax.legend(fontsize=8, loc="lower left")
    fig.suptitle("digits world, digits_vgg fc6: success against the least-change weight")
    fig.tight_layout()
    png = args.out.replace(".json", ".png")
    fig.savefig(png, dpi=110)
    print(json.dumps({m: [(p["least_change"], round(p["success_rate"], 3)) for p in pts] for m, pts in curves.items()}))
    print(f"wrote {args.out}, {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
