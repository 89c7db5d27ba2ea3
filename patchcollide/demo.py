"""The embedded default, end to end: scikit-image's sample photos -> store -> index ->
search -> patch-mode collision -> polytope check.

``run_demo()`` writes the photos into ``index/photos/`` (so the store's provenance points at
real files), extracts them at stride 4, builds the index (both skipped when already
complete), searches a held-out photo (astronaut) writing a neighbour mosaic, collides it with
another photo (chelsea) in patch space, and samples the polytope. Pretrained VGG-16 when its
weights are available, else random weights, and every output then says so. The defaults fit
a 2-core CPU: 128 x 128 input, the default 300 steps, 200 samples (the README quotes the time
measured on a fresh clone).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time

import numpy as np
from PIL import Image

from .core.files import atomic_path, versions, write_json
from .core.images import sample_photo
from .engine.config import CollideConfig
from .models.build import load_tap
from .offline.extract import ExtractConfig, extract_store
from .offline.knn import MANIFEST_FILE, STORE_FILE, IndexConfig, IndexError_, PatchIndex, build_index
from .offline.store import PatchStore, StoreError
from .world.config import DEMO_OUT, DemoConfig
from .runs.pictures import neighbour_mosaic, save_png
from .runs.run import run_collide, run_sample
from .runs.inputs import dataset_images, dataset_paths
from .runs.sizes import chosen

log = logging.getLogger(__name__)

# Photos that ship inside scikit-image (no download). Colour and greyscale, plus an RGBA logo.
# The demo's source and target (and the benchmark's second pair, stereo_motorcycle -> rocket)
# are held out: a vertex is then made of other photos' patches, never of the target's own.
STORE_PHOTOS = ("coffee", "hubble_deep_field", "immunohistochemistry", "retina", "colorwheel", "logo", "camera",
                "brick", "grass", "gravel", "coins", "moon", "page", "text", "clock")
QUERY_PHOTO = "astronaut"  # held out of the store: its patches are the demo's queries and the source
TARGET_PHOTO = "chelsea"  # the collision target (another image: the paper's Table 5, row 2)


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
    run_dir: str | None = None
    report: dict | None = None  # the collision run's report (with the polytope check)


def write_sample_photos(folder: str, names: tuple[str, ...]) -> list[str]:
    """Write each named sample photo to ``folder/NAME.png`` once; returns the paths."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for name in names:
        p = os.path.join(folder, f"{name}.png")
        if not os.path.exists(p):
            with atomic_path(p) as tmp:
                Image.fromarray(sample_photo(name)).save(tmp, format="PNG")
        paths.append(p)
    return paths


def _check_index_dir(index_dir: str) -> None:
    """Refuse, before anything is written, an index folder whose index or store the demo cannot
    use or did not make: it may be a user's real one (``index`` is also extract's default)."""
    store_path = os.path.join(index_dir, STORE_FILE)
    hint = "pass --index with another folder, or remove that index"
    if os.path.exists(os.path.join(index_dir, MANIFEST_FILE)):
        try:
            PatchIndex(index_dir, store_path).close()
        except (IndexError_, StoreError) as e:
            raise IndexError_(f"{index_dir}/ holds an index the demo cannot use ({e}); {hint}") from None
    if os.path.exists(store_path):
        try:
            with PatchStore(store_path) as st:
                roots = [os.path.realpath(r) for r in st.roots]
        except StoreError as e:
            raise IndexError_(f"{index_dir}/ holds a store the demo cannot use ({e}); {hint}") from None
        if roots != [os.path.realpath(os.path.join(index_dir, "photos"))]:
            raise IndexError_(f"{store_path} is not the demo's store (it was extracted from "
                              f"{', '.join(roots) or 'no folder'}); {hint}")


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


def demo_tap(weights: str = "auto", seed: int = 0):
    """VGG-16 fc6 with ``weights`` (auto | imagenet | random | PATH; models.names.WEIGHTS_RULE):
    by default ImageNet weights when they are in the torch cache or download, else random
    weights (one warning line)."""
    return load_tap("vgg16", "fc6", weights, seed=seed)


def run_demo(index_dir: str = DemoConfig.index_dir, out_dir: str = DEMO_OUT["photos"], stride: int = 4, k: int = 16,
             photos: tuple[str, ...] = STORE_PHOTOS, size: int = DemoConfig.size, steps: int | None = DemoConfig.steps,
             vertices: int = DemoConfig.vertices, samples: int = DemoConfig.samples,
             weights: str = DemoConfig.weights, device: str = DemoConfig.device, progress=None,
             collide_progress=None) -> DemoResult:
    """Build the embedded index (once), search the held-out photo's grid, collide it with the
    target photo in patch space and check the polytope. The settings and their defaults are
    ``DemoConfig``'s (photos world), checked first."""
    DemoConfig(index_dir=index_dir, out_dir=out_dir, size=size, steps=steps, vertices=vertices, samples=samples,
               weights=weights, device=device)
    t = {"start": time.time()}
    _check_index_dir(index_dir)  # a foreign or broken index, and then bad --weights, are refused
    tap = demo_tap(weights)  # before anything is written
    t["model"] = time.time()
    write_sample_photos(os.path.join(index_dir, "photos"), photos)
    query, target = write_sample_photos(os.path.join(out_dir), (QUERY_PHOTO, TARGET_PHOTO))
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
        cfg = CollideConfig(mode="patches", vertices=vertices, steps=steps or CollideConfig.steps, size=size, k=k,
                            device=device)
        run_dir = os.path.join(out_dir, "collision")
        chosen(size, index_dir)  # 128 on 224 x 224 photos on purpose (a CPU's budget): no warning
        run_collide(query, target, run_dir, cfg, tap=tap, pindex=pidx, index_dir=index_dir, overwrite=True,
                    progress=collide_progress)
    t["collide"] = time.time()
    dataset = dataset_images(dataset_paths(index_dir=index_dir), size)  # the store's photos, as `sample` takes them
    report = run_sample(run_dir, samples=samples, dataset_images=dataset, tap=tap, device=device)
    t["sample"] = time.time()
    seconds = {"model": t["model"] - t["start"], "extract": t["extract"] - t["model"],
               "index": t["index"] - t["extract"], "search": t["search"] - t["index"], "collide": t["collide"] - t["search"],
               "sample": t["sample"] - t["collide"], "total": t["sample"] - t["start"]}
    result = DemoResult(index_dir=index_dir, out_dir=out_dir, n_patches=res.n_patches, factory=factory,
                        mosaic=mosaic, n_locations=len(r.ids), k=k,
                        median_nearest_l2=float(np.median(r.distances[:, 0])),
                        mean_nearest_l2=float(np.mean(r.distances[:, 0])), seconds=seconds,
                        run_dir=run_dir, report=report)
    summary = dataclasses.asdict(result)
    summary.pop("report")
    write_json(os.path.join(out_dir, "demo.json"),
               {"notice": report.get("notice"), "result": summary, "query": QUERY_PHOTO, "target": TARGET_PHOTO,
                "store_photos": list(photos), "stride": stride, "versions": versions()})
    return result
