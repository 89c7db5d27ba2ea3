#!/usr/bin/env python
"""Null-space search runs behind benchmarks/results/NULLSPACE.md (random weights: structure only).

* ViT-B/32 at 224 (patch embedding 768 x 3072, per-patch nullity 2304): an exact collider,
  mode repeat with ||P|| about ||x||, kept as a run directory; modes several and regions and a
  PGD start are kept as report.json files only (the results stay small).
* ResNet-50 and AlexNet conv1 at 224 (overlapping): the whole-image kernel analysis.

Each step is one `patchcollide nullspace` command, printed before it runs.

    OMP_NUM_THREADS=1 python scripts/reproduce_nullspace.py     # about 15 min on 2 shared cores
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def nullspace(*args: str) -> None:
    cmd = [sys.executable, "-m", "patchcollide", "nullspace", *args]
    print("$ patchcollide nullspace " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", default=os.path.join(ROOT, "benchmarks", "results"))
    ap.add_argument("--only", choices=["vit", "resnet50", "alexnet"], default=None)
    args = ap.parse_args()
    res = args.out_dir
    if args.only in (None, "vit"):
        nullspace("--model", "vit_b_32", "--beta", "75", "--out", os.path.join(res, "nullspace-vit_b_32"),
                  "--overwrite")
        with tempfile.TemporaryDirectory() as tmp:
            for name, extra in (("several", ["--mode", "several", "--vectors", "8", "--beta", "75"]),
                                ("regions", ["--mode", "regions", "--vectors", "8", "--beta", "75"]),
                                ("pgd", ["--pgd-steps", "10", "--pgd-eps", "4"])):
                run_dir = os.path.join(tmp, name)
                nullspace("--model", "vit_b_32", *extra, "--out", run_dir)
                shutil.copyfile(os.path.join(run_dir, "report.json"), os.path.join(res, f"nullspace-vit_b_32-{name}.json"))
    if args.only in (None, "resnet50"):
        nullspace("--model", "resnet50", "--dense-sizes", "16,32,48", "--iters", "100",
                  "--out", os.path.join(res, "nullspace-resnet50"), "--overwrite")
    if args.only in (None, "alexnet"):
        nullspace("--model", "alexnet", "--dense-sizes", "32,48", "--iters", "400",
                  "--out", os.path.join(res, "nullspace-alexnet"), "--overwrite")


if __name__ == "__main__":
    main()
