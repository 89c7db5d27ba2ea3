"""No lost work in `collide` and `batch`: checkpoints every N steps and on SIGINT/SIGTERM, a
resumed run ends bit-identical to one never stopped (CPU), a failed final write keeps the
optimised state, and the output is checked before any optimising. Random AlexNet at 64 x 64
(smoke runs: only the mechanics are judged here; AlexNet builds and runs in a fraction of
VGG-16's time, and the loop is the same for every model)."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from conftest import sample, source_and_target, vertex_pngs
from patchcollide.engine.checkpoints import Checkpointer, Interrupted, partial_dir
from patchcollide.cli import cli
from patchcollide.engine.collide import collide
from patchcollide.engine.config import CollideConfig, CollideError
from patchcollide.core.images import resize_crop
from patchcollide.models.build import load_tap

S = 64
CFG = dict(mode="patches", vertices=2, steps=40, size=S, k=4, device="cpu", tol=1e-6,
           prune=((0.33, 8), (0.5, 4)))  # prunes at steps 13 and 20


def photo(name: str) -> np.ndarray:
    return np.asarray(resize_crop(Image.fromarray(sample(name)).convert("RGB"), S))


@pytest.fixture(scope="module")
def tap():
    return load_tap("alexnet", "fc6", "random", seed=0)


@pytest.fixture(scope="module")
def pidx(flat_index):
    from patchcollide.offline.knn import PatchIndex

    with PatchIndex(flat_index) as p:
        yield p


@pytest.fixture(scope="module")
def clean(tap, pidx):
    return collide(tap, photo("astronaut"), photo("chelsea"), CollideConfig(**CFG), index=pidx)


class FakeSignals:
    """Stands for checkpoints.StopSignals: a signal 'arrives' when the loop reports ``at``."""

    def __init__(self, at: int):
        self.at, self.signum = at, None

    def progress(self, step, total, loss, worst):
        if step == self.at:
            self.signum = signal.SIGINT


def test_a_run_interrupted_between_prunes_resumes_bit_identical(tmp_path, tap, pidx, clean):
    cfg = CollideConfig(**CFG)
    stop = FakeSignals(at=17)
    ck = Checkpointer(str(tmp_path / "ck"), {"run": "a"}, every=7, stop=stop)
    with pytest.raises(Interrupted, match=r"^stopped by Ctrl-C \(SIGINT\) at step 17/40: checkpoint saved in .*checkpoint.pt$") as e:
        collide(tap, photo("astronaut"), photo("chelsea"), cfg, index=pidx, checkpoint=ck, progress=stop.progress)
    assert e.value.exit_code == 130
    state = ck.load()
    assert state["step"] == 17 and not state["done"] and state["param"]["theta"].shape[2] == 8  # between the prunes
    stop.signum = None
    steps = []
    res = collide(tap, photo("astronaut"), photo("chelsea"), cfg, index=pidx, checkpoint=ck, resume=state,
                  progress=lambda s, *a: steps.append(s))
    assert steps[0] == 18 and res.steps == clean.steps == 40
    assert torch.equal(res.vertices, clean.vertices)  # bit-identical
    assert res.history == clean.history and res.mixing == clean.mixing
    # the optimiser's moments are part of it: without them the run ends elsewhere
    state["opt"]["state"] = {}
    other = collide(tap, photo("astronaut"), photo("chelsea"), cfg, index=pidx, resume=state)
    assert not torch.equal(other.vertices, clean.vertices)


@pytest.mark.parametrize("at", [10, 25])  # before and after the fork at step 16
def test_a_forked_run_interrupted_before_or_after_its_fork_resumes_bit_identical(tmp_path, tap, pidx, at):
    cfg = CollideConfig(**{**CFG, "fork": 0.4})
    assert cfg.phases()["fork"] == 16
    clean = collide(tap, photo("astronaut"), photo("chelsea"), cfg, index=pidx)
    stop = FakeSignals(at=at)
    ck = Checkpointer(str(tmp_path / "ck"), {"run": "a"}, every=100, stop=stop)
    with pytest.raises(Interrupted):
        collide(tap, photo("astronaut"), photo("chelsea"), cfg, index=pidx, checkpoint=ck, progress=stop.progress)
    state = ck.load()
    assert state["step"] == at and state["param"]["theta"].shape[0] == (1 if at < 16 else 2)  # one vertex, or two
    res = collide(tap, photo("astronaut"), photo("chelsea"), cfg, index=pidx, resume=state)
    assert res.vertices.shape[0] == 2 and torch.equal(res.vertices, clean.vertices)
    assert res.history == clean.history


def test_a_checkpoint_of_other_settings_is_refused(tmp_path, tap, pidx):
    cfg = CollideConfig(**{**CFG, "steps": 3, "min_steps": 0})
    ck = Checkpointer(str(tmp_path / "ck"), {"config": {"steps": 3}}, every=1)
    collide(tap, photo("astronaut"), photo("chelsea"), cfg, index=pidx, checkpoint=ck)
    assert ck.load()["done"]
    with pytest.raises(Exception, match=r"belongs to a run with other config; resume with the same settings, or "
                                        r"delete it and start again$"):
        Checkpointer(ck.directory, {"config": {"steps": 4}}).load()
    (tmp_path / "ck" / "checkpoint.pt").write_bytes(b"torn")
    with pytest.raises(Exception, match=r"^damaged checkpoint .*checkpoint.pt \(its sha256 differs from the one "
                                        r"recorded in progress.json when it was saved\): delete it and start the run "
                                        r"again, or start it again with --overwrite$"):
        ck.load()


def test_a_failed_final_write_keeps_the_state_and_resume_writes_without_optimising(tmp_path, tap, pidx, flat_index,
                                                                                   monkeypatch):
    from patchcollide.runs import run as runs
    src, tgt = source_and_target(tmp_path)
    cfg = CollideConfig(**{**CFG, "steps": 20})
    runs.run_collide(src, tgt, str(tmp_path / "clean"), cfg, tap=tap, pindex=pidx, index_dir=flat_index)
    real = runs.write_run

    def full_disk(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "run" / "vertex_0.png"))

    monkeypatch.setattr(runs, "write_run", full_disk)
    out = str(tmp_path / "run")
    with pytest.raises(CollideError, match=r"^could not write the run to .*run \(No space left on device\); the "
                                           r"optimised state is saved in .*run.partial/checkpoint.pt: free space, "
                                           r"then `patchcollide collide --resume .*run` writes the run without "
                                           r"optimising again$"):
        runs.run_collide(src, tgt, out, cfg, tap=tap, pindex=pidx, index_dir=flat_index)
    assert os.path.isfile(os.path.join(partial_dir(out), "checkpoint.pt")) and not os.path.exists(out)
    monkeypatch.setattr(runs, "write_run", real)
    monkeypatch.setattr(runs, "load_tap", lambda *a, **k: tap)  # resume rebuilds the model from the record
    steps = []
    report = runs.resume_collide(out, progress=lambda s, *a: steps.append(s))
    assert steps == []  # nothing optimised again
    assert report["steps"] == 20 and vertex_pngs(tmp_path / "run") == vertex_pngs(tmp_path / "clean")
    assert not os.path.exists(partial_dir(out))  # the checkpoint goes once the run is complete


def test_sigterm_stops_a_run_with_its_checkpoint_and_exit_code(tmp_path, tap, flat_index):
    from patchcollide.runs import run as runs
    src, tgt = source_and_target(tmp_path)
    out = str(tmp_path / "run")

    def progress(step, *a):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # a real signal, caught by the run's handler

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted, match=r"^stopped by SIGTERM at step 3/40: checkpoint saved in .*; continue with "
                                          r"`patchcollide collide --resume .*run`$") as e:
        runs.run_collide(src, tgt, out, CollideConfig(**{**CFG, "mode": "pixel"}), tap=tap, index_dir=flat_index,
                         progress=progress, checkpoint_every=0)
    assert e.value.exit_code == 143 and signal.getsignal(signal.SIGTERM) is before  # the handler is given back
    assert Checkpointer(partial_dir(out), {}).read()["step"] == 3 and not os.path.exists(out)


def test_the_output_is_checked_before_the_model_loads(tmp_path, query_image, monkeypatch):
    from patchcollide.runs import run as runs
    def no_model(*a, **k):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(runs, "load_tap", no_model)
    (tmp_path / "file").write_text("x")
    args = ["collide", "--source", query_image, "--target", query_image, "--mode", "pixel", "--size", "64",
            "--weights", "random"]
    r = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "file" / "run")])
    assert r.exit_code == 2 and "is a file, not a folder; choose another --out" in r.output, r.output
    monkeypatch.setattr(os, "statvfs", lambda p: os.statvfs_result((4096, 4096, 100, 10, 10, 100, 50, 50, 0, 255)))
    r = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "run")])
    assert r.exit_code == 2 and "only 0.0 MiB free" in r.output and "free space or choose another --out" in r.output, \
        r.output


def test_resume_errors_are_one_line(tmp_path, query_image):
    run = CliRunner()
    r = run.invoke(cli, ["collide", "--resume", str(tmp_path / "nothing")])
    assert r.exit_code == 2 and "no such run; give the --out of an interrupted collide run" in r.output, r.output
    r = run.invoke(cli, ["collide", "--resume", str(tmp_path / "x"), "--steps", "9", "--source", query_image])
    assert r.exit_code == 2 and "goes on with the run's own inputs and settings; leave out --source, --steps" \
        in r.output, r.output
    r = run.invoke(cli, ["collide", "--target", query_image])
    assert r.exit_code == 2 and "missing --source, --out" in r.output and "--resume RUN" in r.output, r.output
    os.makedirs(partial_dir(str(tmp_path / "old")))
    (tmp_path / "old.partial" / "checkpoint.pt").write_bytes(b"x")
    r = run.invoke(cli, ["collide", "--source", query_image, "--target", query_image, "--mode", "pixel",
                         "--weights", "random", "--size", "64", "--out", str(tmp_path / "old")])
    assert r.exit_code == 2 and "has the checkpoint of an unfinished run" in r.output \
        and f"`patchcollide collide --resume {tmp_path / 'old'}` or start over with --overwrite" in r.output, r.output


# ------------------------------------------------------------------- real processes, real signals


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "patchcollide", "-q", *map(str, args)]


def _collide_cmd(src, tgt, out, index):
    return _cli("collide", "--source", src, "--target", tgt, "--out", out, "--index", index, "--weights", "random",
                "--model", "alexnet",
                "--size", S, "--vertices", 2, "-k", 4, "--steps", 24, "--tol", 1e-6, "--device", "cpu",
                "--checkpoint-every", 4)


def signal_when(cmd, ready, signum, timeout=300) -> tuple[bool, subprocess.CompletedProcess]:
    """Start cmd and send ``signum`` as soon as ready() (a real progress signal); returns
    (whether the signal landed on the running process, the finished process)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t = time.time()
    landed = False
    while p.poll() is None:
        if ready():
            landed = True
            p.send_signal(signum)
            break
        if time.time() - t > timeout:
            p.kill()
            raise AssertionError(f"{cmd} never reached its first checkpoint")
        time.sleep(0.01)
    out, err = p.communicate()
    return landed, subprocess.CompletedProcess(cmd, p.returncode, out, err)


@pytest.fixture(scope="module")
def clean_cli(tmp_path_factory, flat_index):
    d = tmp_path_factory.mktemp("clean_cli")
    src, tgt = source_and_target(d)
    subprocess.run(_collide_cmd(src, tgt, d / "run", flat_index), check=True, capture_output=True)
    return {"src": src, "tgt": tgt, "pngs": vertex_pngs(d / "run")}


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGINT])
def test_a_killed_or_interrupted_cli_run_resumes_to_the_same_vertices(tmp_path, flat_index, clean_cli, signum,
                                                                      record_property):
    out = tmp_path / "run"
    ck = os.path.join(partial_dir(str(out)), "checkpoint.pt")
    landed, p = signal_when(_collide_cmd(clean_cli["src"], clean_cli["tgt"], out, flat_index),
                            lambda: os.path.exists(ck), signum)
    landed = landed and p.returncode == (-signal.SIGKILL if signum == signal.SIGKILL else 130)
    record_property("kills", json.dumps([{"landed": landed, "phase": "optimising, after the first checkpoint"}]))
    assert landed, f"the signal did not stop the running process (exit {p.returncode}): {p.stderr}"
    if signum == signal.SIGINT:
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and "stopped by Ctrl-C (SIGINT) at step" in lines[0] and not lines[0].startswith("Error") and f"collide --resume {out}" in lines[0], p.stderr
    step = Checkpointer(partial_dir(str(out)), {}).read()["step"]
    assert 4 <= step < 24 and not out.exists()  # stopped mid-run, nothing at the final name
    r = subprocess.run(_cli("collide", "--resume", out), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert vertex_pngs(out) == clean_cli["pngs"]  # bit-identical to the run never stopped
    assert json.loads((out / "report.json").read_text())["steps"] == 24
    assert not os.path.exists(partial_dir(str(out)))


def test_a_batch_killed_mid_job_resumes_that_job_from_its_checkpoint(tmp_path, flat_index, record_property):
    src, tgt = source_and_target(tmp_path)
    job = {"id": "j", "source": src, "target": tgt, "size": S, "vertices": 2, "k": 4, "steps": 30, "tol": 1e-6,
           "samples": 0}
    (tmp_path / "jobs.jsonl").write_text(json.dumps(job) + "\n")

    def cmd(out):
        return _cli("-v", "batch", tmp_path / "jobs.jsonl", "--out", out, "--index", flat_index, "--weights", "random",
                    "--model", "alexnet", "--device", "cpu", "--checkpoint-every", 4)

    subprocess.run(cmd(tmp_path / "clean"), check=True, capture_output=True)
    out = tmp_path / "out"
    ck = out / ".partial" / "j" / "checkpoint.pt"
    landed, p = signal_when(cmd(out), ck.exists, signal.SIGKILL)
    landed = landed and p.returncode == -signal.SIGKILL
    record_property("kills", json.dumps([{"landed": landed, "phase": "optimising, after the first checkpoint"}]))
    assert landed, p.stderr
    step = Checkpointer(str(ck.parent), {}).read()["step"]
    assert 4 <= step < 30
    r = subprocess.run(cmd(out), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"resuming {out / '.tmp' / 'j' / 'run'} from step {step}/30" in r.stderr, r.stderr
    assert vertex_pngs(out / "j") == vertex_pngs(tmp_path / "clean" / "j")
    assert not ck.parent.exists()


def test_a_batch_interrupted_mid_job_says_so_in_one_line_and_in_batch_json(tmp_path, flat_index, record_property):
    """Ctrl-C in a local batch: one line (no quotes nested in quotes), batch.json says the job was
    interrupted at its checkpoint's step, and once resumed its seconds agree across batch.json,
    batch.csv and report.json, the time before the interrupt included."""
    src, tgt = source_and_target(tmp_path)
    job = {"id": "j", "source": src, "target": tgt, "size": S, "vertices": 2, "k": 4, "steps": 30, "tol": 1e-6,
           "samples": 0}
    (tmp_path / "jobs.jsonl").write_text(json.dumps(job) + "\n")
    out = tmp_path / "out"
    cmd = _cli("batch", tmp_path / "jobs.jsonl", "--out", out, "--index", flat_index, "--weights", "random",
               "--model", "alexnet", "--device", "cpu", "--checkpoint-every", 4)
    ck = out / ".partial" / "j" / "checkpoint.pt"
    landed, p = signal_when(cmd, ck.exists, signal.SIGINT)
    landed = landed and p.returncode == 130
    record_property("kills", json.dumps([{"landed": landed, "phase": "optimising, SIGINT after the first checkpoint"}]))
    assert landed, p.stderr
    lines = [ln for ln in (p.stdout + p.stderr).splitlines() if ln.startswith("stopped by")]
    assert len(lines) == 1 and "``" not in lines[0] and lines[0].count("`") == 2, p.stdout + p.stderr
    assert "continue with the same `patchcollide batch` command" in lines[0], lines[0]
    step = Checkpointer(str(ck.parent), {}).read()["step"]
    entry = json.loads((out / "batch.json").read_text())["jobs"][0]
    assert (entry["status"], entry["step"], entry["steps"]) == ("interrupted", step, 30), entry
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    entry = json.loads((out / "batch.json").read_text())["jobs"][0]
    report = json.loads((out / "j" / "report.json").read_text())
    assert entry["status"] == "done" and entry["seconds"] == report["batch"]["seconds"] >= report["seconds"]
    csv = (out / "batch.csv").read_text().splitlines()
    col = csv[0].split(",").index("seconds")
    assert float(csv[1].split(",")[col]) == entry["seconds"]


# ------------------------------------------------------------------- two writers of one run


def _snapshot(path) -> dict:
    return {os.path.relpath(os.path.join(d, f), path): open(os.path.join(d, f), "rb").read()
            for d, _, fs in os.walk(path) for f in fs}


def test_a_second_writer_of_a_run_is_refused_at_once_and_the_lock_dies_with_the_first(tmp_path, flat_index, clean_cli,
                                                                                      record_property):
    out = tmp_path / "run"
    ck = os.path.join(partial_dir(str(out)), "checkpoint.pt")
    cmd = _collide_cmd(clean_cli["src"], clean_cli["tgt"], out, flat_index)
    long = [*cmd[:cmd.index("--steps")], "--steps", "20000", *cmd[cmd.index("--steps") + 2:]]  # outlives the refusals
    first = subprocess.Popen(long, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t = time.time()
    while not os.path.exists(ck) and first.poll() is None:
        assert time.time() - t < 300, "the first run never reached its first checkpoint"
        time.sleep(0.01)
    assert first.poll() is None, first.communicate()
    held = Checkpointer(partial_dir(str(out)), {}).read()
    for second in (cmd, _cli("collide", "--resume", out), [*cmd, "--overwrite"]):
        r = subprocess.run(second, capture_output=True, text=True)
        lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
        assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stdout + r.stderr
        assert lines[0] == (f"Error: --out {out}: another process is writing this run now (it holds {out}.lock); "
                            "wait for it to finish or stop it, or give another --out"), lines[0]
    assert first.poll() is None  # refused while the first still ran, without touching its checkpoint
    assert Checkpointer(partial_dir(str(out)), {}).read()["step"] >= held["step"]
    first.send_signal(signal.SIGKILL)
    first.wait()
    landed = first.returncode == -signal.SIGKILL
    record_property("kills", json.dumps([{"landed": landed, "phase": "optimising, a second writer refused"}]))
    assert landed, first.returncode
    assert not out.exists() and os.path.exists(f"{out}.lock")  # the file stays; its lock died with the process
    r = subprocess.run([*cmd, "--overwrite"], capture_output=True, text=True)  # a new writer takes it at once
    assert r.returncode == 0, r.stderr
    assert vertex_pngs(out) == clean_cli["pngs"] and not os.path.exists(f"{out}.lock")


def test_a_resume_never_replaces_a_complete_run_without_overwrite(tmp_path, flat_index, clean_cli, record_property):
    out = tmp_path / "run"
    ck = os.path.join(partial_dir(str(out)), "checkpoint.pt")
    landed, p = signal_when(_collide_cmd(clean_cli["src"], clean_cli["tgt"], out, flat_index),
                            lambda: os.path.exists(ck), signal.SIGKILL)
    landed = landed and p.returncode == -signal.SIGKILL
    record_property("kills", json.dumps([{"landed": landed, "phase": "optimising, after the first checkpoint"}]))
    assert landed, p.stderr
    # meanwhile a complete run lands at --out (another run, moved into place)
    other = tmp_path / "other"
    cmd = _collide_cmd(clean_cli["src"], clean_cli["src"], other, flat_index)
    subprocess.run([*cmd[:cmd.index("--steps")], "--steps", "4", *cmd[cmd.index("--steps") + 2:]], check=True,
                   capture_output=True)
    os.replace(other, out)
    before = _snapshot(out)
    r = subprocess.run(_cli("collide", "--resume", out), capture_output=True, text=True)
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stdout + r.stderr
    assert f"--out {out} now holds a complete run that this checkpoint did not write" in lines[0] \
        and f"`patchcollide collide --resume {out} --overwrite`" in lines[0], lines[0]
    assert _snapshot(out) == before and os.path.isfile(ck)  # the complete run and the checkpoint both kept
    r = subprocess.run(_cli("collide", "--resume", out, "--overwrite"), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert vertex_pngs(out) == clean_cli["pngs"] and not os.path.exists(partial_dir(str(out)))
