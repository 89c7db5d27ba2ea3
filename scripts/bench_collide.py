#!/usr/bin/env python
"""The vertex loop: what it makes (collision, push, sharpness) and what it costs.

Patch mode over the demo's store (scikit-image's sample photos, stride 4; sources and
targets held out of it), VGG-16 fc6, 5 vertices. Two benchmarks:

* ``--sweep``: the engine's levers, one run each at the same step budget: the default
  schedule, and the default with one lever changed (push margin, TV, entropy, pruning,
  start, step budget), plus the project's old defaults and pixel mode. For every run and
  every vertex: the worst relative fc6 error of the PNGs, the push z_i[j_i] / z_t[j_i] and
  whether each vertex is the lowest on its own unit, the mixing's sharpness, sources and
  argmax error, steps and seconds. The default schedule also runs on a second pair. Writes
  ``bench_collide-sweep-<cpu|gpu>-<size>.json``, the frontier plot (sharpness against
  error, coloured by push) and the default's contact sheets, all under --out.
* default (no ``--sweep``): 5 vertices as one batch against one vertex at a time.

On CPU use 128 x 128 (64 x 64 is nearly over-determined at fc6: pool5 holds 2,048 values
against about 2,000 active units; use it only for smoke runs); on a GPU 224. Without faiss
(the GPU image has none) the candidates come from an exact torch search over the same
patches. Random weights unless --weights; every output says so.

    python scripts/bench_collide.py --sweep                 # CPU, 128 x 128: about an hour on 2 cores
    python scripts/bench_collide.py --sweep --size 224 --device cuda
    python scripts/bench_collide.py --size 224 --device cuda  # batched against one at a time
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

AUTHORS_STEPS = 20_000
PAIRS = (("astronaut", "chelsea"), ("stereo_motorcycle", "rocket"))

# (name, what changes, CollideConfig overrides on top of the defaults)
SWEEP = (
    ("default", "the default schedule", {}),
    ("push-1.5", "push margin 1.5 instead of 2.2", {"push_margin": 1.5}),
    ("push-0", "no push (collision only)", {"push_margin": 0.0}),
    ("no-tv", "no TV on the mixing weights", {"tv": 0.0}),
    ("no-entropy", "no entropy term", {"entropy": 0.0}),
    ("no-prune", "no pruning (all 32 slots kept)", {"prune": ()}),
    ("settle-0", "TV and entropy off after the last prune", {"settle_factor": 0.0}),
    ("prune-2", "pruned down to 2 candidates per pixel", {"prune": ((0.33, 8), (0.5, 4), (0.67, 2))}),
    ("start-nearest", "every vertex starts on the nearest candidates", {"start": "nearest"}),
    ("start-tent", "the authors' start: tent blend of every candidate", {"start": "tent", "spatial": 1.0}),
    ("steps-600", "twice the step budget", {"steps": 600}),
    ("block-4", "logits shared per 4 x 4 block of pixels", {"block": 4}),
    ("block-8", "logits shared per 8 x 8 block of pixels", {"block": 8}),
    ("window-64-k1", "the authors' candidates: the nearest patch's 64 x 64 context in its source image (112 at 224), "
     "k = 1", {"k": 1, "window": 64}),
    ("window-64-k4", "64 x 64 context windows of the 4 nearest patches", {"k": 4, "window": 64}),
    ("old-default", "the project's previous defaults: paper objective, (1000, 1), tent start, 256 slots, no TV",
     {"objective": "paper", "loss_early": (1000.0, 1.0), "loss_late": (1000.0, 1.0), "switch": 0.7,
      "tv": 0.0, "entropy": 0.0, "prune": (), "start": "tent", "spatial": 1.0, "slots": 256, "lr": 0.1,
      "betas": (0.9, 0.999), "steps": 400}),
    ("pixel", "pixel mode, default schedule", {"mode": "pixel"}),
    ("pixel-push-0", "pixel mode, no push", {"mode": "pixel", "push_margin": 0.0}),
)


class TorchPatchIndex:
    """Exact k-NN over an in-memory set of patches with torch (no faiss): the interface of
    knn.PatchIndex that ``collide`` uses (``search_image``, ``store.get``)."""

    def __init__(self, patches: np.ndarray, device: torch.device):
        self.patches = patches  # (N, 32, 32, 3) uint8
        self.device = device
        self.x = torch.from_numpy(patches.reshape(len(patches), -1)).to(device, torch.float32)
        self.x2 = (self.x ** 2).sum(1)
        self.store = self

    def get(self, ids: np.ndarray) -> np.ndarray:
        return self.patches[np.asarray(ids)]

    def search_image(self, image: np.ndarray, k: int = 16, stride: int = 8):
        from patchcollide.core.images import cut_patches, grid_positions
        from patchcollide.offline.knn import SearchResult

        yx = grid_positions(image.shape[:2], stride, 32, cover=True)
        q = torch.from_numpy(cut_patches(image, yx).reshape(len(yx), -1)).to(self.device, torch.float32)
        d2 = (q ** 2).sum(1, keepdim=True) - 2 * q @ self.x.T + self.x2[None]
        dist, ids = torch.topk(d2, k, dim=1, largest=False)
        ids = ids.cpu().numpy()
        return SearchResult(ids=ids, distances=dist.clamp_min(0).sqrt().cpu().numpy(), query_yx=yx,
                            sources=np.zeros((*ids.shape, 3), np.int32), image=image)


def build_index(work: str, device: torch.device):
    """The demo's store (extracted once) and an index over it: faiss where it imports, else
    exact torch search. Returns (index, description)."""
    from patchcollide.demo import STORE_PHOTOS, write_sample_photos
    from patchcollide.offline.extract import ExtractConfig, extract_store

    write_sample_photos(os.path.join(work, "photos"), STORE_PHOTOS)
    store = os.path.join(work, "patches.h5")
    extract_store([os.path.join(work, "photos")], store, ExtractConfig(stride=4))
    try:
        from patchcollide.offline.knn import IndexConfig, PatchIndex
        from patchcollide.offline.knn import build_index as faiss_build
    except ImportError:
        from patchcollide.offline.store import PatchStore

        with PatchStore(store) as st:
            patches = st.get(np.arange(len(st)))
        return TorchPatchIndex(patches, device), f"exact torch search over {len(patches)} patches (no faiss)"
    faiss_build(work, store, IndexConfig())
    idx = PatchIndex(work)
    return idx, f"faiss {idx.manifest['factory']} over {len(idx.store)} patches"


def load_pair(work: str, pair: tuple[str, str], size: int):
    from patchcollide.demo import write_sample_photos
    from patchcollide.engine.config import CollideConfig
    from patchcollide.runs.run import load_input

    paths = write_sample_photos(os.path.join(work, "pairs"), pair)
    config = CollideConfig(size=size)
    return load_input(paths[0], config, "--source"), load_input(paths[1], config, "--target")


def run_one(tap, index, src, tgt, cfg) -> tuple[dict, object]:
    """One collide run: the metrics of its PNGs (8-bit), its mixing and its error curve."""
    from patchcollide.engine.collide import collide, quantised_metrics
    from patchcollide.runs.pictures import to_uint8

    res = collide(tap, src, tgt, cfg, index=index)
    png = quantised_metrics(tap, to_uint8(res.vertices), res.target, cfg.device)
    hist = res.history
    every = max(1, len(hist["worst_rel_error"]) // 60)
    rec = {
        "steps": res.steps, "converged": res.converged, "seconds": round(res.seconds, 1),
        "worst_rel_error_png": max(png["rel_error"]), "rel_error_png": png["rel_error"],
        "push": png["push"], "min_push": min(png["push"]), "own_unit_lowest": png["own_unit_lowest"],
        "all_own_lowest": all(png["own_unit_lowest"]), "target_unit_values": res.target.z[res.target.units].tolist(),
        "unit_value": png["unit_value"], "top1": png["top1"],
        "curve": {"step": list(range(1, len(hist["worst_rel_error"]) + 1, every)),
                  "worst_rel_error": hist["worst_rel_error"][::every], "min_push": hist["min_push"][::every]},
    }
    if res.mixing:
        rec["mixing"] = res.mixing
        rec["sharpness_mean"] = float(np.mean(res.mixing["sharpness"]))
        rec["sources_mean"] = float(np.mean(res.mixing["sources"]))
        rec["argmax_rel_error_worst"] = max(res.mixing["argmax_rel_error"])
    return rec, res


def sheet(res, src, tgt, path: str, random: bool) -> None:
    from PIL import Image

    from patchcollide.runs.pictures import contact_sheet, to_uint8

    items = [("source", src), ("target" + (" (RANDOM WEIGHTS)" if random else ""), tgt)]
    items += [(f"vertex {i}", v) for i, v in enumerate(to_uint8(res.vertices))]
    if res.argmax_vertices is not None:
        items += [(f"argmax {i}", v) for i, v in enumerate(to_uint8(res.argmax_vertices))]
    contact_sheet(items, scale=2).save(path)
    Image.open(path).verify()


def frontier_plot(runs: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    ax = axes[0]
    patch = [r for r in runs if "sharpness_mean" in r]
    sc = ax.scatter([r["worst_rel_error_png"] for r in patch], [r["sharpness_mean"] for r in patch],
                    c=[r["min_push"] for r in patch], cmap="viridis", s=[30 + r["steps"] / 8 for r in patch],
                    edgecolors="k")
    for r in patch:
        ax.annotate(r["name"], (r["worst_rel_error_png"], r["sharpness_mean"]), fontsize=6, xytext=(3, 3),
                    textcoords="offset points")
    ax.axvline(1e-2, color="r", lw=0.8, ls="--")
    ax.axhline(0.8, color="r", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("worst relative fc6 error of the PNGs (target <= 1e-2)")
    ax.set_ylabel("sharpness, mean over vertices (target >= 0.8)")
    fig.colorbar(sc, ax=ax, label="smallest push z_i[j_i] / z_t[j_i] (target >= 2); size: steps")
    ax = axes[1]
    for r in runs:
        ax.semilogy(r["curve"]["step"], r["curve"]["worst_rel_error"], lw=0.9, label=r["name"])
    ax.axhline(1e-2, color="r", lw=0.8, ls="--")
    ax.set_xlabel("step")
    ax.set_ylabel("worst relative fc6 error (float)")
    ax.legend(fontsize=5, ncol=2)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sweep(args, tap, index, index_desc, dev, size, work) -> None:
    from patchcollide.engine.config import CollideConfig
    from patchcollide.core.files import machine, versions, write_json

    random = tap.weights.kind == "random"
    tag = f"{'gpu' if dev.type == 'cuda' else 'cpu'}-{size}"
    os.makedirs(args.out, exist_ok=True)
    base = dict(size=size, vertices=args.vertices, device=str(dev))
    if args.steps:
        base["steps"] = args.steps
    pairs = [load_pair(work, p, size) for p in PAIRS]
    names = set(args.only.split(",")) if args.only else None
    targets = {"worst_rel_error_png": "<= 1e-2", "push": ">= 2 and each vertex lowest on its own unit",
               "sharpness": ">= 0.8", "sources": "<= 2"}
    path = os.path.join(args.out, f"bench_collide-sweep-{tag}.json")
    runs = []
    if args.append and os.path.exists(path):  # keep what an earlier (cut-short) sweep measured
        with open(path) as fh:
            old = json.load(fh)
        if old["setting"]["size"] != size or old["setting"]["vertices"] != args.vertices:
            sys.exit(f"--append: {path} was measured at {old['setting']['size']} px with "
                     f"{old['setting']['vertices']} vertices; run with the same --size and --vertices")
        for r in old["runs"]:  # runs saved before runs carried their own commit ran on the file's
            r.setdefault("git", old.get("git") or old["versions"].get("git"))
        runs = old["runs"]
    planned = {name for name, *_ in SWEEP} | {"default, second pair"}

    def save(complete: bool) -> None:
        """Written after every run, so a sweep cut short keeps what it measured."""
        result = {
            "benchmark": "bench_collide --sweep", "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(),
            "versions": versions(), "complete": complete and planned <= {r["name"] for r in runs},
            "notice": "RANDOM WEIGHTS (smoke runs): these colliders say nothing about a trained network" if random else None,
            "setting": {"size": size, "vertices": args.vertices, "weights": tap.weights.name, "index": index_desc,
                        "device": str(dev), "threads": torch.get_num_threads()},
            "targets": targets, "runs": runs,
        }
        write_json(path, result, indent=1)

    plan = [(name, what, over, 0) for name, what, over in SWEEP]
    # the default on the second pair runs right after the default on the first
    plan.insert(1, ("default, second pair", "the default schedule on the second pair", {}, 1))
    for name, what, over, p in plan:
        if names and name not in names and not (p == 1 and "default" in names):
            continue
        cfg = CollideConfig(**{**base, **over})
        rec, res = run_one(tap, index, *pairs[p], cfg)
        rec.update(name=name, what=what, pair=list(PAIRS[p]), config=dataclasses.asdict(cfg),
                   git=versions()["git"])
        runs[:] = [r for r in runs if r["name"] != name] + [rec]
        print(f"{name:>14}: worst PNG error {rec['worst_rel_error_png']:.3g}, push >= {rec['min_push']:.2f} "
              f"(own lowest: {rec['all_own_lowest']}), sharpness {rec.get('sharpness_mean', float('nan')):.3f}, "
              f"sources {rec.get('sources_mean', float('nan')):.2f}, {rec['steps']} steps, {rec['seconds']:.0f} s",
              flush=True)
        if over == {}:
            sheet(res, *pairs[p], os.path.join(args.out, f"contact_sheet-{PAIRS[p][0]}-{PAIRS[p][1]}-{tag}.png"), random)
        elif "block" in over or "window" in over:  # a lever that changes the look: its own sheet beside the default's
            sheet(res, *pairs[p], os.path.join(args.out, f"contact_sheet-{PAIRS[p][0]}-{PAIRS[p][1]}-{tag}-{name}.png"),
                  random)
        save(complete=False)
    save(complete=True)
    frontier_plot([r for r in runs if r["pair"] == list(PAIRS[0])],
                  os.path.join(args.out, f"bench_collide-sweep-{tag}.png"),
                  f"VGG-16 fc6, {size} x {size}, {args.vertices} vertices, {PAIRS[0][0]} -> {PAIRS[0][1]}"
                  + (" - RANDOM WEIGHTS" if random else ""))
    print(f"wrote {path}")


def batched_vs_single(args, tap, index, index_desc, dev, size, work) -> None:
    from patchcollide.engine.collide import collide
    from patchcollide.engine.config import CollideConfig
    from patchcollide.core.files import machine, versions, write_json

    src, tgt = load_pair(work, PAIRS[0], size)
    V = args.vertices

    def one(vertices: int, unit_offset: int = 0) -> dict:
        cfg = CollideConfig(vertices=vertices, size=size, device=str(dev), first_unit=unit_offset,
                            **({"steps": args.steps} if args.steps else {}))
        times = []

        def prog(step, total, loss, worst):
            times.append((step, time.perf_counter(), worst))

        t0 = time.perf_counter()
        res = collide(tap, src, tgt, cfg, index=index, progress=prog)
        total = time.perf_counter() - t0
        loop = times[-1][1] - times[0][1]
        per_step = loop / max(1, len(times) - 1)
        return {"vertices": vertices, "steps": res.steps, "converged": res.converged, "seconds_total": total,
                "steps_per_s": 1.0 / per_step if len(times) > 1 else float("nan"),
                "final_worst_rel_error": max(res.metrics["rel_error"]), "units": res.metrics["unit"]}

    if dev.type == "cuda":
        torch.cuda.synchronize()
    batched = one(V)
    print(f"batched: {batched['steps']} steps, {batched['steps_per_s']:.2f} steps/s, {batched['seconds_total']:.1f} s",
          flush=True)
    singles = [one(1, unit_offset=i) for i in range(V)]
    seq_time = sum(s["seconds_total"] for s in singles)
    result = {
        "benchmark": "bench_collide", "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(),
        "versions": versions(),
        "setting": {"size": size, "weights": tap.weights.name, "vertices": V, "source": PAIRS[0][0],
                    "target": PAIRS[0][1], "device": str(dev), "index": index_desc},
        "batched": batched, "one_at_a_time": singles,
        "seconds_per_vertex": {"batched": batched["seconds_total"] / V, "one_at_a_time": seq_time / V},
        "speedup_per_vertex": seq_time / batched["seconds_total"],
        "steps_vs_authors": {"batched": batched["steps"], "authors": AUTHORS_STEPS},
    }
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"bench_collide-{'gpu' if dev.type == 'cuda' else 'cpu'}-{size}.json")
    write_json(path, result)
    print(f"speed-up per vertex {result['speedup_per_vertex']:.2f}x; wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep", action="store_true", help="the levers' frontier (else: batched against one at a time)")
    ap.add_argument("--only", default=None, help="comma-separated sweep run names (default: all)")
    ap.add_argument("--append", action="store_true",
                    help="keep the runs already in the sweep JSON (a run of the same name is replaced)")
    ap.add_argument("--size", type=int, default=None, help="input side (default 224 on GPU, 128 on CPU)")
    ap.add_argument("--steps", type=int, default=None, help="step budget (default: the config's)")
    ap.add_argument("--vertices", type=int, default=5)
    ap.add_argument("--weights", default="random", help="random, imagenet or a state-dict path")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    ap.add_argument("--replot", default=None, metavar="JSON",
                    help="only redraw the frontier plot of a sweep JSON (also one cut short) beside it")
    args = ap.parse_args()
    if args.replot:
        with open(args.replot) as fh:
            d = json.load(fh)
        st, first = d["setting"], d["runs"][0]["pair"]
        frontier_plot([r for r in d["runs"] if r["pair"] == first], os.path.splitext(args.replot)[0] + ".png",
                      f"VGG-16 fc6, {st['size']} x {st['size']}, {st['vertices']} vertices, {first[0]} -> {first[1]}"
                      + (" - RANDOM WEIGHTS" if d.get("notice") else "")
                      + ("" if d.get("complete") else f" ({len(d['runs'])} runs: the sweep was cut short)"))
        return

    from patchcollide.models.build import load_tap, resolve_device

    dev = resolve_device(args.device)
    size = args.size or (224 if dev.type == "cuda" else 128)
    work = tempfile.mkdtemp(prefix="bench_collide_")
    tap = load_tap("vgg16", "fc6", args.weights, seed=0)
    index, index_desc = build_index(work, dev)
    print(f"index: {index_desc}; {tap.weights.name}, {size} x {size}, {dev}", flush=True)
    (sweep if args.sweep else batched_vs_single)(args, tap, index, index_desc, dev, size, work)


if __name__ == "__main__":
    main()
