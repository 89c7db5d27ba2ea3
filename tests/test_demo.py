"""`patchcollide demo`: the embedded default end to end, and its reuse of a built index."""
from __future__ import annotations

import json
import os

from click.testing import CliRunner
from PIL import Image

from patchcollide.cli import cli


def test_demo_end_to_end_then_reuses_the_index(tmp_path):
    idx, out = tmp_path / "index", tmp_path / "runs" / "demo"
    r = CliRunner().invoke(cli, ["-q", "demo", "--index", str(idx), "--out", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "40817 patches, Flat" in r.output and "625 locations x 16 neighbours" in r.output
    mosaic = Image.open(out / "mosaic.png")
    assert mosaic.width > 800 and mosaic.height > 400
    summary = json.load(open(out / "demo.json"))
    assert summary["result"]["n_locations"] == 625 and summary["versions"]["numpy"]
    # the nearest stored patch is much closer than an unrelated one (the search works)
    assert summary["result"]["median_nearest_l2"] < 4000
    built = os.path.getmtime(idx / "index.faiss")
    r2 = CliRunner().invoke(cli, ["-q", "demo", "--index", str(idx), "--out", str(out)], catch_exceptions=False)
    assert r2.exit_code == 0 and os.path.getmtime(idx / "index.faiss") == built
