"""The HDF5 patch store: its format and a validating reader (ids -> patches); the resumable
writer is in ``store_write``.

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

Writing is crash-safe (``store_write``): parts renamed into place, merged into ``STORE.tmp``,
fsynced and renamed over ``STORE``. Imports only ``core``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence

import h5py
import numpy as np

from ..core.errors import PatchcollideError, first_line
from ..core.files import locked

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


def _read_reason(e: Exception) -> str:
    """A failed read in a few words: HDF5's checksum failure is named as such."""
    text = str(e)
    if "filter returned failure" in text or "checksum" in text.lower():
        return "a checksum does not match"
    if isinstance(e, UnicodeDecodeError):
        return "a text entry is not valid UTF-8"
    if isinstance(e, OSError):
        return os_reason(e)
    return f"{type(e).__name__}: {first_line(e, 100)}"


def os_reason(e: OSError) -> str:
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
