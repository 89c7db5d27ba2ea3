"""The click CLI through CliRunner: the offline workflow, exit codes and one-line errors."""
from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from patchcollide.cli import cli


def run(*args):
    r = CliRunner().invoke(cli, ["-q", *map(str, args)], catch_exceptions=False)
    return r.exit_code, r.output


def one_line_error(out: str) -> str:
    lines = [ln for ln in out.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, out
    assert "Traceback" not in out
    return lines[0]


def test_offline_workflow(tmp_path, photos_dir, query_image):
    idx = tmp_path / "index"
    code, out = run("extract", photos_dir, "--out", idx / "patches.h5", "--stride", "16")
    assert code == 0 and "wrote" in out and "6 images" in out
    code, out = run("extract", photos_dir, "--out", idx / "patches.h5", "--stride", "16")
    assert code == 0 and "already complete" in out
    code, out = run("store", "info", idx / "patches.h5")
    assert code == 0 and "1014 from 6 images" in out and "bytes/patch" in out
    code, out = run("store", "info", idx / "patches.h5", "--json")
    assert json.loads(out)["n_patches"] == 6 * 169
    code, out = run("index", "build", "--index", idx)
    assert code == 0 and "Flat" in out
    mosaic, npz = tmp_path / "m.png", tmp_path / "neighbours"  # no suffix: the exact name is kept
    code, out = run("index", "search", query_image, "--index", idx, "-k", "4", "--mosaic", mosaic, "--out", npz)
    assert code == 0 and "625 locations x 4 neighbours" in out
    assert os.path.getsize(mosaic) > 10_000
    import numpy as np

    z = np.load(npz)
    assert z["ids"].shape == (625, 4) and z["sources"].shape == (625, 4, 3)
    code, out = run("index", "eval", "--index", idx, "--queries", query_image, "-k", "10", "--json")
    assert code == 0 and json.loads(out)["recall"] == 1.0


def test_python_m_entry_point():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "patchcollide", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "extract" in r.stdout and "index" in r.stdout


@pytest.mark.parametrize(
    "args,needle",
    [
        (["extract", "/no/such/dir", "--out", "{tmp}/s.h5"], "does not exist"),
        (["extract", "{photos}", "--out", "{tmp}/s.h5", "--fraction", "1.5"], "--fraction must be in (0, 1]"),
        (["extract", "{photos}", "--out", "{tmp}/s.h5", "--workers", "0"], "--workers must be >= 1"),
        (["store", "info", "{tmp}/nothing.h5"], "no such store"),
        (["store", "info", "{textfile}"], "not a readable HDF5 file"),
        (["index", "build", "--index", "{tmp}/idx", "--store", "{textfile}"], "not a readable HDF5 file"),
        (["index", "search", "{query}", "--index", "{tmp}/empty"], "no built index here"),
        (["index", "search", "{tmp}/nope.png", "--index", "{flat}"], "does not exist"),
        (["index", "search", "{textfile}", "--index", "{flat}"], "not an image"),
        (["index", "search", "{query}", "--index", "{flat}", "--store", "{other}"], "was built for store"),
        (["index", "search", "{query}", "--index", "{moved}"], "pass its store with --store PATH"),
        (["index", "search", "{query}", "--index", "{flat}", "-k", "0"], "k must be between"),
        (["index", "build", "--index", "{tmp}/idx", "--store", "{store}", "--factory", "Nonsense"],
         "not a valid faiss index_factory"),
        (["index", "build", "--index", "{tmp}/idx", "--store", "{store}", "--factory", "IVF1024,Flat",
          "--train-size", "100"], "training patches"),
        (["index", "build", "--index", "{tmp}/idx", "--store", "{store}", "--seed", "-1"], "--seed must be between 0 and 2^31 - 1"),
        (["extract", "{photos}", "--out", "{tmp}/s.h5", "--seed", "-1"], "--seed must be between 0 and 2^63 - 1, got -1"),
        (["extract", "{photos}", "--out", "{tmp}/s.json"], "must end in .h5"),
        (["extract", "{photos}", "--out", "{tmp}/s.h5", "--resize", "big"], "'none'"),
        (["index", "eval", "--index", "{flat}", "--queries", "{query}", "--grid-stride", "0"], "--grid-stride must be >= 1"),
        (["index", "search", "{query}", "--index", "{flat}", "--grid-stride", "0"], "--grid-stride must be >= 1"),
        (["index", "eval", "--index", "{flat}", "--queries", "{query}", "-k", "-1"], "k must be >= 1"),
        (["index", "search", "{query}", "--index", "{flat}", "--nprobe", "-1"], "--nprobe must be >= 1"),
    ],
)
def test_user_errors_are_one_line_with_exit_code_2(tmp_path, photos_dir, query_image, flat_index, small_store,
                                                   args, needle):
    textfile = tmp_path / "notes.txt"
    textfile.write_text("hello")
    other = tmp_path / "other.h5"
    if "{other}" in " ".join(args):
        run("extract", photos_dir, "--out", other, "--stride", "32")
    moved = tmp_path / "moved"  # the index folder alone, away from its store
    if "{moved}" in args:
        import shutil

        moved.mkdir()
        for name in ("index.json", "index.faiss"):
            shutil.copy(os.path.join(flat_index, name), moved / name)
    fmt = dict(tmp=tmp_path, photos=photos_dir, query=query_image, flat=flat_index, store=small_store,
               textfile=textfile, other=other, moved=moved)
    code, out = run(*[a.format(**fmt) for a in args])
    assert code == 2, out
    line = one_line_error(out)
    assert needle in line, line


def test_index_search_grid_stride_and_no_old_stride(flat_index, query_image):
    code, out = run("index", "search", query_image, "--index", flat_index, "--grid-stride", "16", "-k", "2")
    assert code == 0 and "169 locations x 2 neighbours" in out, out
    code, out = run("index", "search", query_image, "--index", flat_index, "--stride", "16", "-k", "2")
    assert code == 2 and "No such option '--stride'" in one_line_error(out), out


def test_resize_none_and_bad_resize(tmp_path, photos_dir):
    code, out = run("extract", photos_dir, "--out", tmp_path / "s.h5", "--resize", "none", "--stride", "64")
    assert code == 0
    code, out = run("store", "info", tmp_path / "s.h5", "--json")
    assert json.loads(out)["config"]["resize"] is None
    for bad in ("big", "0", "-5", "31", "9000", "12.5"):
        code, out = run("extract", photos_dir, "--out", tmp_path / f"bad{bad}.h5", f"--resize={bad}")
        assert code == 2, (bad, out)
        line = one_line_error(out)
        assert ("--resize must be" in line or "'--resize': must be" in line) and "'none'" in line and bad in line, line
        assert not (tmp_path / f"bad{bad}.h5").exists()


def test_index_build_shows_k_means_on_a_terminal_and_no_raw_faiss_text(tmp_path, small_store):
    from conftest import on_a_terminal

    shown = on_a_terminal(["index", "build", "--index", str(tmp_path / "a"), "--store", small_store,
                           "--factory", "IVF16,Flat", "--train-size", "3000"], stdout_too=True)
    assert "k-means (IVF lists)" in shown and "10/10" in shown and "adding patches" in shown, shown
    assert "Iteration" not in shown and "WARNING clustering" not in shown and "wrote " in shown, shown
    # too few training patches for the lists: one line of ours instead of faiss' raw advice
    shown = on_a_terminal(["index", "build", "--index", str(tmp_path / "b"), "--store", small_store,
                           "--factory", "IVF256,Flat", "--train-size", "3000"], stdout_too=True)
    assert "warning: training IVF256,Flat on 3000 patches: k-means wants at least 9984 (39 per list)" in shown, shown
    assert "WARNING clustering" not in shown and "please provide" not in shown, shown
    # the same index whether or not anyone watches the training
    plain = CliRunner().invoke(cli, ["-q", "index", "build", "--index", str(tmp_path / "c"), "--store", small_store,
                                     "--factory", "IVF16,Flat", "--train-size", "3000"])
    assert plain.exit_code == 0, plain.output
    assert (tmp_path / "a" / "index.faiss").read_bytes() == (tmp_path / "c" / "index.faiss").read_bytes()


def test_the_non_convergence_hint_follows_the_runs_own_history(tmp_path, query_image):
    """Still falling at the end: more steps; flat: the constraints, never "more steps"."""
    from PIL import Image

    from patchcollide.cli.online import convergence_hint

    falling = [1.0 / (1 + i) for i in range(200)]
    flat = [0.5 / (1 + i) for i in range(100)] + [0.05 + 0.001 * (i % 3) for i in range(100)]
    assert "give more --steps" in convergence_hint({"worst_rel_error": falling}, "patches")
    for mode in ("patches", "pixel"):
        hint = convergence_hint({"worst_rel_error": flat}, mode)
        assert "more steps will not help" in hint and "--push-margin" in hint and "give more --steps" not in hint
        assert ("-k" in hint) == (mode == "patches")
    assert "give more --steps" in convergence_hint({"worst_rel_error": [0.3, 0.2]}, "pixel")
    # wired: the warning of a real run that missed tol carries the hint its report's history gives
    target = tmp_path / "target.png"
    Image.open(query_image).convert("RGB").transpose(Image.Transpose.ROTATE_90).save(target)
    r = CliRunner().invoke(cli, ["-q", "collide", "--source", query_image, "--target", str(target), "--out",
                                 str(tmp_path / "r"), "--mode", "pixel", "--weights", "random", "--size", "64",
                                 "--steps", "12", "--min-steps", "12", "--tol", "1e-9", "--vertices", "1",
                                 "--device", "cpu"])
    assert r.exit_code == 0, r.output
    rep = json.load(open(tmp_path / "r" / "report.json"))
    warning = [ln for ln in r.stderr.splitlines() if ln.startswith("warning: not converged")]
    assert len(warning) == 1 and warning[0].endswith(convergence_hint(rep["history"], "pixel")), r.stderr


def test_single_messages_name_the_option_and_the_right_fix(tmp_path, query_image, flat_index):
    """Each bad input of the new-user trial gets one line that names its option and the fix."""
    from PIL import Image

    from patchcollide.offline.knn import PatchIndex

    Image.new("RGB", (16, 16), (1, 2, 3)).save(tmp_path / "tiny.png")
    with PatchIndex(flat_index) as pidx:
        n = len(pidx.store)
    base = ["-q", "collide", "--target", query_image, "--weights", "random", "--device", "cpu"]
    cases = [
        (["--source", str(tmp_path / "tiny.png"), "--mode", "pixel"],
         f"--source {tmp_path / 'tiny.png'}: image 16x16 is smaller than a 32-pixel patch; give an image at least "
         "32 x 32 pixels"),
        (["--source", query_image, "-i", str(tmp_path / "none")], "(both write to index/, the default of --index)"),
        (["--source", query_image, "--mode", "pixel", "--model", "resnet18", "--layer", "fc6"],
         "unknown layer 'fc6' for resnet18; use one of conv1, bn1, relu, maxpool, layer1, layer2, layer3, layer4, "
         "avgpool, fc"),
        (["--source", query_image, "-i", flat_index, "-k", "100000"],
         f"-k 100000: the store behind {flat_index} holds only {n:,} patches; give -k <= {n}"),
        (["--source", query_image, "--mode", "pixel", "--weights", query_image],
         f"--weights {query_image}: not a torch state dict (it is a PNG image)"),
    ]
    for i, (args, needle) in enumerate(cases):
        r = CliRunner().invoke(cli, [*base, *args, "--out", str(tmp_path / f"r{i}")])
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert r.exit_code == 2 and len(lines) == 1 and needle in lines[0], (args, r.output)
        assert "GiB" not in lines[0] and "pickle" not in lines[0] and "weights_only" not in lines[0]


def test_progress_off_a_terminal_is_a_timed_line_with_elapsed_rate_and_eta():
    from patchcollide.cli.common import Ticker

    now = [0.0]
    t = Ticker("step", "steps", every=30, clock=lambda: now[0])
    lines = []
    for step in range(1, 301):  # one step a second for 300 steps
        now[0] = float(step)
        lines.append(t.line(step, 300, "loss 1"))
    shown = [ln for ln in lines if ln is not None]
    assert 10 <= len(shown) <= 12 and lines[0] is not None and lines[-1] is not None  # first, every 30 s, last
    assert shown[1] == "step: 31/300 (10%), 0:30 elapsed, 1 steps/s, ETA 4:29; loss 1", shown[1]
    assert shown[-1].startswith("step: 300/300 (100%), 4:59 elapsed") and "ETA" not in shown[-1]
