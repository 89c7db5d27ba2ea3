"""Writing the HDF5 patch store (store.py has its format and its reader): the parts of a run,
the resumable writer that merges them, and the JSON manifest beside the store.

Writing is crash-safe: each batch of images becomes a part file, written under a temporary
name and renamed into place; only when every part exists are they merged into
``STORE.tmp``, which is fsynced and renamed over ``STORE``. A run killed at any moment and
started again with the same arguments ends with exactly the patches of an uninterrupted
run. Imports only ``core`` and ``store``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Sequence

import h5py
import numpy as np

from ..core.files import atomic_open, fsync_file, replace, write_json
from ..core.jsontypes import canonical
from .store import (CHUNK, FORMAT, FORMAT_VERSION, LIBVER, PATCH_SHAPE, PatchStore, StoreError, attrs_sha256,
                    fingerprint_of, manifest_path_for, os_reason, tables_sha256)


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
        skipped: list[dict] = [{"path": p, "reason": r} for p, r in skipped_before]
        try:
            with h5py.File(tmp, "w", libver=LIBVER) as f:
                try:
                    merged = self._merge_parts(f, n_parts, manifest["config"].get("compression"))
                    skipped += merged["skipped"]
                    _write_tables(f, merged["images"], classes, roots)
                    manifest = self._write_attrs(f, manifest, merged, len(classes), skipped, t0)
                    f.flush()  # a write that fails here is caught below, not in the close
                except OSError:
                    _discard_writes(f)
                    raise
            fsync_file(tmp)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise StoreError(f"{self.path}: writing the store failed ({os_reason(e)}); free disk space and run "
                             f"again: the {n_parts} finished parts in {self.parts_dir} are kept") from None
        manifest["bytes_on_disk"] = os.path.getsize(tmp)
        # The store is renamed in first; a kill before the JSON copy is written is mended by
        # the next run with the same arguments (restore_manifest).
        replace(tmp, self.path)  # and fsync the directory
        write_manifest(self.path, manifest)
        shutil.rmtree(self.parts_dir, ignore_errors=True)
        return manifest

    def _merge_parts(self, f: h5py.File, n_parts: int, compression) -> dict:
        """Append the parts' patches and provenance to ``f`` in order (image indices made global).
        Returns n (patches), n_images, the image columns, the parts' skipped files and the two
        hashes of the fingerprint (two streams, so that it does not depend on how the images
        were cut into parts)."""
        h_patches, h_prov = hashlib.sha256(), hashlib.sha256()
        skipped: list[dict] = []
        n = 0
        img_offset = 0
        # fletcher32: a damaged chunk fails its checksum when read (4 bytes per chunk)
        patches = f.create_dataset(
            "patches", shape=(0, *PATCH_SHAPE), maxshape=(None, *PATCH_SHAPE), dtype=np.uint8,
            chunks=(CHUNK, *PATCH_SHAPE), compression=compression,
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
        return {"n": n, "n_images": img_offset, "images": img_cols, "skipped": skipped,
                "fingerprint": fingerprint_of(h_patches, h_prov)}

    def _write_attrs(self, f: h5py.File, manifest: dict, merged: dict, n_classes: int, skipped: list[dict],
                     t0: float | None) -> dict:
        """The store's attributes and its whole manifest (a new dict: ``manifest`` completed with
        the format, id, fingerprint and counts), with ``attrs_sha256`` over them last."""
        manifest = dict(manifest)
        manifest.update(
            format=FORMAT, format_version=FORMAT_VERSION, store_id=self.store_id,
            fingerprint=merged["fingerprint"], n_patches=int(merged["n"]), n_images=int(merged["n_images"]),
            n_classes=n_classes, n_skipped=len(skipped), created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
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
        return manifest


def _write_tables(f: h5py.File, img_cols: dict[str, list], classes: Sequence[str], roots: Sequence[str]) -> None:
    """The image tables, classes and roots, and ``tables_sha256`` over them."""
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
