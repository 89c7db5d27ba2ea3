#!/usr/bin/env python
"""Li et al. 2019, Tables 3-6: VGG-16 fc6 collisions in pixel space and in patch space.

Three polytopes through the engine (``runs.run_collide`` + ``runs.run_sample``), 5 vertices
each, checked with --samples random convex combinations:

* Tables 3/4, pixel space: vertices start from another image (astronaut) and collide with
  the target (chelsea).
* Tables 5/6, patch space: row 1 composes the source (astronaut) from retrieved patches and
  collides with itself; row 2 collides the same source with another target (chelsea).

The patch store and index are scikit-image's 17 sample photos (the demo's, astronaut held
out), built into --work. The paper's setting is 224 x 224 with pretrained weights on a GPU;
without a GPU the default is 64 x 64 and, without the weights, random weights: every output
says which. Distances: mean L2 over 0..255 pixel values of size x size x 3 images (the
paper's units at 224); the dataset distance is over the 17 store photos.

    python scripts/reproduce_vgg.py                                  # CPU: 64 x 64, ~15 min on 2 cores
    python scripts/reproduce_vgg.py --size 224 --weights imagenet    # the paper's setting (GPU)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

# The paper's Tables 4 and 6 (VGG-16 fc6, 224 x 224, ImageNet), for the comparison rows.
PAPER = {
    "pixel": [{"share": 1.0, "p_target": 0.993, "p_samples": 0.995, "dataset_l2": 37538.22, "vertex_l2": 4906.56}],
    "patches": [{"share": 1.0, "p_target": 0.952, "p_samples": 0.877, "dataset_l2": 37538.22, "vertex_l2": 8597.34},
                {"share": 1.0, "p_target": 0.999, "p_samples": 0.800, "dataset_l2": 37538.22, "vertex_l2": 9587.92}],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=None, help="input side (default 224 on a GPU, 64 on CPU)")
    ap.add_argument("--weights", default="auto", help="auto (imagenet when available, else random), imagenet, "
                                                      "random or a state-dict PATH")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=os.path.join("runs", "reproduce_vgg"), help="store, index and run directories")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(HERE), "benchmarks", "results"))
    args = ap.parse_args()

    from bench_knn import machine
    from PIL import Image

    from patchcollide.cli.common import USER_ERRORS
    from patchcollide.engine.config import CollideConfig
    from patchcollide.demo import QUERY_PHOTO, STORE_PHOTOS, TARGET_PHOTO, demo_tap, write_sample_photos
    from patchcollide.offline.extract import ExtractConfig, extract_store
    from patchcollide.core.images import Preprocess, load_rgb
    from patchcollide.offline.knn import IndexConfig, PatchIndex, build_index
    from patchcollide.models.build import resolve_device
    from patchcollide.engine.polytope import pairwise_l2
    from patchcollide.core.files import versions
    from patchcollide.core.formats import RANDOM_NOTICE
    from patchcollide.runs.run import run_collide, run_sample

    t0 = time.time()
    try:
        dev = resolve_device(args.device)
        size = args.size or (224 if dev.type == "cuda" else 64)
        photos = os.path.join(args.work, "photos")
        write_sample_photos(photos, STORE_PHOTOS)
        source, target = write_sample_photos(os.path.join(args.work, "inputs"), (QUERY_PHOTO, TARGET_PHOTO))
        store = os.path.join(args.work, "index", "patches.h5")
        extract_store([photos], store, ExtractConfig(stride=4))
        if not os.path.exists(os.path.join(args.work, "index", "index.json")):
            build_index(os.path.join(args.work, "index"), store, IndexConfig())
        tap = demo_tap(args.weights, seed=args.seed)
        dataset = np.stack([load_rgb(os.path.join(photos, f"{p}.png"), Preprocess(resize=size))[0]
                            for p in STORE_PHOTOS])
        import torch

        with torch.no_grad():
            x = torch.from_numpy(dataset).permute(0, 3, 1, 2).float().to(dev) / 255.0
            dataset_top1 = tap.to(dev).logits(x).argmax(1).cpu().numpy()
        runs = [("pixel", 1, source, target), ("patches", 1, source, source), ("patches", 2, source, target)]
        reports = []
        with PatchIndex(os.path.join(args.work, "index")) as pidx:
            for mode, row, src, tgt in runs:
                cfg = CollideConfig(mode=mode, size=size, steps=args.steps, seed=args.seed, device=args.device)
                run_dir = os.path.join(args.work, f"{mode}-{row}-{size}")
                t = time.time()
                run_collide(src, tgt, run_dir, cfg, tap=tap, pindex=pidx, index_dir=os.path.join(args.work, "index"),
                            overwrite=True)
                rep = run_sample(run_dir, samples=args.samples, seed=args.seed, dataset_images=dataset, tap=tap,
                                 device=args.device)
                rep["wall_seconds"] = time.time() - t
                reports.append((mode, row, src, tgt, run_dir, rep))
                print(f"{mode} row {row}: {rep['polytope']['share_target_class']:.1%} of {args.samples}, "
                      f"{rep['wall_seconds']:.0f} s", flush=True)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)

    random = tap.weights.kind == "random"
    tag = f"reproduce_vgg-{size}-{'random' if random else 'pretrained'}"
    lines = [
        f"# VGG-16 fc6 feature collisions, pixel and patch space (Li et al. 2019, Tables 3-6), {size} x {size}",
        "",
        *([f"**{RANDOM_NOTICE}.** No pretrained weights on this machine; the rows show the engine running the "
           "paper's protocol, not the paper's numbers."] if random else []),
        f"- Weights: {tap.weights.name}; device {dev}; {args.steps} steps at most (stop at relative fc6 error "
        f"1e-2 after 50); {args.samples} Dirichlet(1) samples per polytope; seed {args.seed}.",
        f"- Patch store: scikit-image's {len(STORE_PHOTOS)} sample photos at stride 4 (source {QUERY_PHOTO} held "
        f"out); target {TARGET_PHOTO}.",
        f"- Distances: mean L2 over 0..255 pixel values of {size} x {size} x 3 images; dataset = the "
        f"{len(STORE_PHOTOS)} store photos ({pairwise_l2(dataset):.1f}). The paper's are at 224 x 224 "
        f"(x {224 / size:.2f} for the same per-pixel difference).",
        "- Control: the share of the dataset photos the net puts in the target's class. Where it is high "
        "(random weights give almost every input one class), a 100% share of samples says nothing.",
        f"- Machine: {machine()['cpu']}{', ' + machine()['gpu'] if machine()['gpu'] else ''}; "
        f"{time.time() - t0:.0f} s in all. Figure: `{tag}.png`.",
        "",
        "| Table | Row | source -> target | successful collisions | top prob. target | top prob. samples "
        "| L2 dataset images | L2 polytope vertices | worst rel. fc6 error (PNG vertices / samples) | steps "
        "| control: dataset images in the target's class |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, row, src, tgt, _, rep in reports:
        c = rep["polytope"]
        name = "4 (pixel)" if mode == "pixel" else "6 (patches)"
        lines.append(
            f"| {name} | {row} | {os.path.basename(src)[:-4]} -> {os.path.basename(tgt)[:-4]} "
            f"| {c['share_target_class']:.1%} ({c['samples']}) | {c['top_prob_target']:.3f} | {c['mean_top_prob_samples']:.3f} "
            f"| {c['dataset_mean_pairwise_l2']:.1f} | {c['vertex_mean_pairwise_l2']:.1f} "
            f"| {max(rep['vertices']['png']['rel_error']):.1e} / {c['rel_error_max']:.1e} | {rep['steps']} "
            f"| {np.mean(dataset_top1 == c['target_class']):.0%} |")
    for mode, rows in PAPER.items():
        for i, p in enumerate(rows, 1):
            lines.append(f"| paper {'4' if mode == 'pixel' else '6'} | {i} | (ImageNet, 224) | {p['share']:.0%} "
                         f"| {p['p_target']} | {p['p_samples']} | {p['dataset_l2']} | {p['vertex_l2']} | | | |")
    cmd = "python scripts/reproduce_vgg.py" + (f" --size {size}" if args.size else "") + \
        (f" --weights {args.weights}" if args.weights != "auto" else "")
    lines += ["", f"Command: `{cmd}`", ""]
    md = "\n".join(lines)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"{tag}.md"), "w") as fh:
        fh.write(md)
    sheets = [Image.open(os.path.join(r[4], "contact_sheet.png")).convert("RGB") for r in reports]
    W = max(s.width for s in sheets)
    fig = Image.new("RGB", (W, sum(s.height for s in sheets)), "white")
    y = 0
    for s in sheets:
        fig.paste(s, (0, y))
        y += s.height
    fig.save(os.path.join(args.out, f"{tag}.png"), optimize=True)
    summary = {"size": size, "weights": tap.weights.name, "random_weights": random, "samples": args.samples,
               "steps": args.steps, "seed": args.seed, "versions": versions(), "machine": machine(),
               "seconds": time.time() - t0, "dataset_top1": dataset_top1.tolist(),
               "runs": [{"mode": m, "row": r, "source": s, "target": t, "report": {k: rep[k] for k in (
                   "config", "target", "steps", "converged", "seconds", "wall_seconds", "polytope")},
                   "vertices_png": rep["vertices"]["png"]} for m, r, s, t, _, rep in reports]}
    with open(os.path.join(args.out, f"{tag}.json"), "w") as fh:
        json.dump(summary, fh, indent=2, default=float)
    print(md)


if __name__ == "__main__":
    main()
