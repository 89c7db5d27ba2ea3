"""A real `patchcollide extract` killed with SIGKILL and started again ends with exactly the
patches of an uninterrupted run: no duplicates, no gaps, no corrupt file."""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from conftest import changed_after_now, write_photos
from patchcollide.offline.store import PatchStore

NAMES = ("chelsea", "coffee", "rocket", "camera", "immunohistochemistry", "colorwheel", "astronaut", "brick",
         "grass", "gravel", "coins", "moon")
ARGS = ["--stride", "2", "--part-images", "1", "--workers", "1"]  # 12 parts of 9409 patches each


def _cmd(folder, out):
    return [sys.executable, "-m", "patchcollide", "-q", "extract", str(folder), "--out", str(out), *ARGS]


def _content(path):
    with PatchStore(path) as st, h5py.File(path, "r") as f:
        return {
            "patches": st.patches[...], "provenance": st.provenance.copy(), "fingerprint": st.fingerprint,
            "paths": list(f["images/path"][...]), "first": f["images/first"][...], "count": f["images/count"][...],
        }


def _kill_when(proc, ready, timeout=120):
    """SIGKILL proc as soon as ready() is true; return False if it finished first."""
    t = time.time()
    while time.time() - t < timeout:
        if proc.poll() is not None:
            return False
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.005)
    proc.kill()
    raise AssertionError("extraction neither progressed nor finished")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume_photos")
    write_photos(d, NAMES)
    return d


@pytest.fixture(scope="module")
def clean(tmp_path_factory, folder):
    out = tmp_path_factory.mktemp("clean") / "s.h5"
    subprocess.run(_cmd(folder, out), check=True)
    return _content(out)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_resume_after_sigkill_equals_clean_run(tmp_path, folder, clean, seed, record_property):
    out = tmp_path / "s.h5"
    parts = str(out) + ".parts"
    merging = str(out) + ".tmp"
    rng = np.random.default_rng(seed)
    # Kill 1: after a seeded number of finished parts. Kill 2: once the merge has begun (the
    # temporary store appears). Kill 3: a fresh attempt, a seeded moment after its own merge
    # begins (the temporary store made anew). Each is timed from the process's own progress.
    target = int(rng.integers(1, len(NAMES) - 1))
    kills = []
    p = subprocess.Popen(_cmd(folder, out))
    kills.append({"landed": _kill_when(p, lambda: len(glob.glob(os.path.join(parts, "part-*.npz"))) >= target),
                  "phase": f"after {target} parts"})
    assert not os.path.exists(out), "a killed run must not leave a finished-looking store"
    p = subprocess.Popen(_cmd(folder, out))
    kills.append({"landed": _kill_when(p, changed_after_now(merging)), "phase": "merge begun"})
    p = subprocess.Popen(_cmd(folder, out))
    delay = float(rng.uniform(0, 0.3))
    begun, t = changed_after_now(merging), [None]

    def later() -> bool:
        if t[0] is None and begun():
            t[0] = time.time()
        return t[0] is not None and time.time() - t[0] >= delay

    kills.append({"landed": _kill_when(p, later), "phase": f"merge + {delay:.2f} s"})
    if not os.path.exists(out):
        # the store may not be reported complete until it is complete
        assert not os.path.exists(str(out) + ".json") or os.path.exists(out)
    subprocess.run(_cmd(folder, out), check=True)
    record_property("kills", json.dumps(kills))
    assert all(k["landed"] for k in kills), kills  # three kills, three faults injected
    got = _content(out)
    assert got["fingerprint"] == clean["fingerprint"]
    assert np.array_equal(got["patches"], clean["patches"])
    assert np.array_equal(got["provenance"], clean["provenance"])
    assert got["paths"] == clean["paths"]
    assert np.array_equal(got["first"], clean["first"]) and np.array_equal(got["count"], clean["count"])
    # no leftovers: the parts are gone, the manifest is there
    assert not os.path.exists(parts) and os.path.exists(tmp_path / "s.json")
