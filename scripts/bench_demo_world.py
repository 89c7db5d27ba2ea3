#!/usr/bin/env python
"""What the README's set-up promises a new user: the time of ``patchcollide demo --world
digits`` and the disk the demos' outputs take (issue 27 item 8).

* ``demo --world digits`` in a fresh process on an already built world (``--world`` folder;
  built first with ``patchcollide world build`` when missing, timed apart), its wall seconds
  and its verdict lines;
* the bytes on disk of the world (per part) and of the photo demo's index (the demo's store
  and index built into a temporary folder the way ``run_demo`` builds them, without the
  collision), and per stored patch: store, index, and both.

Writes ``benchmarks/results/demo-world-<tag>.json`` with the machine, versions and commit::

    python scripts/bench_demo_world.py --world worlds/digits
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)


def du(path: str) -> int:
    """Bytes on disk of the files under ``path`` (their sizes, links not followed)."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total


def cli(*args: str) -> list[str]:
    return [os.path.join(os.path.dirname(sys.executable), "patchcollide"), *args]


def photo_index(folder: str) -> dict:
    """The photo demo's store and index, built as run_demo builds them (stride 4, its photos)."""
    from patchcollide.demo import STORE_PHOTOS, _ensure_index, write_sample_photos
    from patchcollide.offline.extract import ExtractConfig, extract_store
    from patchcollide.offline.knn import STORE_FILE

    write_sample_photos(os.path.join(folder, "photos"), STORE_PHOTOS)
    store = os.path.join(folder, STORE_FILE)
    t0 = time.time()
    res = extract_store([os.path.join(folder, "photos")], store, ExtractConfig(stride=4))
    _ensure_index(folder, store)
    with open(os.path.join(folder, "index.json")) as fh:
        manifest = json.load(fh)
    n = manifest["n"]
    idx = os.path.getsize(os.path.join(folder, "index.faiss"))
    st = os.path.getsize(store)
    return {"bytes": du(folder), "patches": n, "factory": manifest["factory"], "store_bytes": st,
            "index_bytes": idx, "bytes_per_patch": {"store": round(st / n), "index": round(idx / n),
                                                    "both": round((st + idx) / n)},
            "seconds": round(time.time() - t0, 1), "extracted": getattr(res, "n_patches", None)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", default="worlds/digits")
    ap.add_argument("--tag", default="cpu")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from patchcollide.core.files import git_commit, machine, versions

    out = args.out or os.path.join(REPO, "benchmarks", "results", f"demo-world-{args.tag}.json")
    result = {"benchmark": "bench_demo_world", "what": __doc__.split("\n\n")[0], "load_before": os.getloadavg()}
    if not os.path.isfile(os.path.join(args.world, "world.json")):
        t0 = time.time()
        subprocess.run(cli("world", "build", "--out", args.world), check=True)
        result["world_build_seconds"] = round(time.time() - t0, 1)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        p = subprocess.run(cli("demo", "--world", "digits", "--world-dir", args.world, "--out",
                               os.path.join(tmp, "world-demo")), capture_output=True, text=True)
        wall = time.time() - t0
        if p.returncode != 0:
            raise SystemExit(f"demo --world digits failed ({p.returncode}): {p.stderr[-2000:]}")
        result["demo_world"] = {"command": "patchcollide demo --world digits", "seconds": round(wall, 1),
                                "verdicts": re.findall(r"^verdict \(\w+\): .*$", p.stdout, re.M),
                                "outputs_bytes": du(os.path.join(tmp, "world-demo"))}
        world = {name: du(os.path.join(args.world, name)) for name in sorted(os.listdir(args.world))
                 if os.path.isdir(os.path.join(args.world, name))}
        with open(os.path.join(args.world, "index", "index.json")) as fh:
            n = json.load(fh)["n"]
        wi = {f: os.path.getsize(os.path.join(args.world, "index", f)) for f in ("index.faiss", "patches.h5")}
        result["world"] = {"bytes": du(args.world), "parts": world, "patches": n,
                           "bytes_per_patch": {"store": round(wi["patches.h5"] / n),
                                               "index": round(wi["index.faiss"] / n),
                                               "both": round(sum(wi.values()) / n)}}
        result["photo_index"] = photo_index(os.path.join(tmp, "index"))
    result.update({"load_after": os.getloadavg(), "machine": machine(), "versions": versions(),
                   "git": git_commit()})
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as fh:
        json.dump(result, fh, indent=1)
    print(json.dumps({k: result[k] for k in ("demo_world", "world", "photo_index")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
