#!/usr/bin/env python
"""How long the CLI takes before it answers, against torch's own import (issue 27, item 6).

Times, each in a fresh process, side by side and interleaved (one round runs every command
once, in turn, so a busy machine slows them all alike), ``--runs`` rounds:

    python -c "import torch"                       the reference
    patchcollide --help
    patchcollide collide --help
    patchcollide batch JOBS.jsonl -o OUT           a job file with a bad value: one-line error, exit 2

(``patchcollide`` is ``python -m patchcollide``.) Writes the medians, their ratios to the torch
import and pass/fail against the target (at most ``TARGET`` of it) to
benchmarks/results/bench_cli_startup-<tag>.json with every run's time, the machine, the
versions and the git commit:

    python scripts/bench_cli_startup.py --runs 7
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

TARGET = 0.5  # each CLI path in at most this share of `import torch`'s time
BAD_JOB = {"id": "a", "source": "s.png", "target": "t.png", "mode": "pixel", "steps": "many"}


def commands(work: str) -> dict[str, tuple[list[str], int]]:
    """name -> (argv, the exit code it must end with)."""
    cli = [sys.executable, "-m", "patchcollide"]
    return {
        "import torch": ([sys.executable, "-c", "import torch"], 0),
        "patchcollide --help": ([*cli, "--help"], 0),
        "patchcollide collide --help": ([*cli, "collide", "--help"], 0),
        "patchcollide batch (bad job file)": ([*cli, "batch", os.path.join(work, "jobs.jsonl"), "-o",
                                               os.path.join(work, "out")], 2),
    }


def time_one(argv: list[str], code: int, env: dict) -> float:
    t = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO)
    seconds = time.perf_counter() - t
    if r.returncode != code:
        raise SystemExit(f"{' '.join(argv)}: exit code {r.returncode}, expected {code}:\n{r.stderr[-2000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--tag", default="cpu")
    a = ap.parse_args()

    import numpy as np
    from PIL import Image

    from patchcollide.core.files import machine, versions

    work = tempfile.mkdtemp(prefix="bench_cli_startup-")
    for name in ("s", "t"):
        Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(os.path.join(work, f"{name}.png"))
    with open(os.path.join(work, "jobs.jsonl"), "w") as fh:
        fh.write(json.dumps(BAD_JOB) + "\n")
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmds = commands(work)
    r = subprocess.run(cmds["patchcollide batch (bad job file)"][0], capture_output=True, text=True, env=env)
    error_line = r.stderr.strip()
    for name, (argv, code) in cmds.items():  # warm the file cache once, untimed
        time_one(argv, code, env)
    runs: dict[str, list[float]] = {name: [] for name in cmds}
    for _ in range(a.runs):
        for name, (argv, code) in cmds.items():
            runs[name].append(round(time_one(argv, code, env), 4))
    torch_s = statistics.median(runs["import torch"])
    results = {}
    for name, times in runs.items():
        med = statistics.median(times)
        results[name] = {"median_s": round(med, 4), "runs_s": times, "ratio_to_torch": round(med / torch_s, 3)}
        if name != "import torch":
            results[name]["pass"] = med <= TARGET * torch_s
        print(f"{name:<36} median {med:6.3f} s  ({med / torch_s:5.2f} x import torch)", flush=True)
    doc = {"benchmark": "bench_cli_startup", "what": __doc__.strip().splitlines()[0], "target_ratio": TARGET,
           "runs": a.runs, "interleaved": True, "bad_job_line": BAD_JOB, "bad_job_error": error_line,
           "results": results, "all_pass": all(r.get("pass", True) for r in results.values()),
           "env": {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
           "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(), "versions": versions()}
    path = os.path.join(REPO, "benchmarks", "results", f"bench_cli_startup-{a.tag}.json")
    with open(path, "w") as fh:
        json.dump(doc, fh, indent=1)
        fh.write("\n")
    print("pass" if doc["all_pass"] else "FAIL", f"(target: at most {TARGET} x import torch)")
    print("wrote", path)


if __name__ == "__main__":
    main()
