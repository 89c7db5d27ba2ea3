"""What a run reads and checks before it needs a model, and so without torch: for ``collide``
the output folder, the inputs (they exist and decode), the free space and the index; for
``sample`` the finished run and the dataset images. ``runs.run`` makes these checks before it
loads a model; the CLI makes the same ones (``check_collide``, ``read_report``) before it
imports torch, so a mistake in the inputs is one line in a fraction of a second."""
from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator

import numpy as np

from ..core.errors import PatchcollideError
from ..core.files import check_out, check_writable, is_locked, is_run, locked, occupied
from ..core.formats import RUN_KIND
from ..core.images import BadImage, Preprocess, file_problem, fit_square, frame_count, load_rgb, transparency
from ..engine.checkpoints import NAME as CHECKPOINT
from ..engine.checkpoints import partial_dir
from ..engine.config import CollideConfig, CollideError
from ..offline.extract import scan_inputs
from ..offline.knn import PatchIndex

log = logging.getLogger(__name__)


def read_input(path: str, name: str = "image") -> tuple[np.ndarray, np.ndarray | None]:
    """One input as it is: (H, W, 3) uint8 RGB and its (H, W) alpha (None when opaque). A folder,
    a missing file or one that does not decode is a one-line CollideError naming ``name``."""
    if os.path.isdir(path):
        raise CollideError(f"{name} {path!r} is a folder; pass one image file (a folder of jobs goes into "
                           "`patchcollide batch`)")
    if (why := file_problem(path)) is not None:
        raise CollideError(f"{name} {path!r} {why}; pass an image file")
    try:
        img = load_rgb(path, Preprocess(resize=None))[0]
        alpha = transparency(path)
    except BadImage as e:  # the option that named the file, the reason and its own fix
        raise CollideError(f"{name} {path}: {e}; {e.fix}") from None
    if alpha is not None and alpha.shape != img.shape[:2]:  # an orientation load_rgb changed: keep it opaque
        alpha = None
    if (n := frame_count(path)) > 1:
        log.warning("%s %s is animated (%d frames): its first frame is used; give a still image to choose another",
                    name, path, n)
    return img, alpha


def fit_input(path: str, config: CollideConfig, name: str = "image",
              geometry: str = "imagenet") -> tuple[np.ndarray, dict]:
    """One input of a run as (size, size, 3) uint8, and how it got there (report.json's
    ``inputs.transform``: ``{"fit", "from": "WxH", "how"}``). ``config.fit`` (core.images.fit_square):
    auto uses an image that is already size x size as it is, and brings any other to size the
    way the model's weights saw theirs, ``geometry`` (``models.input_fit``: imagenet or crop);
    imagenet, crop and pad do as they say. Transparency is composited on ``config.background``.
    Each change to what the file shows is one warning line naming the input."""
    img, alpha = read_input(path, name)
    h, w = img.shape[:2]
    fit = config.fit
    if fit == "auto":
        fit = "as given" if (h, w) == (config.size, config.size) else geometry
    out, said, how = fit_square(img, config.size, fit, config.background, alpha)
    for what in said:
        log.warning("%s %s: %s", name, path, what)
    return out, {"fit": fit, "from": f"{w}x{h}", "how": how}


def check_out_dir(out: str, overwrite: bool) -> None:
    """``--out`` may be written: free, or a run to replace with ``overwrite``."""
    check_out(out, overwrite, RUN_KIND, "patchcollide run", CollideError)


def refuse_taken(out: str, ckdir: str, again: str, overwrite: bool) -> None:
    """A resume never replaces what was written at ``out`` since its run started, unless ``overwrite``."""
    if occupied(out) and not overwrite:
        raise CollideError(f"--out {out} now holds a complete run that this checkpoint did not write; keep it "
                           f"and delete {ckdir}, or replace it with `{again} --overwrite`"
                           if is_run(out, RUN_KIND) else
                           f"--out {out} now holds other files; move them away, then `{again}`")


def lock_path(out: str) -> str:
    """The lock file of a run writing ``out``: ``OUT.lock``, beside it."""
    return os.path.abspath(out).rstrip(os.sep) + ".lock"


@contextlib.contextmanager
def run_lock(out: str) -> Iterator[None]:
    """Hold ``OUT.lock`` (flock) for a whole ``collide`` on ``out``, from before any check to the
    installed run: a second writer of the same run (a second ``collide --out OUT`` or
    ``--resume OUT``) is refused at once. The lock dies with its process, even on SIGKILL; the
    file is removed when the run ends."""
    path = lock_path(out)
    check_writable(out, 0, CollideError)  # a file in the way gets its own line, not makedirs' errno
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with locked(path, busy=_busy(out), remove=True):
        yield


def refuse_busy(out: str) -> None:
    """``run_lock``'s CollideError now, when another process writes the run at ``out`` (a probe:
    takes nothing, creates nothing), so that it comes before the other checks of a run."""
    try:
        busy = is_locked(lock_path(out))
    except OSError:  # no folder there to hold it (a file in the way): the checks after it say so
        return
    if busy:
        raise _busy(out)


def _busy(out: str) -> CollideError:
    return CollideError(f"--out {out}: another process is writing this run now (it holds {lock_path(out)}); wait "
                        "for it to finish or stop it, or give another --out")


def check_start(out: str, overwrite: bool, ckdir: str, again: str, resume: str = "no") -> None:
    """Before a run starts (or resumes, ``resume`` "yes") at ``out`` with its checkpoint in
    ``ckdir``: an unfinished run's checkpoint is not started over without ``overwrite``, a resume
    has one, and ``out`` may be written (``check_out_dir``, ``refuse_taken``). Changes nothing."""
    ck_path = os.path.join(ckdir, CHECKPOINT)
    if resume == "no" and os.path.isfile(ck_path) and not overwrite:
        raise CollideError(f"--out {out} has the checkpoint of an unfinished run ({ck_path}); continue it with "
                           f"`{again}` or start over with --overwrite")
    if resume == "yes" and not os.path.isfile(ck_path):
        raise CollideError(f"{out}: no checkpoint to resume at {ck_path}; start the run with --out {out}")
    if resume == "yes":
        refuse_taken(out, ckdir, again, overwrite)
    else:
        check_out_dir(out, overwrite)


def expected_bytes(config: CollideConfig) -> int:
    """A generous bound on what a run writes: its PNGs (uncompressed), state.npz and the
    largest checkpoint (logits, their entries and Adam's moments before the first prune)."""
    P, V = config.size * config.size, config.vertices
    scale = max(1, 224 // config.size)
    pngs = P * 3 * (2 * V + 3) + (V + 3) * P * scale * scale * 3 + 2**20
    return pngs + 2 * config.space.state_bytes(config) + 2**20


def check_k(k: int, patches: int, index_dir: str | None) -> None:
    """-k neighbours per location cannot exceed the store: say so before anything else about -k."""
    if k > patches:
        raise CollideError(f"-k {k}: the store behind {index_dir or 'the index'} holds only {patches:,} patches; "
                           f"give -k <= {patches}, or a larger store (`patchcollide extract`)")


def store_size(index_dir: str) -> int | None:
    """The number of patches behind a built index, or None when there is none to read."""
    try:
        with PatchIndex(index_dir) as pidx:
            return len(pidx.store)
    except (PatchcollideError, OSError):
        return None


def check_collide(source: str, target: str, out: str, config: CollideConfig, index_dir: str | None = "index",
                  overwrite: bool = False) -> None:
    """Every check of a new ``run_collide(source, target, out, config, index_dir=...)`` that needs
    no model, in its order: no other process writes ``out`` (``refuse_busy``, as ``run_lock``),
    the checkpoint and ``out`` (``check_start``), the free space, both inputs (they exist and
    decode; ``read_input``), and in patch mode the index and -k against its store. Raises the
    CollideError (or the index's error) the run would raise; writes nothing."""
    refuse_busy(out)
    check_start(out, overwrite, partial_dir(out), f"patchcollide collide --resume {out}")
    check_writable(out, expected_bytes(config), CollideError)
    read_input(source, "--source")
    read_input(target, "--target")
    if config.space.needs_index:
        with PatchIndex(index_dir) as pidx:
            check_k(config.k, len(pidx.store), index_dir)


def read_report(run_dir: str) -> dict:
    """A finished run's report.json; a one-line CollideError when ``run_dir`` holds none."""
    path = os.path.join(run_dir, "report.json")
    if not os.path.isdir(run_dir):
        raise CollideError(f"{run_dir}: no such directory; give a directory written by `patchcollide collide`")
    try:
        with open(path) as fh:
            report = json.load(fh)
        assert report.get("kind") == RUN_KIND
        return report
    except (OSError, ValueError, AssertionError):
        raise CollideError(f"{run_dir}: not a finished patchcollide run (no valid report.json); "
                           "give a directory written by `patchcollide collide`") from None


def check_complete(run_dir: str, report: dict) -> None:
    """The files a finished run's ``report`` promises are in ``run_dir``: its vertex PNGs and state.npz."""
    vertices = len(report["vertices"]["png"]["rel_error"])
    missing = [f for f in [*(f"vertex_{i}.png" for i in range(vertices)), "state.npz"]
               if not os.path.isfile(os.path.join(run_dir, f))]
    if missing:
        raise CollideError(f"{run_dir}: {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} missing, so it is "
                           "not a complete run; restore the files or make the run again with `patchcollide collide`")


def dataset_images(paths: list[str], size: int, limit: int = 32, seed: int = 0) -> np.ndarray | None:
    """Up to ``limit`` of the image files (seeded choice) as (N, size, size, 3) uint8; unreadable
    files are left out. None when fewer than two are usable."""
    rng = np.random.default_rng(seed)
    chosen = [paths[i] for i in sorted(rng.choice(len(paths), size=min(limit, len(paths)), replace=False))]
    out = []
    for p in chosen:
        try:
            out.append(load_rgb(p, Preprocess(resize=size))[0])
        except BadImage:
            continue
    return np.stack(out) if len(out) >= 2 else None


def dataset_paths(dataset: str | None = None, store=None, index_dir: str | None = None) -> list[str]:
    """The one rule for the images the polytope check measures distances between (``sample``,
    ``batch``, the demo): the folder ``dataset`` when given, else the source files of the images
    in the patch store (an open ``store``, or the one behind ``index_dir`` when that exists), else
    none."""
    if dataset:
        roots, files, _ = scan_inputs([dataset])
        return [os.path.join(roots[f.root], f.path) for f in files]
    if store is None and index_dir and os.path.isdir(index_dir):
        with PatchIndex(index_dir) as pidx:
            return [pidx.store.image_record(i)["abspath"] for i in range(pidx.store.n_images)]
    if store is not None:
        return [store.image_record(i)["abspath"] for i in range(store.n_images)]
    return []
