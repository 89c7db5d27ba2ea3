"""`patchcollide demo`: the embedded default end to end, and its reuse of a built index."""
from __future__ import annotations

import json
import os

from click.testing import CliRunner
from PIL import Image

from patchcollide.cli import cli


def test_demo_end_to_end_then_reuses_the_index(tmp_path, monkeypatch):
    import patchcollide.models.weights as weights

    def unavailable(arch, allow_download=True):  # hermetic: as on a machine without the weights
        raise weights.WeightsUnavailable(f"{arch} weights are not in the torch cache and could not be downloaded")

    monkeypatch.setattr(weights, "imagenet_file", unavailable)
    idx, out = tmp_path / "index", tmp_path / "runs" / "demo"
    small = ["--size", "64", "--steps", "15", "--vertices", "2", "--samples", "16", "--device", "cpu"]
    r = CliRunner().invoke(cli, ["-q", "demo", "--index", str(idx), "--out", str(out), *small], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "36015 patches, Flat" in r.output and "625 locations x 16 neighbours" in r.output  # target held out
    # no pretrained weights here: the demo says it used random ones, in its output and report
    assert "RANDOM WEIGHTS" in r.output
    rep = json.load(open(out / "collision" / "report.json"))
    assert rep["model"]["kind"] == "random" and rep["polytope"]["samples"] == 16
    assert rep["polytope"]["dataset_mean_pairwise_l2"] > rep["polytope"]["vertex_mean_pairwise_l2"] > 0
    assert os.path.getsize(out / "collision" / "contact_sheet.png") > 1000
    mosaic = Image.open(out / "mosaic.png")
    assert mosaic.width > 800 and mosaic.height > 400
    summary = json.load(open(out / "demo.json"))
    assert summary["result"]["n_locations"] == 625 and summary["versions"]["numpy"]
    # the search works: the nearest stored patch is far closer than a random stored patch
    import numpy as np

    from patchcollide.core.images import cut_patches, grid_positions, load_rgb
    from patchcollide.offline.store import PatchStore

    with PatchStore(idx / "patches.h5") as st:
        q = cut_patches(load_rgb(out / "astronaut.png")[0], grid_positions((224, 224), 8, cover=True))
        rand = st.get(np.random.default_rng(0).choice(len(st), len(q)))
    random_l2 = np.sqrt(((q.astype(float) - rand.astype(float)) ** 2).sum((1, 2, 3)))
    nearest = summary["result"]["median_nearest_l2"]
    assert nearest < 0.6 * np.median(random_l2), (nearest, np.median(random_l2))
    from patchcollide.offline.knn import PatchIndex

    with PatchIndex(idx) as pidx:  # per location: the nearest is never farther than a random stored patch
        res = pidx.search_image(str(out / "astronaut.png"), k=1)
    assert np.all(res.distances[:, 0] <= random_l2 + 1e-3)
    assert np.isclose(np.median(res.distances[:, 0]), nearest)
    built = os.path.getmtime(idx / "index.faiss")
    r2 = CliRunner().invoke(cli, ["-q", "demo", "--index", str(idx), "--out", str(out), *small],
                            catch_exceptions=False)
    assert r2.exit_code == 0 and os.path.getmtime(idx / "index.faiss") == built


def test_demo_never_overwrites_an_index_it_cannot_use(tmp_path, small_store, flat_index):
    import shutil

    idx = tmp_path / "index"
    shutil.copytree(flat_index, idx)  # an index for another store, whose store is not beside it
    before = open(idx / "index.faiss", "rb").read()
    r = CliRunner().invoke(cli, ["-q", "demo", "--index", str(idx), "--out", str(tmp_path / "out")])
    assert r.exit_code == 2 and "holds an index the demo cannot use" in r.output
    assert open(idx / "index.faiss", "rb").read() == before
