"""The HDF5 patch store: a resumable writer and a validating reader (ids -> patches).

On-disk format (``FORMAT_VERSION`` 1, documented in ``index/README.md``)::

    /patches             (N, 32, 32, 3) uint8 RGB, chunked (CHUNK, 32, 32, 3)
    /provenance          (N, 3) int32: image index, y, x (top-left corner in the stored image)
    /images/path         (M,) str: path relative to its root, POSIX separators
    /images/root         (M,) int16: index into /roots
    /images/label        (M,) int32: index into /classes
    /images/size         (M, 2) int32: stored (H, W), after preprocessing
    /images/native_size  (M, 2) int32: (H, W) of the file
    /images/first        (M,) int64: id of the image's first patch; /images/count (M,) int32
    /classes             (C,) str;  /roots (R,) str: absolute input folders
    attrs: format, format_version, store_id, fingerprint, tables_sha256, config (JSON), versions (JSON), created,
           manifest (JSON), attrs_sha256

Damage is an error, never a different answer. Every numeric dataset carries HDF5's
fletcher32 checksum filter, so a damaged chunk fails when read; the file is written in HDF5
1.10's format (``LIBVER``), whose metadata is checksummed too; ``attrs_sha256`` covers the
attributes and is checked on every open. HDF5 cannot filter the variable-length string
tables: ``tables_sha256`` covers them (and the numeric tables). Opening checks the format,
the attributes, the store's id and recorded fingerprint, not the data; ``PatchStore.verify``
reads everything and recomputes the fingerprint and ``tables_sha256``. Stores written before
the checksums (no filter, no ``*_sha256`` attributes) still open, read and verify.

Writing is crash-safe: each batch of images becomes a part file, written under a temporary
name and renamed into place; only when every part exists are they merged into
``STORE.tmp``, which is fsynced and renamed over ``STORE``. A run killed at any moment and
started again with the same arguments ends with exactly the patches of an uninterrupted
run. Imports only ``core``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Sequence

import h5py
import numpy as np

from ..core.errors import PatchcollideError, first_line
from ..core.files import atomic_open, fsync_file, locked, replace, write_json
from ..core.jsontypes import canonical

FORMAT = "patchcollide-store"
FORMAT_VERSION = 1
CHUNK = 16  # patches per HDF5 chunk: 48 KiB, small enough for fast random access by id
PATCH_SHAPE = (32, 32, 3)
# The image tables, in the order tables_sha256 hashes them.
TABLES = ("images/path", "images/root", "images/label", "images/size", "images/native_size", "images/first",
          "images/count", "classes", "roots")
# HDF5 1.10's file format: checksums on the metadata too (object headers with the attributes,
# the chunk indexes), so damage there is an error on open or read rather than a wrong answer.
# Readable by HDF5 >= 1.10 (h5py >= 2.8).
LIBVER = ("v110", "v110")
ATTRS = ("format", "format_version", "store_id", "fingerprint", "tables_sha256", "content_key", "created", "config",
         "versions", "manifest")  # the attributes attrs_sha256 covers
REBUILD = "rebuild it with `patchcollide extract ... --overwrite`, or restore a copy"


class StoreError(PatchcollideError):
    """A store that cannot be opened, resumed or written; ``str(e)`` is a one-line message."""


@dataclasses.dataclass
class Part:
    """What one batch of images contributes to the store (image indices local to the part)."""

    patches: np.ndarray  # (n, 32, 32, 3) uint8
    provenance: np.ndarray  # (n, 3) int32: local image index, y, x
    paths: list[str]  # (m,) relative paths of the images that gave patches
    roots: np.ndarray  # (m,) int16
    labels: np.ndarray  # (m,) int32
    sizes: np.ndarray  # (m, 2) int32 stored (H, W)
    native_sizes: np.ndarray  # (m, 2) int32
    skipped: list[tuple[str, str]]  # (path, reason)
    first_selected: int = 0  # index of the part's first image in the run's list of selected files
    n_selected: int = 0  # selected files the part covers, skipped ones included

    def save(self, path: str) -> None:
        with atomic_open(path, "wb") as f:
            np.savez(
                f,
                patches=self.patches,
                provenance=self.provenance,
                paths=np.asarray(self.paths, dtype=str),
                roots=self.roots,
                labels=self.labels,
                sizes=self.sizes,
                native_sizes=self.native_sizes,
                skipped=np.asarray(self.skipped, dtype=str).reshape(-1, 2),
                span=np.asarray([self.first_selected, self.n_selected], dtype=np.int64),
            )

    @classmethod
    def load(cls, path: str) -> "Part":
        with np.load(path, allow_pickle=False) as z:
            return cls(
                patches=z["patches"],
                provenance=z["provenance"],
                paths=[str(p) for p in z["paths"]],
                roots=z["roots"],
                labels=z["labels"],
                sizes=z["sizes"],
                native_sizes=z["native_sizes"],
                skipped=[(str(a), str(b)) for a, b in z["skipped"]],
                first_selected=int(z["span"][0]), n_selected=int(z["span"][1]),
            )


@contextlib.contextmanager
def store_lock(path: str, what: str = "store", error: type[Exception] | None = None) -> Iterator[None]:
    """Exclusive, non-blocking lock on ``PATH.lock`` for the whole of a write: a second process
    writing the same ``what`` is refused (``error``, default StoreError) instead of corrupting
    it. The empty lock file stays; the lock itself dies with the process, even on SIGKILL."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    busy = (error or StoreError)(f"{path}: another process is writing this {what}; wait for it or choose "
                                 "another output")
    with locked(path + ".lock", busy=busy):
        yield


class StoreWriter:
    """Resumable writer: ``parts_dir`` holds the finished parts and the run's state.

    The caller holds ``store_lock(path)`` for the writer's whole life.
    """

    def __init__(self, path: str, state: dict):
        self.path = os.fspath(path)
        self.parts_dir = self.path + ".parts"
        self.state = state  # config, inputs, classes, roots: everything that fixes the content
        self._open_state()

    def _open_state(self) -> None:
        state_path = os.path.join(self.parts_dir, "state.json")
        if os.path.exists(state_path):
            try:
                with open(state_path) as f:
                    old = json.load(f)
            except (OSError, ValueError):
                old = None
            if old is not None and old.get("content") == canonical(self.state):
                self.store_id = old["store_id"]
                self.resumed = True
                return
            raise StoreError(
                f"{self.parts_dir}: an unfinished extraction with different arguments or inputs is here; "
                "run again with the same arguments, or pass --overwrite to discard it"
            )
        os.makedirs(self.parts_dir, exist_ok=True)
        self.store_id = uuid.uuid4().hex
        self.resumed = False
        write_json(state_path, {"store_id": self.store_id, "content": canonical(self.state)}, indent=None)

    def part_path(self, i: int) -> str:
        return os.path.join(self.parts_dir, f"part-{i:06d}.npz")

    def resume_point(self) -> tuple[int, int]:
        """(number of finished parts, number of selected files they cover).

        Parts are written in order under a temporary name and renamed, so the finished ones
        are part 0, 1, ... up to the first missing one; each records the span of selected
        files it covers. A part that does not open (foreign or damaged) and everything
        after it are discarded and redone.
        """
        i, covered = 0, 0
        while os.path.exists(self.part_path(i)):
            try:
                with np.load(self.part_path(i), allow_pickle=False) as z:
                    first, n = (int(v) for v in z["span"])
            except Exception:  # noqa: BLE001 - unreadable: redo from here
                break
            if first != covered:
                break
            covered += n
            i += 1
        j = i
        while os.path.exists(self.part_path(j)):
            os.remove(self.part_path(j))
            j += 1
        return i, covered

    def write_part(self, i: int, part: Part) -> None:
        part.save(self.part_path(i))

    def finalize(self, n_parts: int, classes: Sequence[str], roots: Sequence[str], manifest: dict,
                 skipped_before: Sequence[tuple[str, str]] = (), t0: float | None = None) -> dict:
        """Merge parts 0..n_parts-1 into the HDF5 store; return the manifest written beside it.

        The whole manifest (with the skipped files) is also stored in the HDF5 attribute
        ``manifest``, so the JSON copy can be restored if a kill comes between the renames.
        """
        tmp = self.path + ".tmp"
        if os.path.exists(tmp):
            os.remove(tmp)
        # Two streams, so the fingerprint does not depend on how the images were cut into parts.
        h_patches, h_prov = hashlib.sha256(), hashlib.sha256()
        skipped: list[dict] = [{"path": p, "reason": r} for p, r in skipped_before]
        n = 0
        img_offset = 0
        try:
            with h5py.File(tmp, "w", libver=LIBVER) as f:
                try:
                    # fletcher32: a damaged chunk fails its checksum when read (4 bytes per chunk)
                    patches = f.create_dataset(
                        "patches", shape=(0, *PATCH_SHAPE), maxshape=(None, *PATCH_SHAPE), dtype=np.uint8,
                        chunks=(CHUNK, *PATCH_SHAPE), compression=manifest["config"].get("compression"),
                        fletcher32=True,
                    )
                    prov = f.create_dataset("provenance", shape=(0, 3), maxshape=(None, 3), dtype=np.int32,
                                            chunks=(4096, 3), fletcher32=True)
                    img_cols: dict[str, list] = {k: [] for k in ("path", "root", "label", "size", "native_size", "count")}
                    for i in range(n_parts):
                        part = Part.load(self.part_path(i))
                        m = len(part.paths)
                        pv = part.provenance.astype(np.int32, copy=True)
                        pv[:, 0] += img_offset
                        k = len(part.patches)
                        patches.resize(n + k, axis=0)
                        patches[n : n + k] = part.patches
                        prov.resize(n + k, axis=0)
                        prov[n : n + k] = pv
                        h_patches.update(np.ascontiguousarray(part.patches).tobytes())
                        h_prov.update(pv.astype("<i4").tobytes())
                        counts = np.bincount(part.provenance[:, 0], minlength=m) if k else np.zeros(m, np.int64)
                        img_cols["path"] += part.paths
                        img_cols["root"].append(part.roots)
                        img_cols["label"].append(part.labels)
                        img_cols["size"].append(part.sizes.reshape(-1, 2))
                        img_cols["native_size"].append(part.native_sizes.reshape(-1, 2))
                        img_cols["count"].append(counts)
                        skipped += [{"path": p, "reason": r} for p, r in part.skipped]
                        n += k
                        img_offset += m
                    counts = np.concatenate(img_cols["count"]).astype(np.int32) if img_cols["count"] else np.zeros(0, np.int32)
                    g = f.create_group("images")
                    str_t = h5py.string_dtype("utf-8")
                    g.create_dataset("path", data=np.asarray(img_cols["path"], dtype=object), dtype=str_t)
                    # HDF5 filters no variable-length strings: the string tables are covered by tables_sha256
                    g.create_dataset("root", data=_cat(img_cols["root"], np.int16, (0,)), fletcher32=True)
                    g.create_dataset("label", data=_cat(img_cols["label"], np.int32, (0,)), fletcher32=True)
                    g.create_dataset("size", data=_cat(img_cols["size"], np.int32, (0, 2)), fletcher32=True)
                    g.create_dataset("native_size", data=_cat(img_cols["native_size"], np.int32, (0, 2)),
                                     fletcher32=True)
                    g.create_dataset("count", data=counts, fletcher32=True)
                    g.create_dataset("first", data=np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)[: len(counts)],
                                     fletcher32=True)
                    f.create_dataset("classes", data=np.asarray(list(classes), dtype=object), dtype=str_t)
                    f.create_dataset("roots", data=np.asarray(list(roots), dtype=object), dtype=str_t)
                    f.attrs["tables_sha256"] = tables_sha256(f)
                    manifest = dict(manifest)
                    manifest.update(
                        format=FORMAT, format_version=FORMAT_VERSION, store_id=self.store_id,
                        fingerprint=fingerprint_of(h_patches, h_prov), n_patches=int(n), n_images=int(img_offset),
                        n_classes=len(classes), n_skipped=len(skipped), created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    )
                    for key in ("format", "format_version", "store_id", "fingerprint", "created", "content_key"):
                        if key in manifest:
                            f.attrs[key] = manifest[key]
                    f.attrs["config"] = json.dumps(manifest["config"], sort_keys=True)
                    f.attrs["versions"] = json.dumps(manifest.get("versions", {}), sort_keys=True)
                    manifest["skipped"] = skipped
                    if t0 is not None:
                        manifest["seconds"] = round(time.time() - t0, 3)
                    f.attrs["manifest"] = json.dumps(manifest, sort_keys=True)
                    f.attrs["attrs_sha256"] = attrs_sha256(f.attrs)  # checked on every open
                    f.flush()  # a write that fails here is caught below, not in the close
                except OSError:
                    _discard_writes(f)
                    raise
            fsync_file(tmp)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise StoreError(f"{self.path}: writing the store failed ({_os_reason(e)}); free disk space and run "
                             f"again: the {n_parts} finished parts in {self.parts_dir} are kept") from None
        manifest["bytes_on_disk"] = os.path.getsize(tmp)
        # The store is renamed in first; a kill before the JSON copy is written is mended by
        # the next run with the same arguments (restore_manifest).
        replace(tmp, self.path)  # and fsync the directory
        write_manifest(self.path, manifest)
        shutil.rmtree(self.parts_dir, ignore_errors=True)
        return manifest


def _discard_writes(f: h5py.File) -> None:
    """Close ``f`` after a failed write (full disk, file-size limit) without writing more.

    HDF5 retries its flush when the file is closed and, after a failed write, crashes the
    process (SIGSEGV) doing so. Pointing the file's descriptor at /dev/null lets the close
    succeed; the half-written file is deleted by the caller."""
    with contextlib.suppress(Exception):
        fd = f.id.get_vfd_handle()
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, fd)
        os.close(null)
        f.close()


def _read_reason(e: Exception) -> str:
    """A failed read in a few words: HDF5's checksum failure is named as such."""
    text = str(e)
    if "filter returned failure" in text or "checksum" in text.lower():
        return "a checksum does not match"
    if isinstance(e, UnicodeDecodeError):
        return "a text entry is not valid UTF-8"
    if isinstance(e, OSError):
        return _os_reason(e)
    return f"{type(e).__name__}: {first_line(e, 100)}"


def _os_reason(e: OSError) -> str:
    """The cause of an OSError in a few words; h5py's messages carry HDF5's whole report."""
    if e.errno:
        return os.strerror(e.errno)
    m = re.search(r"error message = '([^']+)'", str(e))
    return m.group(1) if m else (str(e).strip().splitlines() or ["write error"])[0][:120]


def fingerprint_of(h_patches, h_prov) -> str:
    """SHA-256 of (SHA-256 of all patch bytes in id order + SHA-256 of the provenance as
    little-endian int32 in id order), hex."""
    return hashlib.sha256(h_patches.digest() + h_prov.digest()).hexdigest()


def attrs_sha256(attrs) -> str:
    """SHA-256 of the store's attributes (``ATTRS``, those present, in that order: each name and
    its value as text, NUL-separated). HDF5 keeps long text attributes where no checksum covers
    them; this one is recomputed on every open (a few KB)."""
    h = hashlib.sha256()
    for name in ATTRS:
        if name in attrs:
            v = attrs[name]
            h.update(f"{name}\0{v.decode() if isinstance(v, bytes) else v}\0".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def tables_sha256(f: h5py.File) -> str:
    """SHA-256 of the image tables, classes and roots (``TABLES``, in that order): each name,
    then its shape and its values, strings as UTF-8 each ended by a NUL byte, numbers
    little-endian in their stored dtype. Recorded at extraction, recomputed by ``verify``."""
    h = hashlib.sha256()
    for name in TABLES:
        d = f[name]
        h.update(f"{name}{d.shape}".encode())
        if d.dtype.kind == "O":
            for v in d.asstr()[...]:
                h.update(v.encode("utf-8", "surrogateescape") + b"\0")
        else:
            h.update(np.ascontiguousarray(d[...], dtype=d.dtype.newbyteorder("<")).tobytes())
    return h.hexdigest()


def _cat(arrs: list[np.ndarray], dtype, empty_shape) -> np.ndarray:
    return np.concatenate(arrs).astype(dtype) if arrs else np.zeros(empty_shape, dtype)


def write_manifest(store_path: str, manifest: dict) -> str:
    """Write the JSON manifest beside the store atomically; returns its path."""
    return write_json(manifest_path_for(store_path), manifest)


def restore_manifest(store_path: str) -> dict:
    """Make the JSON manifest beside a finished store match the copy inside it, and remove a
    parts folder left by a kill after the store was renamed in. Returns the manifest.
    Caller holds ``store_lock``."""
    with PatchStore(store_path) as st:
        manifest = st.manifest
    manifest["bytes_on_disk"] = os.path.getsize(store_path)
    path = manifest_path_for(store_path)
    try:
        with open(path) as fh:
            ok = json.load(fh) == manifest
    except (OSError, ValueError):
        ok = False
    if not ok:
        write_manifest(store_path, manifest)
    shutil.rmtree(os.fspath(store_path) + ".parts", ignore_errors=True)
    return manifest


def manifest_path_for(store_path: str) -> str:
    """``index/patches.h5`` -> ``index/patches.json``."""
    root, _ = os.path.splitext(os.fspath(store_path))
    return root + ".json"


class PatchStore:
    """Read-only view of a finished store. ``store.get(ids)`` -> (n, 32, 32, 3) uint8.

    Validates the file on open: an unreadable, truncated or foreign file raises StoreError.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise StoreError(f"{self.path}: no such store; build one with `patchcollide extract`")
        try:
            self._f = h5py.File(self.path, "r")
        except OSError as e:
            text = str(e)
            if "truncated file" in text:
                reason = f"truncated to {os.path.getsize(self.path)} bytes, e.g. by an interrupted copy"
            elif "signature not found" in text:
                reason = "no HDF5 signature: another format"
            else:
                reason = text.split(";")[0].split("(")[0].strip() or "unreadable"
            raise StoreError(
                f"{self.path}: not a readable HDF5 file ({reason}); give a store written by `patchcollide extract`"
            ) from None
        try:
            with self._reading("its attributes"):
                self._validate()
        except StoreError:
            self._f.close()
            raise

    @contextlib.contextmanager
    def _reading(self, what: str) -> Iterator[None]:
        """Turn a failed read inside the block (a fletcher32 checksum that does not match, a
        damaged attribute or table) into a one-line StoreError naming the file and the fix."""
        try:
            yield
        except StoreError:
            raise
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
            raise StoreError(f"{self.path}: the store is damaged (reading {what}: {_read_reason(e)}); "
                             f"{REBUILD}") from None

    def _validate(self) -> None:
        f = self._f
        if f.attrs.get("format") != FORMAT:
            raise StoreError(
                f"{self.path}: an HDF5 file but not a patchcollide store; give a store written by `patchcollide extract`"
            )
        if int(f.attrs.get("format_version", -1)) != FORMAT_VERSION:
            raise StoreError(
                f"{self.path}: store format version {f.attrs.get('format_version')} is not {FORMAT_VERSION}; "
                "rebuild it with this version's `patchcollide extract`"
            )
        if "attrs_sha256" in f.attrs and attrs_sha256(f.attrs) != str(f.attrs["attrs_sha256"]):
            raise StoreError(f"{self.path}: the store is damaged: its attributes (config, fingerprint, manifest) no "
                             f"longer match the checksum recorded at extraction; {REBUILD}")
        for name in ("patches", "provenance", "images/path", "images/size", "images/first", "classes", "roots"):
            if name not in f:
                raise StoreError(f"{self.path}: store is missing '{name}'; rebuild it with `patchcollide extract`")
        self.patches = f["patches"]
        if self.patches.shape[1:] != PATCH_SHAPE or f["provenance"].shape != (self.patches.shape[0], 3):
            raise StoreError(f"{self.path}: store datasets have inconsistent shapes; rebuild it")
        self.n = int(self.patches.shape[0])
        self.store_id = str(f.attrs["store_id"])
        self.fingerprint = str(f.attrs["fingerprint"])
        self.config = json.loads(f.attrs["config"])
        self.versions = json.loads(f.attrs.get("versions", "{}"))
        self.content_key = str(f.attrs.get("content_key", ""))
        self.manifest = json.loads(f.attrs["manifest"]) if "manifest" in f.attrs else {}
        self._prov: np.ndarray | None = None

    # --- context manager -------------------------------------------------------------
    def __enter__(self) -> "PatchStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if getattr(self, "_f", None) is not None and self._f.id.valid:
            self._f.close()

    def __len__(self) -> int:
        return self.n

    # --- tables ------------------------------------------------------------------------
    @property
    def provenance(self) -> np.ndarray:
        """(N, 3) int32: image index, y, x of every patch (loaded once)."""
        if self._prov is None:
            with self._reading("/provenance"):
                self._prov = self._f["provenance"][...]
        return self._prov

    @property
    def n_images(self) -> int:
        return int(self._f["images/path"].shape[0])

    @property
    def classes(self) -> list[str]:
        with self._reading("/classes"):
            return [s.decode() if isinstance(s, bytes) else s for s in self._f["classes"][...]]

    @property
    def roots(self) -> list[str]:
        with self._reading("/roots"):
            return [s.decode() if isinstance(s, bytes) else s for s in self._f["roots"][...]]

    def image_record(self, i: int) -> dict:
        """One row of the image table, with the absolute path of its source file."""
        roots, classes = self.roots, self.classes
        with self._reading(f"row {i} of /images"):
            g = self._f["images"]
            rel = g["path"][i]
            rel = rel.decode() if isinstance(rel, bytes) else rel
            root, label = int(g["root"][i]), int(g["label"][i])
            if not (0 <= root < len(roots) and (0 <= label < len(classes) or not classes)):
                raise ValueError(f"root {root} or label {label} out of range")
            return {
                "index": int(i), "path": rel, "root": root, "abspath": os.path.join(roots[root], rel),
                "label": label, "class": classes[label] if len(classes) else "",
                "size": tuple(int(v) for v in g["size"][i]), "native_size": tuple(int(v) for v in g["native_size"][i]),
                "first": int(g["first"][i]), "count": int(g["count"][i]),
            }

    # --- patches -----------------------------------------------------------------------
    def get(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Patches by id, in the order given (repeats allowed): (n, 32, 32, 3) uint8.

        Reads each needed chunk once, which is far faster than HDF5 point selection.
        """
        ids = np.asarray(ids, dtype=np.int64).ravel()
        if ids.size and (ids.min() < 0 or ids.max() >= self.n):
            raise IndexError(f"patch id out of range 0..{self.n - 1}")
        out = np.empty((ids.size, *PATCH_SHAPE), dtype=np.uint8)
        if ids.size == 0:
            return out
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        chunk_of = sorted_ids // CHUNK
        bounds = np.flatnonzero(np.diff(chunk_of)) + 1
        for grp in np.split(np.arange(ids.size), bounds):
            c = int(chunk_of[grp[0]])
            lo, hi = c * CHUNK, min((c + 1) * CHUNK, self.n)
            with self._reading(f"patches {lo}..{hi - 1}"):
                block = self.patches[lo:hi]
            out[order[grp]] = block[sorted_ids[grp] - lo]
        return out

    def iter_batches(self, batch_size: int, split: tuple[int, int] = (1, 0)) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (first id, (b, 32, 32, 3) uint8) over this process's share of the store.

        split=(nsplit, rank) gives a contiguous 1/nsplit of the ids, so several processes
        or machines can share one store without new code (cf. faiss' database_iterator).
        """
        nsplit, rank = split
        if not (nsplit >= 1 and 0 <= rank < nsplit):
            raise ValueError(f"expected split=(nsplit >= 1, 0 <= rank < nsplit), got {split}")
        lo, hi = self.n * rank // nsplit, self.n * (rank + 1) // nsplit
        batch_size = max(CHUNK, batch_size // CHUNK * CHUNK)
        for s in range(lo, hi, batch_size):
            e = min(s + batch_size, hi)
            with self._reading(f"patches {s}..{e - 1}"):
                batch = self.patches[s:e]
            yield s, batch

    def verify(self, batch_size: int = 16384, progress: Callable[[int, int], None] | None = None) -> dict:
        """Read the whole store and recompute what extraction recorded: the fingerprint (the same
        ``fingerprint_of`` definition, streamed ``batch_size`` patches at a time) and, for stores
        that have it, ``tables_sha256``. Every chunk's checksum is checked on the way.
        StoreError (one line) on any difference or failed read; else counts and seconds.
        progress(done, total) counts patches read."""
        t0 = time.time()
        h_patches, h_prov = hashlib.sha256(), hashlib.sha256()
        prov = self._f["provenance"]
        done = 0
        for s, batch in self.iter_batches(batch_size):
            h_patches.update(np.ascontiguousarray(batch).tobytes())
            with self._reading(f"/provenance {s}..{s + len(batch) - 1}"):
                h_prov.update(np.asarray(prov[s : s + len(batch)]).astype("<i4").tobytes())
            done += len(batch)
            if progress:
                progress(done, self.n)
        got = fingerprint_of(h_patches, h_prov)
        if got != self.fingerprint:
            raise StoreError(f"{self.path}: the store is damaged: its patches and provenance hash to {got[:12]}, not "
                             f"to the fingerprint {self.fingerprint[:12]} recorded at extraction; {REBUILD}")
        want_tables = self._f.attrs.get("tables_sha256")
        with self._reading("the image tables"):
            got_tables = tables_sha256(self._f)
        if want_tables is not None and got_tables != str(want_tables):
            raise StoreError(f"{self.path}: the store is damaged: its image tables (/images, /classes, /roots) hash "
                             f"to {got_tables[:12]}, not to the {str(want_tables)[:12]} recorded at extraction; {REBUILD}")
        return {"path": os.path.abspath(self.path), "n_patches": self.n, "n_images": self.n_images,
                "fingerprint": self.fingerprint, "tables_checked": want_tables is not None,
                "checksums": bool(self.patches.fletcher32), "bytes_on_disk": os.path.getsize(self.path),
                "seconds": time.time() - t0}

    def info(self) -> dict:
        """Counts, config, identity and size on disk (what ``patchcollide store info`` prints)."""
        return {
            "path": os.path.abspath(self.path), "format_version": FORMAT_VERSION, "store_id": self.store_id,
            "fingerprint": self.fingerprint, "n_patches": self.n, "n_images": self.n_images,
            "n_classes": len(self.classes), "config": self.config, "bytes_on_disk": os.path.getsize(self.path),
            "bytes_per_patch": os.path.getsize(self.path) / max(self.n, 1), "versions": self.versions,
            "created": str(self._f.attrs.get("created", "")),
        }
