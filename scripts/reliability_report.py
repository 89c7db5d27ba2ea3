#!/usr/bin/env python
"""Run the fault and bad-input suites and write docs/reliability.md with the outcome counts.

Every trial is one pytest case (tests/test_faults.py: one case per seeded kill moment;
tests/test_bad_inputs.py: one case per (command, bad input); tests/test_resume.py and the
lock tests of tests/test_batch.py and tests/test_extract.py). This script runs them, reads
pytest's JUnit XML and fills the counts into the table of docs/reliability.md.

    python scripts/reliability_report.py                     # runs the suites (~10 min, 2 cores)
    python scripts/reliability_report.py --junit junit.xml   # from a full `pytest --junitxml` run
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# (fault, how it is tested, expected outcome, selector: test-id prefixes)
ROWS = [
    ("`extract` killed (SIGKILL) at a seeded random moment, then run again",
     "real process; delay uniform over 0.8 x the clean run's work window, from the lock appearing; 5 seeds",
     "no store at the final name unless complete; restart equals the clean store (patches, provenance, "
     "image table, fingerprint); no leftovers",
     ["tests/test_faults.py::test_extract_killed_at_random_moment"]),
    ("`extract` killed after N parts, during the merge, and at a random moment (3 kills per trial)",
     "real process, 2 seeds", "as above", ["tests/test_resume.py::test_resume_after_sigkill"]),
    ("`index build` killed at a seeded random moment (odd seeds: over an existing index)",
     "real process; IVF16,Flat over 19,208 patches; 5 seeds",
     "the index there opens and equals the clean one, or is refused at open; restart gives identical bytes",
     ["tests/test_faults.py::test_index_build_killed_at_random_moment"]),
    ("`batch` killed twice at seeded points of its own progress, then run to the end",
     "real process, 3 jobs (pixel, 32 x 32, 30 steps, 20 samples, checkpoint every 10); each kill at a seeded "
     "job's start or checkpoint plus up to 0.5 s; 5 seeds",
     "no job reported done or present at its name unless complete; final vertex PNGs and state.npz "
     "byte-identical to an uninterrupted batch",
     ["tests/test_faults.py::test_batch_killed_at_random_moment"]),
    ("`collide` killed (SIGKILL) or interrupted (SIGINT, SIGTERM) mid-run, then `collide --resume`",
     "real process, 64 x 64, 24 steps, checkpoint every 4; the signal sent when the first checkpoint appears; "
     "SIGTERM through the run's own handler",
     "exit 130 / 143 with one line naming `--resume RUN`; nothing at the final name; the resumed run's vertex "
     "and argmax PNGs byte-identical to an uninterrupted run; the checkpoint removed once the run is complete",
     ["tests/test_checkpoints.py::test_a_killed_or_interrupted", "tests/test_checkpoints.py::test_sigterm",
      "tests/test_checkpoints.py::test_a_run_interrupted"]),
    ("`batch` killed (SIGKILL) mid-job, then run again", "real process; killed when the job's first checkpoint appears",
     "the job resumes from its checkpoint (logged) and ends byte-identical to an uninterrupted batch",
     ["tests/test_checkpoints.py::test_a_batch_killed"]),
    ("`batch` interrupted (SIGINT) mid-job, then run again", "real process; SIGINT when the job's first checkpoint appears",
     "exit 130 with one line; batch.json says `interrupted` at the checkpoint's step; the rerun resumes it and "
     "its seconds agree across batch.json, batch.csv and report.json",
     ["tests/test_checkpoints.py::test_a_batch_interrupted"]),
    ("`collide`'s final write fails (no space)", "ENOSPC injected where the run is written",
     "one line naming the saved checkpoint; `--resume` writes the run without optimising again, equal to a clean run",
     ["tests/test_checkpoints.py::test_a_failed_final_write"]),
    ("Full disk, for real: a small tmpfs the test mounts, for `extract`, `index build`, `collide` and `batch`",
     "tmpfs of 4 MiB (store), 8 MiB (index), 256 KiB (collide) or filled to 100 kB (batch, after one job); "
     "then remounted larger",
     "one line naming the cause and the fix, exit 2; collide refuses before optimising; the finished job "
     "untouched; nothing half-written at a final name; success once there is room",
     ["tests/test_full_disk.py"]),
    ("Full disk: file-size limit (RLIMIT_FSIZE) during `extract`'s merge",
     "limit = half the store: parts fit, the merged store does not",
     "one-line error, exit 2; finished parts kept; a run with room equals the clean store",
     ["tests/test_faults.py::test_extract_full_disk"]),
    ("Full disk during `index build`", "limit = a third of the index file, over an existing index",
     "one-line error, exit 2; the earlier index byte-identical; no temporary files; a run with room succeeds",
     ["tests/test_faults.py::test_index_build_full_disk"]),
    ("Full disk during `batch`", "limit 20 kB after one job finished",
     "one-line error, exit 2; the finished job untouched; no partial job; a run with room equals the clean batch",
     ["tests/test_faults.py::test_batch_full_disk"]),
    ("Two writers: `extract`, `index build`, `batch` on an output another process holds",
     "the lock held by the test, the command run as a real process",
     "refused with a one-line error, exit 2; nothing written",
     ["tests/test_faults.py::test_extract_second_writer", "tests/test_faults.py::test_index_build_second_writer",
      "tests/test_faults.py::test_batch_second_writer", "tests/test_extract.py::test_second_writer",
      "tests/test_extract.py::test_overwrite_waits_for_the_lock", "tests/test_batch.py::test_a_second_process"]),
    ("Two writers of one `collide` run; a `collide --resume` of a run that is already complete",
     "real processes: a second `collide` (and `--resume`, `--overwrite`) on the `--out` a running one holds, "
     "then the first SIGKILLed; a finished run resumed without and with `--overwrite`",
     "the second refused at once with one line naming `OUT.lock`, exit 2, before the model loads; after the "
     "kill the lock is free and the run completes; a complete run is never replaced without `--overwrite`",
     ["tests/test_checkpoints.py::test_a_second_writer", "tests/test_checkpoints.py::test_a_resume_never"]),
    ("Half-written or failed batch jobs; shards sharing one directory",
     "a temp dir left behind / a job dir without its check; a job failing mid-batch; shards 1/2 and 2/2",
     "half jobs are not done and rerun; failures recorded with traceback, the batch goes on; "
     "--retry-failed reruns only them; shards give the same set of done jobs",
     ["tests/test_batch.py::test_a_half_written", "tests/test_batch.py::test_a_failing_job",
      "tests/test_batch.py::test_retry_failed", "tests/test_batch.py::test_resume_runs",
      "tests/test_batch.py::test_shards_share"]),
    ("`batch --executor ray`: the worker process running a job killed (SIGKILL) mid-job",
     "a local Ray cluster of 2 CPUs; the worker holding the job's lock killed once its first checkpoint is saved",
     "Ray runs the task again on another worker; the batch ends with the job done, its vertex PNGs, state.npz "
     "and figures byte-identical to the local executor's",
     ["tests/test_ray.py::test_a_worker_killed"]),
    ("`batch --executor ray`: a job failing in its worker; `extract --executor ray` after a killed local run",
     "a truncated target PNG that passes the job file's check; a local extraction stopped after its first part",
     "the failure recorded with the worker's traceback, the other job done, --retry-failed reruns only it; "
     "the Ray extraction keeps the local part and equals a store made in one go",
     ["tests/test_ray.py::test_a_failing_job", "tests/test_ray.py::test_a_ray_extraction_goes_on"]),
    ("Bad inputs, every command (stores, indexes, weights, images, job files, run/batch dirs, outputs in the way)",
     "CliRunner and real processes; directory snapshot (size, mtime, sha256) before and after",
     "one line naming the file and what to do, exit 2, no traceback, nothing already written touched",
     ["tests/test_bad_inputs.py"]),
]

# Damaged and crafted files (issue 28): (file, how, must hold, selectors). A trial passes only
# when every case in it is a one-line error naming the file and its fix, or the clean result;
# fuzz trials record their outcome counts (the "outcomes" property).
DAMAGE_ROWS = [
    ("Patch store (HDF5): bytes flipped in a patch, provenance or image-table chunk, zeroed chunks, attributes; a "
     "seeded fuzz of flips and cuts", "tmp_path stores of the photos; fletcher32 and the attributes' sha256",
     "one line naming the store and the fix (`extract --overwrite`), from reading and from `store verify`; "
     "never a changed answer", [f"tests/test_verify_offline.py::test_{t}" for t in (
         "store_datasets", "a_damaged_patch_chunk", "damaged_tables", "zeroed_bytes", "a_flipped_attribute",
         "a_store_written_before", "fuzz_damage_is_a_clear_error_or_the_clean_answer[flat-patches.h5]")]),
    ("Index: index.faiss flipped in the middle, index.json with bad or changed values, faiss failing in a search, "
     "ids out of range; a seeded fuzz (Flat and IVF-Refine)", "tmp_path indexes; 15 crafted index.json values",
     "one line naming index.json or index.faiss and `index build`, never a changed answer: index.faiss is hashed "
     "whole at open up to 1 GiB (beyond, by `index verify`), index.json's values against its manifest_sha256", [
         f"tests/test_verify_offline.py::test_{t}" for t in (
         "a_flip_in_the_middle", "a_valid_value_changed", "an_index_built", "a_bad_value_in_index_json", "search_params", "a_faiss_failure",
         "an_out_of_range")] + [
                    "tests/test_verify_offline.py::test_fuzz_damage_is_a_clear_error_or_the_clean_answer[flat-index",
                    "tests/test_verify_offline.py::test_fuzz_damage_is_a_clear_error_or_the_clean_answer[ivf"]),
    ("checkpoint.pt: seeded byte flips and cuts, states that do not restore, a kill between the file and its "
     "record, a batch job's damaged checkpoint", "real tiny runs, pixel and patch mode, interrupted after a checkpoint",
     "`collide --resume`: one line, nothing written, or the untouched resume's vertices; a batch reruns the job "
     "from step 1 with a warning and ends equal to a clean batch", ["tests/test_damaged_checkpoints.py"]),
    ("Run folders: report.json with a damaged structure, state.npz and vertex PNGs flipped or cut; a seeded fuzz",
     "a real tiny run, copied per case; report.json's digest (files.write_report)", "`sample`: one line, exit 2; "
     "`load_run`: a PatchcollideError; `report`: a page that says what is damaged; or the same run. A byte "
     "changed where no structure check looks (a key nothing reads, a value in the history) is caught by the digest: "
     "'loads, values changed' must be 0",
     ["tests/test_damaged_runs.py"]),
    ("Job files and values: duplicate keys, nesting, lone surrogates, names such as sub/../x, huge steps, samples, "
     "tol, seeds, windows beyond memory, FIFOs and empty images", "CliRunner; crafted lines",
     "one line per bad line before any work, naming the key and the bound", ["tests/test_untrusted.py"]),
    ("Strict JSON: every JSON file a one-vertex batch writes", "a parser that refuses NaN and Infinity",
     "parses", ["tests/test_new_user.py::test_every_json_file"]),
]


def damage_table(cases: list) -> list[str]:
    """The damaged-files table: trials, failures, and the fuzz outcomes summed over the row."""
    lines = ["", "## Damaged and crafted files", "",
             "Each case ends in one line naming the file and its fix, or in the clean result: a trial that saw a "
             "traceback, a hang or a different answer with exit 0 fails. Fuzz outcomes are summed over the row's "
             "seeded fuzz trials (the other trials are one crafted case each, all clear errors when they pass).", "",
             "| File | How | Must hold | Trials | Failures | Fuzz outcomes |", "|---|---|---|---|---|---|"]
    for what, how, outcome, sels in DAMAGE_ROWS:
        hit = [c for c in cases if any(c[0].startswith(s) for s in sels)]
        sums: Counter = Counter()
        for c in hit:
            for k, v in c[4].items():
                sums[k] += v
        fuzz = "; ".join(f"{k} {v}" for k, v in sums.items()) or "-"
        lines.append(f"| {what} | {how} | {outcome} | {len(hit)} | {sum(c[1] for c in hit)} | {fuzz} |")
    return lines


def _phase(text: str) -> str:
    """A kill's phase without its counts ("extract (3/8 parts)" -> "extract"), to tally them."""
    return text.split(" (")[0].split(",")[0]


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--junit", default=None, help="read this JUnit XML instead of running the suites")
    ap.add_argument("--commit", default=None,
                    help="with --junit: the commit the suites ran on (default: this checkout's)")
    args = ap.parse_args()
    if args.junit:
        xml = args.junit
        seconds = float(ET.parse(xml).getroot().iter("testsuite").__next__().get("time", "nan"))
    else:
        xml = os.path.join(tempfile.mkdtemp(prefix="reliability_"), "junit.xml")
        files = sorted({sel.split("::")[0] for *_, sels in ROWS + DAMAGE_ROWS for sel in sels})
        t0 = time.time()
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}", *files],
                       cwd=ROOT)
        seconds = time.time() - t0
    cases = []
    for tc in ET.parse(xml).getroot().iter("testcase"):
        path = tc.get("classname", "").replace(".", "/") + ".py"  # tests.test_x -> tests/test_x.py
        failed = any(child.tag in ("failure", "error") for child in tc)
        skipped = any(child.tag == "skipped" for child in tc)
        kills = [k for prop in tc.iter("property") if prop.get("name") == "kills" for k in json.loads(prop.get("value"))]
        outcomes: dict = {}
        for prop in tc.iter("property"):
            if prop.get("name") == "outcomes":
                outcomes.update(json.loads(prop.get("value")))
        cases.append((f"{path}::{tc.get('name')}", failed, skipped, kills, outcomes))
    from patchcollide.core.files import git_commit, machine

    m = machine()
    git = git_commit(ROOT) or {}
    commit = (git.get("commit", "unknown")[:12] + (" (with uncommitted changes)" if git.get("dirty") else ""))
    if args.commit:
        commit = args.commit[:12]
    lines = [
        "# Reliability: faults and bad inputs",
        "",
        "Each row is a fault or bad input, how the tests create it, what must hold, and the outcome",
        "of the last run (trials = pytest cases; each kill moment and each bad input is its own case).",
        f"Last run: {time.strftime('%Y-%m-%d %H:%M')} on commit `{commit}`, {m['cpu']} ({m['cores']} cores), "
        f"pytest run of {seconds:.0f} s; regenerate with `python scripts/reliability_report.py`. The same tests run "
        "in CI.",
        "",
        "Kills: landed / attempted. A kill has landed when the process was still running when the SIGKILL or",
        "signal went out and died of it; every trial asserts that all its kills landed (a kill that came too",
        "late would test nothing). The `index build` trial alone tries up to three times, with half the delay",
        "window each time, when the build ended before its kill: those tries count as attempted, not landed.",
        "Phases: where the kills hit, read from the files just before each kill.",
        "",
        "| Fault or bad input | How | Must hold | Trials | Failures | Skipped | Kills | Phases hit |",
        "|---|---|---|---|---|---|---|---|",
    ]
    total = [0, 0, 0, 0, 0]
    for fault, how, outcome, sels in ROWS:
        hit = [c for c in cases if any(c[0].startswith(s) for s in sels)]
        n, f, s = len(hit), sum(c[1] for c in hit), sum(c[2] for c in hit)
        kills = [k for c in hit for k in c[3]]
        landed = sum(bool(k["landed"]) for k in kills)
        total = [total[0] + n, total[1] + f, total[2] + s, total[3] + landed, total[4] + len(kills)]
        phases = "; ".join(f"{p} ({c})" for p, c in sorted(Counter(_phase(k["phase"]) for k in kills).items()))
        lines.append(f"| {fault} | {how} | {outcome} | {n} | {f} | {s} | "
                     f"{f'{landed} / {len(kills)}' if kills else '-'} | {phases or '-'} |")
    lines.append(f"| **all** | | | **{total[0]}** | **{total[1]}** | **{total[2]}** | **{total[3]} / {total[4]}** | |")
    lines += damage_table(cases)
    with open(os.path.join(ROOT, "docs", "reliability-details.md")) as fh:
        details = fh.read()
    os.makedirs(os.path.join(ROOT, "docs"), exist_ok=True)
    with open(os.path.join(ROOT, "docs", "reliability.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n\n" + details)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
