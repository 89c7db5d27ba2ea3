"""The Ray executor (``--executor ray``) on a local Ray cluster of 2 CPUs that this module
starts and stops: a batch and an extraction equal the local executor's, a worker killed mid-job
is retried and the batch still ends byte-identical, and Ray missing or a cluster too small for
the options gives one line that names the fix. CPU, random VGG-16 at 32 x 32."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from patchcollide.cli import cli
from patchcollide.batch.folder import BatchOptions
from patchcollide.executors import make_executor

TINY = {"size": 32, "steps": 3, "min_steps": 0, "vertices": 2, "samples": 4}
# values that differ between any two runs (report.json's digest: a hash over the whole file, its times included)
TIMING = {"seconds", "timings", "created", "updated", "time", "date", "digest"}


@pytest.fixture(scope="module")
def ray_cluster():
    try:
        import ray
    except ImportError:
        if os.environ.get("CI"):  # a skip in CI would pass without the executor's tests
            pytest.fail("CI is set but Ray is not installed: install the extra (pip install -e '.[test,ray]'; .ci/run "
                        "does)")
        pytest.skip("Ray is not installed (pip install 'patchcollide[ray]')")
    import logging

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield ray
    ray.shutdown()


@contextlib.contextmanager
def threads(n: int):
    """torch with ``n`` threads, as a Ray job with ``--cpus-per-job n`` runs: float results depend on it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def batch(*args) -> object:
    return CliRunner().invoke(cli, ["-q", "batch", *map(str, args), "--weights", "random", "--device", "cpu"])


def write_jobs(path, jobs) -> str:
    Path(path).write_text("".join(json.dumps(j) + "\n" for j in jobs))
    return str(path)


def without_timing(obj, root: str):
    """``obj`` (parsed JSON) without the values that differ between two runs: timings, dates and
    the output folder's own path."""
    if isinstance(obj, dict):
        return {k: without_timing(v, root) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [without_timing(v, root) for v in obj]
    return obj.replace(root, "<out>") if isinstance(obj, str) else obj


def run_files(out: str, job: str) -> dict[str, bytes]:
    d = Path(out, job)
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.suffix in (".png", ".npz")}


def same_run(out_a: str, out_b: str, job: str) -> None:
    """Two runs of ``job`` equal: every PNG and state.npz byte for byte, report.json but its timings."""
    fa, fb = run_files(out_a, job), run_files(out_b, job)
    assert fa.keys() == fb.keys() and "state.npz" in fa and "vertex_0.png" in fa
    for name in fa:
        assert fa[name] == fb[name], f"{job}/{name} differs"
    ra, rb = (json.loads(Path(o, job, "report.json").read_text()) for o in (out_a, out_b))
    assert without_timing(ra, out_a) == without_timing(rb, out_b)


@pytest.fixture(scope="module")
def jobs(tmp_path_factory, photos_dir, query_image):
    """A: patch mode, astronaut -> chelsea; B: pixel mode, coffee -> chelsea; C: camera -> rocket."""
    d = tmp_path_factory.mktemp("rayjobs")

    def p(name):
        return os.path.join(photos_dir, f"{name}.png")

    return write_jobs(d / "abc.jsonl", [
        {"id": "A", "source": query_image, "target": p("chelsea"), "mode": "patches", "k": 2, **TINY},
        {"id": "B", "source": p("coffee"), "target": p("chelsea"), "mode": "pixel", **TINY},
        {"id": "C", "source": p("camera"), "target": p("rocket"), "mode": "pixel", **TINY}])


@pytest.fixture(scope="module")
def local_batch(tmp_path_factory, jobs, flat_index):
    out = str(tmp_path_factory.mktemp("local") / "out")
    with threads(1):  # as a Ray job with the default --cpus-per-job 1
        r = batch(jobs, "--out", out, "-i", flat_index)
    assert r.exit_code == 0, r.output
    return out


def test_a_ray_batch_equals_the_local_one(ray_cluster, tmp_path, jobs, flat_index, local_batch):
    out = str(tmp_path / "out")
    r = batch(jobs, "--out", out, "-i", flat_index, "--executor", "ray")
    assert r.exit_code == 0, r.output
    assert "all 3 jobs done, 3 run now" in r.output
    for job in "ABC":
        same_run(local_batch, out, job)
    a, b = (json.loads(Path(o, "batch.json").read_text()) for o in (local_batch, out))
    assert [(e["id"], e["status"], e["metrics"]) for e in a["jobs"]] == [(e["id"], e["status"], e["metrics"])
                                                                        for e in b["jobs"]]
    assert not os.path.exists(os.path.join(out, ".tmp", "A")) and not os.listdir(os.path.join(out, ".partial"))
    # the same guarantees: a second run skips the finished jobs
    before = {j: os.stat(os.path.join(out, j, "report.json")).st_mtime_ns for j in "ABC"}
    r = batch(jobs, "--out", out, "-i", flat_index, "--executor", "ray")
    assert r.exit_code == 0 and "all 3 jobs done, 0 run now" in r.output, r.output
    assert before == {j: os.stat(os.path.join(out, j, "report.json")).st_mtime_ns for j in "ABC"}


def test_a_failing_job_is_recorded_with_its_traceback_and_retried(ray_cluster, tmp_path, photos_dir, flat_index):
    """A job whose target is a truncated PNG (its header passes the job file's check) fails in its
    worker: batch.json has the error, .failed/ the worker's traceback, the other job finishes;
    --retry-failed runs only it once the file is whole."""
    bad = tmp_path / "bad.png"
    whole = Path(photos_dir, "chelsea.png").read_bytes()
    bad.write_bytes(whole[: len(whole) // 2])
    src = os.path.join(photos_dir, "coffee.png")
    jobs = write_jobs(tmp_path / "j.jsonl", [{"id": "ok", "source": src, "target": src, "mode": "pixel", **TINY},
                                             {"id": "bad", "source": src, "target": str(bad), "mode": "pixel", **TINY}])
    out = str(tmp_path / "out")
    r = batch(jobs, "--out", out, "--executor", "ray")
    assert r.exit_code == 1 and "1 failed" in r.output and "--retry-failed" in r.output, r.output
    entries = {e["id"]: e for e in json.loads(Path(out, "batch.json").read_text())["jobs"]}
    assert entries["ok"]["status"] == "done" and entries["bad"]["status"] == "failed"
    assert "bad.png" in entries["bad"]["error"]
    tb = Path(out, entries["bad"]["traceback"]).read_text()
    assert "Traceback" in tb and "load_input" in tb  # the worker's own traceback
    bad.write_bytes(whole)
    ok_mtime = os.stat(os.path.join(out, "ok", "report.json")).st_mtime_ns
    r = batch(jobs, "--out", out, "--executor", "ray", "--retry-failed")
    assert r.exit_code == 0 and "all 2 jobs done, 1 run now" in r.output, r.output
    assert os.stat(os.path.join(out, "ok", "report.json")).st_mtime_ns == ok_mtime


def holders(path: str) -> list[int]:
    """Pids of the processes that have ``path`` open (the job lock a worker holds)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == path:
                    pids.append(int(pid))
                    break
            except OSError:
                continue
    return pids


def test_a_worker_killed_mid_job_is_retried_and_the_batch_ends_byte_identical(ray_cluster, tmp_path, photos_dir,
                                                                              record_property):
    """SIGKILL to the worker process that runs job L, after its first checkpoint: Ray runs the task
    again on another worker, and the batch ends with outputs byte-identical to the local executor's
    (both with 2 torch threads)."""
    from patchcollide.batch.jobfile import read_jobs
    from patchcollide.batch.runner import run_batch

    long = {**TINY, "steps": 24}
    spec = [{"id": "L", "source": os.path.join(photos_dir, "coffee.png"),
             "target": os.path.join(photos_dir, "rocket.png"), "mode": "pixel", **long}]
    jobs = write_jobs(tmp_path / "l.jsonl", spec)
    local = str(tmp_path / "local")
    with threads(2):
        assert batch(jobs, "--out", local, "--checkpoint-every", "3").exit_code == 0

    out = str(tmp_path / "ray")
    jobfile = read_jobs(jobs, out, samples=4, device="cpu")
    result: dict = {}

    def go():
        try:
            options = BatchOptions(weights="random", device="cpu", checkpoint_every=3)
            result["res"] = run_batch(jobfile, out, options, executor=make_executor("ray", cpus_per_job=2))
        except BaseException as e:  # noqa: BLE001 - reported by the assertions below
            result["error"] = e

    t = threading.Thread(target=go)
    t.start()
    lock = os.path.join(out, ".locks", "L.lock")
    checkpoint = os.path.join(out, ".partial", "L")
    deadline, victim = time.time() + 120, None
    while time.time() < deadline and victim is None and t.is_alive():
        if os.path.isdir(checkpoint) and os.listdir(checkpoint):  # a checkpoint is saved: the job is under way
            pids = [p for p in holders(lock) if p != os.getpid()]
            if pids:
                victim = pids[0]
                os.kill(victim, signal.SIGKILL)
                break
        time.sleep(0.05)
    finished_before = os.path.exists(os.path.join(out, "L", "report.json"))
    for _ in range(100):
        if victim is None or not os.path.exists(f"/proc/{victim}"):
            break
        time.sleep(0.05)
    landed = victim is not None and not finished_before and not os.path.exists(f"/proc/{victim}")
    record_property("kills", json.dumps([{"landed": landed, "phase": "a Ray worker optimising, after the job's first "
                                                                      "checkpoint"}]))
    assert victim is not None, "the kill did not land: no worker was seen holding the job after a checkpoint"
    assert not finished_before, "the job had finished before the kill"
    assert landed, "the killed worker is still alive"
    t.join(300)
    assert not t.is_alive() and "error" not in result, result.get("error")
    assert result["res"].ran == ["L"] and result["res"].mine[0]["status"] == "done"
    same_run(local, out, "L")


def test_a_ray_extraction_equals_the_local_one(ray_cluster, tmp_path, photos_dir):
    """Two images per chunk, so the parts come from three tasks and are renumbered in order."""
    from patchcollide.offline.store import PatchStore

    stores = {}
    for executor in ("local", "ray"):
        out = str(tmp_path / executor / "patches.h5")
        r = CliRunner().invoke(cli, ["-q", "extract", photos_dir, "--out", out, "--stride", "16", "--part-images", "2",
                                     "--executor", executor])
        assert r.exit_code == 0, r.output
        assert not os.path.exists(out + ".parts")
        stores[executor] = out
    with PatchStore(stores["local"]) as a, PatchStore(stores["ray"]) as b:
        assert a.fingerprint == b.fingerprint and len(a) == len(b) == 6 * 169
        assert np.array_equal(a.get(np.arange(len(a))), b.get(np.arange(len(b))))
        assert np.array_equal(a.provenance, b.provenance)
        assert [a.image_record(i)["path"] for i in range(a.n_images)] == [b.image_record(i)["path"]
                                                                          for i in range(b.n_images)]


def test_a_ray_extraction_goes_on_from_a_local_ones_parts(ray_cluster, tmp_path, photos_dir):
    """Kill semantics stay: the parts a killed local run left are kept, Ray adds the rest, and the
    store equals one made in one go."""
    from patchcollide.offline.extract import ExtractConfig, extract_store
    from patchcollide.offline.store import PatchStore
    from patchcollide.offline.store_write import StoreWriter

    cfg = ExtractConfig(stride=16, part_images=2)
    whole = extract_store([photos_dir], str(tmp_path / "whole.h5"), cfg)
    out = str(tmp_path / "resumed.h5")
    calls = {"n": 0}
    real = StoreWriter.write_part

    def die_after_one(self, i, part):
        if calls["n"] == 1:
            raise KeyboardInterrupt  # the process stops after its first part
        calls["n"] += 1
        real(self, i, part)

    with pytest.MonkeyPatch.context() as mp, pytest.raises(KeyboardInterrupt):
        mp.setattr(StoreWriter, "write_part", die_after_one)
        extract_store([photos_dir], out, cfg)
    assert sorted(os.listdir(out + ".parts")) == ["part-000000.npz", "state.json"]  # the fault landed
    res = extract_store([photos_dir], out, cfg, executor=make_executor("ray"))
    assert res.resumed
    with PatchStore(whole.path) as a, PatchStore(out) as b:
        assert a.fingerprint == b.fingerprint and np.array_equal(a.provenance, b.provenance)


@pytest.mark.parametrize("command", ["batch", "extract"])
def test_executor_ray_without_ray_installed_names_the_extra(tmp_path, monkeypatch, photos_dir, command):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    out = tmp_path / "out"
    if command == "batch":
        src = os.path.join(photos_dir, "coffee.png")
        jobs = write_jobs(tmp_path / "j.jsonl", [{"id": "a", "source": src, "target": src, "mode": "pixel", **TINY}])
        r = batch(jobs, "--out", out, "--executor", "ray")
    else:
        r = CliRunner().invoke(cli, ["extract", photos_dir, "--out", str(out / "p.h5"), "--executor", "ray"])
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert lines == ["Error: --executor ray: Ray is not installed; install the extra with "
                     "pip install 'patchcollide[ray]', or use --executor local"]
    assert not out.exists()  # nothing written, nothing loaded


@pytest.mark.parametrize("args, needle", [
    (["--address", "auto"], "--address is not an option of --executor local; add --executor ray or leave out "
                            "--address"),
    (["--gpus-per-job", "1"], "--gpus-per-job is not an option of --executor local; add --executor ray"),
    (["--executor", "ray", "--gpus-per-job", "1"], "--gpus-per-job 1: no node of the Ray cluster has 1 GPUs (the "
                                                   "largest has 0), so no job could start; lower --gpus-per-job or "
                                                   "add a node with more GPUs"),
    (["--executor", "ray", "--cpus-per-job", "4"], "--cpus-per-job 4: no node of the Ray cluster has 4 CPUs (the "
                                                   "largest has 2)"),
])
def test_ray_options_that_cannot_work_are_one_line(ray_cluster, tmp_path, photos_dir, args, needle):
    src = os.path.join(photos_dir, "coffee.png")
    jobs = write_jobs(tmp_path / "j.jsonl", [{"id": "a", "source": src, "target": src, "mode": "pixel", **TINY}])
    r = batch(jobs, "--out", tmp_path / "out", *args)
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and needle in r.output, r.output
    assert not os.path.exists(tmp_path / "out")  # checked before anything is loaded or written


def test_a_ray_batch_by_address_shows_its_jobs_on_a_terminal(ray_cluster, tmp_path, photos_dir):
    """Another process joins the running cluster with --address HOST:PORT; its bar names the
    running jobs and counts them as they end, and the summary table follows, as with local."""
    from conftest import on_a_terminal

    address = ray_cluster.get_runtime_context().gcs_address
    src = os.path.join(photos_dir, "coffee.png")
    jobs = write_jobs(tmp_path / "j.jsonl", [{"id": f"j{i}", "source": src, "target": os.path.join(photos_dir, t),
                                              "mode": "pixel", **TINY} for i, t in enumerate(["rocket.png", "chelsea.png"])])
    out = str(tmp_path / "out")
    shown = on_a_terminal(["batch", jobs, "--out", out, "--weights", "random", "--device", "cpu", "--executor", "ray",
                           "--address", address], stdout_too=True)
    assert "running j0" in shown or "running j1" in shown, shown
    assert "2/2" in shown and "all 2 jobs done, 2 run now" in shown, shown
    assert "NOTE: RANDOM WEIGHTS" in shown and "conv.   rel.err" in shown  # the summary table
    assert [e["status"] for e in json.loads(Path(out, "batch.json").read_text())["jobs"]] == ["done", "done"]
