"""What a run reads and checks before it needs a model, and so without torch: for ``collide``
the output folder, the inputs (they exist and decode), the free space and the index; for
``sample`` the finished run and the dataset images. ``runs.run`` makes these checks before it
loads a model; the CLI makes the same ones (``check_collide``, ``read_report``) before it
imports torch, so a mistake in the inputs is one line in a fraction of a second."""
from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import logging
import math
import os
import tokenize
import typing
import zipfile
import zlib
from collections.abc import Iterator

import numpy as np
from PIL import Image

from ..core.errors import PatchcollideError, first_line, raise_first
from ..core.plugins import PluginError
from ..core.files import DIGEST, check_out, check_writable, digest_of, is_locked, is_run, locked, occupied
from ..core.formats import INDEX_DIR, RUN_KIND, WEIGHT_KINDS
from ..core.images import BadImage, Preprocess, file_problem, fit_square, frame_count, load_rgb, transparency
from ..core.jsontypes import convert, describe, is_number
from ..core.settings import check_fields, setting
from ..engine.checkpoints import NAME as CHECKPOINT
from ..engine.checkpoints import partial_dir
from ..models.names import DEFAULT_JUDGE_MODEL, DEFAULT_LAYER, DEFAULT_MODEL, check_model_name, check_state_file
from ..engine.config import (DEVICES, MAX_SAMPLES, MAX_SEED, SAMPLES, CollideConfig, CollideError, field_error,
                             not_installed)
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
    way the model's weights saw theirs, ``geometry`` (``models.build.input_fit``: imagenet or crop);
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


def check_resume(out: str) -> None:
    """What ``collide --resume`` needs, checked without torch: a checkpoint of an unfinished run
    at ``out`` (in ``out.partial``). The checkpoint itself is read, and checked, by the resume."""
    if os.path.isfile(os.path.join(partial_dir(out), CHECKPOINT)):
        return
    if is_run(out, RUN_KIND):
        raise CollideError(f"{out} is a finished run; nothing to resume (run `patchcollide sample --out {out}` "
                           "or start a new run)")
    if not os.path.exists(out) and not os.path.exists(partial_dir(out)):
        raise CollideError(f"--resume {out}: no such run; give the --out of an interrupted collide run")
    raise CollideError(f"{out}: no checkpoint to resume at {os.path.join(partial_dir(out), CHECKPOINT)}; start the "
                       f"run with --out {out}")


@dataclasses.dataclass(frozen=True)
class NetOptions:
    """The attacked net and its layer (``collide`` and ``batch`` derive ``--model`` and
    ``--layer`` from it; the API calls the model ``arch``)."""

    arch: str = setting(DEFAULT_MODEL, "The attacked net: a torchvision classifier (vgg16, alexnet, ...) or "
                        "digits_vgg, the digits world's (`patchcollide world build`; with --weights PATH).",
                        flags=("--model",))
    layer: str = setting(DEFAULT_LAYER, "fc6/fc7 (VGG, AlexNet) or a module name.")


@dataclasses.dataclass(frozen=True)
class JudgeOptions:
    """The judge, a second classifier that reads the images (``collide``, ``sample`` and
    ``batch`` derive their ``--judge`` and ``--judge-model`` from it; ``check_judge`` checks
    them without torch)."""

    judge: str | None = setting(None, "A second classifier's state dict (--judge-model) that reads the source, the "
                                "target, each vertex and each polytope sample: an image reads as its source when the "
                                "judge gives it the source's class.", metavar="PATH",
                                default_text="none")
    judge_model: str = setting(DEFAULT_JUDGE_MODEL, "The judge's architecture: digits_lenet5 (`patchcollide world "
                               "build`) or a torchvision classifier.")


def check_judge(judge: str | None, judge_model: str) -> None:
    """--judge and --judge-model, checked without torch: a known classifier and a file that
    begins as a state dict does (or imagenet, for a torchvision judge)."""
    check_model_name(judge_model, "--judge-model")
    if judge is not None and judge not in ("imagenet", "random"):
        check_state_file(judge, "--judge")


class Resume(enum.Enum):
    """What a run does with the checkpoint in its checkpoint folder (``run.run_collide``'s
    ``resume``)."""

    FRESH = "no"  # start at step 1; an unfinished run's checkpoint is refused, or deleted with overwrite
    CONTINUE = "yes"  # go on from the checkpoint; an error when there is none (collide --resume)
    IF_SAME_RUN = "auto"  # go on from a checkpoint of this very run, start afresh otherwise (batch jobs)


def check_start(out: str, overwrite: bool, ckdir: str, again: str, resume: Resume = Resume.FRESH) -> None:
    """Before a run starts (or resumes, ``Resume.CONTINUE``) at ``out`` with its checkpoint in
    ``ckdir``: an unfinished run's checkpoint is not started over without ``overwrite``, a resume
    has one, and ``out`` may be written (``check_out_dir``, ``refuse_taken``). Changes nothing."""
    ck_path = os.path.join(ckdir, CHECKPOINT)
    if resume is Resume.FRESH and os.path.isfile(ck_path) and not overwrite:
        raise CollideError(f"--out {out} has the checkpoint of an unfinished run ({ck_path}); continue it with "
                           f"`{again}` or start over with --overwrite")
    if resume is Resume.CONTINUE and not os.path.isfile(ck_path):
        raise CollideError(f"{out}: no checkpoint to resume at {ck_path}; start the run with --out {out}")
    if resume is Resume.CONTINUE:
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


def check_collide(source: str, target: str, out: str, config: CollideConfig, index_dir: str | None = INDEX_DIR,
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


def damaged(run_dir: str, name: str, problem: str) -> CollideError:
    """The one-line error of a run's file ``name`` (report.json, state.npz, vertex_0.png) that
    does not hold what a run writes there: the file, the problem and the fix."""
    return CollideError(f"{os.path.join(run_dir, name)}: {problem}; make the run again with `patchcollide collide`, "
                        f"or restore {name}")


def read_report(run_dir: str) -> dict:
    """A finished run's report.json as it is, its ``kind`` checked (``check_report`` checks the
    rest); a one-line CollideError when ``run_dir`` holds none."""
    path = os.path.join(run_dir, "report.json")
    if not os.path.isdir(run_dir):
        raise CollideError(f"{run_dir}: no such directory; give a directory written by `patchcollide collide`")
    try:
        with open(path, encoding="utf-8") as fh:
            report = json.load(fh)
    except (OSError, ValueError):  # ValueError: JSONDecodeError, UnicodeDecodeError
        report = None
    if not isinstance(report, dict) or report.get("kind") != RUN_KIND:
        raise CollideError(f"{run_dir}: not a finished patchcollide run (no valid report.json); "
                           "give a directory written by `patchcollide collide`")
    return report


def _show(v) -> str:
    """A JSON value as a message shows it, shortened."""
    text = json.dumps(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_KINDS = {  # what a key of report.json may hold: name -> (words, test)
    "object": ("an object", lambda v: isinstance(v, dict)),
    "integer": ("an integer", _is_int),
    "index": ("an index in 0..2**31-1", lambda v: _is_int(v) and 0 <= v < 2**31),  # a class or a unit
    "number": ("a number", is_number),
    "metric": ("a number or null", lambda v: v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))),
    "string": ("a string", lambda v: isinstance(v, str)),
    "string or null": ("a string or null", lambda v: v is None or isinstance(v, str)),
}


def _value(report: dict, key: str, kind: str, run_dir: str, optional: bool = False):
    """report.json's value at the dotted ``key`` when it is of ``kind`` (``_KINDS``); None when an
    ``optional`` key is missing or null; the one-line error otherwise."""
    node, parts = report, key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, dict):
            raise damaged(run_dir, "report.json", f"{'.'.join(parts[:i])} is {_show(node)}, expected an object")
        if node.get(part) is None and optional:
            return None
        if part not in node:
            raise damaged(run_dir, "report.json", f"{'.'.join(parts[:i + 1])} is missing")
        node = node[part]
    words, ok = _KINDS[kind]
    if not ok(node):
        raise damaged(run_dir, "report.json", f"{key} is {_show(node)}, expected {words}")
    return node


def _values(report: dict, key: str, kind: str, n: int, run_dir: str, optional: bool = False) -> list | None:
    """report.json's list at ``key``: one value of ``kind`` per vertex (``n``)."""
    node = report
    for part in key.split("."):  # the parents are checked objects
        node = node.get(part) if isinstance(node, dict) else None
    if node is None and optional:
        return None
    if node is None:
        raise damaged(run_dir, "report.json", f"{key} is missing")
    if not isinstance(node, list):
        raise damaged(run_dir, "report.json", f"{key} is {_show(node)}, expected a list with a value per vertex")
    if len(node) != n:
        raise damaged(run_dir, "report.json", f"{key} has {len(node)} values, expected {n} (config.vertices)")
    words, ok = _KINDS[kind]
    for i, v in enumerate(node):
        if not ok(v):
            raise damaged(run_dir, "report.json", f"{key}[{i}] is {_show(v)}, expected {words}")
    return node


CONFIG_KEYS = ("mode", "vertices", "size", "seed")  # in every report.json; a default would misread the run


def config_of(report: dict, run_dir: str) -> CollideConfig:
    """The CollideConfig a run was made with (report.json's ``config``: CONFIG_KEYS must be there,
    a field a report of an older version lacks takes its default, arrays become the tuples of
    tuple fields, and keys that are no field of this version are left out)."""
    cfg = _value(report, "config", "object", run_dir)
    for key in CONFIG_KEYS:
        if key not in cfg:
            raise damaged(run_dir, "report.json", f"config.{key} is missing")
    hints = typing.get_type_hints(CollideConfig)
    fields = {}
    for k, v in cfg.items():
        if k not in hints:
            continue
        try:
            fields[k] = convert(hints[k], v)
        except TypeError:
            raise damaged(run_dir, "report.json", f"config.{k} is {_show(v)}, expected {describe(hints[k])}") from None
    missing = not_installed(fields)
    if missing:  # a plug-in this environment lacks, or a damaged name
        raise damaged(run_dir, "report.json", f"config.{missing[0]} {missing[1]}")
    try:
        config = CollideConfig(**fields)
    except PluginError as e:
        raise CollideError(f"{run_dir}: {e}") from None
    except CollideError as e:
        raise damaged(run_dir, "report.json", f"config.{e.field} {e.problem}" if e.field else f"config: {e}") from None
    return config  # (its seed below 2^63: CollideConfig's own bound)


def check_report(report: dict, run_dir: str) -> CollideConfig:
    """The structure of a finished run's report.json (``read_report``) that ``sample``,
    ``load_run`` and the run page rely on; returns the run's CollideConfig (``config_of``).
    Checked, for V = config.vertices: vertices.png and vertices.float rel_error (V numbers or
    nulls; png.push too where present); target label (an index) and top_prob (in [0, 1]),
    with units (V indices), unit_values (V numbers) and dim (>= 1) where present; model arch,
    layer, name (strings) and kind (``WEIGHT_KINDS``), sha256 a string for a weights file; inputs
    (source, target and index strings or null); where present, judge (model as model's, source
    class) and polytope (samples or n >= 1, share_target_class); last, the digest against the
    content (``files.digest_of``). The first problem found is one CollideError naming
    report.json, the key, what it holds and the fix. Reads nothing else."""
    where = run_dir
    config = config_of(report, where)
    V = config.vertices
    for key in ("vertices.png", "vertices.float"):
        _value(report, key, "object", where)
    _values(report, "vertices.png.rel_error", "metric", V, where)
    _values(report, "vertices.float.rel_error", "metric", V, where)
    _values(report, "vertices.png.push", "metric", V, where, optional=True)
    _value(report, "target", "object", where)
    _value(report, "target.label", "index", where)
    if not 0 <= _value(report, "target.top_prob", "number", where) <= 1:
        raise damaged(where, "report.json", f"target.top_prob is {report['target']['top_prob']}, expected a "
                                            "probability in [0, 1]")
    _values(report, "target.units", "index", V, where, optional=True)
    _values(report, "target.unit_values", "metric", V, where, optional=True)
    dim = _value(report, "target.dim", "integer", where, optional=True)
    if dim is not None and dim < 1:
        raise damaged(where, "report.json", f"target.dim is {dim}, expected the layer's width (>= 1)")
    _check_model(report, "model", where)
    _value(report, "inputs", "object", where)
    for key in ("source", "target", "index"):
        _value(report, f"inputs.{key}", "string or null", where, optional=True)
    if _value(report, "judge", "object", where, optional=True) is not None:
        _check_model(report, "judge.model", where)
        _value(report, "judge.source.class", "index", where)
    poly = _value(report, "polytope", "object", where, optional=True)
    if poly is not None:
        key = "polytope.n" if "samples" not in poly and "n" in poly else "polytope.samples"  # n: reports before 0.2
        if _value(report, key, "integer", where) < 1:
            raise damaged(where, "report.json", f"{key} is {poly[key.split('.')[1]]}, expected a count >= 1")
        _value(report, "polytope.share_target_class", "number", where)
    _check_digest(report, where)
    return config


def _check_digest(report: dict, where: str) -> None:
    """report.json's digest (``files.digest_of``, written by ``files.write_report``) against its
    content: a byte changed since the run wrote it, in a key or a value, is an error here, the
    structure's checks above having named any problem they can say more about."""
    digest = report.get(DIGEST)
    if not isinstance(digest, str):
        raise damaged(where, "report.json", f"has no {DIGEST} (every run this version writes has one: the file comes "
                                            "from an older patchcollide, or its digest's key is damaged)")
    if digest != digest_of(report):
        raise damaged(where, "report.json", "its content does not match its digest (a byte changed after the run "
                                            "wrote it)")


def _check_model(report: dict, key: str, where: str) -> None:
    """A model's record (``models.model_identity``): what ``tap_for_run`` and ``judge_for_run`` read."""
    _value(report, key, "object", where)
    for part in ("arch", "name") + (("layer",) if key == "model" else ()):
        _value(report, f"{key}.{part}", "string", where)
    kind = _value(report, f"{key}.kind", "string", where)
    if kind not in WEIGHT_KINDS:
        raise damaged(where, "report.json", f"{key}.kind is {_show(kind)}, expected one of {', '.join(WEIGHT_KINDS)}")
    if kind == "file":
        _value(report, f"{key}.sha256", "string", where)
    else:
        _value(report, f"{key}.sha256", "string or null", where, optional=True)


def _vertex_files(run_dir: str, vertices: int) -> None:
    missing = [f for f in [*(f"vertex_{i}.png" for i in range(vertices)), "state.npz"]
               if not os.path.isfile(os.path.join(run_dir, f))]
    if missing:
        raise CollideError(f"{run_dir}: {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} missing, so it is "
                           "not a complete run; restore the files or make the run again with `patchcollide collide`")


def check_complete(run_dir: str, report: dict) -> CollideConfig:
    """The files a finished run's ``report`` promises are in ``run_dir`` (its vertex PNGs and
    state.npz), and the report has the structure ``check_report`` checks. Returns the run's
    CollideConfig. A folder that lost its files says so first, when the report's vertex count
    (vertices.png.rel_error) agrees with its config."""
    png = report.get("vertices")
    png = png.get("png") if isinstance(png, dict) else None
    listed = png.get("rel_error") if isinstance(png, dict) else None
    cfg = report.get("config")
    said = cfg.get("vertices") if isinstance(cfg, dict) else None
    if isinstance(listed, list) and (said is None or said == len(listed)):
        _vertex_files(run_dir, len(listed))
    config = check_report(report, run_dir)
    _vertex_files(run_dir, config.vertices)
    return config


STATE_ERRORS = (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error)
# what reading a damaged .npz raises: zipfile's (bad CRC, bad directory), the OS's, numpy's header parser


def read_npz(path: str) -> dict[str, np.ndarray]:
    """Every array of an .npz file (numpy's ``savez``), read without pickles. Each member's
    header must promise exactly the bytes that member holds (no allocation from a damaged
    header), and each member is read to its end, so that zipfile checks its CRC. Raises one of
    ``STATE_ERRORS`` with the reason."""
    out, size = {}, os.path.getsize(path)
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            key = info.filename[:-4]
            if not info.filename.endswith(".npy") or key in out:
                raise ValueError(f"it holds {info.filename!r}, which is not one of numpy's arrays")
            if info.flag_bits & 0x1 or info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise ValueError(f"{info.filename} is encrypted or compressed in a way numpy never writes")
            ratio = 1 if info.compress_type == zipfile.ZIP_STORED else 1032  # deflate's largest
            if info.compress_size > size or info.file_size > info.compress_size * ratio:
                raise ValueError(f"{info.filename} claims {info.file_size} bytes, more than the file can hold")
            with zf.open(info) as fh:
                version = np.lib.format.read_magic(fh)
                if version not in ((1, 0), (2, 0)):
                    raise ValueError(f"{info.filename} has .npy format version {version}, which patchcollide never writes")
                header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                try:
                    shape, fortran, dtype = header(fh)
                except tokenize.TokenError:  # numpy's header parser on a header cut short
                    raise ValueError(f"{info.filename}'s header is unfinished") from None
                if dtype.hasobject:
                    raise ValueError(f"{key} is an array of Python objects, which is never read (unpickling runs code)")
                need, holds = math.prod(shape) * dtype.itemsize, info.file_size - fh.tell()
                if need != holds or not dtype.itemsize:
                    raise ValueError(f"{key}'s header promises {need} bytes of {dtype} and the file holds {holds}")
                buf = bytearray(need)
                if fh.readinto(buf) != need or fh.read(1):  # to its end: zipfile checks the CRC there
                    raise ValueError(f"{key} is shorter or longer than its header says")
            out[key] = np.frombuffer(buf, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    return out


def _array(state: dict, key: str, kinds: str, shape: tuple, what: str, run_dir: str,
           optional: bool = False) -> np.ndarray | None:
    """state.npz's ``key`` when its dtype's kind is in ``kinds`` and its shape is ``shape``
    (None: any length there), in native byte order; the one-line error otherwise."""
    a = state.get(key)
    if a is None and optional:
        return None
    if a is None:
        raise damaged(run_dir, "state.npz", f"has no {key} array")
    if a.dtype.kind not in kinds or len(a.shape) != len(shape) or any(
            want is not None and got != want for got, want in zip(a.shape, shape)):
        raise damaged(run_dir, "state.npz", f"{key} is {a.dtype} {tuple(a.shape)}, expected {what}")
    state[key] = a.astype(a.dtype.newbyteorder("="), copy=False)
    return state[key]


def read_state(run_dir: str, config: CollideConfig, report: dict) -> dict[str, np.ndarray]:
    """state.npz of a run whose report is checked (``check_complete`` gave ``config``): every
    array (``read_npz``), with those ``sample`` and ``load_run`` use checked against the report,
    for V vertices at size S: target_z (D,) float (D = target.dim where recorded), units (V,)
    integers in 0..D-1, vertices (V, 3, S, S) float where present (runs before it have none);
    in a space that mixes, theta (V, S*S, M) float with entries (integers) and valid (bool) of
    its shape, and candidate_ids (L, K) integers. Arrays in native byte order. A file that cannot
    be read or holds other arrays is one CollideError naming state.npz and the fix."""
    try:
        state = read_npz(os.path.join(run_dir, "state.npz"))
    except STATE_ERRORS as e:
        raise damaged(run_dir, "state.npz", f"cannot be read ({first_line(e, 120)})") from None
    V, S = config.vertices, config.size
    dim = report["target"].get("dim")
    tz = _array(state, "target_z", "f", (dim,), f"({dim or 'D'},) floats, the target's pre-activation", run_dir)
    if not len(tz):
        raise damaged(run_dir, "state.npz", "target_z is empty, expected the target's pre-activation")
    units = _array(state, "units", "i", (V,), f"({V},) integers, a unit of the target per vertex", run_dir)
    if len(units) and not (0 <= units.min() and units.max() < len(tz)):
        raise damaged(run_dir, "state.npz", f"units holds {units.tolist()}, outside the target's {len(tz)} units")
    _array(state, "vertices", "f", (V, 3, S, S), f"({V}, 3, {S}, {S}) floats, the vertices", run_dir, optional=True)
    if config.space.mixes:
        theta = _array(state, "theta", "f", (V, S * S, None), f"({V}, {S * S}, M) floats, the mixing logits", run_dir)
        _array(state, "entries", "i", theta.shape, f"{theta.shape} integers, theta's entries", run_dir)
        _array(state, "valid", "b", theta.shape, f"{theta.shape} booleans, theta's valid slots", run_dir)
        _array(state, "candidate_ids", "i", (None, None), "(L, K) integers, the candidates' patch ids", run_dir)
    return state


IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)  # PIL's, on a damaged file


def read_picture(run_dir: str, name: str, size: int) -> np.ndarray:
    """A run's picture ``name`` (a vertex, source.png, target.png) as (size, size, 3) uint8 RGB, as
    ``pictures.read_png`` reads it; a file that is missing, does not decode or is not size x size
    is one CollideError naming it and the fix."""
    path = os.path.join(run_dir, name)
    try:
        with Image.open(path) as im:
            if im.size != (size, size):
                raise damaged(run_dir, name, f"is {im.size[0]} x {im.size[1]}, expected {size} x {size} (config.size)")
            im.verify()  # every chunk's CRC (decoding alone checks few): a changed byte is found
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except IMAGE_ERRORS as e:
        raise damaged(run_dir, name, f"cannot be read as an image ({first_line(e, 120)})") from None


def read_vertices(run_dir: str, config: CollideConfig) -> np.ndarray:
    """The vertex PNGs of a checked run (``check_complete`` gave ``config``): (V, S, S, 3) uint8
    (``read_picture``)."""
    return np.stack([read_picture(run_dir, f"vertex_{i}.png", config.size) for i in range(config.vertices)])


MAX_BATCH = 1024  # sample --batch-size: VGG16 at 224 x 224 needs about 13 GB per 1024 images in its first layer


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    """The settings of a polytope check (``run.run_sample``; the ``sample`` command's options are
    derived from it), checked when made: 1 <= samples <= MAX_SAMPLES, 1 <= batch_size <=
    MAX_BATCH, 0 <= seed < MAX_SEED, a known device. One CollideError about the field otherwise."""

    samples: int = setting(SAMPLES, "Random convex combinations.")  # 2,000 measure a share to within about 2%
    seed: int = setting(0, "Seed of the Dirichlet draws.", bounds=(0, MAX_SEED - 1))
    batch_size: int = setting(32, "Samples per forward pass (lower it if memory runs out).")
    device: str = setting("auto", "Where the samples are computed (auto: CUDA when present).", choices=DEVICES)

    def __post_init__(self):
        raise_first([
            (1 <= self.samples <= MAX_SAMPLES, "samples", f"must be between 1 and {MAX_SAMPLES:,}, got "
             f"{self.samples:,}; give a count in that range (the default {SAMPLES} measures a share to within about 2%)"),
            (1 <= self.batch_size <= MAX_BATCH, "batch_size", f"must be between 1 and {MAX_BATCH}, got "
             f"{self.batch_size:,}; give one in that range (lower it if memory runs out)"),
        ], field_error)
        check_fields(self, CollideError)


def check_sample(samples: int, batch_size: int, seed: int = 0) -> None:
    """``sample``'s counts, checked before anything is read (``SampleConfig``'s checks)."""
    SampleConfig(samples=samples, batch_size=batch_size, seed=seed)


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
