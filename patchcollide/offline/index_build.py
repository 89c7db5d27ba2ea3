"""Store -> index: build a FAISS index over a patch store (``index build``) into an index
directory (``index/`` by default; its format, checks and checksums are in ``index_format``,
which ``knn`` opens and searches)::

    patches.h5, patches.json    the store and its manifest (store.py)
    index.faiss, index.json     the FAISS index and its manifest (index_format.py)

The factory is chosen from N (``default_factory``, the rule in ``index/README.md``): ``Flat``
(exact) up to 50k patches; above, ``PCA128,IVF{nlist},PQ32,Refine(SQ8_direct)``: an IVF-PQ on
PCA-reduced pixels finds ``k * k_factor`` candidates, which are re-ranked exactly in C++
against a lossless 8-bit copy of the raw patches (for raw pixels, SQ8_direct *is* the uint8
patch). Above 2M patches the IVF gets about 4 sqrt(N) lists behind an HNSW coarse quantizer
(``IVF{nlist}_HNSW32``). Training memory stays small at any N (the PCA is fitted on a capped
sample, the rest of the sample is kept only in PCA space), and the 3 KB-a-patch refine copy
is streamed from the store into the index file rather than held in RAM. On a GPU
(``faiss.get_num_gpus() > 0``) the k-means of the coarse quantizer runs there; everything is
saved in CPU form.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import struct
import time
from collections.abc import Callable

import faiss
import numpy as np

from ..core.errors import first_line
from ..core.files import atomic_open, atomic_path, file_sha256, versions
from ..core.settings import check_fields, setting
from .descriptors import make_descriptor
from .index_format import (FORMAT_VERSION, INDEX_FILE, K_FACTOR_MAX, MANIFEST_FILE, NPROBE_MAX, STORE_FILE,
                           IndexError_, faiss_reason, manifest_sha256, quick_checksum)
from .store import PatchStore, store_lock

log = logging.getLogger(__name__)

# The factory rule by N (index/README.md; tests/test_knn.py checks it at every boundary).
FLAT_MAX_N = 50_000  # up to here exact search is cheap enough (about 1 s per 625-query grid on 2 cores)
HNSW_ABOVE_N = 2_000_000  # above: about 4 sqrt(N) IVF lists behind an HNSW coarse quantizer
MIN_NLIST = 256
HNSW_M = 32  # links per node of the HNSW coarse quantizer (faiss' usual IVF{nlist}_HNSW32)
HNSW_EF_MIN = 64  # the quantizer's efSearch is max(this, 2 * nprobe), so it finds the nprobe nearest lists
PCA_TRAIN_MAX = 65_536  # the PCA's sample is capped here: 0.8 GB float32 at 3072 dims, enough for its covariance
# Search defaults by tier, (nprobe, k_factor), from the k-NN cost curve (scripts/bench_knn.py,
# docs/benchmarks.md): recall@16 falls as N grows within a tier, so each keeps >= 0.95 with some to
# spare at the tier's largest measured size.
SEARCH_DEFAULTS_IVF = (32, 32)  # FLAT_MAX_N < N <= HNSW_ABOVE_N
SEARCH_DEFAULTS_HNSW = (64, 32)  # N > HNSW_ABOVE_N
KMEANS_MIN_POINTS = 39  # faiss' own threshold for its "please provide at least" advice


@dataclasses.dataclass(frozen=True)
class IndexConfig:
    factory: str | None = setting(None, "faiss index_factory string.", default_text="chosen from N")  # None: default_factory(N)
    descriptor: str = setting("raw", "Patch descriptor.", cli=False)
    # None: default_search_params(N). Saved; can be changed at search time
    nprobe: int | None = setting(None, "IVF lists visited per query.", bounds=(1, NPROBE_MAX),
                                 default_text="chosen from N")
    # refine: candidates re-ranked exactly per requested neighbour; None: from N, as nprobe
    k_factor: int | None = setting(None, "Candidates re-ranked exactly per neighbour.", bounds=(1, K_FACTOR_MAX),
                                   default_text="chosen from N")
    train_size: int | None = setting(None, "Training sample.", bounds=(1, None),
                                     default_text="max(65536, 64 nlist)")  # capped at N
    # faiss' k-means takes a C int
    seed: int = setting(0, "Seed of the training sample (IVF-PQ: k-means and the quantiser).", bounds=(0, 2**31 - 1))
    batch_size: int = setting(32768, "Patches per add() call.", bounds=(1, None), cli=False)
    device: str = setting("auto", "Where the index is trained (auto: a GPU when faiss and torch see one).",
                          choices=("auto", "cpu", "cuda"))
    # Write the refine copy (3 KB per patch) from the store straight into the index file instead of
    # holding it in RAM while building; the file is byte-identical either way.
    stream_refine: bool = setting(True, "Stream the refine copy into the index file.", cli=False)

    def __post_init__(self):
        check_fields(self, IndexError_)


def _pow2(x: float) -> int:
    """The power of 2 nearest x (in log scale)."""
    return 2 ** int(round(math.log2(x)))


def default_nlist(n: int) -> int:
    """IVF lists for N patches: the power of 2 nearest sqrt(N), at least MIN_NLIST, up to
    HNSW_ABOVE_N; above, the power of 2 nearest 4 sqrt(N) (faiss' guideline for large N; the
    HNSW quantizer keeps assigning to that many lists cheap)."""
    if n <= HNSW_ABOVE_N:
        return max(MIN_NLIST, _pow2(math.sqrt(max(n, 1))))
    return _pow2(4 * math.sqrt(n))


def default_factory(n: int, lossless_uint8: bool = True) -> str:
    """The factory ``index build`` uses for N patches (the rule in index/README.md):

    * N <= FLAT_MAX_N (50,000): ``Flat``, exact search;
    * N <= HNSW_ABOVE_N (2,000,000): ``PCA128,IVF{nlist},PQ32,Refine(SQ8_direct)``, nlist the
      power of 2 nearest sqrt(N), at least 256, with a flat coarse quantizer;
    * above: ``PCA128,IVF{nlist}_HNSW32,PQ32,Refine(SQ8_direct)``, nlist the power of 2 nearest
      4 sqrt(N), behind an HNSW coarse quantizer.

    The refine copy is ``SQ8_direct`` (lossless for uint8 pixels), else ``Flat``.
    """
    if n <= FLAT_MAX_N:
        return "Flat"
    refine = "SQ8_direct" if lossless_uint8 else "Flat"
    quantizer = f"_HNSW{HNSW_M}" if n > HNSW_ABOVE_N else ""
    return f"PCA128,IVF{default_nlist(n)}{quantizer},PQ32,Refine({refine})"


def default_search_params(n: int) -> tuple[int, int]:
    """(nprobe, k_factor) that ``index build`` saves for N patches unless given (measured per tier)."""
    return SEARCH_DEFAULTS_HNSW if n > HNSW_ABOVE_N else SEARCH_DEFAULTS_IVF


def resolve_gpu(device: str) -> bool:
    """True when faiss/torch GPU work should run: cuda asked for (error if absent) or auto with a GPU."""
    n = faiss.get_num_gpus()
    if device == "cuda" and n == 0:
        raise IndexError_("--device cuda was asked for but faiss sees no GPU; use --device auto or cpu")
    return device != "cpu" and n > 0


@contextlib.contextmanager
def _kmeans_progress(ivf, progress: Callable[[int, int], None] | None):
    """While the block trains ``ivf``, call progress(iteration, iterations) from faiss' verbose
    k-means report ("Iteration i ..."), which is read from the C library's stdout: fd 1 goes to
    a pipe for the block (flushed by a reader thread) and comes back after, so nothing of it
    reaches the terminal. Without ``progress`` or an IVF index the block just runs."""
    if progress is None or ivf is None:
        yield
        return
    import ctypes
    import threading

    try:
        libc = ctypes.CDLL(None)
        saved = os.dup(1)
    except OSError:
        yield
        return
    total = int(ivf.cp.niter)
    r, w = os.pipe()
    os.dup2(w, 1)
    os.close(w)
    os.set_blocking(r, False)
    done = threading.Event()

    def read() -> None:
        tail = b""
        while True:
            libc.fflush(None)
            try:
                chunk = os.read(r, 1 << 16)
            except BlockingIOError:
                chunk = b""
            if chunk:
                found = re.findall(rb"Iteration (\d+)", tail + chunk)
                if found:
                    progress(min(int(found[-1]) + 1, total), total)
                tail = chunk[-32:]
            elif done.is_set():
                return
            else:
                time.sleep(0.05)

    reader = threading.Thread(target=read, name="faiss-kmeans-progress", daemon=True)
    ivf.cp.verbose = True
    reader.start()
    try:
        yield
    finally:
        libc.fflush(None)
        done.set()
        reader.join()
        ivf.cp.verbose = False
        os.dup2(saved, 1)
        os.close(saved)
        os.close(r)


def _sample_ids(n: int, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(size, n), replace=False))


def build_index(
    index_dir: str,
    store_path: str | None = None,
    config: IndexConfig = IndexConfig(),
    progress: Callable[[int, int], None] | None = None,
    train_progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Build ``index_dir/index.faiss`` over the store (default ``index_dir/patches.h5``).

    Written atomically (temporary names, then renamed: core.files). Returns the manifest.
    progress(done, total) counts patches added (and, when the refine copy is streamed into the
    file, its patches written after: total 2 N); train_progress(done, total) the k-means
    iterations of an IVF index's training (read from faiss' own report, which is not shown).
    """
    created = not os.path.exists(index_dir)
    os.makedirs(index_dir, exist_ok=True)
    try:
        with store_lock(os.path.join(index_dir, "index"), "index", IndexError_):
            return _build_index(index_dir, store_path, config, progress, train_progress)
    except BaseException:
        if created:  # a refused build (bad store, bad factory) leaves no new, empty index folder behind
            with contextlib.suppress(OSError):
                if os.listdir(index_dir) == ["index.lock"]:
                    os.remove(os.path.join(index_dir, "index.lock"))
                    os.rmdir(index_dir)
        raise


def _build_index(index_dir, store_path, config, progress, train_progress=None) -> dict:
    t0 = time.time()
    store_path = store_path or os.path.join(index_dir, STORE_FILE)
    desc = make_descriptor(config.descriptor)
    use_gpu = resolve_gpu(config.device)
    with PatchStore(store_path) as store:
        n = len(store)
        if n == 0:
            raise IndexError_(f"{store_path}: the store holds no patches; extract from folders with usable images")
        factory = config.factory or default_factory(n, desc.lossless_uint8)
        nprobe, k_factor = default_search_params(n)
        nprobe, k_factor = config.nprobe or nprobe, config.k_factor or k_factor
        index, ivf = _new_index(desc.dim, factory, config.seed, use_gpu)
        train_n, t_train = _train_sample(index, ivf, store, desc, factory, config, train_progress)
        # Streaming: add() fills only the base index (PQ codes, 40 bytes a patch); the refine copy
        # is written from the store into the file below. progress then counts both passes (2 N).
        stream = config.stream_refine and _streamable_refine(index)
        target, total = (index.base_index, 2 * n) if stream else (index, n)
        t_add = _add_all(target, store, desc, config.batch_size, progress, total)
        set_search_params(index, nprobe, k_factor)
        manifest = {
            "format_version": FORMAT_VERSION,
            "store": {"path": os.path.relpath(os.path.abspath(store_path), os.path.abspath(index_dir)),
                      "store_id": store.store_id, "fingerprint": store.fingerprint},
            "factory": factory, "descriptor": {"name": desc.name, "params": desc.params, "dim": desc.dim},
            "nprobe": nprobe, "k_factor": k_factor, "n": n,
            "train_size": int(train_n), "seed": config.seed, "gpu_training": bool(use_gpu and ivf is not None),
            "refine_streamed": bool(stream),
            "seconds": {"train": round(t_train, 3), "add": round(t_add, 3)},
            "bytes": None, "versions": versions(), "config": dataclasses.asdict(config),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

        def write(path: str) -> None:
            if stream:
                _write_streaming_refine(index, store, desc, path, config.batch_size,
                                        (lambda d: progress(n + d, total)) if progress else None)
            else:
                faiss.write_index(index, path)

        _write_pair(index_dir, write, manifest, t0)
    return manifest


def _new_index(dim: int, factory: str, seed: int, use_gpu: bool):
    """(index, its IVF part or None) made by ``faiss.index_factory``, the k-means seeded (and
    assigning on the GPU with ``use_gpu``); a factory faiss refuses is one IndexError_."""
    try:
        index = faiss.index_factory(dim, factory)
    except RuntimeError as e:
        raise IndexError_(f"--factory {factory!r} is not a valid faiss index_factory string "
                          f"({faiss_reason(e)}); use one like Flat, IVF1024,Flat or IVF4096,PQ16x8") from None
    ivf = extract_ivf(index)
    if ivf is not None:
        ivf.cp.seed = seed
        ivf.cp.min_points_per_centroid = 1  # faiss' advice goes to stderr raw; ours is one warning line below
        if use_gpu:
            ivf.clustering_index = _gpu_flat(ivf.d)  # k-means assignment on the GPU; None on failure
    return index, ivf


def _train_sample(index, ivf, store: PatchStore, desc, factory: str, config: IndexConfig,
                  train_progress: Callable[[int, int], None] | None) -> tuple[int, float]:
    """Train an untrained ``index`` on a seeded sample of the store (``config.train_size``, by
    default max(65536, 64 nlist), at most N). Returns (patches in the sample, seconds); (0, 0.0)
    for an index that needs no training."""
    if index.is_trained:
        return 0, 0.0
    n = len(store)
    nlist = ivf.nlist if ivf is not None else 256
    train_n = min(n, config.train_size or max(65536, 64 * nlist))
    if ivf is not None and train_n < ivf.nlist:
        raise IndexError_(f"{factory} needs at least {ivf.nlist} training patches, got {train_n}; "
                          "raise --train-size or use a factory with fewer IVF lists")
    if ivf is not None and train_n < KMEANS_MIN_POINTS * ivf.nlist:
        log.warning("training %s on %d patches: k-means wants at least %d (%d per list) to place its lists "
                    "well; raise --train-size or use fewer IVF lists", factory, train_n,
                    KMEANS_MIN_POINTS * ivf.nlist, KMEANS_MIN_POINTS)
    t = time.time()
    try:
        with _kmeans_progress(ivf, train_progress):
            _train(index, store, desc, _sample_ids(n, train_n, config.seed), config.seed, config.batch_size)
    except RuntimeError as e:
        msg = str(e).strip().splitlines()[-1][:200]
        raise IndexError_(f"training {factory} on {train_n} patches failed ({msg}); "
                          "raise --train-size or choose a smaller --factory") from None
    t_train = time.time() - t
    if ivf is not None:
        ivf.clustering_index = None
    return train_n, t_train


def _add_all(target, store: PatchStore, desc, batch_size: int, progress: Callable[[int, int], None] | None,
             total: int) -> float:
    """Add every patch of the store to ``target`` batch by batch; progress(done, total). Returns
    the seconds it took."""
    t = time.time()
    done = 0
    for _, batch in store.iter_batches(batch_size):
        target.add(desc(batch))
        done += len(batch)
        if progress:
            progress(done, total)
    return time.time() - t


def _write_pair(index_dir: str, write: Callable[[str], None], manifest: dict, t0: float) -> None:
    """Write index.faiss (by ``write(path)``) and index.json (``manifest`` completed with the
    file's size, checksums and seconds since ``t0``) under temporary names, then rename both in.

    Both files are written in full before either is renamed in (the index first). A kill
    between the two renames leaves a pair that does not belong together; PatchIndex detects
    it through the size and quick checksum recorded in the manifest."""
    ipath = os.path.join(index_dir, INDEX_FILE)
    mpath = os.path.join(index_dir, MANIFEST_FILE)
    try:
        with atomic_open(mpath) as mfh, atomic_path(ipath) as itmp:
            t = time.time()
            write(itmp)
            manifest["seconds"]["write"] = round(time.time() - t, 3)
            manifest["bytes"] = os.path.getsize(itmp)
            manifest["quick_sha256"] = quick_checksum(itmp)
            t = time.time()
            manifest["sha256"] = file_sha256(itmp)  # what `index verify` recomputes
            manifest["seconds"]["sha256"] = round(time.time() - t, 3)
            manifest["seconds"]["total"] = round(time.time() - t0, 3)
            manifest["manifest_sha256"] = manifest_sha256(manifest)  # last: covers every other value
            json.dump(manifest, mfh, indent=2)
            mfh.flush()  # a full disk fails here, before the index is renamed in
    except (OSError, RuntimeError) as e:  # full disk, file-size limit: faiss raises RuntimeError
        msg = (getattr(e, "strerror", None) or str(e).strip().splitlines()[-1])[:160]
        raise IndexError_(f"{index_dir}: writing the index failed ({msg}); free disk space and run again "
                          "(any earlier index there is untouched)") from None


def _pretransform_of(index):
    """The IndexPreTransform at the base of ``index`` (inside a Refine), or None."""
    if isinstance(index, faiss.IndexRefine):
        index = faiss.downcast_index(index.base_index)
    return index if isinstance(index, faiss.IndexPreTransform) else None


def _apply_chain(pre, x: np.ndarray) -> np.ndarray:
    for i in range(pre.chain.size()):
        x = faiss.downcast_VectorTransform(pre.chain.at(i)).apply(x)
    return x


def _train(index, store: PatchStore, desc, ids: np.ndarray, seed: int, batch_size: int) -> None:
    """Train ``index`` on the store's patches ``ids`` (sorted).

    When the index starts with plain PCA transforms (the default factories), memory stays small
    at any sample size: the PCA is fitted with numpy on at most PCA_TRAIN_MAX patches of the
    sample, then the whole sample is read in batches and kept only in PCA space (128 floats a
    patch, 268 MB for 524,288 patches) to train the rest (IVF k-means, PQ). Otherwise the sample
    is loaded whole as float32 descriptors and faiss trains the index.
    """
    pre = _pretransform_of(index)
    if pre is not None:
        sub = ids if len(ids) <= PCA_TRAIN_MAX else np.sort(
            np.random.default_rng(seed).choice(ids, PCA_TRAIN_MAX, replace=False))
        x = desc(store.get(sub))
        _train_pca_numpy(index, x)  # the PCA first, about 10x faster than faiss' own eigensolver
        refine = faiss.downcast_index(index.refine_index) if isinstance(index, faiss.IndexRefine) else None
        if refine is not None and not refine.is_trained:
            refine.train(x)
        del x
        if all(pre.chain.at(i).is_trained for i in range(pre.chain.size())):
            inner = faiss.downcast_index(pre.index)
            if not inner.is_trained:
                xt = np.concatenate([_apply_chain(pre, desc(store.get(ids[i:i + batch_size])))
                                     for i in range(0, len(ids), batch_size)])
                inner.train(xt)
                del xt
            pre.is_trained = True
            if refine is not None:
                index.is_trained = True
            return
    x = desc(store.get(ids))
    _train_pca_numpy(index, x)
    index.train(x)


def _streamable_refine(index) -> bool:
    """True for a Refine whose refine copy is a scalar-quantizer code (SQ8_direct and kin): its
    codes are the last field faiss writes, so they can be streamed into the file."""
    return (isinstance(index, faiss.IndexRefine)
            and isinstance(faiss.downcast_index(index.refine_index), faiss.IndexScalarQuantizer))


def _write_streaming_refine(index, store: PatchStore, desc, path: str, batch_size: int,
                            progress: Callable[[int], None] | None) -> None:
    """Write ``index`` (a Refine whose base holds every patch and whose refine copy holds none)
    to ``path`` with the refine codes encoded batch by batch from the store, so the N x 3 KB
    copy never sits in RAM.

    faiss writes an IndexRefine as header, base index, refine index, k_factor (float32), and an
    IndexScalarQuantizer as header, quantizer, codes (uint64 byte count, then the bytes). The
    index is written with no codes, the file's tail checked against that layout, and the codes
    put in place. The result is byte-identical to ``faiss.write_index`` of the fully added
    index (tests/test_knn.py checks it); the last patch's code is checked after writing."""
    refine = faiss.downcast_index(index.refine_index)
    n = index.base_index.ntotal
    refine.ntotal = index.ntotal = n  # the headers say n; the codes follow
    try:
        faiss.write_index(index, path)
        tail = bytes(faiss.serialize_index(refine)) + struct.pack("<f", index.k_factor)
    finally:
        refine.ntotal = 0
    empty = struct.pack("<Q", 0)
    size = os.path.getsize(path)
    with open(path, "r+b") as fh:
        fh.seek(size - len(tail))
        if fh.read(len(tail)) != tail or not tail[:-4].endswith(empty):
            raise IndexError_(f"faiss {faiss.__version__} wrote an IndexRefine in a layout this version of "
                              "patchcollide does not know; build with IndexConfig(stream_refine=False)")
        fh.seek(size - len(empty) - 4)
        fh.truncate()
        fh.write(struct.pack("<Q", n * refine.code_size))
        done = 0
        for _, batch in store.iter_batches(batch_size):
            fh.write(refine.sa_encode(desc(batch)).tobytes())
            done += len(batch)
            if progress:
                progress(done)
        fh.write(tail[-4:])
        fh.seek(-4 - refine.code_size, os.SEEK_END)
        last = fh.read(refine.code_size)
    if last != refine.sa_encode(desc(store.get([n - 1]))).tobytes():
        raise IndexError_(f"{path}: the streamed refine copy does not end with the last patch's code; build "
                          "with IndexConfig(stream_refine=False)")


def extract_ivf(index):
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _train_pca_numpy(index, x: np.ndarray) -> None:
    """Train every untrained plain PCAMatrix in the index's transform chain with numpy's
    eigh (LAPACK dsyevd), filling the same fields faiss' PCAMatrix.train would: mean,
    eigenvalues (of the summed scatter matrix, descending) and PCAMat (row i = eigenvector i).
    faiss' own solver is much slower at 3072 dims. IndexPreTransform
    then skips the trained PCA and trains the rest on the transformed vectors."""
    if isinstance(index, faiss.IndexRefine):
        index = faiss.downcast_index(index.base_index)
    if not isinstance(index, faiss.IndexPreTransform):
        return
    for i in range(index.chain.size()):
        vt = faiss.downcast_VectorTransform(index.chain.at(i))
        if not isinstance(vt, faiss.PCAMatrix) or vt.is_trained:
            if not vt.is_trained:
                return  # another untrained transform comes first: leave the chain to faiss
            x = vt.apply(x)
            continue
        if vt.eigen_power != 0 or vt.random_rotation or vt.balanced_bins != 0:
            return
        mean = x.mean(0, dtype=np.float64)
        xc = x - mean.astype(np.float32)  # float32: no float64 copy of the sample
        scatter = (xc.T @ xc).astype(np.float64)
        del xc
        w, v = np.linalg.eigh(scatter)
        order = np.argsort(w)[::-1]
        faiss.copy_array_to_vector(mean.astype(np.float32), vt.mean)
        faiss.copy_array_to_vector(w[order].astype(np.float32), vt.eigenvalues)
        faiss.copy_array_to_vector(np.ascontiguousarray(v[:, order].T, dtype=np.float32).ravel(), vt.PCAMat)
        vt.prepare_Ab()
        vt.is_trained = True
        x = vt.apply(x)


def _gpu_flat(d: int):
    try:
        return faiss.index_cpu_to_all_gpus(faiss.IndexFlatL2(d))
    except Exception as e:  # noqa: BLE001 - any failure means: train on the CPU
        log.warning("GPU k-means unavailable (%s); training on the CPU", first_line(e, 120))
        return None


def set_search_params(index, nprobe: int, k_factor: int) -> None:
    """Apply nprobe (IVF lists visited) and k_factor (refine candidates per neighbour) to a faiss
    index; an HNSW coarse quantizer gets efSearch max(HNSW_EF_MIN, 2 nprobe) so that it finds
    the nprobe nearest lists. Indexes without those parts ignore them."""
    ivf = extract_ivf(index)
    if ivf is not None:
        ivf.nprobe = nprobe
        quantizer = faiss.downcast_index(ivf.quantizer)
        if isinstance(quantizer, faiss.IndexHNSW):
            quantizer.hnsw.efSearch = max(HNSW_EF_MIN, 2 * nprobe)
    if isinstance(index, faiss.IndexRefine):
        index.k_factor = float(k_factor)
