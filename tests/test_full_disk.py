"""Real out-of-space trials: each command writes onto a small tmpfs that the test mounts, runs
out of room, and must fail with one line, keep what was written before, leave no partial
output at the final name, and succeed once the file system is made larger (remount). Where
mounting is not allowed (no root, no CAP_SYS_ADMIN) the trials skip and say why; the
RLIMIT_FSIZE trials of test_faults.py run everywhere."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "patchcollide", "-q", *map(str, args)]


class SmallDisk:
    """A tmpfs of ``size`` bytes at ``path``, unmounted at the end."""

    def __init__(self, path, size: int):
        self.path = str(path)
        os.makedirs(self.path, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", self.path], capture_output=True,
                           text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({(r.stderr or r.stdout).strip() or r.returncode}); "
                        "the RLIMIT_FSIZE trials in test_faults.py cover full disks instead")

    def grow(self, size: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", self.path], check=True, capture_output=True)

    def free(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def close(self) -> None:
        subprocess.run(["umount", "-l", self.path], capture_output=True)


@pytest.fixture
def disk(tmp_path):
    made = []

    def make(size: int) -> SmallDisk:
        d = SmallDisk(tmp_path / f"disk{len(made)}", size)
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


def one_line_error(r) -> str:
    lines = [ln for ln in (r.stdout + r.stderr).strip().splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stdout + r.stderr
    return lines[0]


def digest(path) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def store_digest(path) -> str:
    from patchcollide.offline.store import PatchStore

    with PatchStore(str(path)) as st:
        return hashlib.sha256(st.patches[...].tobytes()).hexdigest()


def test_extract_on_a_full_disk_then_room(tmp_path, photos_dir, small_store, disk):
    d = disk(4 * 2**20)  # the store of the six photos needs about 11 MiB
    out = os.path.join(d.path, "s.h5")
    cmd = cli("extract", photos_dir, "--out", out, "--stride", "8", "--part-images", "2")
    msg = one_line_error(subprocess.run(cmd, capture_output=True, text=True))
    assert "No space left on device" in msg and "free space" in msg, msg
    assert not os.path.exists(out)
    d.grow(64 * 2**20)
    subprocess.run(cmd, check=True, capture_output=True)
    assert store_digest(out) == store_digest(small_store)


def test_index_build_on_a_full_disk_keeps_nothing_half_written(tmp_path, small_store, disk):
    d = disk(8 * 2**20)  # a Flat index over 3,750 patches is about 46 MB
    idx = os.path.join(d.path, "idx")
    cmd = cli("index", "build", "--index", idx, "--store", small_store, "--factory", "Flat")
    msg = one_line_error(subprocess.run(cmd, capture_output=True, text=True))
    assert "free disk space" in msg or "No space left" in msg, msg
    assert not os.path.exists(os.path.join(idx, "index.faiss"))
    assert not [f for f in os.listdir(idx) if ".tmp" in f] if os.path.isdir(idx) else True
    d.grow(128 * 2**20)
    subprocess.run(cmd, check=True, capture_output=True)
    from patchcollide.offline.knn import PatchIndex

    with PatchIndex(idx) as p:
        assert p.index.ntotal == 3750


def test_collide_refuses_a_full_disk_before_optimising(tmp_path, query_image, disk):
    d = disk(256 * 1024)
    out = os.path.join(d.path, "run")
    r = subprocess.run(cli("collide", "--source", query_image, "--target", query_image, "--mode", "pixel",
                           "--weights", "random", "--size", "64", "--steps", "3000", "--out", out),
                       capture_output=True, text=True, timeout=120)  # 3,000 steps would take many minutes
    msg = one_line_error(r)
    assert f"--out {out}: only " in msg and f"MiB free in {d.path}, the outputs need about" in msg, msg
    assert os.listdir(d.path) == []


def test_batch_on_a_full_disk_keeps_finished_jobs_then_finishes(tmp_path, photos_dir, disk):
    jobs = tmp_path / "jobs.jsonl"
    lines = [{"id": f"j{i}", "source": os.path.join(photos_dir, f"{s}.png"), "target": os.path.join(photos_dir, "chelsea.png"),
              "mode": "pixel", "size": 32, "steps": 10, "min_steps": 10, "vertices": 2, "samples": 0, "seed": i}
             for i, s in enumerate(("coffee", "rocket"))]
    jobs.write_text("".join(json.dumps(j) + "\n" for j in lines))
    d = disk(32 * 2**20)
    out = os.path.join(d.path, "out")
    cmd = cli("batch", jobs, "--out", out, "--weights", "random", "--device", "cpu")
    subprocess.run([*cmd, "--shard", "1/2"], check=True, capture_output=True)  # j0 while there is room
    before = {f: digest(os.path.join(out, "j0", f)) for f in os.listdir(os.path.join(out, "j0"))}
    filler = os.path.join(d.path, "filler")
    with open(filler, "wb") as fh:  # leave about 100 kB
        fh.write(b"\0" * max(0, d.free() - 100_000))
    msg = one_line_error(subprocess.run(cmd, capture_output=True, text=True))
    assert "No space left on device" in msg and "free space and run again" in msg, msg
    assert {f: digest(os.path.join(out, "j0", f)) for f in os.listdir(os.path.join(out, "j0"))} == before
    assert not os.path.exists(os.path.join(out, "j1"))
    os.remove(filler)
    subprocess.run(cmd, check=True, capture_output=True)
    status = {j["id"]: j["status"] for j in json.load(open(os.path.join(out, "batch.json")))["jobs"]}
    assert status == {"j0": "done", "j1": "done"}
