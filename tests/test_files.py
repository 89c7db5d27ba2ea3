"""files.py, the one I/O layer: atomic writes survive a failure midway, renames are fsynced
with their directory, locks are seen across processes, the versions record carries the
commit; every user error derives from PatchcollideError; no module renames files by itself."""
from __future__ import annotations

import ast
import errno
import importlib
import inspect
import json
import os
import pathlib
import pkgutil
import shutil
import stat
import subprocess
import sys

import click
import pytest

import patchcollide
from patchcollide.core import files
from patchcollide.core.errors import PatchcollideError

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = pathlib.Path(patchcollide.__file__).resolve().parent
NOT_YET_FILES: set[str] = set()  # every module renames through files.py
NOT_YET_ERRORS: set[str] = set()  # every user error derives from PatchcollideError


def _listing(d) -> list[str]:
    return sorted(os.listdir(d))


# ----------------------------------------------------------------------------------- atomic writes


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "a.json"
    p.write_text("old")
    files.write_json(str(p), {"x": [1, 2]})
    assert p.read_text() == '{\n  "x": [\n    1,\n    2\n  ]\n}' and _listing(tmp_path) == ["a.json"]
    files.write_text(str(p), "näive", tmp=str(tmp_path / ".a.123.tmp"))
    assert p.read_text(encoding="utf-8") == "näive" and _listing(tmp_path) == ["a.json"]
    with files.atomic_open(str(p), "wb") as fh:
        fh.write(b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01" and _listing(tmp_path) == ["a.json"]


def test_a_write_failing_midway_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("old content")
    seen = {}
    with pytest.raises(RuntimeError, match="disk gone"):
        with files.atomic_open(str(p)) as fh:
            fh.write("new content, half of it")
            fh.flush()
            seen["tmp"] = open(fh.name).read()  # the fault lands with half the new file on disk
            raise RuntimeError("disk gone")
    assert seen["tmp"] == "new content, half of it"
    assert p.read_text() == "old content" and _listing(tmp_path) == ["a.txt"]


def test_json_that_fails_to_serialise_midway_keeps_the_old_file(tmp_path):
    p = tmp_path / "r.json"
    p.write_text('{"old": true}')

    class Opaque:
        pass

    with pytest.raises(TypeError, match="not JSON serializable"):
        files.write_json(str(p), {"first": "x" * 100_000, "second": Opaque()})  # "first" is written before
    assert p.read_text() == '{"old": true}' and _listing(tmp_path) == ["r.json"]


@pytest.mark.parametrize("where", ["fsync", "replace"])
def test_a_failing_fsync_or_rename_keeps_the_old_file(tmp_path, monkeypatch, where):
    p = tmp_path / "a.txt"
    p.write_text("old content")
    calls = []

    def broken(*args):
        calls.append(args)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, where, broken)
    with pytest.raises(OSError) as info:
        files.write_text(str(p), "new content")
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC and len(calls) == 1  # the fault landed, once
    assert p.read_text() == "old content" and _listing(tmp_path) == ["a.txt"]


def _record_fsyncs(monkeypatch) -> list[tuple[bool, tuple[int, int]]]:
    """Replace os.fsync by one that records (is a directory, (device, inode)) and then syncs."""
    real, log = os.fsync, []

    def fsync(fd):
        st = os.fstat(fd)
        log.append((stat.S_ISDIR(st.st_mode), (st.st_dev, st.st_ino)))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return log


def _ident(path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def test_the_file_then_its_directory_are_fsynced(tmp_path, monkeypatch):
    d = tmp_path / "out"
    d.mkdir()
    log = _record_fsyncs(monkeypatch)
    files.write_json(str(d / "a.json"), {"a": 1})
    assert log == [(False, _ident(d / "a.json")), (True, _ident(d))]


def test_installing_a_directory_fsyncs_its_parent(tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / "old.txt").write_text("old run")
    log = _record_fsyncs(monkeypatch)
    with files.staged_dir(str(out)) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path) and os.listdir(tmp) == []
        pathlib.Path(tmp, "new.txt").write_text("new run")
    assert _listing(out) == ["new.txt"] and _listing(tmp_path) == ["run"]  # the old run is gone
    assert (True, _ident(tmp_path)) in log


def test_a_failing_staged_directory_leaves_the_old_one(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "old.txt").write_text("old run")
    with pytest.raises(ValueError, match="half done"):
        with files.staged_dir(str(out)) as tmp:
            pathlib.Path(tmp, "new.txt").write_text("half")
            raise ValueError("half done")
    assert _listing(out) == ["old.txt"] and _listing(tmp_path) == ["run"]


# ------------------------------------------------------------------------------------ run folders


class RunError(PatchcollideError):
    pass


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_a_staged_directory_gets_the_permissions_the_umask_implies(tmp_path, mask):
    old = os.umask(mask)
    try:
        with files.staged_dir(str(tmp_path / "run")) as tmp:
            pathlib.Path(tmp, "a.txt").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "run").st_mode) == 0o777 & ~mask  # not mkdtemp's 0700


def test_check_writable_refuses_a_file_parent_a_read_only_folder_and_too_little_space(tmp_path, monkeypatch):
    class Bad(Exception):
        pass

    files.check_writable(str(tmp_path / "new" / "deeper" / "run"), need=1, error=Bad)  # missing folders are made later
    (tmp_path / "f").write_text("x")
    with pytest.raises(Bad, match=r"^--out .*f/run: .*f is a file, not a folder; choose another --out$"):
        files.check_writable(str(tmp_path / "f" / "run"), need=1, error=Bad)
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    with pytest.raises(Bad, match=r"MiB free in .*, the outputs need about .* MiB; free space or choose another --out$"):
        files.check_writable(str(tmp_path / "run"), need=free + 2**30, error=Bad)
    # a read-only mount (root writes in a 0555 folder, so the refusal is injected where the probe writes)
    def read_only(*a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(files.tempfile, "mkstemp", read_only)
    with pytest.raises(Bad, match=r"^--out .*/run: cannot write in .* \(Read-only file system\); choose another --out"):
        files.check_writable(str(tmp_path / "run"), need=1, error=Bad)
    monkeypatch.undo()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".patchcollide-probe")]


def test_check_out_allows_new_or_empty_and_replaces_only_runs_of_its_kind(tmp_path):
    check = lambda out, overwrite: files.check_out(str(out), overwrite, "k-run", "k run", RunError)  # noqa: E731
    check(tmp_path / "new", False)
    (tmp_path / "empty").mkdir()
    check(tmp_path / "empty", False)
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.json").write_text('{"kind": "k-run"}')
    with pytest.raises(RunError, match="already exists; choose another name or pass --overwrite"):
        check(run, False)
    check(run, True)
    other = tmp_path / "other"
    other.mkdir()
    (other / "report.json").write_text('{"kind": "another"}')
    with pytest.raises(RunError, match="not a k run; --overwrite only replaces runs"):
        check(other, True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunError, match="not a k run"):
        check(tmp_path / "file", True)


# ------------------------------------------------------------------------------------------ locks

HOLDER = """
import sys
from patchcollide.core.files import try_lock
fd = try_lock(sys.argv[1])
print("held" if fd is not None else "busy", flush=True)
sys.stdin.readline()
"""


def _holder(path):
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline().strip() == "held"
    return p


@pytest.mark.parametrize("end", ["exit", "sigkill"])
def test_the_lock_probe_sees_another_process_hold_and_release(tmp_path, end):
    path = tmp_path / "x.lock"
    assert not files.is_locked(str(path)) and not path.exists()  # a probe never creates the file
    p = _holder(path)
    try:
        assert files.is_locked(str(path))
        assert files.is_locked(str(path))  # probing twice does not take the lock away
        assert files.try_lock(str(path)) is None
        with pytest.raises(ValueError, match="busy"):
            with files.locked(str(path), busy=ValueError("busy")):
                pass
    finally:
        if end == "exit":
            p.communicate("\n")
        else:
            p.kill()  # a lock dies with its process, even on SIGKILL
            p.wait()
    assert not files.is_locked(str(path))
    fd = files.try_lock(str(path))
    assert fd is not None
    try:
        assert files.is_locked(str(path))  # held in this process through another open file
        q = subprocess.run([sys.executable, "-c", HOLDER, str(path)], input="\n", capture_output=True, text=True)
        assert q.stdout.strip() == "busy"
    finally:
        files.unlock(fd)
    assert not files.is_locked(str(path))


# ------------------------------------------------------------------------------------ versions

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="no git on this machine")
GIT_ENV = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}


def _git(cwd, *args) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd=cwd,
                          env=GIT_ENV, capture_output=True, text=True, check=True).stdout.strip()


@needs_git
def test_git_commit_of_a_checkout_and_of_other_folders(tmp_path):
    repo = tmp_path / "repo"
    (repo / "sub").mkdir(parents=True)
    (repo / "a.txt").write_text("one")
    (repo / "sub" / "b.txt").write_text("two")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "first")
    head = _git(repo, "rev-parse", "HEAD")
    assert files.git_commit(str(repo)) == {"commit": head, "dirty": False}
    (repo / "a.txt").write_text("changed")
    assert files.git_commit(str(repo)) == {"commit": head, "dirty": True}
    (repo / "a.txt").write_text("one")
    (repo / "untracked.txt").write_text("new")
    assert files.git_commit(str(repo)) == {"commit": head, "dirty": False}  # untracked files do not count
    assert files.git_commit(str(repo / "sub")) is None  # inside someone else's checkout: not ours
    (tmp_path / "plain").mkdir()
    assert files.git_commit(str(tmp_path / "plain")) is None


@needs_git
def test_versions_record_carries_the_commit_of_the_code():
    v = files.versions()
    assert {"patchcollide", "python", "platform", "torch", "torchvision", "faiss", "numpy", "h5py", "hdf5",
            "pillow", "git"} <= set(v)
    assert v["patchcollide"] == patchcollide.__version__ and v["numpy"] and v["torch"]
    try:
        top = _git(files.CODE_ROOT, "rev-parse", "--show-toplevel")
    except subprocess.CalledProcessError:
        top = None
    if top is None or not os.path.samefile(top, files.CODE_ROOT):
        pytest.skip(f"the code at {files.CODE_ROOT} is not a git checkout")
    assert v["git"]["commit"] == _git(files.CODE_ROOT, "rev-parse", "HEAD")
    assert isinstance(v["git"]["dirty"], bool)


# ------------------------------------------------------------------------------------ user errors


def _error_classes() -> list[type]:
    """Every exception class defined in the package outside the CLI, private ones aside."""
    found = {}
    for info in pkgutil.walk_packages(patchcollide.__path__, "patchcollide."):
        if info.name.endswith("__main__") or info.name.startswith("patchcollide.cli"):
            continue
        mod = importlib.import_module(info.name)
        for name, obj in vars(mod).items():
            if (inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == mod.__name__
                    and not name.startswith("_")):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return [found[k] for k in sorted(found)]


ERROR_CLASSES = _error_classes()


def test_the_error_scan_finds_the_known_classes():
    names = {c.__name__ for c in ERROR_CLASSES}
    assert {"PatchcollideError", "ExtractError", "StoreError", "IndexError_", "BadImage", "CollideError",
            "ReportError", "JobsError", "DigitsError", "ModelError"} <= names


@pytest.mark.parametrize("cls", [
    pytest.param(c, id=c.__name__, marks=[pytest.mark.xfail(strict=True, reason="defined in a file another "
                                                              "refactor rewrites; CLI lists it by hand")]
                 if f"{c.__module__}.{c.__qualname__}" in NOT_YET_ERRORS else [])
    for c in ERROR_CLASSES])
def test_every_user_error_is_a_patchcollide_error(cls):
    assert issubclass(cls, PatchcollideError)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_the_cli_turns_every_user_error_into_one_line(cls):
    import signal

    from patchcollide.engine.checkpoints import Interrupted
    from patchcollide.cli.common import UserError, user_errors

    stopped = issubclass(cls, Interrupted)  # a signal stopped the run: the shell's exit code, 128 + signal
    with pytest.raises(UserError) as info:
        with user_errors():
            raise cls("something is wrong; fix it", signal.SIGTERM) if stopped else cls("something is wrong; fix it")
    assert isinstance(info.value, click.ClickException) and info.value.exit_code == (143 if stopped else 2)
    assert "something is wrong; fix it" in info.value.format_message()


# --------------------------------------------------------------------------- one place that renames

RENAMES = {("os", "replace"), ("os", "rename"), ("os", "renames"), ("shutil", "move")}


def renames_in(source: str) -> list[int]:
    """Line numbers of calls that rename files: os.replace/rename/renames, shutil.move, also
    under ``from os import replace`` names."""
    tree = ast.parse(source)
    aliases = {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
               for a in node.names if (node.module, a.name) in RENAMES}
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if (isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and (f.value.id, f.attr) in RENAMES) or \
                (isinstance(f, ast.Name) and f.id in aliases):
            lines.append(node.lineno)
    return lines


def test_the_rename_scan_can_fail():
    src = "import os, shutil\nfrom os import replace as r\nos.replace(a, b)\nx = 'os.replace(a, b)'\nr(a, b)\n" \
          "shutil.move(a, b)\n"
    assert renames_in(src) == [3, 5, 6]


def test_only_files_py_renames_files():
    sources = sorted(PACKAGE.rglob("*.py")) + sorted((ROOT / "scripts").glob("*.py"))
    assert len(sources) > 20
    offenders = []
    for p in sources:
        rel = p.relative_to(PACKAGE).as_posix() if PACKAGE in p.parents else f"scripts/{p.name}"
        if rel == "core/files.py" or rel in NOT_YET_FILES:
            continue
        offenders += [f"{rel}:{n}" for n in renames_in(p.read_text(encoding="utf-8"))]
    assert offenders == [], "rename through patchcollide.core.files (atomic_path, write_json, install_dir, replace)"
    assert len(renames_in((PACKAGE / "core" / "files.py").read_text(encoding="utf-8"))) == 1  # in files.replace


def test_versions_read_an_unimported_library_without_importing_it():
    """torchvision's version comes from its version.py, the same string its import gives, and
    the record leaves it unimported (its import alone costs 1.5 s after a run's steps)."""
    code = ("import sys, json; from patchcollide.core.files import versions; v = versions(); "
            "gone = 'torchvision' not in sys.modules; import torchvision, torch; "
            "print(json.dumps([gone, v['torchvision'] == torchvision.__version__, v['torch'] == torch.__version__]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(r.stdout) == [True, True, True], r.stdout + r.stderr


def test_a_written_report_reads_back_with_its_digest_and_a_changed_byte_does_not(tmp_path):
    """write_report's digest is of the content as the file holds it: numpy scalars, tuples, NaN
    (written as null) and non-ASCII text read back to the same digest; one changed value or key
    does not."""
    import numpy as np

    from patchcollide.core.files import DIGEST, digest_of, write_report

    doc = {"kind": "k", "x": np.float32(0.1), "t": (1, 2), "nan": float("nan"), "name": "Zoë \u2192",
           "nested": {"b": [np.int64(3), 2.5e-300], "a": None}}
    path = write_report(str(tmp_path / "report.json"), doc)
    back = json.loads(open(path).read())
    assert back[DIGEST] == digest_of(back) == digest_of(doc) and back["nan"] is None
    assert digest_of({**back, "x": back["x"] + 1e-9}) != back[DIGEST]
    assert digest_of({("X" if k == "x" else k): v for k, v in back.items()}) != back[DIGEST]
