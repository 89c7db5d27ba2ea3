"""What the demo and a digits-world pair produce, as a fingerprint that a refactor must keep.

Runs, each in a fresh process with one thread (so the floats do not depend on the core count):
  1. the photo demo, small (64 px, 10 steps, 2 vertices, 8 samples, random VGG-16 weights);
  2. a tiny trained digits world (64 px, one epoch) and its pair 3 in both modes through
     ``demo --world digits`` (10 steps, 10 samples).
and writes, per output PNG, the sha256 of its decoded RGB pixels, and per report.json every number
and string that the engine computed (not times, paths, versions or dates).

    python scripts/behaviour_fingerprint.py --out FOLDER [--json fingerprint.json]

tests/test_behaviour.py compares a fresh fingerprint with tests/data/behaviour.json, recorded before
the code was reorganised (issue 29): the same PNGs and report values, bit for bit, under the same
torch and numpy.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# report keys whose values are about the machine, the clock or the file system, not the result
VOLATILE = ("seconds", "s", "time", "timings", "timing", "elapsed", "wall", "version", "versions", "commit", "git", "date", "created",
            "host", "machine", "path", "dir", "root", "sha256", "platform", "python", "argv", "command", "cwd",
            "pid", "started", "finished", "cpu", "threads", "per_s", "rate", "eta", "bytes", "memory", "rss",
            "digest")  # digest: the sha256 of a whole report.json, dates and versions included
PLOTS = ("loss", "history", "curve", "tolerance")  # matplotlib figures: their pixels follow matplotlib's version


def _volatile(key: str) -> bool:
    k = key.lower()
    return any(v == k or k.endswith("_" + v) or k.startswith(v + "_") for v in VOLATILE)


def flatten(obj, prefix: str = "") -> dict:
    """report.json's computed leaves: {dotted.key: value}, floats rounded to 9 significant digits."""
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not _volatile(str(k)):
                out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}{i}."))
    elif isinstance(obj, float):
        out[prefix[:-1]] = float(f"{obj:.9g}")
    elif isinstance(obj, (int, str, bool)) or obj is None:
        if not (isinstance(obj, str) and (os.sep in obj or len(obj) > 200)):
            out[prefix[:-1]] = obj
    return out


def pixels_sha256(path: str) -> str:
    from PIL import Image

    with Image.open(path) as im:
        a = np.ascontiguousarray(np.asarray(im.convert("RGB")))
    return hashlib.sha256(a.tobytes() + str(a.shape).encode()).hexdigest()


def fingerprint(folder: str) -> dict:
    """Every image PNG and report.json under ``folder`` (relative paths as keys)."""
    pngs, reports = {}, {}
    for dirpath, _, files in sorted(os.walk(folder)):
        for f in sorted(files):
            p = os.path.join(dirpath, f)
            rel = os.path.relpath(p, folder)
            if f.endswith(".png") and not any(w in f for w in PLOTS):
                pngs[rel] = pixels_sha256(p)
            elif f == "report.json":
                with open(p) as fh:
                    reports[rel] = flatten(json.load(fh))
    return {"pngs": pngs, "reports": reports}


def run(args: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    r = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, cwd=ROOT)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({r.returncode}):\n{r.stderr[-3000:]}")


WORLD = ("from patchcollide.world.build import build_world; from patchcollide.world.config import WorldConfig;"
         " import sys; build_world(sys.argv[1], WorldConfig(size=64, epochs=1, judge_epochs=3, store_fraction=0.05))")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="A folder for the runs (made).")
    ap.add_argument("--json", default=None, help="Write the fingerprint here too.")
    a = ap.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    demo, world, world_demo = (os.path.join(a.out, n) for n in ("demo", "world", "world-demo"))
    run(["-m", "patchcollide", "-q", "demo", "--index", os.path.join(a.out, "index"), "--out", demo, "--size", "64",
         "--steps", "10", "--vertices", "2", "--samples", "8", "--device", "cpu", "--weights", "random"])
    run(["-c", WORLD, world])
    run(["-m", "patchcollide", "-q", "demo", "--world", "digits", "--world-dir", world, "--out", world_demo,
         "--steps", "10", "--samples", "10", "--device", "cpu", "--pair", "3"])
    import numpy
    import torch

    fp = {"demo": fingerprint(demo), "world_demo": fingerprint(world_demo),
          "versions": {"torch": torch.__version__, "numpy": numpy.__version__}}
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(fp, fh, indent=1, sort_keys=True)
    return fp


if __name__ == "__main__":
    main()
