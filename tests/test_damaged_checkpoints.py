"""A damaged checkpoint is a clear error, never a traceback or other vertices: every save records
the sha256 of checkpoint.pt in progress.json and a resume checks it before torch reads the file;
whatever still fails while restoring (a checkpoint saved before the hashes) is one line too.
`collide --resume` stops with exit 2 and one line; a batch deletes the job's damaged checkpoint,
says so, and runs the job from step 1. Random AlexNet at 64 x 64, a few steps (the mechanics
only; tests/test_checkpoints.py has the resumes themselves)."""
from __future__ import annotations

import json
import os
import shutil
import signal

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import source_and_target, vertex_pngs
from patchcollide.cli import cli
from patchcollide.engine import checkpoints as cks
from patchcollide.engine.checkpoints import Checkpointer, DamagedCheckpoint, Interrupted, partial_dir, saved_step
from patchcollide.engine.config import CollideConfig
from patchcollide.models.build import load_tap

S = 64
CFG = dict(vertices=2, steps=8, size=S, k=4, device="cpu", tol=1e-6, prune=((0.25, 8), (0.5, 4)))  # prunes: 2 and 4
STOP = 3  # SIGINT after this step: the checkpoint holds pruned logits (patch mode) and Adam's moments


@pytest.fixture(scope="module")
def tap():
    return load_tap("alexnet", "fc6", "random", seed=0)


@pytest.fixture(scope="module")
def one_model(tap):
    """A resume rebuilds the model from its record: the module's (random AlexNet, seed 0) is that model."""
    from patchcollide.runs import run as runs

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runs, "load_tap", lambda *a, **k: tap)
        yield


def _tree(path) -> dict:
    return {os.path.relpath(os.path.join(d, f), path): open(os.path.join(d, f), "rb").read()
            for d, _, fs in os.walk(path) for f in fs}


def resume(out):
    return CliRunner().invoke(cli, ["-q", "collide", "--resume", str(out)])


@pytest.fixture(scope="module", params=["pixel", "patches"])
def interrupted(request, tmp_path_factory, tap, flat_index, one_model):
    """A run of the mode stopped by SIGINT after step STOP (its OUT.partial/), and the vertex PNGs
    of its untouched resume."""
    from patchcollide.runs import run as runs

    d = tmp_path_factory.mktemp(f"interrupted_{request.param}")
    src, tgt = source_and_target(d)

    def progress(step, *a):
        if step == STOP:
            os.kill(os.getpid(), signal.SIGINT)  # a real signal, caught by the run's handler

    with pytest.raises(Interrupted):
        runs.run_collide(src, tgt, str(d / "base"), CollideConfig(mode=request.param, **CFG), tap=tap,
                         index_dir=flat_index, progress=progress, checkpoint_every=0)
    partial = partial_dir(str(d / "base"))
    assert Checkpointer(partial, {}).read()["step"] == STOP
    shutil.copytree(partial, partial_dir(str(d / "clean")))
    r = resume(d / "clean")
    assert r.exit_code == 0, r.output
    return {"dir": d, "partial": partial, "pngs": vertex_pngs(d / "clean"), "mode": request.param}


def damages(data: bytes, seed: int, n: int = 18):
    """n seeded damages of ``data``: single-region byte flips (1 to 16 bytes XORed with non-zero
    bytes, anywhere: the zip's headers, the pickle, the tensors) and truncations."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        b = bytearray(data)
        if i % 5 == 4:
            cut = int(rng.integers(0, len(b)))
            yield f"truncated to {cut} of {len(b)} bytes", bytes(b[:cut])
        else:
            size = int(rng.integers(1, 17))
            at = int(rng.integers(0, len(b) - size))
            for j in range(size):
                b[at + j] ^= int(rng.integers(1, 256))
            yield f"{size} bytes flipped at {at} of {len(b)}", bytes(b)


def test_a_damaged_checkpoint_is_one_line_or_the_same_vertices(interrupted, record_property):
    """Seeded fuzz over checkpoint.pt: each case is exit 2 with one line naming the checkpoint (and
    nothing written or deleted), or a finished run bit-identical to the untouched resume."""
    d = interrupted["dir"]
    data = open(os.path.join(interrupted["partial"], cks.NAME), "rb").read()
    outcomes = {"clear error": 0, "identical": 0}
    for i, (what, bad) in enumerate(damages(data, seed=28 if interrupted["mode"] == "pixel" else 29)):
        out = d / f"case{i}"
        shutil.copytree(interrupted["partial"], partial_dir(str(out)))
        ck = os.path.join(partial_dir(str(out)), cks.NAME)
        with open(ck, "wb") as fh:
            fh.write(bad)
        before = _tree(d)
        r = resume(out)
        assert not isinstance(r.exception, Exception) or isinstance(r.exception, SystemExit), \
            f"{what}: a traceback ({type(r.exception).__name__}: {r.exception})"
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        if r.exit_code == 0:
            assert vertex_pngs(out) == interrupted["pngs"], f"{what}: exit 0 with other vertices"
            outcomes["identical"] += 1
        else:
            assert r.exit_code == 2 and len(lines) == 1, f"{what}: exit {r.exit_code}: {r.output}"
            assert lines[0] == (f"Error: damaged checkpoint {ck} (its sha256 differs from the one recorded in "
                                f"progress.json when it was saved): {cks.FIX}"), f"{what}: {lines[0]}"
            assert _tree(d) == before, f"{what}: something was written or deleted"
            outcomes["clear error"] += 1
        shutil.rmtree(partial_dir(str(out)), ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
    record_property("outcomes", json.dumps(outcomes))
    assert sum(outcomes.values()) == 18


def _legacy(partial, change=None):
    """The checkpoint in ``partial`` as an older version left it: progress.json without its
    sha256; ``change(state)`` edits the saved state first (what a damaged file may restore to)."""
    ck = os.path.join(partial, cks.NAME)
    if change is not None:
        state = torch.load(ck, weights_only=True)
        change(state)
        torch.save(state, ck)
    rec = json.loads(open(os.path.join(partial, cks.PROGRESS)).read())
    with open(os.path.join(partial, cks.PROGRESS), "w") as fh:
        json.dump({"step": rec["step"], "steps": rec["steps"]}, fh)


def _out_of_range(state):
    if "entries" in state["param"]:
        state["param"]["entries"][0, 0, 0] = 10**9  # the IndexError at self.table[entries] before
    else:
        state["param"]["x"] = state["param"]["x"].long()  # pixels that are not floats


def _shape(state):
    key = "entries" if "entries" in state["param"] else "x"
    state["param"][key] = state["param"][key][:1]


def _no_history(state):
    del state["history"]


def _moments(state):
    for s in state["opt"]["state"].values():
        s["exp_avg"] = s["exp_avg"].flatten()[:3]


@pytest.mark.parametrize("change", [_out_of_range, _shape, _no_history, _moments])
def test_a_checkpoint_without_a_hash_that_does_not_restore_is_one_line(interrupted, change):
    """A checkpoint saved before the hashes passes unchecked (a warning); a state that does not fit
    the run is still one line naming the checkpoint, exit 2, never a traceback."""
    out = interrupted["dir"] / f"legacy_{change.__name__}"
    shutil.copytree(interrupted["partial"], partial_dir(str(out)))
    _legacy(partial_dir(str(out)), change)
    r = resume(out)
    ck = os.path.join(partial_dir(str(out)), cks.NAME)
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert lines[-1].startswith(f"Error: damaged checkpoint {ck} (") and lines[-1].endswith(f"): {cks.FIX}"), r.output
    assert not out.exists() and os.path.isfile(ck)


def test_a_checkpoint_without_a_hash_that_restores_resumes_to_the_same_vertices(interrupted):
    out = interrupted["dir"] / "legacy_intact"
    shutil.copytree(interrupted["partial"], partial_dir(str(out)))
    _legacy(partial_dir(str(out)))
    r = CliRunner().invoke(cli, ["collide", "--resume", str(out)])
    assert r.exit_code == 0, r.output
    assert "has no sha256 recorded beside it (saved by an older version)" in r.output
    assert vertex_pngs(out) == interrupted["pngs"]


# ------------------------------------------------------------------- the record and the file


LOOP = {"done": False, "converged": False, "param": {}, "opt": {}, "history": {}, "seconds": 0.0}


class Killed(BaseException):
    """Stands for SIGKILL between two renames."""


def test_a_kill_between_the_record_and_the_file_never_makes_a_good_checkpoint_look_damaged(tmp_path, monkeypatch):
    ck = Checkpointer(str(tmp_path / "ck"), {"run": "a", "config": {"steps": 9}})
    ck.static.update(target={}, candidates=None)
    ck.save({"step": 1, **LOOP})
    rec = json.loads((tmp_path / "ck" / cks.PROGRESS).read_text())
    assert rec["sha256"] == cks.sha256_of((tmp_path / "ck" / cks.NAME).read_bytes()) and rec["previous"] is None
    real = cks.atomic_open

    def kill_at_the_file(path, mode="w", *a, **k):
        if path.endswith(cks.NAME):
            raise Killed
        return real(path, mode, *a, **k)

    monkeypatch.setattr(cks, "atomic_open", kill_at_the_file)
    with pytest.raises(Killed):
        ck.save({"step": 2, **LOOP})
    monkeypatch.setattr(cks, "atomic_open", real)
    rec = json.loads((tmp_path / "ck" / cks.PROGRESS).read_text())
    assert rec["step"] == 2 and rec["previous"]["step"] == 1  # the record of the file that never landed
    again = Checkpointer(ck.directory, ck.key)
    assert again.load()["step"] == 1 and saved_step(ck.directory) == (1, 9)  # the previous file, intact
    again.static.update(target={}, candidates=None)
    again.save({"step": 3, **LOOP})  # a resumed run's next save vouches for the file it replaces
    assert json.loads((tmp_path / "ck" / cks.PROGRESS).read_text())["previous"]["step"] == 1
    assert Checkpointer(ck.directory, ck.key).load()["step"] == 3 and saved_step(ck.directory) == (3, 9)
    data = bytearray((tmp_path / "ck" / cks.NAME).read_bytes())
    data[len(data) // 2] ^= 1
    (tmp_path / "ck" / cks.NAME).write_bytes(bytes(data))
    with pytest.raises(DamagedCheckpoint, match=r"^damaged checkpoint .*checkpoint.pt \(its sha256 differs"):
        Checkpointer(ck.directory, ck.key).load()


def test_a_final_checkpoint_saved_elsewhere_carries_its_record(tmp_path):
    (tmp_path / "file").write_text("x")  # the checkpoint's folder cannot be made: the final save goes elsewhere
    ck = Checkpointer(str(tmp_path / "file" / "ck"), {"run": "a"})
    ck.static.update(target={}, candidates=None)
    where = ck.save({"step": 4, **LOOP}, final=True)
    rescue = os.path.dirname(where)
    try:
        assert rescue != ck.directory and os.path.isfile(os.path.join(rescue, cks.PROGRESS))
        assert Checkpointer(rescue, {"run": "a"}).load()["step"] == 4  # checked against its own record
    finally:
        shutil.rmtree(rescue)


# ------------------------------------------------------------------- a batch


def _interrupt_at(monkeypatch, step):
    """SIGINT to this process once the loop records ``step`` (the batch's own handler catches it)."""
    from patchcollide.engine import collide as loop

    real = loop.record

    def record(hist, *a):
        worst = real(hist, *a)
        if len(hist["worst_rel_error"]) == step:
            os.kill(os.getpid(), signal.SIGINT)
        return worst

    monkeypatch.setattr(loop, "record", record)


@pytest.mark.parametrize("damage", ["bytes", "legacy"])
def test_a_batch_reruns_a_job_whose_checkpoint_is_damaged(tmp_path, flat_index, one_model, monkeypatch, damage):
    """The same batch command, run again, deletes the job's damaged checkpoint, says so in one
    warning line and runs the job from step 1: the result of a clean run, exit 0, nothing to delete
    by hand. "bytes": flipped bytes (the sha256 differs); "legacy": a checkpoint without a recorded
    sha256 whose entries fail to restore (the IndexError that failed the job on every rerun)."""
    from patchcollide.batch import runner

    monkeypatch.setattr(runner, "load_tap", lambda *a, **k: load_tap("alexnet", "fc6", "random", seed=0))
    src, tgt = source_and_target(tmp_path)
    job = {"id": "j", "source": src, "target": tgt, "mode": "patches", "samples": 0,
           **{k: v for k, v in CFG.items() if k != "device"}}
    (tmp_path / "jobs.jsonl").write_text(json.dumps(job) + "\n")

    def batch(out):
        return CliRunner().invoke(cli, ["batch", str(tmp_path / "jobs.jsonl"), "--out", str(out), "--index",
                                        flat_index, "--weights", "random", "--model", "alexnet", "--device", "cpu",
                                        "--checkpoint-every", "2"])

    r = batch(tmp_path / "clean")
    assert r.exit_code == 0, r.output
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        _interrupt_at(m, STOP)
        r = batch(out)
    assert r.exit_code == 130, r.output
    partial = out / ".partial" / "j"
    ck = partial / cks.NAME
    assert Checkpointer(str(partial), {}).read()["step"] == STOP
    if damage == "bytes":
        data = bytearray(ck.read_bytes())
        for i in range(8):
            data[len(data) // 2 + i] ^= 0x5A
        ck.write_bytes(bytes(data))
        why = "its sha256 differs from the one recorded in progress.json when it was saved"
    else:
        _legacy(str(partial), _out_of_range)
        why = "its state does not restore: ValueError: entries outside the candidates'"
    for attempt in range(2):  # a failed job would fail the same way on every rerun
        r = batch(out)
        if r.exit_code == 0:
            break
    assert r.exit_code == 0 and attempt == 0, r.output
    warned = [ln for ln in r.output.splitlines() if "is damaged" in ln]
    assert len(warned) == 1, r.output
    assert warned[0].startswith(f"warning: {out / '.tmp' / 'j' / 'run'}: starting from step 1, as its checkpoint "
                                f"{ck} is damaged ({why}") and warned[0].endswith("); the damaged checkpoint is "
                                                                                  "deleted"), warned[0]
    assert vertex_pngs(out / "j") == vertex_pngs(tmp_path / "clean" / "j")
    assert json.loads((out / "batch.json").read_text())["jobs"][0]["status"] == "done"
    assert not partial.exists()
