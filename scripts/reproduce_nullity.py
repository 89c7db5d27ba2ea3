#!/usr/bin/env python
"""Table 1 of Ozbulak et al. (2022) with random (seeded) weights: structure only.

Every row of the paper that torchvision can build (classification, segmentation, detection,
DeiT shapes) plus squeezenet1_0 for comparison; the paper's values beside ours and which of
them the structure decides. Writes benchmarks/results/nullity-<weights>.md and .json with the
machine, the versions and the time it took.

    OMP_NUM_THREADS=1 python scripts/reproduce_nullity.py              # about 5 min on 2 shared cores
    python scripts/reproduce_nullity.py --weights imagenet             # needs the torch hub cache
"""
from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def main() -> None:
    from patchcollide.exact import PAPER_MODELS, nullity_table, table_markdown
    from patchcollide.core.files import write_json, write_text

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", help="default: the paper's rows torchvision can build, and squeezenet1_0")
    ap.add_argument("--weights", default="random", choices=["random", "imagenet"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rtol", type=float, default=None)
    ap.add_argument("--out-dir", default=os.path.join(os.path.dirname(HERE), "benchmarks", "results"))
    args = ap.parse_args()
    names = args.models or [*PAPER_MODELS, "squeezenet1_0"]

    def progress(name, done, total):
        if done == total:
            print(f"{name}: {total} weight matrices", file=sys.stderr, flush=True)

    table = nullity_table(names, args.weights, args.seed, args.rtol, progress)
    stem = os.path.join(args.out_dir, f"nullity-{args.weights}")
    m, v = table["machine"], table["versions"]
    head = (f"# Nullities of weight matrices (Ozbulak et al. 2022, Table 1)\n\n"
            f"`python scripts/reproduce_nullity.py{' --weights ' + args.weights if args.weights != 'random' else ''}`"
            f" on {m['cpu']} ({m.get('cores', m.get('cpus'))} cores, torch threads {m['torch_threads']}); torch {v['torch']}, "
            f"torchvision {v['torchvision']}; {table['seconds']:.0f} s.\n\n"
            "Columns: n_theta weights counted (Conv/Linear weights and attention in-projections; no biases, norms, "
            "tokens, position embeddings or transposed convolutions), nu with nullity >= 1, mu with fewer rows than "
            "columns (out < in), the sum of nullities, the first weight's nullity. The check columns say whether our "
            "value matches the paper's where the structure decides it (mu always; nullity(W1) and the sum where the "
            "paper's value equals max(0, in - out) summed), and otherwise by how much the paper exceeds the structural "
            "value. That excess is numerical rank deficiency: of the pretrained weights (random weights cannot show "
            "it), or of square matrices, whose smallest singular value is about sigma_max / (2n) for random "
            "weights and falls below the tolerance n * eps32 * sigma_max about as often as not (last column: square "
            "weights / those with a numerical kernel). nu therefore depends on the tolerance for square weights; "
            "mu and the nullities of non-square weights do not. The paper's values are reference data copied from "
            "its Table 1, not results.\n\n")
    write_text(stem + ".md", head + table_markdown(table))
    write_json(stem + ".json", table)
    print(f"wrote {stem}.md and .json ({len(table['rows'])} models, {len(table['failed'])} failed, "
          f"{table['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
