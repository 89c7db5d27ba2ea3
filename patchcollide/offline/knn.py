"""Index -> neighbours: open a built index with its store, search it, evaluate it; and exact search.

The index directory's format is in ``index_format``, its building (``index build``) in
``index_build``; their public names are importable from here too. ``PatchIndex`` opens ``index.faiss`` memory-mapped
and checks it against ``index.json`` and the store; ``search_image`` gives the k nearest
stored patches of every location of a query grid. ``exact_search`` is the brute-force
reference (faiss BLAS on the CPU, torch on CUDA), ``evaluate`` the recall of an index against it.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import time
from collections.abc import Callable

import faiss
import numpy as np

from ..core.files import file_sha256
from ..core.images import GRID_STRIDE, NEIGHBOURS, PATCH, Preprocess, cut_patches, grid_positions, load_rgb
from ..core.settings import check_fields, setting
from .descriptors import make_descriptor
from .extract import context_windows
from .index_build import (
    FLAT_MAX_N,
    IndexConfig,
    build_index,
    default_factory,
    default_search_params,
    extract_ivf,
    set_search_params,
)
from .index_format import (
    FULL_CHECK_MAX,
    INDEX_FILE,
    MANIFEST_FILE,
    REBUILD,
    STORE_FILE,
    IndexError_,
    check_manifest,
    check_search_params,
    faiss_reason,
    manifest_sha256,
    quick_checksum,
)
from .store import REBUILD as STORE_REBUILD
from .store import PatchStore, StoreError

__all__ = ["FLAT_MAX_N", "INDEX_FILE", "MANIFEST_FILE", "STORE_FILE", "EvalConfig", "IndexConfig", "IndexError_",
           "PatchIndex", "SearchConfig", "SearchResult", "build_index", "default_factory", "default_search_params",
           "evaluate", "exact_search", "query_patches", "quick_checksum", "recall_at_k", "set_search_params",
           "verify_index"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """The settings of a grid search on one image (``PatchIndex.search_image``; ``index search``'s
    options are derived from it): the grid collide queries. ``k`` and ``nprobe`` are checked
    against the index's store and limits where it opens and searches."""

    k: int = setting(NEIGHBOURS, "Neighbours per location.", flags=("-k",))
    grid_stride: int = setting(GRID_STRIDE, "Query grid step; 8 gives 25 x 25 locations on 224 x 224 (as in collide).",
                               bounds=(1, None))
    nprobe: int | None = setting(None, "Override the index's nprobe.")  # None: the index's own

    def __post_init__(self):
        check_fields(self, IndexError_)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """The settings of an index's evaluation against exact search (``query_patches`` and
    ``evaluate``; ``index eval``'s options are derived from it). ``k``, ``nprobe`` and
    ``k_factor`` are checked against the index's store and limits where it opens and searches."""

    k: int = setting(50, "Neighbours per query whose recall against exact search is measured.", flags=("-k",))
    grid_stride: int = setting(GRID_STRIDE, "Query grid step (as in collide).", bounds=(1, None))
    nprobe: int | None = setting(None, "Override the index's nprobe (IVF lists visited per query).")
    k_factor: int | None = setting(None, "Override the index's k-factor (candidates re-ranked exactly per neighbour).")
    device: str = setting("auto", "Where the exact ground truth is computed (auto: CUDA when present).",
                          choices=("auto", "cpu", "cuda"))

    def __post_init__(self):
        check_fields(self, IndexError_)


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
            raise IndexError_(f"{self.dir}: no built index here (need {INDEX_FILE} and {MANIFEST_FILE}); build it with "
                              "`patchcollide extract` and `patchcollide index build` (both write to index/, the "
                              "default of --index), or point --index at a built index")
        check_search_params(nprobe, k_factor)
        self.index_path = ipath
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
        self.descriptor = check_manifest(self.manifest, mpath)
        if quick_checksum(ipath) != self.manifest["quick_sha256"]:
            raise IndexError_(f"{ipath} is not the index that {MANIFEST_FILE} describes (an interrupted rebuild, or "
                              "a file copied over it); rebuild with `patchcollide index build`")
        whole = self.manifest.get("sha256")
        self.checked_whole = whole is not None and os.path.getsize(ipath) <= FULL_CHECK_MAX  # verify need not read it again
        if self.checked_whole and file_sha256(ipath) != whole:
            raise IndexError_(f"{ipath} is damaged: its sha256 is not the {whole[:12]} that {MANIFEST_FILE} records "
                              f"(a byte changed after the build); {REBUILD}")
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
            self._open_index(mpath, ipath, mmap)
            recorded = self.manifest.get("manifest_sha256")  # last: the checks above say more where they see it
            if recorded is not None and manifest_sha256(self.manifest) != recorded:
                raise IndexError_(f"{mpath} was changed after the build (damaged or edited): its values no longer "
                                  f"match the manifest_sha256 recorded in it; {REBUILD} (a search's own nprobe is "
                                  "`index search --nprobe`, not an edit of index.json)")
            set_search_params(self.index, self.manifest["nprobe"] if nprobe is None else nprobe,
                               self.manifest["k_factor"] if k_factor is None else k_factor)
            try:
                self.preprocess = Preprocess(**self.store.config["preprocess"])
            except (KeyError, TypeError, ValueError):
                raise StoreError(f"{sp}: the store's recorded config has no valid 'preprocess'; the store is "
                                 f"damaged: {STORE_REBUILD}") from None
        except BaseException:
            self.store.close()
            raise

    def _open_index(self, mpath: str, ipath: str, mmap: bool) -> None:
        try:
            self.index = _read_index(ipath, mmap)
        except (RuntimeError, MemoryError, ValueError):
            raise IndexError_(f"{ipath}: not a readable faiss index; rebuild with `patchcollide index build`") from None
        if self.index.ntotal != len(self.store):
            raise IndexError_(f"{ipath} holds {self.index.ntotal} vectors but the store has {len(self.store)}; "
                              "rebuild with `patchcollide index build`")
        if self.manifest["n"] != self.index.ntotal:
            raise IndexError_(f"{mpath}: n is {self.manifest['n']}, but {INDEX_FILE} holds {self.index.ntotal} "
                              f"vectors; the file is damaged or edited: {REBUILD}")
        if self.index.d != self.descriptor.dim:
            raise IndexError_(f"{ipath} holds {self.index.d}-dimensional vectors, but descriptor "
                              f"{self.descriptor.name!r} of {MANIFEST_FILE} gives {self.descriptor.dim}; {REBUILD}")

    def __enter__(self) -> "PatchIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.store.close()

    def search_patches(self, patches: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(n, 32, 32, 3) uint8 -> (distances (n, k) float32 L2, ids (n, k) int64).

        A failure inside faiss, or an answer no intact index gives (an id outside 0..N-1, a
        distance that is not a finite number), is an IndexError_ naming the index: the file is
        damaged where the open-time check does not look."""
        if not 1 <= k <= len(self.store):
            raise IndexError_(f"k must be between 1 and the store size {len(self.store)}, got {k}")
        x = self.descriptor(patches)
        try:
            d2, ids = self.index.search(x, k)
        except (RuntimeError, MemoryError) as e:
            reason = re.sub(r"^'(.*)' failed$", r"faiss' check \1 failed", faiss_reason(e))
            raise IndexError_(f"{self.index_path}: searching the index failed ({reason}); it is damaged or "
                              f"unfit: check it with `patchcollide index verify -i {self.dir}` and {REBUILD}") from None
        n = len(self.store)
        found = ids >= 0
        if (ids >= n).any() or (ids < -1).any() or not np.isfinite(d2[found]).all():
            bad = int(((ids >= n) | (ids < -1)).sum())
            what = (f"{bad} patch id{'s' if bad > 1 else ''} outside 0..{n - 1}" if bad else
                    "distances that are not finite numbers")
            raise IndexError_(f"{self.index_path}: the index answered with {what}; it is damaged: {REBUILD}")
        if not found.all():
            raise IndexError_(f"the index found fewer than k={k} neighbours for {int((~found).any(1).sum())} "
                              "queries; raise --nprobe or lower -k")
        return np.sqrt(np.maximum(d2, 0)), ids

    def search_image(self, image: str | np.ndarray, k: int = SearchConfig.k,
                     stride: int = SearchConfig.grid_stride) -> SearchResult:
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

    def candidate_pixels(self, ids: np.ndarray, window: int = PATCH) -> np.ndarray:
        """(L, K, S, S, 3) uint8 for candidate ids (L, K): the stored patches (``window`` 32), or
        each patch's ``window`` x ``window`` context in its source image, the patch in the middle
        (``extract.context_windows``: the authors' candidates, re-cut from the source files).
        The engine takes its candidates' pixels through this, never from the store itself."""
        L, K = ids.shape
        if window == PATCH:
            return self.store.get(ids.ravel()).reshape(L, K, PATCH, PATCH, 3)
        return context_windows(self.store, ids.ravel(), window).reshape(L, K, window, window, 3)


def verify_index(index_dir: str, store_path: str | None = None, store_option: str | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 store_progress: Callable[[int, int], None] | None = None) -> dict:
    """Read everything an index folder holds and check it against what was recorded when it was
    built: index.json's own values against its ``manifest_sha256``, the SHA-256 of the whole
    ``index.faiss`` against ``sha256`` in ``index.json``, then the store's fingerprint
    recomputed (``PatchStore.verify``), after the checks of opening (``PatchIndex``). IndexError_ / StoreError (one line naming the file and the fix) on any
    difference; else counts, sizes and seconds. progress(done, total) counts bytes of
    index.faiss read, store_progress(done, total) patches of the store."""
    t0 = time.time()
    with PatchIndex(index_dir, store_path, store_option=store_option) as pidx:
        mpath = os.path.join(pidx.dir, MANIFEST_FILE)
        want = pidx.manifest.get("sha256")
        if want is None:
            raise IndexError_(f"{mpath} records no sha256 of {INDEX_FILE} (built before `index verify` existed), so "
                              "only its size and first and last MiB can be checked; rebuild with `patchcollide index "
                              "build` to make it verifiable")
        got = want if pidx.checked_whole else file_sha256(pidx.index_path, progress)  # opening read it whole
        if got != want:
            raise IndexError_(f"{pidx.index_path} is damaged: its sha256 is {got[:12]}, not the {want[:12]} that "
                              f"{MANIFEST_FILE} recorded when it was built; {REBUILD}")
        t_index = time.time() - t0
        store = pidx.store.verify(progress=store_progress)
    return {"index": os.path.abspath(pidx.index_path), "sha256": want, "n": int(pidx.manifest["n"]),
            "bytes": os.path.getsize(pidx.index_path), "factory": pidx.manifest["factory"], "store": store,
            "seconds_index": t_index, "seconds": time.time() - t0}


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


def evaluate(pindex: PatchIndex, queries: np.ndarray, k: int = EvalConfig.k, device: str = EvalConfig.device,
             repeats: int = 1,
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
        "factory": pindex.manifest["factory"], "nprobe": int(extract_ivf(pindex.index).nprobe)
        if extract_ivf(pindex.index) is not None else None,
        "k_factor": float(pindex.index.k_factor) if isinstance(pindex.index, faiss.IndexRefine) else None,
    }


def query_patches(paths: list[str], preprocess: Preprocess, stride: int = EvalConfig.grid_stride) -> np.ndarray:
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
