"""The working size that a world or an index implies, and the one warning when --size differs.

A digits world (``world.json``) was trained at one size; an index's patches were cut from
images of one size. A run at another ``--size`` resamples every input and shows the net images
at a size it never saw, silently: the net's own confidence in the target falls (1.000 -> 0.840
on the world's 3 -> 7 at 224 instead of 112). Torch-free: it runs before anything loads.
"""
from __future__ import annotations

import json
import logging
import os

log = logging.getLogger(__name__)

_warned: set = set()


def _world_size(folder: str) -> int | None:
    try:
        with open(os.path.join(folder, "world.json")) as fh:
            w = json.load(fh)
        return int(w["config"]["size"]) if w.get("kind") == "patchcollide-world" else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _index_image_size(index_dir: str) -> int | None:
    """The side of the index's images when all of them are one square size, else None."""
    try:
        with open(os.path.join(index_dir, "index.json")) as fh:
            store = os.path.join(index_dir, json.load(fh)["store"]["path"])
        import h5py  # not torch; only where an index is there to read

        with h5py.File(store, "r") as f:
            sizes = {tuple(s) for s in f["images/size"][:]}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if len(sizes) == 1:
        h, w = sizes.pop()
        return int(h) if h == w else None
    return None


def working_size(index_dir: str | None = None, weights: str | None = None) -> tuple[int, tuple[str, str]] | None:
    """(side, (what says so, what another size costs)) where a world or an index implies one: the world whose weights/
    folder holds the --weights file or whose folder holds the index, else the index's images
    when they are all one square size. None where nothing says."""
    for path, what in ((weights, "weights"), (index_dir, "index")):
        if path and (os.path.isfile(path) or os.path.isdir(path)):
            world = os.path.dirname(os.path.dirname(os.path.abspath(path))) if what == "weights" else \
                os.path.dirname(os.path.abspath(path))
            if (s := _world_size(world)) is not None:
                return s, (f"the world {os.path.relpath(world)} was made at {s} x {s}",
                           "every input is resampled and the net sees images at a size it was not trained on")
    if index_dir and os.path.isdir(index_dir) and (s := _index_image_size(index_dir)) is not None:
        return s, (f"the patches of the index in {os.path.relpath(index_dir)}/ were cut from {s} x {s} images",
                   "the source's patches are at another scale than the stored ones")
    return None


def chosen(size: int, index_dir: str | None = None, weights: str | None = None) -> None:
    """Say nothing later about ``size`` against these files: a caller that picked it on purpose
    (the photo demo runs at 128 on an index of 224 x 224 photos, to fit a CPU)."""
    found = working_size(index_dir, weights)
    if found is not None:
        _warned.add((size, found))


def warn_size(size: int, index_dir: str | None = None, weights: str | None = None, option: str = "--size") -> None:
    """One warning per process and (size, reason) when ``size`` differs from ``working_size``."""
    found = working_size(index_dir, weights)
    if found is None or found[0] == size or (size, found) in _warned:
        return
    _warned.add((size, found))
    s, (why, cost) = found
    log.warning("%s %d: %s; use %s %d (at %d %s)", option, size, why, option, s, size, cost)
