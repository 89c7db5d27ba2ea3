"""Faults: real processes killed with SIGKILL at seeded random moments and started again, writes
that fail part-way under a lowered file-size limit (RLIMIT_FSIZE), and a second writer.

For `extract`, `index build` and `batch`: after each kill nothing partial may look complete
(no store, index or job is reported finished unless it equals the clean one), every HDF5 and
index file that exists opens, and the restarted command ends with exactly the clean run's
outputs. Each trial is one parametrized case, so pytest's counts are the trial counts that
docs/reliability.md reports (scripts/reliability_report.py).
"""
from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
import pytest

from conftest import changed_after_now, write_photos

pytestmark = pytest.mark.slow

KILL_SEEDS = range(5)  # five seeded moments per command
NAMES = ("chelsea", "coffee", "rocket", "camera", "immunohistochemistry", "colorwheel", "astronaut", "brick")
EXTRACT_ARGS = ["--stride", "4", "--part-images", "1", "--workers", "1"]  # 8 parts, then the merge
INDEX_ARGS = ["--factory", "IVF16,Flat", "--train-size", "4000", "--seed", "0"]  # ~4 s of work, deterministic
TINY = {"size": 32, "steps": 30, "min_steps": 30, "vertices": 2, "samples": 20}


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "patchcollide", "-q", *map(str, args)]


def sha(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def kill_at_random_moment(cmd, started, rng, window, phase=lambda: "", timeout=300) -> dict:
    """Start cmd, wait until ``started()`` (a real progress signal: its work has begun), then
    SIGKILL it after a seeded uniform delay in [0, 0.8 window) seconds (``window``: the clean
    run's time from the same signal to its end; 0.8 so the kill lands on a loaded machine
    too). Returns the trial's record: landed (the process was still running when the kill
    went out and died of it), phase (``phase()`` just before the kill), delay."""
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t = time.time()
    while not started():
        if p.poll() is not None:
            return {"landed": False, "phase": "finished before its work was seen", "delay": 0.0}
        if time.time() - t > timeout:
            p.kill()
            raise AssertionError(f"{cmd} never started its work")
        time.sleep(0.005)
    delay = float(rng.uniform(0, 0.8 * window))
    deadline = time.time() + delay
    while time.time() < deadline:
        if p.poll() is not None:
            return {"landed": False, "phase": "finished before the kill", "delay": delay}
        time.sleep(0.005)
    where = phase()
    p.send_signal(signal.SIGKILL)
    p.wait()
    return {"landed": p.returncode == -signal.SIGKILL, "phase": where, "delay": round(delay, 3)}


def record_kills(record_property, kills: list[dict], retried: list[dict] = ()) -> None:
    """Every kill must have landed (else the trial tested nothing); the records go into the
    JUnit XML, where scripts/reliability_report.py counts them per row of docs/reliability.md.
    ``retried``: earlier tries of the trial whose kill came after the process had ended; they
    are recorded (and counted as attempted, not landed) but do not fail it."""
    record_property("kills", json.dumps([{**k, "retried": True} for k in retried] + list(kills)))
    missed = [k for k in kills if not k["landed"]]
    assert not missed, f"kills that did not land: {missed}"


def _parts_phase(out, total) -> Callable[[], str]:
    def phase() -> str:
        if os.path.exists(f"{out}.tmp"):
            return "merge"
        n = len([f for f in os.listdir(f"{out}.parts") if f.startswith("part-")]) if os.path.isdir(f"{out}.parts") else 0
        return f"extract ({n}/{total} parts)"

    return phase


def timed_run(cmd, started) -> float:
    """Run cmd to the end; seconds from ``started()`` to exit (the work window kills aim at)."""
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while not started() and p.poll() is None:
        time.sleep(0.005)
    t = time.time()
    _, err = p.communicate()
    assert p.returncode == 0, err
    return time.time() - t


def fsize_limit(nbytes: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))

    return apply


def one_line_error(r: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in (r.stdout + r.stderr).strip().splitlines() if ln.strip()]
    assert r.returncode == 2, r.stdout + r.stderr
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stdout + r.stderr
    return lines[0]


# ----------------------------------------------------------------------------------------- extract


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("fault_photos")
    write_photos(d, NAMES)
    return str(d)


@pytest.fixture(scope="module")
def clean_store(tmp_path_factory, photos):
    out = tmp_path_factory.mktemp("clean_store") / "s.h5"
    window = timed_run(cli("extract", photos, "--out", out, *EXTRACT_ARGS), lambda: os.path.exists(f"{out}.lock"))
    return {"path": str(out), "sha_patches": _store_digest(out), "window": window}


def _store_digest(path) -> str:
    """Everything a user reads from a store: patches, provenance, image table, fingerprint."""
    import h5py

    from patchcollide.offline.store import PatchStore

    h = hashlib.sha256()
    with PatchStore(str(path)) as st, h5py.File(str(path), "r") as f:
        h.update(st.patches[...].tobytes())
        h.update(st.provenance.tobytes())
        h.update(st.fingerprint.encode())
        h.update(b"\0".join(bytes(p) for p in f["images/path"][...]))  # object array: hash the strings
        for k in ("first", "count"):
            h.update(np.asarray(f[f"images/{k}"][...]).tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("seed", KILL_SEEDS)
def test_extract_killed_at_random_moment(tmp_path, photos, clean_store, seed, record_property):
    out = tmp_path / "s.h5"
    cmd = cli("extract", photos, "--out", out, *EXTRACT_ARGS)
    rng = np.random.default_rng(1000 + seed)
    kill = kill_at_random_moment(cmd, lambda: os.path.exists(f"{out}.lock"), rng, clean_store["window"],
                                 _parts_phase(out, len(NAMES)))
    record_kills(record_property, [kill])
    if os.path.exists(out):
        # a store at the final name must be the complete one
        assert _store_digest(out) == clean_store["sha_patches"]
    else:
        r = subprocess.run(cli("store", "info", out), capture_output=True, text=True)
        assert r.returncode == 2 and "Traceback" not in r.stderr  # not reported as a store
    subprocess.run(cmd, check=True, capture_output=True)
    assert _store_digest(out) == clean_store["sha_patches"]
    assert not os.path.exists(f"{out}.parts") and not os.path.exists(f"{out}.tmp")


def test_extract_full_disk_then_room(tmp_path, photos, clean_store):
    """The file-size limit lets the parts be written but not the merged store: one-line error,
    the finished parts kept, and a run with room ends equal to the clean store."""
    out = tmp_path / "s.h5"
    cmd = cli("extract", photos, "--out", out, *EXTRACT_ARGS)
    limit = os.path.getsize(clean_store["path"]) // 2
    r = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=fsize_limit(limit))
    msg = one_line_error(r)
    assert "s.h5" in msg and ("space" in msg or "large" in msg)
    assert not os.path.exists(out)
    parts = [f for f in os.listdir(f"{out}.parts") if f.startswith("part-")]
    assert len(parts) == len(NAMES)  # earlier completed work intact
    t = time.time()
    subprocess.run(cmd, check=True, capture_output=True)
    assert _store_digest(out) == clean_store["sha_patches"]
    assert time.time() - t < 120


def test_extract_second_writer_refused(tmp_path, photos):
    from patchcollide.offline.store import store_lock

    out = tmp_path / "s.h5"
    with store_lock(str(out)):
        r = subprocess.run(cli("extract", photos, "--out", out, *EXTRACT_ARGS), capture_output=True, text=True)
    assert "another process is writing this store" in one_line_error(r)
    assert not os.path.exists(out) and not os.path.exists(f"{out}.parts")


# ------------------------------------------------------------------------------------- index build


@pytest.fixture(scope="module")
def clean_index(tmp_path_factory, clean_store):
    d = tmp_path_factory.mktemp("clean_index")
    cmd = cli("index", "build", "--index", d, "--store", clean_store["path"], *INDEX_ARGS)
    window = timed_run(cmd, lambda: os.path.exists(d / "index.lock"))
    return {"dir": str(d), "sha": sha(d / "index.faiss"), "window": window}


def _index_opens_or_absent(d) -> bool:
    """True when a complete index is there (it opens and searches); False when there is none.
    Anything else (a pair of files that do not belong together) must be refused at open."""
    from patchcollide.offline.knn import IndexError_, PatchIndex

    if not os.path.exists(os.path.join(d, "index.json")):
        return False
    try:
        with PatchIndex(str(d)) as idx:
            assert idx.index.ntotal > 0
            return True
    except IndexError_:
        return False


def _index_phase(d) -> Callable[[], str]:
    def phase() -> str:
        tmp = [f for f in os.listdir(d) if ".tmp" in f] if os.path.isdir(d) else []
        return "writing the index" if tmp else "training / adding"

    return phase


@pytest.mark.parametrize("seed", KILL_SEEDS)
def test_index_build_killed_at_random_moment(tmp_path, clean_store, clean_index, seed, record_property):
    d = tmp_path / "idx"
    cmd = cli("index", "build", "--index", d, "--store", clean_store["path"], *INDEX_ARGS)
    rng = np.random.default_rng(2000 + seed)
    window, missed = clean_index["window"], []
    for _ in range(3):  # a build faster than the clean one can end before its kill: try again, sooner
        shutil.rmtree(d, ignore_errors=True)
        if seed % 2:  # odd seeds kill a rebuild over an existing index: the old one must survive or be replaced whole
            subprocess.run(cmd, check=True, capture_output=True)
            os.remove(d / "index.lock")
        kill = kill_at_random_moment(cmd, lambda: os.path.exists(d / "index.lock"), rng, window, _index_phase(d))
        if kill["landed"]:
            break
        missed.append(kill)
        window /= 2
    record_kills(record_property, [kill], retried=missed)
    if _index_opens_or_absent(d):
        assert sha(d / "index.faiss") == clean_index["sha"]
    elif os.path.exists(d / "index.json"):
        r = subprocess.run(cli("index", "eval", "--index", d, "--store", clean_store["path"]), capture_output=True,
                           text=True)
        assert r.returncode == 2 and "Traceback" not in r.stderr
    subprocess.run(cmd, check=True, capture_output=True)
    assert sha(d / "index.faiss") == clean_index["sha"] and _index_opens_or_absent(d)
    assert not [f for f in os.listdir(d) if f.endswith(".tmp")]


def test_index_build_full_disk_keeps_old_index(tmp_path, clean_store, clean_index):
    d = tmp_path / "idx"
    cmd = cli("index", "build", "--index", d, "--store", clean_store["path"], *INDEX_ARGS)
    subprocess.run(cmd, check=True, capture_output=True)
    before = {f: sha(d / f) for f in ("index.faiss", "index.json")}
    r = subprocess.run(cmd, capture_output=True, text=True,
                       preexec_fn=fsize_limit(os.path.getsize(d / "index.faiss") // 3))
    msg = one_line_error(r)
    assert "writing the index failed" in msg and "free disk space" in msg
    assert {f: sha(d / f) for f in ("index.faiss", "index.json")} == before  # the earlier index is intact
    assert not [f for f in os.listdir(d) if f.endswith(".tmp")]
    subprocess.run(cmd, check=True, capture_output=True)
    assert sha(d / "index.faiss") == clean_index["sha"]


def test_index_build_second_writer_refused(tmp_path, clean_store):
    from patchcollide.offline.knn import IndexError_
    from patchcollide.offline.store import store_lock

    d = tmp_path / "idx"
    os.makedirs(d)
    with store_lock(str(d / "index"), "index", IndexError_):
        r = subprocess.run(cli("index", "build", "--index", d, "--store", clean_store["path"]), capture_output=True,
                           text=True)
    assert "another process is writing this index" in one_line_error(r)
    assert not os.path.exists(d / "index.faiss")


# ------------------------------------------------------------------------------------------- batch


@pytest.fixture(scope="module")
def jobs(tmp_path_factory, photos):
    d = tmp_path_factory.mktemp("jobs")
    lines = [{"id": f"j{i}", "source": os.path.join(photos, f"{s}.png"), "target": os.path.join(photos, f"{t}.png"),
              "mode": "pixel", "seed": i, **TINY}
             for i, (s, t) in enumerate([("coffee", "chelsea"), ("rocket", "chelsea"), ("camera", "coffee")])]
    path = d / "jobs.jsonl"
    path.write_text("".join(json.dumps(j) + "\n" for j in lines))
    return str(path)


def _batch_cmd(jobs, out):
    return cli("batch", jobs, "--out", out, "--weights", "random", "--device", "cpu", "--checkpoint-every", "10")


def _batch_outputs(out) -> dict:
    """What a finished batch delivers: per done job the vertex PNGs and the saved state."""
    res = {}
    status = {j["id"]: j["status"] for j in json.load(open(os.path.join(out, "batch.json")))["jobs"]}
    for job, st in sorted(status.items()):
        if st != "done":
            res[job] = st
            continue
        d = os.path.join(out, job)
        res[job] = sorted((f, sha(os.path.join(d, f))) for f in os.listdir(d)
                          if f.startswith("vertex_") or f == "state.npz")
    return res


def _batch_phase(out) -> Callable[[], str]:
    def phase() -> str:
        try:
            jobs = json.load(open(os.path.join(out, "batch.json")))["jobs"]
        except (OSError, ValueError):
            return "opening"
        done = sum(j["status"] == "done" for j in jobs)
        ck = [d for d in os.listdir(os.path.join(out, ".partial"))] if os.path.isdir(os.path.join(out, ".partial")) else []
        return f"{done}/{len(jobs)} jobs done" + (f", checkpoint of {', '.join(sorted(ck))}" if ck else "")

    return phase


@pytest.fixture(scope="module")
def clean_batch(tmp_path_factory, jobs):
    out = tmp_path_factory.mktemp("clean_batch") / "out"
    subprocess.run(_batch_cmd(jobs, out), check=True, capture_output=True)  # kills are timed by progress, not by it
    got = _batch_outputs(out)
    assert all(isinstance(v, list) for v in got.values()), got
    return {"outputs": got}


def _no_partial_job_looks_done(out) -> None:
    """Every job batch.json calls done is complete and valid; no other directory at a job's name."""
    from patchcollide.runs.inputs import read_report

    if not os.path.exists(os.path.join(out, "batch.json")):
        return
    for j in json.load(open(os.path.join(out, "batch.json")))["jobs"]:
        d = os.path.join(out, j["out"])
        if j["status"] == "done":
            report = read_report(d)
            assert report["polytope"]["samples"] == TINY["samples"]
        elif os.path.isdir(d):  # a job directory at the final name is only ever a finished run
            assert read_report(d)["polytope"]["samples"] == TINY["samples"]


@pytest.mark.parametrize("seed", KILL_SEEDS)
def test_batch_killed_at_random_moment(tmp_path, jobs, clean_batch, seed, record_property):
    """Two kills, then a run to the end. Each kill point is drawn (seeded) from this process's
    own progress: a job's scratch folder made (its start) or its checkpoint written (every 10
    steps), plus a delay of up to half a second; a point in time measured on an idle machine
    would miss on a loaded one."""
    out = tmp_path / "out"
    cmd = _batch_cmd(jobs, out)
    rng = np.random.default_rng(3000 + seed)
    ids = [json.loads(line)["id"] for line in open(jobs)]
    kills, interrupted = [], None
    for _ in range(2):
        left = [j for j in ids if not (out / j).exists()]
        points = [(j, kind) for j in left for kind in ("start", "checkpoint")
                  if not (j == interrupted and kind == "checkpoint")]  # a resumed job may have no checkpoint left
        job, kind = points[int(rng.integers(len(points)))]
        path = out / ".tmp" / job if kind == "start" else out / ".partial" / job / "checkpoint.pt"
        kill = kill_at_random_moment(cmd, changed_after_now(path), rng, 0.625, _batch_phase(out))  # delay < 0.5 s
        kill["phase"] = f"{job} {kind}: {kill['phase']}"
        kills.append(kill)
        interrupted = job
        _no_partial_job_looks_done(out)
    record_kills(record_property, kills)
    subprocess.run(cmd, check=True, capture_output=True)
    assert _batch_outputs(out) == clean_batch["outputs"]
    assert not os.path.exists(out / ".tmp") or not os.listdir(out / ".tmp")


def test_batch_full_disk_then_room(tmp_path, jobs, clean_batch):
    out = tmp_path / "out"
    cmd = _batch_cmd(jobs, out)
    first = cli("batch", jobs, "--out", out, "--weights", "random", "--device", "cpu", "--shard", "1/3")
    subprocess.run(first, check=True, capture_output=True)  # job j0 finished while there was room
    before = {f: sha(out / "j0" / f) for f in os.listdir(out / "j0")}
    r = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=fsize_limit(20_000))
    msg = one_line_error(r)
    assert "too large" in msg.lower() or "space" in msg
    assert {f: sha(out / "j0" / f) for f in os.listdir(out / "j0")} == before  # earlier work intact
    _no_partial_job_looks_done(out)
    subprocess.run(cmd, check=True, capture_output=True)
    assert _batch_outputs(out) == clean_batch["outputs"]


def test_batch_second_writer_refused(tmp_path, jobs):
    from patchcollide.batch.runner import batch_lock

    out = tmp_path / "out"
    os.makedirs(out)
    with batch_lock(str(out), None):
        r = subprocess.run(_batch_cmd(jobs, out), capture_output=True, text=True)
    msg = one_line_error(r)
    assert msg == f"Error: {out}: another process is already running this batch here; wait for it to finish (or " \
                  "stop it), or give another --out or --shard", msg
    assert sorted(os.listdir(out)) == [".lock-all"]
