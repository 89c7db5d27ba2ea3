"""FAISS index over a patch store: build, load, search, evaluate; and exact search.

Index directory (``index/`` by default)::

    patches.h5, patches.json    the store and its manifest (store.py)
    index.faiss                 the FAISS index, CPU form (faiss.write_index)
    index.json                  manifest: store id + fingerprint, factory, descriptor, nprobe,
                                k_factor, N, training sample, versions, build time

Default factory from N (``default_factory``): ``Flat`` (exact) for small stores; for large
ones ``PCA{p},IVF{nlist},PQ{m},Refine(SQ8_direct)``: an IVF-PQ on PCA-reduced pixels finds
``k * k_factor`` candidates, which are re-ranked exactly in C++ against a lossless 8-bit copy
of the raw patches (for raw pixels, SQ8_direct *is* the uint8 patch). On a GPU
(``faiss.get_num_gpus() > 0``) the k-means of the coarse quantizer runs there and exact
search uses torch on CUDA; everything is saved and searched in CPU form.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable

import faiss
import numpy as np

from .descriptors import make_descriptor
from .errors import PatchcollideError
from .files import atomic_open, atomic_path, versions
from .images import PATCH, Preprocess, cut_patches, grid_positions, load_rgb
from .store import PatchStore, store_lock

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
MANIFEST_FILE = "index.json"
STORE_FILE = "patches.h5"
FORMAT_VERSION = 1
FLAT_MAX_N = 50_000  # up to here exact search is cheap enough (about 1 s per 625-query grid on 2 cores)


class IndexError_(PatchcollideError):
    """An index that cannot be built, opened or used with a store; one-line message."""


@dataclasses.dataclass(frozen=True)
class IndexConfig:
    factory: str | None = None  # faiss index_factory string; None: default_factory(N)
    descriptor: str = "raw"
    # Search defaults from scripts/bench_knn.py at N = 948k on 2 cores: recall@50 0.976 at
    # about 100x the throughput of exact search (nprobe 16 / k_factor 8 gave only 0.935).
    nprobe: int = 32  # IVF lists visited per query (saved; can be changed at search time)
    k_factor: int = 16  # refine: candidates re-ranked exactly per requested neighbour
    train_size: int | None = None  # None: max(65536, 64 * nlist), capped at N
    seed: int = 0  # seeds the training sample and faiss' k-means
    batch_size: int = 32768  # patches per add() call
    device: str = "auto"  # auto | cpu | cuda: where k-means training runs

    def __post_init__(self):
        if self.nprobe < 1 or self.k_factor < 1:
            raise IndexError_(f"--nprobe and --k-factor must be >= 1, got {self.nprobe} and {self.k_factor}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise IndexError_(f"--device must be auto, cpu or cuda, got {self.device!r}")
        if self.train_size is not None and self.train_size < 1:
            raise IndexError_(f"--train-size must be >= 1, got {self.train_size}")
        if self.seed < 0:
            raise IndexError_(f"--seed must be >= 0, got {self.seed}")
        if self.batch_size < 1:
            raise IndexError_(f"batch_size must be >= 1, got {self.batch_size}")


def _faiss_reason(exc: Exception) -> str:
    """The human part of a faiss C++ exception ("could not parse code description Bogus ..."),
    without the C++ signature and source location."""
    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"^Error in .*? at \S+:\d+: ", "", text)
    for marker in ("failed: ", "Error: "):
        if marker in text:
            text = text.rsplit(marker, 1)[1]
    return text.strip().strip("'")


def default_factory(n: int, lossless_uint8: bool = True) -> str:
    """Flat up to FLAT_MAX_N; else PCA128 + IVF(about sqrt N lists, a power of 2) + PQ32 + exact refine."""
    if n <= FLAT_MAX_N:
        return "Flat"
    nlist = 2 ** int(round(math.log2(max(256.0, math.sqrt(n)))))
    refine = "SQ8_direct" if lossless_uint8 else "Flat"
    return f"PCA128,IVF{nlist},PQ32,Refine({refine})"


def resolve_gpu(device: str) -> bool:
    """True when faiss/torch GPU work should run: cuda asked for (error if absent) or auto with a GPU."""
    n = faiss.get_num_gpus()
    if device == "cuda" and n == 0:
        raise IndexError_("--device cuda was asked for but faiss sees no GPU; use --device auto or cpu")
    return device != "cpu" and n > 0


KMEANS_MIN_POINTS = 39  # faiss' own threshold for its "please provide at least" advice


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

    Written atomically (temporary names, then renamed: files.py). Returns the manifest.
    progress(done, total) counts patches added; train_progress(done, total) the k-means
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
        try:
            index = faiss.index_factory(desc.dim, factory)
        except RuntimeError as e:
            raise IndexError_(f"--factory {factory!r} is not a valid faiss index_factory string "
                              f"({_faiss_reason(e)}); use one like Flat, IVF1024,Flat or IVF4096,PQ16x8") from None
        ivf = _extract_ivf(index)
        if ivf is not None:
            ivf.cp.seed = config.seed
            ivf.cp.min_points_per_centroid = 1  # faiss' advice goes to stderr raw; ours is one warning line below
            if use_gpu:
                ivf.clustering_index = _gpu_flat(ivf.d)  # k-means assignment on the GPU; None on failure
        t_train = 0.0
        train_n = 0
        if not index.is_trained:
            nlist = ivf.nlist if ivf is not None else 256
            train_n = min(n, config.train_size or max(65536, 64 * nlist))
            if ivf is not None and train_n < ivf.nlist:
                raise IndexError_(f"{factory} needs at least {ivf.nlist} training patches, got {train_n}; "
                                  "raise --train-size or use a factory with fewer IVF lists")
            if ivf is not None and train_n < KMEANS_MIN_POINTS * ivf.nlist:
                log.warning("training %s on %d patches: k-means wants at least %d (%d per list) to place its lists "
                            "well; raise --train-size or use fewer IVF lists", factory, train_n,
                            KMEANS_MIN_POINTS * ivf.nlist, KMEANS_MIN_POINTS)
            xt = desc(store.get(_sample_ids(n, train_n, config.seed)))
            t = time.time()
            try:
                _train_pca_numpy(index, xt)  # the PCA first, about 10x faster than faiss' own eigensolver
                with _kmeans_progress(ivf, train_progress):
                    index.train(xt)
            except RuntimeError as e:
                msg = str(e).strip().splitlines()[-1][:200]
                raise IndexError_(f"training {factory} on {train_n} patches failed ({msg}); "
                                  "raise --train-size or choose a smaller --factory") from None
            t_train = time.time() - t
            del xt
            if ivf is not None:
                ivf.clustering_index = None
        t = time.time()
        done = 0
        for _, batch in store.iter_batches(config.batch_size):
            index.add(desc(batch))
            done += len(batch)
            if progress:
                progress(done, n)
        t_add = time.time() - t
        _set_search_params(index, config.nprobe, config.k_factor)
        manifest = {
            "format_version": FORMAT_VERSION,
            "store": {"path": os.path.relpath(os.path.abspath(store_path), os.path.abspath(index_dir)),
                      "store_id": store.store_id, "fingerprint": store.fingerprint},
            "factory": factory, "descriptor": {"name": desc.name, "params": desc.params, "dim": desc.dim},
            "nprobe": config.nprobe, "k_factor": config.k_factor, "n": int(index.ntotal),
            "train_size": int(train_n), "seed": config.seed, "gpu_training": bool(use_gpu and ivf is not None),
            "seconds": {"train": round(t_train, 3), "add": round(t_add, 3), "total": round(time.time() - t0, 3)},
            "bytes": None, "versions": versions(), "config": dataclasses.asdict(config),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
    ipath = os.path.join(index_dir, INDEX_FILE)
    mpath = os.path.join(index_dir, MANIFEST_FILE)
    # Both files are written in full before either is renamed in (the index first). A kill
    # between the two renames leaves a pair that does not belong together; PatchIndex detects
    # it through the size and quick checksum recorded in the manifest.
    try:
        with atomic_open(mpath) as mfh, atomic_path(ipath) as itmp:
            faiss.write_index(index, itmp)
            manifest["bytes"] = os.path.getsize(itmp)
            manifest["quick_sha256"] = quick_checksum(itmp)
            json.dump(manifest, mfh, indent=2)
            mfh.flush()  # a full disk fails here, before the index is renamed in
    except (OSError, RuntimeError) as e:  # full disk, file-size limit: faiss raises RuntimeError
        msg = (getattr(e, "strerror", None) or str(e).strip().splitlines()[-1])[:160]
        raise IndexError_(f"{index_dir}: writing the index failed ({msg}); free disk space and run again "
                          "(any earlier index there is untouched)") from None
    return manifest


def quick_checksum(path: str, span: int = 1 << 20) -> str:
    """SHA-256 of a file's size, first and last MiB: detects an index.faiss that is not the one
    its index.json describes (an interrupted rebuild) without reading gigabytes on open."""
    h = hashlib.sha256()
    size = os.path.getsize(path)
    h.update(str(size).encode())
    with open(path, "rb") as fh:
        h.update(fh.read(span))
        if size > span:
            fh.seek(max(span, size - span))
            h.update(fh.read(span))
    return h.hexdigest()


def _extract_ivf(index):
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _train_pca_numpy(index, x: np.ndarray) -> None:
    """Train every untrained plain PCAMatrix in the index's transform chain with numpy's
    eigh (LAPACK dsyevd), filling the same fields faiss' PCAMatrix.train would: mean,
    eigenvalues (of the summed scatter matrix, descending) and PCAMat (row i = eigenvector i).
    faiss' own solver takes about 32 s for 3072 dims on 2 cores; this about 3 s. IndexPreTransform
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
        log.warning("GPU k-means unavailable (%s); training on the CPU", str(e).splitlines()[0][:120])
        return None


def _set_search_params(index, nprobe: int, k_factor: int) -> None:
    ivf = _extract_ivf(index)
    if ivf is not None:
        ivf.nprobe = nprobe
    if isinstance(index, faiss.IndexRefine):
        index.k_factor = float(k_factor)


@dataclasses.dataclass
class SearchResult:
    """k nearest stored patches for each of L query locations.

    ids (L, k) int64 patch ids; distances (L, k) float32 L2 in 0..255 pixel units (for
    the raw descriptor); query_yx (L, 2) top-left corners in the query image; sources
    (L, k, 3) int32 (image index, y, x) of each neighbour in the store.
    """

    ids: np.ndarray
    distances: np.ndarray
    query_yx: np.ndarray
    sources: np.ndarray
    image: np.ndarray | None = None  # the preprocessed query image (H, W, 3) uint8


def _read_index(path: str, mmap: bool):
    """Read an index; with mmap the codes (the 3 KB-per-patch refine copy included) are paged
    in from the file on demand instead of loaded whole, so opening a large index costs little
    memory. Falls back to a plain read where the file cannot be mapped."""
    if mmap:
        try:
            # MMAP_IFC maps the flat-code storage (the SQ8 refine copy, flat indexes) and the IVF
            # lists; plain IO_FLAG_MMAP leaves the refine copy in memory (measured: no saving).
            return faiss.read_index(path, faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
        except RuntimeError as e:
            log.debug("mmap read of %s failed (%s); reading it whole", path, e)
    return faiss.read_index(path)


class PatchIndex:
    """An index opened together with the store it was built for (checked by id and fingerprint).

    mmap=True (default) maps the index file read-only instead of loading it. ``store_option``
    is the caller's option for another store path (``--store``), or None where there is none
    (collide, batch): the error messages name only a fix the caller offers.
    """

    def __init__(self, index_dir: str, store_path: str | None = None, nprobe: int | None = None,
                 k_factor: int | None = None, mmap: bool = True, store_option: str | None = None):
        self.dir = os.fspath(index_dir)
        mpath, ipath = os.path.join(self.dir, MANIFEST_FILE), os.path.join(self.dir, INDEX_FILE)
        if not os.path.isfile(mpath) or not os.path.isfile(ipath):
            raise IndexError_(f"{self.dir}: no built index here (need {INDEX_FILE} and {MANIFEST_FILE}); "
                              "run `patchcollide index build` first")
        for name, v in (("--nprobe", nprobe), ("--k-factor", k_factor)):
            if v is not None and v < 1:
                raise IndexError_(f"{name} must be >= 1, got {v}")
        try:
            with open(mpath) as fh:
                self.manifest = json.load(fh)
            m = self.manifest
            for key in ("store_id", "fingerprint", "path"):
                if not isinstance(m["store"][key], str):
                    raise TypeError(key)
            m["factory"], m["quick_sha256"], m["descriptor"]["name"], m["descriptor"]["params"], m["nprobe"], \
                m["k_factor"]  # raise KeyError or TypeError when missing
        except (OSError, ValueError, KeyError, TypeError):
            raise IndexError_(f"{mpath}: not a patchcollide index manifest; rebuild with `patchcollide index build`") from None
        if quick_checksum(ipath) != self.manifest["quick_sha256"]:
            raise IndexError_(f"{ipath} is not the index that {MANIFEST_FILE} describes (an interrupted rebuild, or "
                              "a file copied over it); rebuild with `patchcollide index build`")
        sp = store_path or os.path.normpath(os.path.join(self.dir, self.manifest["store"]["path"]))
        if store_path is None and not os.path.exists(sp):
            fix = (f"pass its store with {store_option} PATH" if store_option else
                   "move the index folder back beside its store")
            raise IndexError_(f"{self.dir}: the store it was built on is not at {sp} (index.json records "
                              f"{self.manifest['store']['path']!r} relative to the index folder); {fix}, or rebuild "
                              "with `patchcollide index build`")
        self.store = PatchStore(sp)
        want = self.manifest["store"]
        if self.store.store_id != want["store_id"] or self.store.fingerprint != want["fingerprint"]:
            self.store.close()
            raise IndexError_(
                f"{ipath} was built for store {want['store_id'][:12]} (fingerprint {want['fingerprint'][:12]}), "
                f"but {sp} is store {self.store.store_id[:12]} (fingerprint {self.store.fingerprint[:12]}); "
                "rebuild the index with `patchcollide index build`"
                + (f" or pass the matching {store_option}" if store_option else "")
            )
        try:
            self.index = _read_index(ipath, mmap)
        except RuntimeError:
            self.store.close()
            raise IndexError_(f"{ipath}: not a readable faiss index; rebuild with `patchcollide index build`") from None
        if self.index.ntotal != len(self.store):
            self.store.close()
            raise IndexError_(f"{ipath} holds {self.index.ntotal} vectors but the store has {len(self.store)}; "
                              "rebuild with `patchcollide index build`")
        self.descriptor = make_descriptor(self.manifest["descriptor"]["name"], self.manifest["descriptor"]["params"])
        _set_search_params(self.index, self.manifest["nprobe"] if nprobe is None else nprobe,
                           self.manifest["k_factor"] if k_factor is None else k_factor)
        self.preprocess = Preprocess(**self.store.config["preprocess"])

    def __enter__(self) -> "PatchIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.store.close()

    def search_patches(self, patches: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(n, 32, 32, 3) uint8 -> (distances (n, k) float32 L2, ids (n, k) int64)."""
        if not 1 <= k <= len(self.store):
            raise IndexError_(f"k must be between 1 and the store size {len(self.store)}, got {k}")
        d2, ids = self.index.search(self.descriptor(patches), k)
        if (ids < 0).any():
            raise IndexError_(f"the index found fewer than k={k} neighbours for {int((ids < 0).any(1).sum())} "
                              "queries; raise --nprobe or lower -k")
        return np.sqrt(np.maximum(d2, 0)), ids

    def search_image(self, image: str | np.ndarray, k: int = 16, stride: int = 8) -> SearchResult:
        """k nearest patches for every location of a grid on ``image`` (a path, preprocessed as
        the store's images, or an (H, W, 3) uint8 array used as is). The grid steps ``stride``
        pixels and covers the image: 25 x 25 = 625 locations at stride 8 on 224 x 224."""
        _check_stride(stride)
        img = load_rgb(image, self.preprocess)[0] if isinstance(image, (str, os.PathLike)) else np.asarray(image)
        yx = grid_positions(img.shape[:2], stride, PATCH, cover=True)
        if len(yx) == 0:
            raise IndexError_(f"query image {img.shape[1]}x{img.shape[0]} is smaller than a {PATCH}-pixel patch")
        dist, ids = self.search_patches(cut_patches(img, yx), k)
        return SearchResult(ids=ids, distances=dist, query_yx=yx, sources=self.store.provenance[ids], image=img)


def exact_search(store: PatchStore, queries: np.ndarray, k: int, descriptor=None, device: str = "auto",
                 batch_size: int = 65536, timings: dict | None = None,
                 progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force k-NN of (nq, 32, 32, 3) uint8 query patches over the whole store.

    Streams the store in batches (memory independent of N): faiss' BLAS brute force on the
    CPU, torch matmul + topk on CUDA when present. Returns (distances (nq, k) float32 L2,
    ids (nq, k) int64), ascending. The ground truth for ``evaluate`` and a search path for
    stores without an index. ``timings["compute"]`` accumulates the seconds spent in the
    search itself (excluding reading and converting the store), the fair baseline to
    compare an index with. progress(done, total) counts the store's patches searched.
    """
    if k < 1:
        raise IndexError_(f"k must be >= 1, got {k}")
    desc = descriptor or make_descriptor("raw")
    k = min(k, len(store))
    gpu = False
    if device != "cpu":
        import torch

        gpu = torch.cuda.is_available()
        if device == "cuda" and not gpu:
            raise IndexError_("--device cuda was asked for but torch sees no GPU; use --device auto or cpu")
    qv = desc(queries)
    best_d = np.full((len(qv), k), np.inf, dtype=np.float32)
    best_i = np.full((len(qv), k), -1, dtype=np.int64)
    compute = 0.0
    for start, batch in store.iter_batches(batch_size):
        xv = desc(batch)
        t = time.time()
        kk = min(k, len(xv))
        if gpu:
            d, i = _torch_knn(qv, xv, kk)
        else:
            d, i = faiss.knn(qv, xv, kk)
        cd = np.concatenate([best_d, d], 1)
        ci = np.concatenate([best_i, i + start], 1)
        sel = np.argsort(cd, axis=1, kind="stable")[:, :k]
        best_d, best_i = np.take_along_axis(cd, sel, 1), np.take_along_axis(ci, sel, 1)
        compute += time.time() - t
        if progress:
            progress(start + len(xv), len(store))
    if timings is not None:
        timings["compute"] = timings.get("compute", 0.0) + compute
    return np.sqrt(np.maximum(best_d, 0)).astype(np.float32), best_i


def _torch_knn(qv: np.ndarray, xv: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Squared-L2 k-NN on CUDA: (nq, d), (n, d) float32 -> ((nq, k) float32, (nq, k) int64)."""
    import torch

    # Distances are translation invariant; centring the 0..255 values keeps the float32
    # expansion |q|^2 - 2 q.x + |x|^2 accurate.
    q = torch.from_numpy(qv).cuda() - 127.5
    x = torch.from_numpy(xv).cuda() - 127.5
    d = (q * q).sum(1, keepdim=True) - 2.0 * (q @ x.T) + (x * x).sum(1)[None, :]
    dv, di = torch.topk(d, k, dim=1, largest=False)
    return dv.clamp_min(0).cpu().numpy(), di.cpu().numpy()


def recall_at_k(approx_ids: np.ndarray, approx_d: np.ndarray, exact_ids: np.ndarray, exact_d: np.ndarray,
                rtol: float = 1e-4) -> float:
    """Share of the true k nearest neighbours found, counting ties: a returned id counts if it is
    among the exact ids or its distance does not exceed the k-th exact distance (within rtol).
    ``approx_d`` must be true distances (the refine and Flat indexes return them)."""
    k = exact_ids.shape[1]
    kth = exact_d[:, -1:] * (1 + rtol) + 1e-3
    hits = 0
    for a, ad, e, kd in zip(approx_ids[:, :k], approx_d[:, :k], exact_ids, kth):
        hits += min(k, int(np.sum(np.isin(a, e) | (ad <= kd))))
    return hits / (k * len(exact_ids))


def evaluate(pindex: PatchIndex, queries: np.ndarray, k: int = 50, device: str = "auto", repeats: int = 1,
             progress: Callable[[int, int], None] | None = None) -> dict:
    """recall@k of ``pindex`` against exact search on (nq, 32, 32, 3) uint8 held-out queries,
    and queries per second of both (best of ``repeats`` timings for the index).
    progress(done, total): the exact search's patches (most of the time)."""
    timings: dict = {}
    t = time.time()
    ed, ei = exact_search(pindex.store, queries, k, pindex.descriptor, device=device, timings=timings,
                          progress=progress)
    t_exact_io = time.time() - t
    t_exact = timings["compute"]  # search only: reading the store is not charged to exact search
    t_index = float("inf")
    for _ in range(max(1, repeats)):
        t = time.time()
        ad, ai = pindex.search_patches(queries, k)
        t_index = min(t_index, time.time() - t)
    # Distances of an index without exact re-ranking are approximations: recompute them.
    if not (pindex.manifest["factory"] == "Flat" or "Refine" in pindex.manifest["factory"]
            or pindex.manifest["factory"].endswith("RFlat")):
        qv = pindex.descriptor(queries)
        xv = pindex.descriptor(pindex.store.get(np.maximum(ai, 0).ravel())).reshape(*ai.shape, -1)
        ad = np.sqrt(((xv - qv[:, None, :]) ** 2).sum(-1)).astype(np.float32)
    return {
        "k": k, "nq": int(len(queries)), "recall": recall_at_k(ai, ad, ei, ed),
        "qps_index": len(queries) / max(t_index, 1e-9), "qps_exact": len(queries) / max(t_exact, 1e-9),
        "seconds_index": t_index, "seconds_exact": t_exact,
        "seconds_exact_with_io": t_exact_io, "speedup": t_exact / max(t_index, 1e-9),
        "factory": pindex.manifest["factory"], "nprobe": int(_extract_ivf(pindex.index).nprobe)
        if _extract_ivf(pindex.index) is not None else None,
        "k_factor": float(pindex.index.k_factor) if isinstance(pindex.index, faiss.IndexRefine) else None,
    }


def query_patches(paths: list[str], preprocess: Preprocess, stride: int = 8) -> np.ndarray:
    """Every grid patch of each query image, preprocessed as the store's images: (n, 32, 32, 3) uint8."""
    _check_stride(stride)
    out = []
    for p in paths:
        img = load_rgb(p, preprocess)[0]
        out.append(cut_patches(img, grid_positions(img.shape[:2], stride, PATCH, cover=True)))
    return np.concatenate(out)


def _check_stride(stride: int) -> None:
    if stride < 1:
        raise IndexError_(f"--stride must be >= 1 pixel, got {stride}")
