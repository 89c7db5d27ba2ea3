"""The embedded default, end to end: scikit-image's sample photos -> store -> index -> search.

``run_demo()`` writes the photos into ``index/photos/`` (so the store's provenance points at
real files), extracts them at stride 4, builds the index, and searches a held-out photo,
writing a neighbour mosaic. Every step is skipped when its output is already complete.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

import numpy as np
from PIL import Image

from .extract import ExtractConfig, extract_store, versions
from .knn import MANIFEST_FILE, STORE_FILE, IndexConfig, IndexError_, PatchIndex, build_index
from .report import neighbour_mosaic, save_png
from .store import StoreError

log = logging.getLogger(__name__)

# Photos that ship inside scikit-image (no download). Colour and greyscale, plus an RGBA logo.
STORE_PHOTOS = ("chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "colorwheel",
                "logo", "camera", "brick", "grass", "gravel", "coins", "moon", "page", "text", "clock")
QUERY_PHOTO = "astronaut"  # held out of the store: its patches are the demo's queries


@dataclasses.dataclass
class DemoResult:
    index_dir: str
    out_dir: str
    n_patches: int
    factory: str
    mosaic: str
    n_locations: int
    k: int
    median_nearest_l2: float
    mean_nearest_l2: float
    seconds: dict


def sample_photo(name: str) -> np.ndarray:
    """A scikit-image sample photo by name, as stored in the package (uint8, grey, RGB or RGBA)."""
    from skimage import data

    img = getattr(data, name)()
    return img[0] if isinstance(img, tuple) else img


def write_sample_photos(folder: str, names: tuple[str, ...]) -> list[str]:
    """Write each named sample photo to ``folder/NAME.png`` once; returns the paths."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for name in names:
        p = os.path.join(folder, f"{name}.png")
        if not os.path.exists(p):
            Image.fromarray(sample_photo(name)).save(p + ".tmp.png")
            os.replace(p + ".tmp.png", p)
        paths.append(p)
    return paths


def _ensure_index(index_dir: str, store_path: str) -> None:
    """Build the demo index unless a matching one is there. An index that exists but cannot be
    used with the demo store is never overwritten: it may be a user's real index."""
    if not os.path.exists(os.path.join(index_dir, MANIFEST_FILE)):
        build_index(index_dir, store_path, IndexConfig())
        return
    try:
        PatchIndex(index_dir, store_path).close()
    except (IndexError_, StoreError) as e:
        raise IndexError_(f"{index_dir}/ holds an index the demo cannot use ({str(e)[:160]}); "
                          "pass --index with another folder, or remove that index") from None


def run_demo(index_dir: str = "index", out_dir: str = "runs/demo", stride: int = 4, k: int = 16,
             photos: tuple[str, ...] = STORE_PHOTOS, progress=None) -> DemoResult:
    """Build the embedded index (once) and search the held-out photo's 625-location grid."""
    t = {"start": time.time()}
    write_sample_photos(os.path.join(index_dir, "photos"), photos)
    query = write_sample_photos(os.path.join(out_dir), (QUERY_PHOTO,))[0]
    store_path = os.path.join(index_dir, STORE_FILE)
    res = extract_store([os.path.join(index_dir, "photos")], store_path, ExtractConfig(stride=stride), progress=progress)
    t["extract"] = time.time()
    _ensure_index(index_dir, store_path)
    t["index"] = time.time()
    with PatchIndex(index_dir) as pidx:
        r = pidx.search_image(query, k=k, stride=8)
        nb = pidx.store.get(r.ids[:, :8].ravel()).reshape(len(r.ids), 8, 32, 32, 3)
        mosaic = save_png(neighbour_mosaic(r.image, r.query_yx, nb, r.distances), os.path.join(out_dir, "mosaic.png"))
        factory = pidx.manifest["factory"]
    t["search"] = time.time()
    seconds = {"extract": t["extract"] - t["start"], "index": t["index"] - t["extract"],
               "search": t["search"] - t["index"], "total": t["search"] - t["start"]}
    result = DemoResult(index_dir=index_dir, out_dir=out_dir, n_patches=res.n_patches, factory=factory,
                        mosaic=mosaic, n_locations=len(r.ids), k=k,
                        median_nearest_l2=float(np.median(r.distances[:, 0])),
                        mean_nearest_l2=float(np.mean(r.distances[:, 0])), seconds=seconds)
    with open(os.path.join(out_dir, "demo.json"), "w") as fh:
        json.dump({"result": dataclasses.asdict(result), "query": QUERY_PHOTO, "store_photos": list(photos),
                   "stride": stride, "versions": versions()}, fh, indent=2)
    return result
