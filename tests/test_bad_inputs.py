"""Bad input, for every command (issue 5): the systematic matrix that docs/reliability.md cites.

Truncated or foreign HDF5 files given as stores; truncated or foreign files given as indexes;
weights files that are not state dicts (refused: loaded with ``weights_only=True``) or do not
fit the model; images that are empty, truncated, huge or not images; job files with malformed
lines, unknown keys, missing images, duplicate ids or output names escaping DIR; directories
that are not runs. Every case must give:

* exit code 2 and exactly one non-empty output line (stdout and stderr together), no
  traceback and no Python warning on top;
* a message that names the offending file (its basename) and says what to do (an imperative
  hint such as "pass", "give", "rebuild", "save", "fix");
* nothing already written touched: every file in the case's directory keeps its size, mtime
  and content, and nothing new appears but ``*.lock`` files in folders that were there
  (no ``--out`` folder, no partial output).

Each case runs in its own directory (also the working directory, so default output paths land
there too) holding copies of the inputs it needs. A few cases run as real processes
(``python -m patchcollide``) to show that no traceback or warning reaches the terminal.

``extract`` skips bad images inside a folder with a warning (exit 0, listed in the manifest):
``test_extract_skips_bad_images_and_lists_them`` checks that instead.

Set BAD_INPUTS_MATRIX=PATH to append every case's command, input and message to PATH (JSON
Lines), the source of the matrix table in docs/reliability.md.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import re
import shutil
import struct
import subprocess
import sys
import warnings
import zlib

import pytest
from click.testing import CliRunner
from PIL import Image

from patchcollide.cli import cli

pytestmark = pytest.mark.slow

# The fix is its own clause, after "; ", and starts with what to do: "...is truncated; rebuild it
# with ...", "...; pass --store ...", "...; free space and run again". A verb anywhere else (the
# "use" in "in use") does not count.
HINT = re.compile(r";\s*(?:or\s+|then\s+)?(use|give|pass|choose|fix|delete|rebuild|run|save|check|remove|put|write|"
                  r"build|extract|free|move|create|convert|wait|raise|lower|restore|start|install|set|resume|"
                  r"leave|make|rename|retry|continue|keep|open|select)\b", re.IGNORECASE)
HASH_LIMIT = 10 * 1024 * 1024


# ---------------------------------------------------------------------------------------------
# The bad files, made once per session in ASSETS; each case copies the ones it names.


def _write_json(path, obj) -> None:
    with open(path, "w") as fh:
        json.dump(obj, fh)


def _cut(src, dst, keep: float = 0.5) -> None:
    with open(src, "rb") as fh:
        data = fh.read()
    with open(dst, "wb") as fh:
        fh.write(data[: int(len(data) * keep)])


def _huge_png(dst) -> None:
    """A valid small PNG whose IHDR declares 100000 x 100000 pixels (CRC fixed): cheap to
    make, refused from the header before anything is decoded."""
    small = os.path.join(os.path.dirname(dst), "_small.png")
    Image.new("RGB", (64, 64), (200, 30, 30)).save(small)
    with open(small, "rb") as fh:
        b = bytearray(fh.read())
    os.remove(small)
    assert b[12:16] == b"IHDR"
    b[16:24] = struct.pack(">II", 100_000, 100_000)
    b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])) & 0xFFFFFFFF)
    with open(dst, "wb") as fh:
        fh.write(bytes(b))


def _make_images(d, query_image) -> None:
    shutil.copy(query_image, d / "img.png")
    _cut(query_image, d / "trunc.png")
    Image.open(query_image).convert("RGB").save(d / "_full.jpg", quality=90)
    _cut(d / "_full.jpg", d / "trunc.jpg")
    os.remove(d / "_full.jpg")
    (d / "empty.png").write_bytes(b"")
    _huge_png(d / "huge.png")
    (d / "text.jpg").write_text("hello, I am not an image\n")


def _make_stores(d, small_store) -> None:
    import h5py

    _cut(small_store, d / "trunc.h5")
    with h5py.File(d / "foreign.h5", "w") as f:
        f["x"] = [1, 2, 3]
    (d / "empty.h5").write_bytes(b"")
    (d / "text.h5").write_text("hello, I am not HDF5\n")


def _make_indexes(d, photos_dir) -> None:
    from patchcollide.offline.extract import ExtractConfig, extract_store
    from patchcollide.offline.knn import IndexConfig, build_index, quick_checksum

    good = d / "idx_good"  # a small real index with its store inside: 6 x 49 patches
    extract_store([photos_dir], str(good / "patches.h5"), ExtractConfig(stride=32))
    build_index(str(good), None, IndexConfig())
    other = d / "_other"  # another store's index, for its index.json
    extract_store([photos_dir], str(other / "patches.h5"), ExtractConfig(stride=64))
    build_index(str(other), None, IndexConfig())

    def variant(name, change):
        v = d / name
        shutil.copytree(good, v)
        change(v)

    def resum(v):  # every checksum of index.json vouches for the new index.faiss: what faiss then makes of it
        from patchcollide.core.files import file_sha256
        from patchcollide.offline.index_format import manifest_sha256

        m = json.loads((v / "index.json").read_text())
        m["quick_sha256"] = quick_checksum(str(v / "index.faiss"))
        m["sha256"] = file_sha256(str(v / "index.faiss"))
        m["manifest_sha256"] = manifest_sha256(m)
        _write_json(v / "index.json", m)

    def edit_manifest(fn):
        def change(v):
            m = json.loads((v / "index.json").read_text())
            fn(m)
            _write_json(v / "index.json", m)
        return change

    def foreign_store(m):
        m["store"].update(store_id="f" * 32, fingerprint="0" * 64)

    variant("idx_trunc_faiss", lambda v: _cut(v / "index.faiss", v / "index.faiss"))
    variant("idx_random_faiss", lambda v: (v / "index.faiss").write_bytes(random.Random(1).randbytes(100_000)))
    # random bytes or a cut file that index.json vouches for (checksum updated): faiss must refuse it
    variant("idx_random_faiss_sum", lambda v: ((v / "index.faiss").write_bytes(random.Random(1).randbytes(100_000)), resum(v)))
    variant("idx_trunc_faiss_sum", lambda v: (_cut(v / "index.faiss", v / "index.faiss"), resum(v)))
    variant("idx_empty_json", lambda v: (v / "index.json").write_text("{}"))
    variant("idx_bad_json", lambda v: (v / "index.json").write_text('{"format_version": 1, "sto'))
    variant("idx_partial_json", edit_manifest(lambda m: [m.pop("descriptor"), m["store"].pop("fingerprint")]))
    variant("idx_json_of_other", lambda v: shutil.copy(other / "index.json", v / "index.json"))
    variant("idx_other_store", edit_manifest(foreign_store))
    variant("idx_trunc_store", lambda v: _cut(v / "patches.h5", v / "patches.h5"))
    variant("idx_foreign_store", lambda v: shutil.copy(d / "foreign.h5", v / "patches.h5"))
    variant("idx_no_json", lambda v: os.remove(v / "index.json"))
    variant("idx_moved", lambda v: os.remove(v / "patches.h5"))  # the index folder without its store
    os.makedirs(d / "idx_empty")
    # demo: a folder holding only a store (no index.json) that is foreign, cut, or a real non-demo store
    for name, src in (("demo_foreign_store", d / "foreign.h5"), ("demo_trunc_store", d / "trunc.h5"),
                      ("demo_other_store", good / "patches.h5")):
        os.makedirs(d / name)
        shutil.copy(src, d / name / "patches.h5")
    shutil.rmtree(other)


def _make_weights(d) -> None:
    import torch
    import torchvision

    torch.save({"conv.weight": torch.zeros(2), "note": "hello"}, d / "w_dict_str.pt")  # a non-tensor value
    torch.save([torch.zeros(2)], d / "w_list.pt")
    torch.save(torch.nn.Linear(2, 2), d / "w_module.pt")  # a whole nn.Module: refused by weights_only
    with open(d / "w_pickle.pt", "wb") as fh:  # a plain pickle (protocol 4) of a class instance
        pickle.dump(ValueError("not weights"), fh, protocol=4)
    (d / "w_random.pt").write_bytes(random.Random(0).randbytes(5000))
    (d / "w_empty.pt").write_bytes(b"")
    torch.manual_seed(0)
    torch.save(torchvision.models.squeezenet1_1().state_dict(), d / "w_other_arch.pt")  # 5 MB
    with torch.device("meta"):
        keys = list(torchvision.models.vgg16().state_dict())
    torch.save({k: torch.zeros(2) for k in keys}, d / "w_vgg_shapes.pt")  # vgg16's keys, wrong shapes


def _make_runs(d) -> None:
    for name in ("notrun", "trunc_run", "foreign_run", "trunc_batch", "foreign_batch"):
        os.makedirs(d / name)
    (d / "notrun" / "notes.txt").write_text("my thesis\n")
    run = json.dumps({"kind": "patchcollide-run", "config": {"size": 32, "mode": "pixel"}, "inputs": {}})
    (d / "trunc_run" / "report.json").write_text(run[: len(run) // 2])
    (d / "foreign_run" / "report.json").write_text('{"kind": "something-else"}')
    (d / "hollow_run").mkdir()  # a finished run's report.json, its vertices and state.npz gone
    (d / "hollow_run" / "report.json").write_text(json.dumps({
        "kind": "patchcollide-run", "config": {"size": 32}, "inputs": {"index": None},
        "target": {"label": 1, "top_prob": 0.5}, "vertices": {"png": {"rel_error": [0.1, 0.2]}}}))
    bat = json.dumps({"kind": "patchcollide-batch", "jobs": [{"id": "a", "status": "done"}]})
    (d / "trunc_batch" / "batch.json").write_text(bat[: len(bat) // 2])
    (d / "foreign_batch" / "batch.json").write_text("[1, 2]")


def _make_jobs(d) -> None:
    j = d / "jobs"
    os.makedirs(j)
    shutil.copy(d / "img.png", j / "a.png")
    for name in ("huge.png", "text.jpg"):
        shutil.copy(d / name, j / name)
    ok = {"id": "a", "source": "a.png", "target": "a.png", "mode": "pixel", "size": 32, "steps": 1, "min_steps": 0,
          "vertices": 2, "samples": 0}

    def write(name, *lines):
        (j / name).write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines))

    (j / "empty.jsonl").write_bytes(b"")
    (j / "notutf8.jsonl").write_bytes(b'\xff\xfe{"id": "a"}\n')
    write("malformed.jsonl", json.dumps(ok)[:-1])
    write("unknown.jsonl", {**ok, "colour": "red"})
    write("missing.jsonl", {**ok, "source": "missing.png"})
    write("notimage.jsonl", {**ok, "target": "text.jpg"})
    write("huge.jsonl", {**ok, "source": "huge.png"})
    write("dup.jsonl", ok, {**ok, "seed": 1})
    write("escape.jsonl", {**ok, "out": "../escape"})
    write("abs.jsonl", {**ok, "out": os.path.abspath(d / "abs_out")})
    write("pixel.jsonl", ok)  # valid: for bad --weights
    write("patch.jsonl", {**ok, "mode": "patches", "k": 2})  # valid: for bad --index
    (j / "array.jsonl").write_text(json.dumps([ok, {**ok, "id": "b"}], indent=2) + "\n")  # pretty-printed array


@pytest.fixture(scope="session")
def assets(tmp_path_factory, photos_dir, query_image, small_store):
    d = tmp_path_factory.mktemp("bad_inputs")
    _make_images(d, query_image)
    _make_stores(d, small_store)
    _make_indexes(d, photos_dir)
    _make_weights(d)
    _make_runs(d)
    _make_jobs(d)
    return d


# ---------------------------------------------------------------------------------------------
# Running one case: copy its inputs, snapshot, run, snapshot.

PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_.]+)\}")


def materialise(argv: list[str], assets, world) -> list[str]:
    """Copy every {name} of argv from the assets into ``world`` and put its relative path in."""
    def sub(m):
        name = m.group(1)
        src, dst = assets / name, world / name
        if not os.path.lexists(dst):
            if src.is_dir():
                shutil.copytree(src, dst)
            elif src.exists():
                shutil.copy2(src, dst)
            # else: deliberately missing
        return name
    return [PLACEHOLDER.sub(sub, a) for a in argv]


def snapshot(root) -> dict:
    """relative path -> ("dir",) or (size, mtime_ns, sha256 for files under 10 MB)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames:
            out[os.path.relpath(os.path.join(dirpath, n), root)] = ("dir",)
        for n in filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            digest = None
            if st.st_size < HASH_LIMIT:
                with open(p, "rb") as fh:
                    digest = hashlib.sha256(fh.read()).hexdigest()
            out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns, digest)
    return out


def assert_untouched(before: dict, after: dict) -> None:
    changed = [p for p, v in before.items() if after.get(p) != v]
    assert not changed, f"changed or removed: {changed}"
    new = sorted(set(after) - set(before))
    # only lock files may appear, and only in folders that were there
    bad = [p for p in new if not (p.endswith(".lock") and (os.path.dirname(p) == "" or
                                                            before.get(os.path.dirname(p)) == ("dir",)))]
    assert not bad, f"new files or folders after a refused command: {bad}"


def invoke(argv: list[str]) -> tuple[int, str, list[str]]:
    """CliRunner (stdout and stderr together), recording Python warnings as a real terminal
    would show them."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        r = CliRunner().invoke(cli, ["-q", *argv], catch_exceptions=False)
    return r.exit_code, r.output, [f"{w.category.__name__}: {w.message}" for w in caught]


def check_message(code: int, out: str, extra: list[str], needle: str, names: str) -> str:
    assert code == 2, f"exit code {code}: {out}"
    assert "Traceback" not in out, out
    lines = [ln for ln in out.splitlines() if ln.strip()] + extra
    assert len(lines) == 1, "expected one line:\n" + "\n".join(lines)
    line = lines[0]
    assert line.startswith("Error: "), line
    assert needle in line, f"{needle!r} not in {line!r}"
    assert names in line, f"the offending file {names!r} is not named in {line!r}"
    assert HINT.search(line.replace(names, "")), f"no '; <what to do>' clause in {line!r}"
    return line


def record(case_id: str, argv: list[str], line: str) -> None:
    path = os.environ.get("BAD_INPUTS_MATRIX")
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps({"case": case_id, "argv": argv, "message": line}) + "\n")


# ---------------------------------------------------------------------------------------------
# The matrix: (id "command/input kind", argv, needle in the message, offending name)

IMAGES = [  # kind, file, needle
    ("empty image", "empty.png", "empty file"),
    ("truncated PNG", "trunc.png", "truncated"),
    ("truncated JPEG", "trunc.jpg", "truncated"),
    ("huge image (100000 x 100000 declared)", "huge.png", "decompression-bomb guard"),
    ("text file named .jpg", "text.jpg", "not an image"),
]
STORES = [
    ("truncated HDF5 store", "trunc.h5", "not a readable HDF5 file (truncated"),
    ("foreign HDF5 file", "foreign.h5", "not a patchcollide store"),
    ("empty file named .h5", "empty.h5", "no HDF5 signature"),
    ("text file named .h5", "text.h5", "no HDF5 signature"),
]
INDEXES = [
    ("truncated index.faiss", "idx_trunc_faiss", "is not the index that index.json describes"),
    ("random bytes as index.faiss", "idx_random_faiss", "is not the index that index.json describes"),
    ("random index.faiss, checksum vouched", "idx_random_faiss_sum", "not a readable faiss index"),
    ("truncated index.faiss, checksum vouched", "idx_trunc_faiss_sum", "not a readable faiss index"),
    ("index.json is {}", "idx_empty_json", "not a patchcollide index manifest"),
    ("index.json invalid JSON", "idx_bad_json", "not a patchcollide index manifest"),
    ("index.json missing keys", "idx_partial_json", "not a patchcollide index manifest"),
    ("index.json of another index", "idx_json_of_other", "is not the index that index.json describes"),
    ("index.json of another store (fingerprint)", "idx_other_store", "was built for store"),
    ("index over a truncated store", "idx_trunc_store", "not a readable HDF5 file"),
    ("index over a foreign HDF5 store", "idx_foreign_store", "not a patchcollide store"),
    ("index.faiss without index.json", "idx_no_json", "no built index here"),
    ("empty folder as index", "idx_empty", "no built index here"),
]
WEIGHTS = [  # the last two build a random VGG-16 before they fail (a few seconds each)
    ("dict with a non-tensor value", "w_dict_str.pt", "not a state dict"),
    ("list of tensors", "w_list.pt", "not a state dict"),
    ("whole nn.Module (weights_only refuses)", "w_module.pt", "refused"),
    ("plain pickle of an object (weights_only refuses)", "w_pickle.pt", "not a file of tensors written by torch.save"),
    ("random bytes", "w_random.pt", "not a torch state dict"),
    ("empty file", "w_empty.pt", "not a torch state dict"),
    ("state dict of another architecture", "w_other_arch.pt", "does not fit vgg16"),
    ("right keys, wrong shapes", "w_vgg_shapes.pt", "does not fit vgg16"),
]
JOBS = [
    ("empty job file", "empty.jsonl", "no jobs"),
    ("job file not UTF-8", "notutf8.jsonl", "not UTF-8"),
    ("malformed JSON line", "malformed.jsonl", "not valid JSON"),
    ("unknown key", "unknown.jsonl", "unknown key 'colour'"),
    ("missing image", "missing.jsonl", "does not exist"),
    ("job image not an image", "notimage.jsonl", "not an image"),
    ("job image huge", "huge.jsonl", "decompression-bomb"),
    ("duplicate ids", "dup.jsonl", "duplicate id 'a'"),
    ("out escaping DIR (../escape)", "escape.jsonl", "leads outside"),
    ("absolute out", "abs.jsonl", "absolute path"),
    ("no such job file", "nothere.jsonl", "no such job file"),
    ("pretty-printed JSON array", "array.jsonl", "one JSON array of 2 jobs; write it as JSON Lines"),
]
RUNS = [  # kind, folder, needle of sample, needle of report
    ("folder that is not a run", "notrun", "not a finished patchcollide run", "neither report.json nor batch.json"),
    ("run with truncated report.json", "trunc_run", "not a finished patchcollide run", "not valid JSON"),
    ("foreign report.json", "foreign_run", "not a finished patchcollide run", "not a patchcollide-run file"),
    ("batch with truncated batch.json", "trunc_batch", "not a finished patchcollide run", "not valid JSON"),
    ("no such folder", "nothere", "not a run directory", "no such directory"),
]

PIXEL = ["--mode", "pixel", "--size", "32", "--steps", "1", "--min-steps", "0", "--vertices", "2", "--device", "cpu"]
COLLIDE = ["collide", "--out", "run_out", *PIXEL]
BATCH = ["batch", "--out", "batch_out", "--device", "cpu", "--samples", "0"]
NULLSPACE = ["nullspace", "--model", "resnet18", "--size", "32", "--out", "ns_out"]
DEMO = ["demo", "--out", "demo_out", "--weights", "random", "--device", "cpu", "--steps", "1", "--samples", "2"]


def _cases():
    c = []

    def add(cmd, kind, argv, needle, names):
        c.append(pytest.param(argv, needle, names, id=f"{cmd} | {kind}"))

    # extract: bad images inside a folder are skipped (see the test below); these are errors
    add("extract", "no such folder", ["extract", "nothere", "--out", "s.h5"], "does not exist", "nothere")
    add("extract", "--out inside a file", ["extract", "{jobs}", "--out", "{img.png}/s.h5"],
        "is a file, not a folder; choose another --out", "img.png")
    for kind, f, needle in STORES[:2]:  # an existing bad file at --out is refused, not replaced ({jobs}: any folder)
        add("extract", f"--out is a {kind}", ["extract", "{jobs}", "--out", f"{{{f}}}"], "already exists", f)
    for kind, f, needle in STORES + [("no such store", "nothere.h5", "no such store")]:
        add("store info", kind, ["store", "info", f"{{{f}}}"], needle, f)
        add("index build", kind, ["index", "build", "--index", "new_idx", "--store", f"{{{f}}}"], needle, f)
    add("index build", "truncated store, existing index kept",
        ["index", "build", "--index", "{idx_good}", "--store", "{trunc.h5}"], "not a readable HDF5 file", "trunc.h5")
    add("index build", "store in INDEX truncated", ["index", "build", "--index", "{idx_trunc_store}"],
        "not a readable HDF5 file", "idx_trunc_store")
    for kind, d, needle in INDEXES:
        add("index search", kind, ["index", "search", "{img.png}", "--index", f"{{{d}}}", "-k", "2",
                                   "--out", "nb.npz", "--mosaic", "m.png"], needle, d)
        add("index eval", kind, ["index", "eval", "--index", f"{{{d}}}", "--queries", "{img.png}", "-k", "2"],
            needle, d)
    for kind, f, needle in STORES:
        add("index search", f"--store {kind}", ["index", "search", "{img.png}", "--index", "{idx_good}",
                                                "--store", f"{{{f}}}", "-k", "2"], needle, f)
    for kind, f, needle in IMAGES:
        add("index search", kind, ["index", "search", f"{{{f}}}", "--index", "{idx_good}", "-k", "2",
                                   "--out", "nb.npz", "--mosaic", "m.png"], needle, f)
        add("index eval", kind, ["index", "eval", "--index", "{idx_good}", "--queries", f"{{{f}}}", "-k", "2"],
            needle, f)
    # collide: inputs are read before the model is built; a bad index is opened before it too
    for kind, f, needle in IMAGES:
        add("collide", f"--source {kind}", [*COLLIDE, "--source", f"{{{f}}}", "--target", "{img.png}",
                                            "--weights", "random"], needle, f)
    for kind, f, needle in IMAGES:
        add("collide", f"--target {kind}", [*COLLIDE, "--source", "{img.png}", "--target", f"{{{f}}}",
                                            "--weights", "random"], needle, f)
    for kind, f, needle in WEIGHTS:
        add("collide", f"--weights {kind}", [*COLLIDE, "--source", "{img.png}", "--target", "{img.png}",
                                             "--weights", f"{{{f}}}"], needle, f)
    for kind, d, needle in INDEXES:
        add("collide", f"patch mode, {kind}", ["collide", "--out", "run_out", "--mode", "patches", "--size", "32",
                                               "--steps", "1", "--source", "{img.png}", "--target", "{img.png}",
                                               "--weights", "random", "-i", f"{{{d}}}"], needle, d)
    # sample and report
    for kind, d, sample_needle, report_needle in RUNS:
        add("sample", kind, ["sample", "--out", f"{{{d}}}", "--samples", "2", "--device", "cpu"], sample_needle, d)
        add("report", kind, ["report", f"{{{d}}}"], report_needle, d)
    add("report", "foreign batch.json", ["report", "{foreign_batch}"], "not a patchcollide-batch file",
        "foreign_batch")
    add("sample", "run without its vertices and state.npz", ["sample", "--out", "{hollow_run}", "--samples", "2"],
        "vertex_0.png, vertex_1.png, state.npz missing, so it is not a complete run; restore the files", "hollow_run")
    add("collide", "--out inside a file", [*COLLIDE[:1], "--source", "{img.png}", "--target", "{img.png}",
                                          "--weights", "random", *COLLIDE[3:], "--out", "{img.png}/run"],
        "is a file, not a folder; choose another --out", "img.png")
    add("collide", "--resume of a folder without a checkpoint", ["collide", "--resume", "{notrun}"],
        "no checkpoint to resume at", "notrun")
    add("collide", "--source a folder", [*COLLIDE, "--source", "{jobs}", "--target", "{img.png}", "--weights", "random"],
        "is a folder; pass one image file", "jobs")
    # an index folder moved away from its store: each command names its own fix
    add("index search", "index moved away from its store", ["index", "search", "{img.png}", "--index", "{idx_moved}"],
        "pass its store with --store PATH", "idx_moved")
    add("collide", "index moved away from its store", ["collide", "--out", "run_out", "--mode", "patches", "--size",
                                                       "32", "--steps", "1", "--source", "{img.png}", "--target",
                                                       "{img.png}", "--weights", "random", "-i", "{idx_moved}"],
        "move the index folder back beside its store", "idx_moved")
    add("index build", "--factory that faiss does not know", ["index", "build", "--index", "new_idx", "--store",
                                                              "{idx_good}/patches.h5", "--factory", "IVF99999,Bogus"],
        "is not a valid faiss index_factory string", "IVF99999,Bogus")
    # batch: the job file, then --weights and --index (opened before anything is written)
    for kind, f, needle in JOBS:
        add("batch", kind, [*BATCH, "--weights", "random", f"{{jobs}}/{f}"], needle, f)
    for kind, f, needle in WEIGHTS[1:5] + WEIGHTS[6:7]:
        add("batch", f"--weights {kind}", [*BATCH, "--weights", f"{{{f}}}", "{jobs}/pixel.jsonl"], needle, f)
    for kind, d, needle in INDEXES[0:1] + INDEXES[2:3] + INDEXES[5:6] + INDEXES[8:10]:
        add("batch", f"--index {kind}", [*BATCH, "--weights", "random", "-i", f"{{{d}}}", "{jobs}/patch.jsonl"],
            needle, d)
    # nullspace (resnet18 at 32 x 32: cheap). Left out: weights that do not fit resnet18, whose message
    # (models.build.build_model) says no more than "does not fit"
    for kind, f, needle in WEIGHTS[:6]:
        needle = needle if needle == "not a state dict" else "not a torch state dict"
        add("nullspace", f"--weights {kind}", [*NULLSPACE, "--weights", f"{{{f}}}"], needle, f)
    for kind, f, needle in IMAGES:
        add("nullspace", f"--source {kind}", [*NULLSPACE, "--source", f"{{{f}}}"], needle, f)
    add("nullspace", "unknown --model", ["nullspace", "--model", "resnet99", "--out", "ns_out"], "unknown model",
        "resnet99")
    # nullity: model names and output folders are checked before any weight matrix is decomposed
    add("nullity", "unknown model", ["nullity", "squeezenet1_1", "resnet99", "--out", "t.md"], "unknown model",
        "resnet99")
    add("nullity", "--out in a missing folder", ["nullity", "squeezenet1_1", "--out", "no/dir/t.json"],
        "its folder does not exist", "t.json")
    # world: its settings are checked before anything is rendered or trained
    add("world", "--size too small", ["world", "build", "--size", "20", "--out", "w"],
        "--size must be between 32 and 448", "20")
    # demo: everything is checked before the photos, the store or the run are written
    for kind, d, needle in INDEXES[4:6] + INDEXES[8:10]:
        add("demo", f"--index {kind}", [*DEMO, "--index", f"{{{d}}}"], needle, d)
    add("demo", "--index holding a foreign HDF5 store", [*DEMO, "--index", "{demo_foreign_store}"],
        "not a patchcollide store", "demo_foreign_store")
    add("demo", "--index holding a truncated store", [*DEMO, "--index", "{demo_trunc_store}"],
        "not a readable HDF5 file", "demo_trunc_store")
    add("demo", "--index holding another (valid) store", [*DEMO, "--index", "{demo_other_store}"],
        "is not the demo's store", "demo_other_store")
    for kind, f, needle in WEIGHTS[3:5] + WEIGHTS[6:7]:
        add("demo", f"--weights {kind}", ["demo", "--index", "demo_idx", "--out", "demo_out", "--device", "cpu",
                                          "--weights", f"{{{f}}}"], needle, f)
    return c


CASES = _cases()


@pytest.mark.parametrize("argv, needle, names", CASES)
def test_bad_input(argv, needle, names, assets, tmp_path, monkeypatch, request):
    world = tmp_path / "w"
    world.mkdir()
    monkeypatch.chdir(world)
    args = materialise(argv, assets, world)
    before = snapshot(world)
    code, out, extra = invoke(args)
    line = check_message(code, out, extra, needle, names)
    assert_untouched(before, snapshot(world))
    record(request.node.callspec.id, args, line)


# ---------------------------------------------------------------------------------------------
# A few as real processes: no traceback, no warning, nothing else on the terminal.

PROCESS_CASES = [
    pytest.param(["store", "info", "{trunc.h5}"], "not a readable HDF5 file", "trunc.h5", id="store info | truncated"),
    pytest.param(["index", "search", "{text.jpg}", "--index", "{idx_good}"], "not an image", "text.jpg",
                 id="index search | text file named .jpg"),
    pytest.param(["index", "eval", "--index", "{idx_random_faiss_sum}", "--queries", "{img.png}"],
                 "not a readable faiss index", "idx_random_faiss_sum", id="index eval | random index.faiss"),
    pytest.param([*COLLIDE, "--source", "{img.png}", "--target", "{img.png}", "--weights", "{w_pickle.pt}"],
                 "not a torch state dict", "w_pickle.pt", id="collide | plain pickle as --weights"),
    pytest.param([*NULLSPACE, "--weights", "{w_pickle.pt}"], "not a torch state dict", "w_pickle.pt",
                 id="nullspace | plain pickle as --weights"),
    pytest.param([*BATCH, "--weights", "random", "{jobs}/escape.jsonl"], "leads outside", "escape.jsonl",
                 id="batch | out escaping DIR"),
]


@pytest.mark.parametrize("argv, needle, names", PROCESS_CASES)
def test_bad_input_in_a_real_process(argv, needle, names, assets, tmp_path):
    world = tmp_path / "w"
    world.mkdir()
    args = materialise(argv, assets, world)
    before = snapshot(world)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}  # Python's default filters, as in a shell
    r = subprocess.run([sys.executable, "-m", "patchcollide", "-q", *args], cwd=world, capture_output=True,
                       text=True, env=env, timeout=300, check=False)
    check_message(r.returncode, r.stdout + r.stderr, [], needle, names)
    assert_untouched(before, snapshot(world))


# ---------------------------------------------------------------------------------------------
# extract: bad images inside a folder are skipped with a warning and listed, not errors


def test_extract_skips_bad_images_and_lists_them(assets, tmp_path, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(assets / "img.png", folder / "good.png")
    bad = {f: needle for _, f, needle in IMAGES}
    for f in bad:
        shutil.copy(assets / f, folder / f)
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["extract", "in", "--out", "s.h5", "--stride", "64"], catch_exceptions=False)
    out = r.output
    assert r.exit_code == 0 and "Traceback" not in out, out
    warned = [ln for ln in out.splitlines() if ln.startswith("warning: skipped")]
    assert len(warned) == len(bad), out
    for f, needle in bad.items():
        assert sum(f in ln and needle in ln for ln in warned) == 1, (f, warned)
    manifest = json.loads((tmp_path / "s.json").read_text())
    skipped = {os.path.basename(s["path"]): s["reason"] for s in manifest["skipped"]}
    assert set(skipped) == set(bad)
    assert all(needle in skipped[f] for f, needle in bad.items())
    assert manifest["n_images"] == 1 and manifest["n_skipped"] == len(bad)


# Commands without a case above, and why (see docs/reliability.md).
NOT_COVERED: dict[str, str] = {}


def test_every_command_is_in_the_matrix():
    covered = {p.id.split(" | ")[0].split(" ")[0] for p in CASES}
    commands = set(cli.commands)
    assert commands - covered == set(NOT_COVERED), sorted(commands - covered)
