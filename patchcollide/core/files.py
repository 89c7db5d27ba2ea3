"""Writing files that survive a crash, run folders, locks and the versions record. Imports
nothing of ours (the package version aside).

* Atomic writes: :func:`atomic_path` (a temporary path for any writer: PIL, faiss, h5py,
  matplotlib), :func:`atomic_open`, :func:`write_text` and :func:`write_json`. The data
  goes to a temporary name (``PATH.tmp`` unless given), is fsynced and renamed over PATH by
  :func:`replace`, the one place that renames, which then fsyncs the directory. A reader
  sees the old file or the new one, never a part; a failed write removes its temporary file
  and leaves the old file as it was.
* Directories: :func:`staged_dir` gives a fresh directory beside the output and
  :func:`install_dir` puts it at the output's name whole.
* Run folders: :func:`check_out` refuses an output that holds something other than a run
  of the expected kind; :func:`check_writable` refuses, before any long computation, an
  output that could not be written (no permission, read-only, too little space).
* Locks: exclusive ``flock`` locks on lock files (:func:`try_lock`, :func:`locked`), which
  die with their process, even on SIGKILL; :func:`is_locked` probes one without waiting.
* :func:`versions`: the software a result was made with, the git commit of the code included;
  :func:`machine`: the machine it ran on.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import importlib
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import IO

from .version import __version__

# ---------------------------------------------------------------------------------------------
# Atomic writes


def fsync_dir(path: str) -> None:
    """Flush a directory's entries (a rename into it, a new file) to disk. A directory that
    cannot be opened or fsynced (some network file systems) is left as it is."""
    try:
        fd = os.open(path or ".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def fsync_file(path: str) -> None:
    """Flush a file's data to disk (for files written by libraries that do not)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace(src: str, dst: str) -> None:
    """Rename ``src`` (a file or a directory) to ``dst`` in one step, replacing what is there
    (``os.replace``: same file system), and fsync the directories involved so the rename
    itself survives a crash. Every rename into place in patchcollide goes through here."""
    os.replace(src, dst)
    d_dst = os.path.dirname(os.path.abspath(dst))
    fsync_dir(d_dst)
    d_src = os.path.dirname(os.path.abspath(src))
    if d_src != d_dst:
        fsync_dir(d_src)


@contextlib.contextmanager
def atomic_path(path: str, tmp: str | None = None) -> Iterator[str]:
    """A temporary path to write ``path``'s new content to, with any writer; when the block
    ends without error the file is fsynced and renamed over ``path`` (:func:`replace`).

    tmp: the temporary name (default ``PATH.tmp``): on the same file system, normally in
    the same directory. Give a unique one (e.g. with the process id) where two processes may
    write ``path`` at once without a lock. On any error the temporary file is removed, the
    old ``path`` stays as it was and the error propagates.
    """
    path = os.fspath(path)
    tmp = os.fspath(tmp) if tmp is not None else path + ".tmp"
    try:
        yield tmp
        fsync_file(tmp)
        replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", tmp: str | None = None, encoding: str = "utf-8") -> Iterator[IO]:
    """``open(path, mode)`` for writing (``"w"`` text, UTF-8, or ``"wb"`` bytes), atomically:
    see :func:`atomic_path`. ``with atomic_open(p, "wb") as f: np.savez(f, ...)``."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes a whole file: mode 'w' or 'wb', got {mode!r}")
    with atomic_path(path, tmp) as t, open(t, mode, encoding=None if mode == "wb" else encoding) as fh:
        yield fh


def write_text(path: str, text: str, tmp: str | None = None) -> str:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_open(path, "w", tmp) as fh:
        fh.write(text)
    return path


def plain(o):
    """A ``json.dump`` default: numpy scalars and arrays (anything with ``tolist()``) as plain
    numbers and lists; anything else is refused with json's TypeError."""
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


def finite(obj):
    """``obj`` with every NaN and infinity (a float, or inside a numpy value with ``tolist()``)
    as None: JSON has no such numbers, and a strict parser refuses the ``NaN`` that Python's
    json writes by default. Dicts, lists and tuples are walked; anything else is kept."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if hasattr(obj, "tolist") and hasattr(obj, "dtype"):  # numpy arrays and scalars
        return finite(obj.tolist())
    return obj


def write_json(path: str, obj, indent: int | None = 2, default: Callable = plain, tmp: str | None = None) -> str:
    """Write ``obj`` as strict JSON to ``path`` atomically; returns the path. ``default`` as in
    ``json.dump``: by default numpy values become plain ones (:func:`plain`). NaN and infinities
    are written as null (:func:`finite`), so any JSON parser reads the file."""
    with atomic_open(path, "w", tmp) as fh:
        json.dump(finite(obj), fh, indent=indent, default=default, allow_nan=False)
    return path


DIGEST = "digest"  # a run's report.json: the sha256 of the rest of it (digest_of), checked wherever a run is read


def digest_of(doc: dict, key: str = DIGEST) -> str:
    """The sha256 of ``doc`` without its ``key`` (the digest itself), over its canonical JSON (the
    text ``write_json`` writes, read back, keys sorted, no spaces): the same for the dict written
    and for the one read back from the file. report.json's ``digest``, index.json's
    ``manifest_sha256``."""
    body = json.loads(json.dumps(finite({k: v for k, v in doc.items() if k != key}), default=plain,
                                 allow_nan=False))
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_report(path: str, doc: dict) -> str:
    """A run's report.json: ``doc`` with its digest (``digest_of``), written as ``write_json``
    writes; a byte changed after that (a flip in a key nothing else reads, a value edited by
    hand) is then an error where the run is read (``runs.inputs.check_report``), not a run that
    silently says something else."""
    return write_json(path, {**doc, DIGEST: digest_of(doc)})


# ---------------------------------------------------------------------------------------------
# Directories


def umask() -> int:
    """The process's file-mode creation mask (read without changing it for good)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def staged_dir(out: str) -> Iterator[str]:
    """A fresh, empty directory ``NAME.tmp-XXXXXX`` beside ``out`` to write a whole output
    into, with the permissions the umask gives a new folder (``mkdir``'s, not ``mkdtemp``'s
    private 0700: collaborators and web servers read runs); when the block ends without error
    it is put at ``out`` by :func:`install_dir`, on any error it is removed. Check ``out``
    once more as the block's last step: something may have appeared meanwhile."""
    parent = os.path.dirname(os.path.abspath(out)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(os.path.abspath(out)) + ".tmp-", dir=parent)
    try:
        os.chmod(tmp, 0o777 & ~umask())
        yield tmp
        install_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def install_dir(tmp: str, out: str, aside: str | None = None) -> None:
    """Put the finished directory ``tmp`` at ``out`` (same file system). An existing ``out``
    is moved aside first (to ``aside``, default a fresh ``NAME.old-XXXXXX`` beside it) and
    deleted after: at every moment one complete directory is at ``out`` or aside, never a
    half-written one."""
    old = None
    if os.path.isdir(out):
        if aside is None:
            parent = os.path.dirname(os.path.abspath(out)) or "."
            aside = tempfile.mkdtemp(prefix=os.path.basename(os.path.abspath(out)) + ".old-", dir=parent)
            os.rmdir(aside)
        replace(out, aside)
        old = aside
    replace(tmp, out)
    if old:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Run folders


def occupied(path: str) -> bool:
    """True when ``path`` is a file or a non-empty directory (an empty one may be replaced)."""
    return os.path.isfile(path) or (os.path.isdir(path) and bool(os.listdir(path)))


def is_run(path: str, kind: str) -> bool:
    """True when ``path/report.json`` is readable JSON whose ``kind`` is ``kind``
    (``"patchcollide-run"``, ``"patchcollide-nullspace"``)."""
    try:
        with open(os.path.join(path, "report.json"), encoding="utf-8") as fh:
            return json.load(fh).get("kind") == kind
    except (OSError, ValueError, AttributeError):
        return False


def check_out(out: str, overwrite: bool, kind: str, what: str, error: type[Exception]) -> None:
    """Refuse an output folder ``out`` that may not be written: occupied without
    ``overwrite``, or holding anything but a run of ``kind`` (``what`` names it in the
    message, e.g. "patchcollide run"). Raises ``error`` (the caller's user-error class)."""
    if not occupied(out):
        return
    if not overwrite:
        raise error(f"--out {out} already exists; choose another name or pass --overwrite")
    if not is_run(out, kind):
        raise error(f"--out {out} holds files that are not a {what}; --overwrite only replaces runs")


def check_writable(out: str, need: int, error: type[Exception], option: str = "--out") -> None:
    """Before a long computation: refuse an output ``out`` (a file or folder still to be made)
    that could not be written at the end. Its nearest existing ancestor must be a folder this
    process can create files in (probed with a real file, so read-only mounts and ACLs count)
    with at least ``need`` bytes free. Raises ``error`` with a one-line message naming
    ``option``."""
    where = os.path.dirname(os.path.abspath(out)) or "."
    while not os.path.exists(where):
        where = os.path.dirname(where)
    if not os.path.isdir(where):
        raise error(f"{option} {out}: {where} is a file, not a folder; choose another {option}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".patchcollide-probe-", dir=where)
    except OSError as e:
        raise error(f"{option} {out}: cannot write in {where} ({e.strerror or e}); choose another {option} "
                    "or fix the folder's permissions") from None
    os.close(fd)
    os.remove(probe)
    st = os.statvfs(where)
    free = st.f_bavail * st.f_frsize
    if free < need:  # the cause says "disk full" to callers that stop on it (a batch)
        raise error(f"{option} {out}: only {free / 2**20:.1f} MiB free in {where}, the outputs need about "
                    f"{need / 2**20:.1f} MiB; free space or choose another {option}") \
            from OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), where)


# ---------------------------------------------------------------------------------------------
# Locks


def try_lock(path: str) -> int | None:
    """A file descriptor holding an exclusive ``flock`` on ``path`` (created, mode 0644, if
    needed), or None when another open file holds it. Release it with :func:`unlock`; the
    lock also dies with the process, even on SIGKILL. The lock file itself stays."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return None
        raise
    return fd


def unlock(fd: int) -> None:
    """Release a lock from :func:`try_lock` or :func:`locked` and close its descriptor."""
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def locked(path: str, busy: Exception | None = None, remove: bool = False) -> Iterator[int]:
    """Hold an exclusive lock on ``path`` for the block (yields its descriptor). Without
    ``busy`` wait for it; with ``busy`` do not wait: raise ``busy`` when another holds it.
    remove: delete the lock file when the block ends (while still holding it); a process that
    locked the file just before it went retries on the new one, so two never hold it at once."""
    while True:
        if busy is None:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
        else:
            fd = try_lock(path)
            if fd is None:
                raise busy
        if not remove or _same_file(fd, path):
            break
        unlock(fd)  # its holder removed this file as we locked it: lock the one at ``path`` now
    try:
        yield fd
    finally:
        if remove:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        unlock(fd)


def _same_file(fd: int, path: str) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def is_locked(path: str) -> bool:
    """True when some open file (any process, this one included) holds an exclusive lock on
    ``path``. Never waits and never creates the file (a missing one is not locked); it holds
    a shared lock for an instant, which a :func:`try_lock` at that moment reads as busy."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return True
        raise
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# The versions record

CODE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the folder holding patchcollide/
LIBRARIES = (("torch", "torch"), ("torchvision", "torchvision"), ("faiss", "faiss"), ("numpy", "numpy"),
             ("h5py", "h5py"), ("pillow", "PIL"), ("scipy", "scipy"))  # (key, module)


def versions() -> dict:
    """The software a result is made with, saved beside every output: patchcollide, Python,
    the platform, each library's ``__version__`` (None where it is not installed), the HDF5
    library's, and ``git``: ``{"commit", "dirty"}`` of the code when it runs from a git
    checkout (dirty: tracked files changed), else None. A library not yet imported is read
    from its version.py where it has one (torchvision's import alone takes 1.5 s), else
    imported."""
    out = {"patchcollide": __version__, "python": platform.python_version(), "platform": platform.platform()}
    for key, module in LIBRARIES:
        try:
            out[key] = library_version(module)
        except ImportError:
            out[key] = None
    try:
        import h5py

        out["hdf5"] = h5py.version.hdf5_version
    except ImportError:
        out["hdf5"] = None
    out["git"] = _code_commit()
    return out


def process_seconds() -> float | None:
    """Seconds since this process started (Linux: /proc, 10 ms steps; None elsewhere): what
    the interpreter, the imports and the command line took before a run's first line."""
    try:
        with open("/proc/self/stat") as fh:
            started = int(fh.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
        with open("/proc/uptime") as fh:
            return round(float(fh.read().split()[0]) - started, 2)
    except (OSError, ValueError, IndexError):
        return None


_VERSION_LINE = re.compile(r"""^__version__\s*=\s*['"]([^'"]+)['"]""", re.M)


def library_version(module: str) -> str:
    """``module.__version__``, without importing a package that is not imported yet when its
    version.py states it (the same string: the package's __init__ takes it from there)."""
    if module not in sys.modules:
        spec = importlib.util.find_spec(module)
        if spec is None:
            raise ImportError(module)
        for folder in spec.submodule_search_locations or ():
            with contextlib.suppress(OSError):
                with open(os.path.join(folder, "version.py"), encoding="utf-8") as fh:
                    m = _VERSION_LINE.search(fh.read())
                if m:
                    return m.group(1)
    return str(importlib.import_module(module).__version__)


def machine() -> dict:
    """The machine a result is measured on: platform, CPU model, cores, memory, torch's
    threads and the GPU (None without one). Imports torch."""
    import torch

    cpu, ram = platform.processor() or "unknown", None
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    with contextlib.suppress(ValueError, OSError, AttributeError):
        ram = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(), "ram_gb": ram,
            "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


@functools.lru_cache(maxsize=1)
def _code_commit() -> dict | None:
    """git_commit of the running code, asked once per process: the code is fixed at import."""
    return git_commit(CODE_ROOT)


def git_commit(root: str = CODE_ROOT) -> dict | None:
    """``{"commit": sha, "dirty": bool}`` when ``root`` is the top of a git checkout (dirty:
    tracked files differ from the commit), else None (an installed package, an sdist, no git).
    A folder inside someone else's repository (a virtual environment there) gives None."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}  # no GIT_DIR from a hook

    def git(*args: str) -> str:
        # --no-optional-locks: `status` must not refresh the index under a user's own git commands
        return subprocess.run(["git", "--no-optional-locks", "-C", root, *args], capture_output=True, text=True,
                              check=True, env=env, timeout=30).stdout.strip()

    try:
        top = git("rev-parse", "--show-toplevel")
        if not top or not os.path.samefile(top, root):
            return None
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def file_sha256(path: str, progress: Callable[[int, int], None] | None = None, block: int = 1 << 22) -> str:
    """SHA-256 of a whole file, read 4 MiB at a time; progress(bytes done, bytes total)."""
    h = hashlib.sha256()
    total = os.path.getsize(path)
    done = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            h.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
    return h.hexdigest()
