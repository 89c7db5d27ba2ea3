#!/usr/bin/env python
"""Where a collide run's time goes before its first step (issue 19 item 6).

Runs the CLI as a user does, in a fresh process each time, ``--runs`` times per mode:

    patchcollide collide --mode pixel|patches --source astronaut --target chelsea --size S
        --steps 2 --weights W -o RUN [--index INDEX]

and reads report.json's ``timings``: ``process`` (interpreter, imports and command line before
the run's first line), then ``inputs``, ``model`` (build, weights, device), ``target``,
``retrieval`` (patch mode), ``setup`` and ``first_step`` (the optimiser's first use included),
then ``steps`` (the rest). ``to_first_step`` is their sum up to the first step's end; ``wall``
is the whole process, writing the run included. Medians over the runs.

Also, in fresh processes: the import of the CLI (``python -X importtime``), the heaviest
third-party packages under it, and which of faiss / h5py / torchvision / matplotlib it loads.

The patch store is six scikit-image photos at stride 8 (built once in --workdir). Each call
adds one entry, under ``--label``, to benchmarks/results/bench_startup-<tag>.json (an entry
with the same label is replaced), with the machine, versions and git commit:

    python scripts/bench_startup.py --label before --runs 3
    python scripts/bench_startup.py --label after --runs 3
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

PHASES = ("process", "inputs", "model", "target", "retrieval", "setup", "first_step")
PACKAGES = ("torch", "torchvision", "faiss", "h5py", "numpy", "PIL", "click", "matplotlib", "scipy", "skimage")
STORE_PHOTOS = ("coffee", "rocket", "camera", "brick", "grass", "coins")


def cli_imports() -> dict:
    """-X importtime of ``import patchcollide.cli`` in a fresh process: total seconds, each
    listed package's cumulative seconds (first import wins), and what got loaded."""
    code = ("import sys, time; t = time.perf_counter(); import patchcollide.cli; "
            "print(time.perf_counter() - t); print(','.join(m for m in sys.argv[1:] if m in sys.modules))")
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", code, *PACKAGES], capture_output=True, text=True,
                       cwd=REPO, check=True)
    total, loaded = r.stdout.split("\n")[:2]
    cumulative = {}
    for line in r.stderr.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) == 3 and parts[2] in PACKAGES and parts[2] not in cumulative:
            cumulative[parts[2]] = round(int(parts[1]) / 1e6, 3)
    return {"seconds": round(float(total), 3), "package_seconds": cumulative,
            "loaded": [m for m in loaded.split(",") if m]}


def build_store(work: str) -> str:
    from patchcollide.demo import write_sample_photos
    from patchcollide.offline.extract import ExtractConfig, extract_store
    from patchcollide.offline.knn import IndexConfig, build_index

    index = os.path.join(work, "index")
    if not os.path.isdir(index):
        photos = os.path.join(work, "photos")
        write_sample_photos(photos, STORE_PHOTOS)
        os.makedirs(index)
        extract_store([photos], os.path.join(index, "store.h5"), ExtractConfig(stride=8))
        build_index(index, os.path.join(index, "store.h5"), IndexConfig())
    return index


def one_run(work: str, mode: str, size: int, weights: str, index: str, n: int) -> dict:
    out = os.path.join(work, f"run-{mode}-{n}")
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "patchcollide", "-q", "collide", "--mode", mode, "--size", str(size), "--steps", "2",
           "--weights", weights, "--source", os.path.join(work, "query", "astronaut.png"),
           "--target", os.path.join(work, "query", "chelsea.png"), "-o", out]
    if mode == "patches":
        cmd += ["--index", index]
    env = {**os.environ, "PATCHCOLLIDE_LOG_EVERY": "3600"}
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=work, env=env)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    with open(os.path.join(out, "report.json")) as fh:
        timings = json.load(fh)["timings"]
    shutil.rmtree(out)
    return {"wall": round(wall, 3), **timings,
            "to_first_step": round(sum(timings.get(p) or 0.0 for p in PHASES), 3)}


def median_of(runs: list[dict]) -> dict:
    keys = [k for k in runs[0] if all(isinstance(r.get(k), (int, float)) for r in runs)]
    return {k: round(statistics.median(r[k] for r in runs), 3) for k in keys}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--label", required=True, help="the name of this entry (for example before / after)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--weights", default="random")
    ap.add_argument("--modes", nargs="+", default=["pixel", "patches"])
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "bench_startup"))
    ap.add_argument("--tag", default="cpu")
    a = ap.parse_args()

    from PIL import Image
    from skimage import data

    from patchcollide.core.files import machine, versions

    os.makedirs(os.path.join(a.workdir, "query"), exist_ok=True)
    for name in ("astronaut", "chelsea"):
        Image.fromarray(getattr(data, name)()).save(os.path.join(a.workdir, "query", f"{name}.png"))
    index = build_store(a.workdir) if "patches" in a.modes else ""
    imports = [cli_imports() for _ in range(a.runs)]
    entry = {"label": a.label, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "git": versions()["git"],
             "settings": {"size": a.size, "steps": 2, "vertices": 5, "weights": a.weights, "runs": a.runs,
                          "store_photos": list(STORE_PHOTOS), "store_stride": 8},
             "cli_import": {"seconds": round(statistics.median(i["seconds"] for i in imports), 3),
                            "package_seconds": {p: round(statistics.median(i["package_seconds"].get(p, 0.0)
                                                                           for i in imports), 3)
                                                for p in imports[0]["package_seconds"]},
                            "loaded": imports[0]["loaded"]},
             "modes": {}}
    for mode in a.modes:
        runs = [one_run(a.workdir, mode, a.size, a.weights, index, n) for n in range(a.runs)]
        entry["modes"][mode] = {"median": median_of(runs), "runs": runs}
        print(mode, json.dumps(entry["modes"][mode]["median"]), flush=True)
    path = os.path.join(REPO, "benchmarks", "results", f"bench_startup-{a.tag}.json")
    doc = {"benchmark": "bench_startup", "what": __doc__.strip().splitlines()[0], "entries": []}
    if os.path.exists(path):
        with open(path) as fh:
            doc = json.load(fh)
    doc["entries"] = [e for e in doc["entries"] if e["label"] != a.label] + [entry]
    doc.update(machine=machine(), versions=versions())
    with open(path, "w") as fh:
        json.dump(doc, fh, indent=1)
        fh.write("\n")
    print("cli import", json.dumps(entry["cli_import"]))
    print("wrote", path)


if __name__ == "__main__":
    main()
