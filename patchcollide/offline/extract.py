"""Sliding-window extraction: image folders -> images.py -> store.py.

``extract_store(["imagenet/train"], "index/patches.h5")`` scans the folders (ImageFolder
layout with class subfolders, or flat), keeps a seeded fraction of each class, decodes the
images (in parallel with ``workers``), cuts 32 x 32 patches at ``stride`` and writes them to a
resumable HDF5 store. Bad files are skipped, listed in the manifest with their reason and
logged once each.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import multiprocessing as mp
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

from ..core.errors import PatchcollideError, first_line
from ..core.files import check_writable, versions
from ..core.images import PATCH, BadImage, Preprocess, cut_patches, grid_positions, load_rgb
from ..core.settings import check_fields, field_error, setting
from .store import PatchStore, StoreError, store_lock
from .store_write import Part, StoreWriter, restore_manifest

log = logging.getLogger(__name__)


class ExtractError(PatchcollideError):
    """Bad arguments or inputs for an extraction; ``str(e)`` is a one-line message."""


MAX_SEED = 2**63 - 1  # seeds within int64


@dataclasses.dataclass(frozen=True)
class ExtractConfig:
    # shorter side -> 224, centre crop: VGG-16's input geometry; None: native size
    resize: int | None = setting(224, "Shorter side to N and centre crop N x N (the model's input), or 'none' for "
                                 "native size.", bounds=(PATCH, 8192))
    # pixels between patch corners; 32-pixel patches overlap by half
    stride: int = setting(16, "Pixels between 32 x 32 patches.", bounds=(1, 4096))
    fraction: float = setting(1.0, "Seeded share of each class's images to keep (the paper used 0.1 of ImageNet).")
    seed: int = setting(0, "Seed of the --fraction choice.", bounds=(0, MAX_SEED))
    # decompression-bomb guard (PIL's default limit)
    max_pixels: int = setting(89_478_485, "Skip images that declare more pixels than this (decompression-bomb "
                              "guard).", bounds=(PATCH * PATCH, None))
    # at most this many images per part file (the unit of resumption)
    part_images: int = setting(256, "Images per resumable part file.", bounds=(1, None), hidden=True)
    # ... and a part closes once it holds this many patches (384 MiB)
    part_patches: int = setting(131_072, "Patches per resumable part file, at most.", bounds=(1, None), cli=False)
    # HDF5 filter for /patches: None or "lzf" (random reads stay fast)
    compression: str | None = setting(None, "HDF5 filter on the patches (none keeps random reads fastest).",
                                      choices=(None, "lzf", "gzip"))

    def __post_init__(self):
        check_fields(self, ExtractError)
        if not 0.0 < self.fraction <= 1.0:
            raise field_error(ExtractError, "fraction", f"must be in (0, 1], got {self.fraction}")

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(resize=self.resize, max_pixels=self.max_pixels, min_side=PATCH)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["patch"] = PATCH
        d["preprocess"] = self.preprocess.to_json()
        return d


@dataclasses.dataclass(frozen=True)
class InputFile:
    root: int  # index into the list of input folders
    path: str  # relative to its root, POSIX separators
    cls: str  # class name: the subfolder (ImageFolder) or the folder's own name (flat)


@dataclasses.dataclass
class ExtractResult:
    path: str
    manifest: dict
    resumed: bool  # True when earlier (killed) runs' parts were reused
    already_complete: bool  # True when the store existed with the same content key
    seconds: float

    @property
    def n_patches(self) -> int:
        return self.manifest["n_patches"]


def _image_extensions() -> set[str]:
    from PIL import Image

    return {ext.lower() for ext in Image.registered_extensions()}


def scan_inputs(folders: Sequence[str]) -> tuple[list[str], list[InputFile], list[tuple[str, str]]]:
    """Find the files under each folder: (absolute roots, files, ignored (path, reason)).

    Each subfolder (recursively) of a folder is a class (ImageFolder layout); the files directly
    in the folder form one class named after the folder: every file of a flat folder, and the
    loose images (by extension) beside class folders, so an empty subfolder changes nothing.
    Loose files beside class folders that are not images by name are reported, not used.
    Hidden files (.name) are skipped.
    """
    if not folders:
        raise ExtractError("no input folder given; pass one or more image folders")
    roots, files, ignored = [], [], []
    for r, folder in enumerate(folders):
        if not os.path.isdir(folder):
            raise ExtractError(f"input folder {folder!r} does not exist or is not a folder; pass an image folder")
        root = os.path.abspath(folder)
        roots.append(root)
        entries = sorted(e for e in os.listdir(root) if not e.startswith("."))
        subdirs = [e for e in entries if os.path.isdir(os.path.join(root, e))]
        name = os.path.basename(root.rstrip("/")) or "images"
        for e in entries:
            if e in subdirs:
                continue
            if subdirs and os.path.splitext(e)[1].lower() not in _image_extensions():
                ignored.append((os.path.join(root, e), "loose file beside class folders, not an image by its name; "
                                                       "not used"))
            else:
                files.append(InputFile(r, e, name))
        if subdirs:
            for cls in subdirs:
                for dirpath, dirnames, filenames in os.walk(os.path.join(root, cls), followlinks=True):
                    dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                    for fn in sorted(filenames):
                        if fn.startswith("."):
                            continue
                        rel = os.path.relpath(os.path.join(dirpath, fn), root).replace(os.sep, "/")
                        files.append(InputFile(r, rel, cls))
    if not files:
        raise ExtractError(f"no files found in {', '.join(map(repr, folders))}; pass folders that hold images")
    return roots, files, ignored


def select_fraction(files: list[InputFile], fraction: float, seed: int) -> list[InputFile]:
    """Keep round(fraction * n) (at least 1) files of each class, chosen by a seeded RNG
    that depends only on (seed, class name), so adding a class leaves the others' choice alone."""
    if fraction >= 1.0:
        return sorted(files, key=lambda f: (f.root, f.path))
    by_cls: dict[str, list[InputFile]] = {}
    for f in files:
        by_cls.setdefault(f.cls, []).append(f)
    keep = []
    for cls, fs in by_cls.items():
        fs = sorted(fs, key=lambda f: (f.root, f.path))
        k = max(1, int(round(fraction * len(fs))))
        cls_key = int.from_bytes(hashlib.sha256(cls.encode()).digest()[:8], "little")
        rng = np.random.default_rng([seed, cls_key])
        idx = np.sort(rng.choice(len(fs), size=k, replace=False))
        keep += [fs[i] for i in idx]
    return sorted(keep, key=lambda f: (f.root, f.path))


def _decode(job: tuple[str, Preprocess, int]) -> tuple[str, np.ndarray | None, np.ndarray | None, tuple, tuple]:
    """Worker: (path, pre, stride) -> (error or "", patches, yx, stored (H, W), native (H, W))."""
    path, pre, stride = job
    try:
        img, native = load_rgb(path, pre)
    except BadImage as e:
        return str(e), None, None, (0, 0), (0, 0)
    except MemoryError:
        return "out of memory while decoding", None, None, (0, 0), (0, 0)
    except Exception as e:  # noqa: BLE001 - a decoder plugin's own error must not stop the run
        return f"cannot decode ({type(e).__name__}: {first_line(e)})", None, None, (0, 0), (0, 0)
    yx = grid_positions(img.shape[:2], stride)
    return "", cut_patches(img, yx), yx, img.shape[:2], native


def extract_store(
    folders: Sequence[str],
    out: str,
    config: ExtractConfig = ExtractConfig(),
    workers: int = 1,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    executor=None,
) -> ExtractResult:
    """Build (or resume, or find complete) the patch store ``out`` from image ``folders``.

    progress(done_images, total_images) is called as images are processed. ``executor`` None
    decodes in this process (``workers`` processes); an executor object (``executors``, e.g.
    Ray's, in chunks of ``config.part_images`` images) writes the parts its way. Either way the
    store is the same: patches, provenance and fingerprint.
    """
    t0 = time.time()
    if workers < 1:
        raise ExtractError(f"--workers must be >= 1, got {workers}")
    if executor is not None and not executor.local and workers != 1:
        raise ExtractError(f"--workers {workers} is for --executor local (--executor {executor.name} uses its "
                           "cluster's CPUs); leave out --workers")
    roots, files, ignored = scan_inputs(folders)
    classes = sorted({f.cls for f in files})
    label_of = {c: i for i, c in enumerate(classes)}
    selected = select_fraction(files, config.fraction, config.seed)
    cfg = config.to_json()
    # Everything that fixes the store's content; a resume or a re-run must match it exactly.
    state = {"config": cfg, "roots": roots, "classes": classes,
             "files": hashlib.sha256("\n".join(f"{f.root}/{f.path}" for f in selected).encode()).hexdigest()}
    content_key = hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()

    out = os.fspath(out)
    check_store_path(out)
    with store_lock(out):
        if os.path.exists(out) and not overwrite:
            try:
                with PatchStore(out) as old:
                    same = old.content_key == content_key
                why = "was built from other arguments or inputs"
            except StoreError:
                same, why = False, "is not a readable patchcollide store"
            if not same:
                raise ExtractError(f"{out} already exists and {why}; pass --overwrite to replace it, or choose "
                                   "another --out")
            manifest = restore_manifest(out)
            return ExtractResult(out, manifest, resumed=False, already_complete=True, seconds=time.time() - t0)
        if overwrite:  # the old store stays in place until the new one is complete
            shutil.rmtree(out + ".parts", ignore_errors=True)
        for p, reason in ignored:
            log.warning("skipped %s: %s", p, reason)
        writer = StoreWriter(out, state)
        n_parts, done = writer.resume_point()
        if progress:
            progress(done, len(selected))
        write = executor.write_parts if executor is not None else write_parts_here
        n_parts = write(writer, selected, roots, label_of, config, n_parts, done, progress, workers)
        manifest = {
            "config": cfg, "content_key": content_key, "inputs": roots, "classes": classes,
            "n_files_found": len(files), "n_files_selected": len(selected), "versions": versions(),
        }
        manifest = writer.finalize(n_parts, classes, roots, manifest, skipped_before=ignored, t0=t0)
    return ExtractResult(out, manifest, resumed=writer.resumed, already_complete=False, seconds=time.time() - t0)


def write_parts_here(writer: StoreWriter, selected: list[InputFile], roots: list[str], label_of: dict[str, int],
                     config: ExtractConfig, n_parts: int, done: int, progress: Callable[[int, int], None] | None,
                     workers: int = 1) -> int:
    """The local way to write the parts of ``selected[done:]``: decoded by ``workers`` processes of
    this machine, numbered after ``writer``'s ``n_parts`` finished ones. Returns the store's
    number of parts."""
    with contextlib.closing(decode_files(selected[done:], roots, config, workers)) as decoded:
        for part in cut_parts(decoded, label_of, roots, done, config):
            writer.write_part(n_parts, part)
            n_parts += 1
            if progress:
                progress(part.first_selected + part.n_selected, len(selected))
    return n_parts


def decode_files(files: Sequence[InputFile], roots: list[str], config: ExtractConfig,
                 workers: int = 1) -> Iterator[tuple[InputFile, tuple]]:
    """(file, _decode result) for each of ``files`` in order, decoded by ``workers`` processes a
    window of images at a time (memory stays bounded, the workers busy). Close it when done."""
    pool = mp.get_context("fork").Pool(workers) if workers > 1 and files else None
    window = max(8, 4 * workers)
    try:
        for w0 in range(0, len(files), window):
            files_w = files[w0 : w0 + window]
            jobs = [(os.path.join(roots[f.root], f.path), config.preprocess, config.stride) for f in files_w]
            yield from zip(files_w, pool.map(_decode, jobs) if pool else map(_decode, jobs))
    finally:
        if pool:
            pool.terminate()


def cut_parts(decoded: Iterable[tuple[InputFile, tuple]], label_of: dict[str, int], roots: list[str],
              first: int, config: ExtractConfig) -> Iterator[Part]:
    """Consecutive decoded files, the first being selected file ``first``, grouped into parts: a
    part closes at ``config.part_images`` files or ``config.part_patches`` patches."""
    buf: list[tuple[InputFile, tuple]] = []
    n_patches = 0
    for f, res in decoded:
        buf.append((f, res))
        n_patches += 0 if res[1] is None else len(res[1])
        if len(buf) >= config.part_images or n_patches >= config.part_patches:
            yield _make_part(buf, label_of, roots, first)
            first, buf, n_patches = first + len(buf), [], 0
    if buf:
        yield _make_part(buf, label_of, roots, first)


def check_store_path(out: str) -> None:
    """The store must be NAME.h5 or NAME.hdf5 (its manifest is NAME.json beside it), and not
    index.h5, whose manifest would be the FAISS index's index.json."""
    base = os.path.basename(out)
    stem, ext = os.path.splitext(base)
    if ext.lower() not in (".h5", ".hdf5") or not stem:
        raise ExtractError(f"--out {out!r} must end in .h5 or .hdf5 (the manifest goes beside it as NAME.json)")
    if stem == "index":
        raise ExtractError(f"--out {out!r} would clash with the FAISS manifest index.json; use e.g. patches.h5")
    if os.path.isdir(out):
        raise ExtractError(f"--out {out!r} is a folder; give a file path such as {os.path.join(out, 'patches.h5')}")
    check_writable(out, 0, ExtractError)  # a file where a folder must be, no permission: before any work


def _make_part(decoded: list[tuple[InputFile, tuple]], label_of: dict[str, int], root_dirs: list[str],
               first_selected: int) -> Part:
    """One part from consecutive selected files and their _decode results."""
    patches, prov, paths, roots, labels, sizes, natives, skipped = [], [], [], [], [], [], [], []
    for f, (err, p, yx, size, native) in decoded:
        if err:
            path = os.path.join(root_dirs[f.root], f.path)
            log.warning("skipped %s: %s", path, err)
            skipped.append((path, err))
            continue
        li = len(paths)
        paths.append(f.path)
        roots.append(f.root)
        labels.append(label_of[f.cls])
        sizes.append(size)
        natives.append(native)
        patches.append(p)
        prov.append(np.column_stack([np.full(len(yx), li, np.int64), yx]).astype(np.int32))
    return Part(
        patches=np.concatenate(patches) if patches else np.zeros((0, PATCH, PATCH, 3), np.uint8),
        provenance=np.concatenate(prov) if prov else np.zeros((0, 3), np.int32),
        paths=paths, roots=np.asarray(roots, np.int16), labels=np.asarray(labels, np.int32),
        sizes=np.asarray(sizes, np.int32).reshape(-1, 2), native_sizes=np.asarray(natives, np.int32).reshape(-1, 2),
        skipped=skipped, first_selected=first_selected, n_selected=len(decoded),
    )


def reproduce_patch(store: PatchStore, patch_id: int) -> np.ndarray:
    """Re-cut patch ``patch_id`` from its source file with the store's recorded preprocessing:
    (32, 32, 3) uint8, bit-identical to ``store.get([patch_id])[0]`` if the file is unchanged."""
    img_idx, y, x = (int(v) for v in store.provenance[patch_id])
    rec = store.image_record(img_idx)
    pre = Preprocess(**store.config["preprocess"])
    img, _ = load_rgb(rec["abspath"], pre)
    return img[y : y + PATCH, x : x + PATCH].copy()


def context_windows(store: PatchStore, ids: Sequence[int] | np.ndarray, side: int) -> np.ndarray:
    """(N, side, side, 3) uint8: for each stored patch, the ``side`` x ``side`` window of its
    source image centred on it (the patch in the middle; mirrored past the image's edges),
    re-cut from the source file with the store's recorded preprocessing: the authors' context
    candidates. Each source image is decoded once. ExtractError (one line) when a source file
    cannot be read or no longer holds the stored patch."""
    ids = np.asarray(ids, dtype=np.int64)
    pad = (side - PATCH) // 2
    pre = Preprocess(**store.config["preprocess"])
    prov = store.provenance[ids]
    stored = store.get(ids)
    out = np.empty((len(ids), side, side, 3), np.uint8)
    for img_idx in np.unique(prov[:, 0]):
        path = store.image_record(int(img_idx))["abspath"]
        try:
            img, _ = load_rgb(path, pre)
        except (BadImage, OSError) as e:
            raise ExtractError(f"--window {side} re-cuts candidates from the store's source images, and {path} cannot "
                               f"be read ({first_line(e)}); restore the store's image folders or use --window {PATCH}") from None
        padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="symmetric")
        for i in np.flatnonzero(prov[:, 0] == img_idx):
            y, x = int(prov[i, 1]), int(prov[i, 2])
            out[i] = padded[y : y + side, x : x + side]
            if not np.array_equal(out[i, pad : pad + PATCH, pad : pad + PATCH], stored[i]):
                raise ExtractError(f"{path} changed since the store was built (patch {int(ids[i])} differs); restore "
                                   f"it, rebuild the store, or use --window {PATCH}")
    return out

