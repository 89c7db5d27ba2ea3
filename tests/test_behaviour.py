"""The same PNGs and report values for the demo and a digits-world pair as when
tests/data/behaviour.json was recorded by scripts/behaviour_fingerprint.py, which this test runs
again (one thread, fresh processes). Recorded at 89da586 before the code was reorganised (issue
29), and again when the fork and the least-change start of 1 on trained nets changed the
digits-world pair on purpose (issue 26): the photo demo's PNGs (random weights) stayed the same
bit for bit then, and its report only gained the new settings (config.fork, config.least_change
auto, resolved.fork, resolved.fork_step, resolved.least_change). Recorded a third time when the
strokes view of the distinct term (pixel mode on a trained net) changed the world pair's pixel
run on purpose: the photo demo and the world pair's patch run kept every PNG and every value, and
gained only config.distinct_view and resolved.distinct_view (report.json's digest, a hash of the
whole file with its dates, is not part of the fingerprint)."""
from __future__ import annotations

import json
import os
import sys

import numpy
import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "scripts"))


@pytest.mark.slow
def test_demo_and_a_world_pair_are_bit_for_bit_as_before(tmp_path):
    pytest.importorskip("mlxtend")
    import behaviour_fingerprint

    with open(os.path.join(HERE, "data", "behaviour.json")) as fh:
        before = json.load(fh)
    now_versions = {"torch": torch.__version__, "numpy": numpy.__version__}
    if before["versions"] != now_versions:
        pytest.skip(f"recorded under {before['versions']}, this is {now_versions}: floats may differ; record again "
                    f"with scripts/behaviour_fingerprint.py --json tests/data/behaviour.json at the commit before a change")
    now = behaviour_fingerprint.main(["--out", str(tmp_path / "runs")])
    for run in ("demo", "world_demo"):
        assert now[run]["pngs"] == before[run]["pngs"], run  # every image, pixel for pixel
        assert set(now[run]["reports"]) == set(before[run]["reports"])
        for rep, values in before[run]["reports"].items():
            changed = {k: (v, now[run]["reports"][rep].get(k, "missing")) for k, v in values.items()
                       if now[run]["reports"][rep].get(k, "missing") != v}
            assert not changed, (run, rep, dict(list(changed.items())[:10]))
