#!/usr/bin/env python
"""The k-NN cost curve of the offline stage on real patches (scikit-image's sample photos).

For each store size (about 90k, 950k, 2.1M and 4.2M patches; how each is made is in SIZES and
in the JSON: photos, stride, flips, scales), each stage in a fresh process:

* extraction: patches per second, peak memory, bytes per patch on disk;
* exact search (brute force over the store, streamed in batches) of one held-out image's
  full grid: astronaut at 224 x 224, stride 8, 625 queries, k = 50: the ground truth;
* index build with the default factory for N (index_build.default_factory): seconds (train,
  add, write), peak memory (RSS and anonymous), bytes per patch;
* a sweep of nprobe x k_factor with the index memory-mapped and its file in the page cache:
  recall@16 and recall@50 against exact search (ties counted) and the grid's seconds;
* one grid in a fresh process with the fastest setting that reaches recall@16 >= 0.95:
  open time and grid time with the index file evicted from the page cache (cold) and read
  into it (warm), peak private memory (RssAnon) and USS;
* with --compare, at the largest size, the same sweep for the flat-quantizer factory the rule
  would have kept without its HNSW tier (a second index on disk: disk and time).

The machine may be shared: every timed step records the CPU time of this process, its
run-queue wait and the cores that other processes used meanwhile. Writes
benchmarks/results/bench_knn-curve-<tag>.json after every stage, with the machine, library
versions and the git commit. Scratch goes to --workdir and is removed size by size; --keep
keeps the largest size's store, index and ground truth there, so that --grid-only can repeat
the single-grid measurement later (on a quiet machine) and append it to the JSON.

    python scripts/bench_knn.py --sizes smoke                  # a check of this script (2 min)
    python scripts/bench_knn.py --sizes 90k 950k 4.2M --keep   # the curve (about an hour on 2 cores)
    python scripts/bench_knn.py --grid-only 4.2M               # repeat the grid on the kept index
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

PHOTOS20 = ("chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "colorwheel", "logo",
            "camera", "brick", "grass", "gravel", "coins", "moon", "page", "text", "clock", "stereo_motorcycle",
            "microaneurysms", "checkerboard")
PHOTOS19 = tuple(p for p in PHOTOS20 if p != "retina")  # retina alone would give 1.9M patches at stride 1
PHOTOS21 = PHOTOS19 + ("cat", "cell")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How a store is made: every photo, at native size, times each flip, times each scale
    (PIL Lanczos resize of both sides by the factor, rounded), cut at ``stride``."""

    photos: tuple[str, ...]
    stride: int
    flips: tuple[str, ...] = ("none",)  # "none" | "h" (left-right mirror)
    scales: tuple[float, ...] = (1.0,)


SIZES = {
    "90k": Recipe(PHOTOS20, 8),
    "950k": Recipe(PHOTOS19, 2),
    "2.1M": Recipe(PHOTOS21, 2, flips=("none", "h")),
    "4.2M": Recipe(PHOTOS21, 2, flips=("none", "h"), scales=(1.0, 0.8, 0.64)),
}
SMOKE = {"smoke": Recipe(("chelsea", "coffee", "camera"), 4, flips=("none", "h"))}  # about 70k: a check of this script
QUERY = "astronaut"  # in no store; its grid is the query set
GRID_K = 16  # what the online stage retrieves per location
K = 50
NPROBES = (8, 16, 32, 64, 128)
K_FACTORS = (4, 8, 16, 32)
RECALL_TARGET = 0.95  # recall@16 the chosen setting must reach
TARGET = {"grid_seconds": 2.0, "recall_at_16": RECALL_TARGET, "private_gib": 4.0, "min_n": 4_000_000}


# ------------------------------------------------------------------------------------ machine
def machine() -> dict:
    """files.machine() plus what the k-NN numbers depend on: faiss' threads and GPUs, RAM, niceness."""
    import faiss
    import psutil

    from patchcollide.core.files import machine as base

    return {**base(), "ram_gib": round(psutil.virtual_memory().total / 2**30, 1), "faiss_gpus": faiss.get_num_gpus(),
            "faiss_omp_threads": faiss.omp_get_max_threads(), "nice": os.nice(0)}


def software() -> dict:
    """files.versions() (libraries and the git commit of the code) plus scikit-image and psutil."""
    import psutil
    import skimage

    from patchcollide.core.files import versions

    return {**versions(), "scikit-image": skimage.__version__, "psutil": psutil.__version__}


def _cpu_busy_seconds() -> float:
    """Seconds of CPU used by everything on the machine so far (all cores, /proc/stat)."""
    with open("/proc/stat") as fh:
        f = [int(v) for v in fh.readline().split()[1:]]
    return (sum(f) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


def _sched() -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable but waiting for one) summed over this process's threads
    (/proc/self/task/*/schedstat): the second is the time other processes took from us."""
    run = wait = 0
    for t in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{t}/schedstat") as fh:
                f = fh.read().split()
            run, wait = run + int(f[0]), wait + int(f[1])
        except (OSError, IndexError, ValueError):
            pass
    return run / 1e9, wait / 1e9


class Meter:
    """Wall seconds, this process's CPU seconds, its threads' run-queue wait (time the shared
    machine's other processes held the CPU it was ready to use), and the cores others kept busy.
    With one thread, wall minus run-queue wait is what the step takes on an idle machine (CPU
    plus waiting for the disk); with several (``threads`` > 1) the waits overlap and that
    estimate is not given (None)."""

    def __init__(self, threads: int = 1):
        self.threads = threads

    def __enter__(self):
        self.t, self.c, self.b = time.time(), time.process_time(), _cpu_busy_seconds()
        self.q = _sched()[1]
        return self

    def __exit__(self, *exc):
        self.wall = time.time() - self.t
        self.cpu = time.process_time() - self.c
        self.runq = _sched()[1] - self.q
        self.other_cores = max(0.0, (_cpu_busy_seconds() - self.b - self.cpu) / max(self.wall, 1e-9))

    def as_dict(self) -> dict:
        return {"seconds": self.wall, "cpu_seconds": self.cpu, "runq_wait_seconds": self.runq,
                "seconds_minus_runq_wait": max(0.0, self.wall - self.runq) if self.threads == 1 else None,
                "threads": self.threads,
                "other_cores_busy": round(self.other_cores, 2)}


def _cpu_with_children() -> float:
    """CPU seconds of this process and its finished children (the extraction pool's workers)."""
    import resource

    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def _status(pid: int | str = "self") -> dict:
    """VmRSS, RssAnon (private heap), RssFile (mapped file pages) of a process, MiB."""
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "RssAnon:", "RssFile:")):
                key, val = line.split(":")
                out[key] = int(val.split()[0]) / 1024
    return out


def _child(q, fn_name, args):
    try:
        q.put(("ok", globals()[fn_name](*args)))
    except BaseException as e:  # noqa: BLE001
        import traceback

        q.put(("err", repr(e) + "\n" + traceback.format_exc()))


def measured(fn_name: str, *args):
    """Run a stage in a fresh process; return (result, seconds, peak RSS MiB, peak RssAnon MiB),
    memory summed over the process and its children, sampled every 50 ms."""
    import psutil

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q, fn_name, args))
    t = time.time()
    p.start()
    peak_rss = peak_anon = 0.0
    proc = psutil.Process(p.pid)
    out = None
    while True:
        try:
            rss = anon = 0.0
            for pr in [proc, *proc.children(recursive=True)]:
                s = _status(pr.pid)
                rss, anon = rss + s["VmRSS"], anon + s["RssAnon"]
            peak_rss, peak_anon = max(peak_rss, rss), max(peak_anon, anon)
        except (psutil.Error, OSError, KeyError):
            pass
        try:
            out = q.get(timeout=0.05)
            break
        except Exception:  # noqa: BLE001 - queue.Empty
            if not p.is_alive():
                break
    p.join()
    secs = time.time() - t
    if out is None or out[0] != "ok":
        raise RuntimeError(f"stage {fn_name} failed: {out}")
    return out[1], secs, peak_rss, peak_anon


# ---------------------------------------------------------------------------- page cache
def evict(path: str) -> None:
    """Drop a file's pages from the page cache (clean pages only: fsync first)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def warm(path: str) -> float:
    """Read a file once so that it sits in the page cache (if it fits); seconds taken."""
    t = time.time()
    with open(path, "rb", buffering=0) as fh:
        buf = bytearray(64 << 20)
        while fh.readinto(buf):
            pass
    return time.time() - t


def resident(path: str) -> float | None:
    """Share of a file in the page cache (util-linux fincore), or None where it is missing."""
    try:
        r = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", path], capture_output=True,
                           text=True, timeout=60)
        return int(r.stdout.split()[0]) / max(os.path.getsize(path), 1)
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


# ------------------------------------------------------------------------------------ photos
def write_photos(folder: str, recipe: Recipe) -> list[str]:
    """Each photo of the recipe x flips x scales as a PNG (names say which)."""
    from PIL import Image

    from patchcollide.core.images import sample_photo

    os.makedirs(folder, exist_ok=True)
    out = []
    for name in recipe.photos:
        base = Image.fromarray(sample_photo(name))
        for flip in recipe.flips:
            img = base.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip == "h" else base
            for s in recipe.scales:
                im = img if s == 1.0 else img.resize((round(img.width * s), round(img.height * s)), Image.LANCZOS)
                p = os.path.join(folder, f"{name}{'_flip' if flip == 'h' else ''}{'' if s == 1.0 else f'_x{s:g}'}.png")
                if not os.path.exists(p):
                    im.save(p)
                out.append(p)
    return out


def query_grids(work: str) -> dict:
    """The held-out query photo and the same photo rotated by 90 degrees (a second, different grid)."""
    from PIL import Image

    from patchcollide.demo import write_sample_photos

    a = write_sample_photos(os.path.join(work, "query"), (QUERY,))[0]
    b = os.path.join(work, "query", f"{QUERY}_rot90.png")
    if not os.path.exists(b):
        Image.open(a).transpose(Image.Transpose.ROTATE_90).save(b)
    return {"a": a, "b": b}


# ------------------------------------------------------------------------------------ stages
def stage_extract(folder: str, store: str, stride: int) -> dict:
    from patchcollide.offline.extract import ExtractConfig, extract_store

    with Meter(threads=2) as m:
        r = extract_store([folder], store, ExtractConfig(resize=None, stride=stride), workers=2)
    return {"n_patches": r.n_patches, "seconds": r.seconds, "bytes": r.manifest["bytes_on_disk"], "meter": m.as_dict(),
            "cpu_seconds_with_workers": _cpu_with_children()}


def stage_build(index_dir: str, store: str, factory: str | None) -> dict:
    from patchcollide.offline.index_build import IndexConfig, build_index

    with Meter(threads=2) as m:
        man = build_index(index_dir, store, IndexConfig(factory=factory))
    return {"factory": man["factory"], "seconds": man["seconds"], "bytes": man["bytes"], "train_size": man["train_size"],
            "nprobe_saved": man["nprobe"], "k_factor_saved": man["k_factor"], "refine_streamed": man["refine_streamed"],
            "meter": m.as_dict()}


def _grid(path: str, preprocess) -> np.ndarray:
    from patchcollide.offline.knn import query_patches

    return query_patches([path], preprocess, 8)


def stage_exact(store_path: str, query: str, out_npz: str) -> dict:
    from patchcollide.offline.descriptors import make_descriptor
    from patchcollide.core.images import Preprocess
    from patchcollide.offline.knn import exact_search
    from patchcollide.offline.store import PatchStore

    q = _grid(query, Preprocess(resize=224))  # the stores are native size; queries are 224 x 224
    timings: dict = {}
    with PatchStore(store_path) as st, Meter(threads=2) as m:
        d, i = exact_search(st, q, K, make_descriptor("raw"), device="cpu", timings=timings)
    np.savez(out_npz, d=d, i=i)
    return {"nq": int(len(q)), "k": K, "seconds_compute": timings["compute"], **m.as_dict()}


def stage_sweep(index_dir: str, query: str, truth_npz: str, nprobes, k_factors) -> dict:
    """recall@16, recall@50 and grid seconds over nprobe x k_factor, index memory-mapped, its file
    read into the page cache first (so every point sees the same cache)."""
    from patchcollide.core.images import Preprocess
    import faiss

    from patchcollide.offline.knn import INDEX_FILE, PatchIndex, recall_at_k, set_search_params

    faiss.omp_set_num_threads(1)  # one thread: wall minus run-queue wait is then the idle-machine time
    ipath = os.path.join(index_dir, INDEX_FILE)
    t_warm = warm(ipath)
    res0 = resident(ipath)
    q = _grid(query, Preprocess(resize=224))
    z = np.load(truth_npz)
    ed, ei = z["d"], z["i"]
    rows = []
    with PatchIndex(index_dir, mmap=True) as pidx:
        for nprobe in nprobes:
            for kf in k_factors:
                set_search_params(pidx.index, nprobe, kf)
                best = None
                for _ in range(2):
                    with Meter() as m:
                        d16, i16 = pidx.search_patches(q, GRID_K)
                    if best is None or m.wall - m.runq < best.wall - best.runq:
                        best = m
                with Meter() as m50:
                    d50, i50 = pidx.search_patches(q, K)
                rows.append({"nprobe": nprobe, "k_factor": kf,
                             "recall_at_16": recall_at_k(i16, d16, ei[:, :GRID_K], ed[:, :GRID_K]),
                             "recall_at_50": recall_at_k(i50, d50, ei, ed),
                             "grid_seconds_k16": max(0.0, best.wall - best.runq), "k16": best.as_dict(),
                             "grid_seconds_k50": max(0.0, m50.wall - m50.runq), "k50": m50.as_dict()})
                print(f"    nprobe {nprobe} k_factor {kf}: recall@16 {rows[-1]['recall_at_16']:.4f} "
                      f"recall@50 {rows[-1]['recall_at_50']:.4f}  k=16 grid {rows[-1]['grid_seconds_k16']:.3f} s "
                      f"(wall {best.wall:.2f} s, cpu {best.cpu:.2f} s)", flush=True)
    return {"threads": 1, "timing": "grid_seconds_* = wall minus run-queue wait, one thread, best of 2 for k=16",
            "nq": int(len(q)), "warm_read_seconds": t_warm, "resident_before": res0,
            "resident_after": resident(ipath), "rows": rows}


def stage_grid(index_dir: str, queries: dict, nprobe: int, k_factor: int) -> dict:
    """A fresh process: open (memory-mapped) and search full grids at k = 16, cold then warm.
    The caller evicted index.faiss from the page cache before starting it."""
    import psutil

    from patchcollide.core.images import Preprocess, load_rgb
    from patchcollide.offline.knn import INDEX_FILE, PatchIndex

    def grid(path: str):  # decode, resize to 224 x 224, cut the 625 patches, search, look up their sources
        return pidx.search_image(load_rgb(path, Preprocess(resize=224))[0], k=GRID_K)

    import faiss

    ipath = os.path.join(index_dir, INDEX_FILE)
    me = psutil.Process()
    faiss.omp_set_num_threads(1)
    out = {"nprobe": nprobe, "k_factor": k_factor, "k": GRID_K, "resident_at_start": resident(ipath),
           "threads": "1 unless named *_2_threads"}
    base = _status()
    with Meter() as m:
        pidx = PatchIndex(index_dir, nprobe=nprobe, k_factor=k_factor, mmap=True)
    out["open_cold"] = {**m.as_dict(), "anon_mib": _status()["RssAnon"] - base["RssAnon"]}
    with pidx:
        with Meter() as m:
            r = grid(queries["a"])
        assert r.ids.shape == (625, GRID_K)
        out["grid_cold"] = m.as_dict()
        with Meter() as m:
            grid(queries["a"])
        out["grid_same_image_again"] = m.as_dict()
        out["warm_read_seconds"] = warm(ipath)
        out["resident_after_warm_read"] = resident(ipath)
        with Meter() as m:
            grid(queries["b"])
        out["grid_warm"] = m.as_dict()
        faiss.omp_set_num_threads(2)
        with Meter(threads=2) as m:
            grid(queries["b"])
        out["grid_warm_2_threads"] = m.as_dict()
        s = _status()
        out["after_search"] = {"anon_mib": s["RssAnon"] - base["RssAnon"], "file_mib": s["RssFile"] - base["RssFile"],
                               "uss_mib": me.memory_full_info().uss / 2**20, "vmrss_mib": s["VmRSS"]}
    with Meter() as m:
        PatchIndex(index_dir, nprobe=nprobe, k_factor=k_factor, mmap=True).close()
    out["open_warm"] = m.as_dict()
    return out


# -------------------------------------------------------------------------------------- main
def choose(rows: list[dict]) -> dict | None:
    """The fastest setting (k = 16 grid) reaching recall@16 >= RECALL_TARGET."""
    ok = [r for r in rows if r["recall_at_16"] >= RECALL_TARGET]
    return min(ok, key=lambda r: r["grid_seconds_k16"]) if ok else None


def flat_quantizer_factory(n: int) -> str:
    """What the rule's flat-quantizer tier (power of 2 nearest sqrt N lists) gives at N."""
    return f"PCA128,IVF{2 ** int(round(math.log2(max(256.0, math.sqrt(n)))))},PQ32,Refine(SQ8_direct)"


def grid_note() -> str:
    return ("fresh process, one thread unless *_2_threads; seconds_minus_runq_wait is the idle-machine estimate; "
            "cold = index.faiss evicted from the page cache before opening; warm = a different grid (the query "
            "photo rotated 90 degrees) after index.faiss was read once; anon = private memory; file = pages of "
            "the mapped index (page cache, reclaimable)")


def run_size(name: str, work: str, queries: dict, compare: bool, keep: bool, save) -> dict:
    """Every stage for one size; ``run`` is filled stage by stage and ``save()`` called after
    each, so that a stopped run keeps what it measured."""
    from patchcollide.offline.knn import INDEX_FILE, default_factory

    recipe = {**SIZES, **SMOKE}[name]
    folder = os.path.join(work, f"photos_{name}")
    photos = write_photos(folder, recipe)
    d = os.path.join(work, name)
    shutil.rmtree(d, ignore_errors=True)
    store = os.path.join(d, "patches.h5")
    run: dict = {"recipe": {**dataclasses.asdict(recipe), "n_images": len(photos), "resize": None,
                            "how": "each photo at native size x flips x scales (PIL Lanczos), cut at the stride"},
                 "complete": False}
    save(run)
    ex, ex_s, ex_rss, ex_anon = measured("stage_extract", folder, store, recipe.stride)
    n = ex["n_patches"]
    run["n"] = n
    run["extract"] = {"seconds": ex["seconds"], "patches_per_s": n / ex["seconds"], "meter": ex["meter"],
                      "cpu_seconds_with_workers": ex["cpu_seconds_with_workers"],
                      "patches_per_cpu_second": n / ex["cpu_seconds_with_workers"], "peak_rss_mib": ex_rss,
                      "peak_anon_mib": ex_anon, "store_bytes": ex["bytes"], "store_bytes_per_patch": ex["bytes"] / n}
    save(run)
    print(f"[{name}] extracted {n} patches in {ex['seconds']:.1f} s", flush=True)

    truth = os.path.join(d, "truth.npz")
    ev, _, ev_rss, ev_anon = measured("stage_exact", store, queries["a"], truth)
    run["exact"] = {**ev, "peak_rss_mib": ev_rss, "peak_anon_mib": ev_anon,
                    "note": "brute force over the store streamed in 65,536-patch batches (faiss BLAS, 2 threads); "
                            "seconds include reading the store, seconds_compute is the search alone"}
    save(run)
    print(f"[{name}] exact search of the grid: {ev['seconds']:.1f} s ({ev['seconds_compute']:.1f} s compute)",
          flush=True)

    idx = os.path.join(d, "index")
    b, b_s, b_rss, b_anon = measured("stage_build", idx, store, None)
    run["build"] = {**b, "wall_seconds": b_s, "peak_rss_mib": b_rss, "peak_anon_mib": b_anon,
                    "index_bytes_per_patch": b["bytes"] / n}
    run["bytes_per_patch_total"] = (ex["bytes"] + b["bytes"]) / n
    save(run)
    print(f"[{name}] built {b['factory']} in {b_s:.1f} s, peak {b_rss:.0f} MiB", flush=True)
    assert b["factory"] == default_factory(n)

    flat = b["factory"] == "Flat"
    sw, _, _, _ = measured("stage_sweep", idx, queries["a"], truth, *(((None,), (None,)) if flat
                                                                       else (NPROBES, K_FACTORS)))
    run["sweep"] = sw
    best = sw["rows"][0] if flat else choose(sw["rows"])
    run["chosen"] = best
    setting = (best["nprobe"], best["k_factor"]) if best else (max(NPROBES), max(K_FACTORS))
    run["grid_setting_reason"] = ("fastest sweep setting with recall@16 >= 0.95" if best
                                  else "no setting reached recall@16 0.95: the largest of the sweep")
    save(run)
    evict(os.path.join(idx, INDEX_FILE))
    g, _, g_rss, g_anon = measured("stage_grid", idx, queries, setting[0] or 1, setting[1] or 1)
    run["grid"] = {**g, "peak_rss_mib": g_rss, "peak_anon_mib": g_anon, "note": grid_note()}
    save(run)
    print(f"[{name}] grid at nprobe {setting[0]} k_factor {setting[1]} (one thread, minus run-queue wait): cold "
          f"{g['grid_cold']['seconds_minus_runq_wait']:.2f} s, warm {g['grid_warm']['seconds_minus_runq_wait']:.2f} s, "
          f"open {g['open_cold']['seconds_minus_runq_wait']:.2f} s, peak private {g_anon:.0f} MiB", flush=True)

    if compare and not flat:
        alt_dir = os.path.join(d, "index_flat_quantizer")
        alt = flat_quantizer_factory(n)
        ab, ab_s, ab_rss, ab_anon = measured("stage_build", alt_dir, store, alt)
        asw, _, _, _ = measured("stage_sweep", alt_dir, queries["a"], truth, NPROBES, K_FACTORS)
        run["compare_flat_quantizer"] = {
            "build": {**ab, "wall_seconds": ab_s, "peak_rss_mib": ab_rss, "peak_anon_mib": ab_anon},
            "sweep": asw, "chosen": choose(asw["rows"]),
            "note": "the flat-quantizer tier's rule (nlist nearest sqrt N) applied at this N, for comparison"}
        shutil.rmtree(alt_dir, ignore_errors=True)
        save(run)
        print(f"[{name}] compared {alt}: built in {ab_s:.1f} s", flush=True)
    run["complete"] = True
    if keep:
        run["kept"] = d
    else:
        shutil.rmtree(d, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)
    save(run)
    return run


def target_check(runs: dict, largest: str) -> dict | None:
    big = runs[largest]
    if "grid" not in big:
        return None
    g = big["grid"]
    private = g["peak_anon_mib"] / 1024 <= TARGET["private_gib"]
    ok = bool(big["chosen"]) and big["n"] >= TARGET["min_n"] and private
    return {
        "size": largest, "n": big["n"], "n_at_least_4M": big["n"] >= TARGET["min_n"],
        "nprobe": g["nprobe"], "k_factor": g["k_factor"],
        "recall_at_16": big["chosen"]["recall_at_16"] if big["chosen"] else None,
        "recall_at_50": big["chosen"]["recall_at_50"] if big["chosen"] else None,
        "timing": "one thread (and 2 threads warm), wall minus run-queue wait",
        "grid_seconds_warm": g["grid_warm"]["seconds_minus_runq_wait"],
        "grid_seconds_warm_2_threads_wall": g["grid_warm_2_threads"]["seconds"],
        "grid_seconds_cold": g["grid_cold"]["seconds_minus_runq_wait"],
        "peak_private_gib": g["peak_anon_mib"] / 1024, "private_met": private,
        "met_warm": ok and g["grid_warm"]["seconds_minus_runq_wait"] <= TARGET["grid_seconds"],
        "met_cold": ok and g["grid_cold"]["seconds_minus_runq_wait"] <= TARGET["grid_seconds"]}


def _write(path: str, result: dict) -> None:
    from patchcollide.core.files import write_json

    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_json(path, result)


def grid_only(path: str, size: str, work: str) -> None:
    """Repeat the single-grid measurement on a kept index (--keep) and append it to the JSON."""
    from patchcollide.offline.knn import INDEX_FILE

    with open(path) as fh:
        result = json.load(fh)
    run = result["runs"][size]
    d = run.get("kept") or os.path.join(work, size)
    idx = os.path.join(d, "index")
    if not os.path.isfile(os.path.join(idx, INDEX_FILE)):
        sys.exit(f"{idx}: no kept index; run the size with --keep first")
    queries = query_grids(work)
    evict(os.path.join(idx, INDEX_FILE))
    g, _, g_rss, g_anon = measured("stage_grid", idx, queries, run["grid"]["nprobe"], run["grid"]["k_factor"])
    rerun = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(), "software": software(),
             **g, "peak_rss_mib": g_rss, "peak_anon_mib": g_anon, "note": grid_note()}
    run.setdefault("grid_reruns", []).append(rerun)
    _write(path, result)
    print(f"[{size}] grid rerun: cold {g['grid_cold']['seconds_minus_runq_wait']:.2f} s, warm "
          f"{g['grid_warm']['seconds_minus_runq_wait']:.2f} s (2 threads "
          f"{g['grid_warm_2_threads']['seconds']:.2f} s wall), peak private {g_anon:.0f} MiB; "
          f"other cores busy {g['grid_warm']['other_cores_busy']}; appended to {path}")


PROJECT_N = (37_000_000, 1_000_000_000)  # the paper's store; ImageNet-21k at about 1B patches
PROJECT_CORES = 16
PROJECT_DISK_BYTES_S = 2e9  # sequential SSD throughput assumed for the streamed write (NVMe, one drive)


def _fit_grid_cost(rows: list[dict]) -> dict:
    """Least squares on the sweep: one grid's seconds (one thread, k = 16) = a + b nprobe + c k_factor.
    b is the IVF scan (grows with the list length), c the exact re-ranking (per candidate, constant in N)."""
    x = np.array([[1.0, r["nprobe"], r["k_factor"]] for r in rows])
    y = np.array([r["grid_seconds_k16"] for r in rows])
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ coef
    return {"a": float(coef[0]), "b_per_nprobe": float(coef[1]), "c_per_k_factor": float(coef[2]),
            "rms_seconds": float(np.sqrt((resid ** 2).mean()))}


def project(result: dict) -> dict:
    """Scale the largest measured size to PROJECT_N on one PROJECT_CORES-core machine. Every number
    is a projection; the assumptions are written beside them."""
    from patchcollide.offline.index_build import default_factory, default_nlist, default_search_params
    from patchcollide.offline.store import CHUNK

    name = max((k for k, r in result["runs"].items() if r.get("complete")), key=lambda k: result["runs"][k]["n"])
    r = result["runs"][name]
    n0, b = r["n"], r["build"]
    nlist0 = default_nlist(n0)
    sample = lambda n: min(n, max(65_536, 64 * default_nlist(n)))  # noqa: E731 - the training sample of the rule
    touched = lambda k, n: 1 - (1 - k / n) ** CHUNK  # noqa: E731 - share of the store's chunks a sample of k reads
    speed, disk = PROJECT_CORES / 2, PROJECT_DISK_BYTES_S
    fit = _fit_grid_cost(r["sweep"]["rows"])
    warm0, cold0 = r["grid"]["grid_warm"]["seconds_minus_runq_wait"], r["grid"]["grid_cold"]["seconds_minus_runq_wait"]
    out = {"from": name, "n_measured": n0, "cores": PROJECT_CORES, "grid_cost_fit_one_thread": fit,
           "assumptions": [
               f"CPU-bound work (extraction, training, adding, exact search, one grid's 625 queries) scales "
               f"linearly from 2 to {PROJECT_CORES} cores ({speed:g}x); the measured seconds are taken minus "
               "run-queue wait where the stage was single-threaded, else as measured on the shared machine "
               "(pessimistic)",
               "training work scales with the rule's sample (64 nlist patches), adding and writing with N",
               f"every pass over the store is bound below by the disk at {disk / 1e9:g} GB/s sequential (NVMe): "
               "training reads the chunks its samples fall in twice (PCA, then the PCA-space sample), adding "
               "reads the store, writing reads it and writes the 3,072-byte refine copy",
               "one grid at the rule's search defaults for N = a + b nprobe (L / L_measured) + c k_factor, "
               "fitted on the measured sweep (one thread), L = N / nlist the mean list length; the re-ranking "
               "term does not grow with N while the refine copy's pages are in the page cache",
               "refine copy not in the page cache: each grid adds the measured cold penalty (cold minus warm "
               "grid at the measured size, the index file evicted), unchanged by cores or disk (pessimistic "
               "for NVMe with parallel reads)",
               "RAM while building: measured peak minus the IVF lists (40 B/patch) and the training sample "
               "(512 B a patch in PCA space) at the measured size, plus those at N",
               "private RAM while searching: measured peak minus the provenance table (12 B/patch, read whole "
               "by search_image) and the quantizer (about 768 B a list) at the measured size, plus those at N"],
           "sizes": {}}
    for n in PROJECT_N:
        nlist = default_nlist(n)
        nprobe, k_factor = default_search_params(n)
        scan = fit["b_per_nprobe"] * nprobe * (n / nlist) / (n0 / nlist0)
        warm = (fit["a"] + scan + fit["c_per_k_factor"] * k_factor) / speed
        store_b = r["extract"]["store_bytes_per_patch"] * n
        index_b = r["build"]["index_bytes_per_patch"] * n
        build_ram = (r["build"]["peak_anon_mib"] * 2**20 - 40 * n0 - 512 * sample(n0) + 40 * n + 512 * sample(n))
        search_ram = (r["grid"]["peak_anon_mib"] * 2**20 - 12 * n0 - 768 * nlist0 + 12 * n + 768 * nlist)
        train = max(b["seconds"]["train"] * sample(n) / sample(n0) / speed,
                    (touched(65_536, n) + touched(sample(n), n)) * store_b / disk)
        add = max(b["seconds"]["add"] * n / n0 / speed, store_b / disk)
        write = max(b["seconds"].get("write", 0.0) * n / n0 / speed, (store_b + 3072 * n) / disk)
        out["sizes"][str(n)] = {
            "projected": True, "factory": default_factory(n), "nlist": nlist, "mean_list_length": n / nlist,
            "disk_gb": {"store": store_b / 1e9, "index": index_b / 1e9, "total": (store_b + index_b) / 1e9},
            "ram_build_gib": build_ram / 2**30, "ram_search_private_gib": search_ram / 2**30,
            "page_cache_for_warm_search_gib": 3072 * n / 2**30,
            "extract_hours": max(n / (r["extract"]["patches_per_s"] * speed), store_b / disk) / 3600,
            "build_hours": {"train": train / 3600, "add": add / 3600, "write": write / 3600,
                            "total": (train + add + write) / 3600},
            "grid_seconds": {"refine_copy_in_page_cache": warm,
                             "refine_copy_on_disk": warm + max(0.0, cold0 - warm0),
                             "nprobe": nprobe, "k_factor": k_factor},
            "exact_grid_seconds_cpu": max(r["exact"]["seconds_compute"] * n / n0 / speed, store_b / disk)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=[*SIZES, *SMOKE])
    ap.add_argument("--workdir", default="/tmp/knnbench", help="scratch folder (stores, indexes, photos)")
    ap.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results"))
    ap.add_argument("--tag", default=None, help="result name suffix (default: cpu or the GPU name)")
    ap.add_argument("--keep", action="store_true", help="keep the largest size's store, index and ground truth")
    ap.add_argument("--compare", action="store_true",
                    help="at the largest size, also build and sweep the flat-quantizer factory (disk: a second index)")
    ap.add_argument("--resume", action="store_true",
                    help="keep the sizes that the existing JSON holds complete; measure only the others")
    ap.add_argument("--project", action="store_true",
                    help=f"only add to the JSON a projection of its largest size to {PROJECT_N} patches")
    ap.add_argument("--grid-only", metavar="SIZE", choices=[*SIZES, *SMOKE], default=None,
                    help="only repeat the single-grid measurement on SIZE's kept index; append it to the JSON")
    args = ap.parse_args()

    work = os.path.abspath(args.workdir)
    os.makedirs(work, exist_ok=True)
    info = machine()
    tag = args.tag or ("gpu-" + info["gpu"].replace(" ", "_") if info["gpu"] else "cpu")
    path = os.path.join(args.out, f"bench_knn-curve-{tag}.json")
    if args.grid_only:
        grid_only(path, args.grid_only, work)
        return
    if args.project:
        with open(path) as fh:
            result = json.load(fh)
        result["projection"] = project(result)
        _write(path, result)
        print(json.dumps(result["projection"]["sizes"], indent=1))
        return
    order = [*SMOKE, *SIZES].index
    sizes = sorted(args.sizes, key=order)
    largest = sizes[-1]
    result = {"benchmark": "bench_knn (cost curve)", "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "machine": info, "software": software(),
              "query": f"{QUERY} resized to 224 x 224, grid stride 8 (625 patches); second grid: the same photo "
                       "rotated 90 degrees", "k": [GRID_K, K], "target": TARGET,
              "sweep_grid": {"nprobe": NPROBES, "k_factor": K_FACTORS}, "sizes_planned": sizes, "complete": False,
              "runs": {}}
    if args.resume and os.path.exists(path):
        with open(path) as fh:
            earlier = json.load(fh)
        done = {k: v for k, v in earlier["runs"].items() if v.get("complete") and k in sizes}
        result["runs"].update(done)
        result["resumed"] = {k: {"note": "measured by an earlier run of this script, kept by --resume",
                                 "software_git": earlier.get("software", {}).get("git"),
                                 "started": earlier.get("started"), "machine_same": earlier.get("machine") == info}
                             for k in done}
    queries = query_grids(work)
    for size in sizes:  # the JSON is rewritten after every stage, so a stopped run keeps what it finished
        if size in result["runs"]:
            continue

        def save(run, size=size):
            result["runs"][size] = run
            result["target_check"] = target_check(result["runs"], size)
            _write(path, result)

        run_size(size, work, queries, compare=args.compare and size == largest, keep=args.keep and size == largest,
                 save=save)
    result["complete"] = True
    result["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    result["projection"] = project(result)
    _write(path, result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
