"""A batch's job file: reading, checking and sharding it. The runner is ``batch.runner``.

Job file, one JSON object per line (blank lines are ignored)::

    {"id": "dog2cat", "source": "dog.jpg", "target": "cat.jpg", "steps": 200}
    {"id": "cat-px", "source": "cat.jpg", "target": "cat.jpg", "mode": "pixel", "init": "target"}

Keys: ``id`` (required; also the default output name), ``source`` and ``target`` (required;
relative to the job file's folder unless absolute), ``out`` (the job's directory name inside
DIR), ``samples`` (polytope check size, 0 skips it) and every field of
:class:`~patchcollide.engine.config.CollideConfig` but ``device`` (a batch-wide option), under the
field's own name and checked against its type (``job_keys()``). ``read_jobs`` checks the
whole file before anything runs: every problem comes back with its line number.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import posixpath
import re
import typing
import unicodedata
import warnings

from ..core.errors import PatchcollideError, first_line
from ..core.files import is_run
from ..core.formats import RUN_KIND
from ..core.images import Preprocess, file_problem
from ..core.jsontypes import convert, describe
from ..engine.config import MAX_SAMPLES, CollideConfig, CollideError

RESERVED = ("batch.json", "batch.html", "index.html", "report.html")  # names DIR keeps for itself (any case)
MAX_OUT_BYTES = 200  # leaves room for ".traceback.txt" and friends under the usual 255-byte name limit
JOB_FIELDS = ("id", "source", "target", "out", "samples")  # a job's own keys, beside the config's
BATCH_WIDE = ("device",)  # config fields set for the whole batch (its options), not per job


def config_fields() -> dict[str, object]:
    """CollideConfig's per-job fields and their types (field name -> type hint)."""
    hints = typing.get_type_hints(CollideConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(CollideConfig) if f.name not in BATCH_WIDE}


def job_keys() -> tuple[str, ...]:
    """Every key a job line may have: the job's own, then the config's fields."""
    return JOB_FIELDS + tuple(config_fields())


class JobsError(PatchcollideError):
    """A bad job file, batch option or output directory; ``str(e)`` is a one-line message."""


@dataclasses.dataclass(frozen=True)
class Job:
    """One valid line of a job file."""

    id: str
    line: int  # 1-based line number in the job file
    position: int  # 0-based among the file's job lines (blank lines aside): decides the shard
    out: str  # the job's directory name inside DIR
    source: str  # absolute paths
    target: str
    samples: int  # Dirichlet samples of the polytope check; 0: none
    config: CollideConfig


@dataclasses.dataclass(frozen=True)
class InvalidJob:
    line: int
    position: int
    id: str | None
    out: str | None
    error: str  # every problem of the line, joined with "; "


@dataclasses.dataclass
class JobFile:
    path: str  # absolute
    sha256: str  # of the file's bytes
    jobs: list[Job]
    invalid: list[InvalidJob]
    notices: list[tuple[int, str]] = dataclasses.field(default_factory=list)  # (line, notice: a valid setting that defeats the method)

    def problems(self) -> list[tuple[int, str]]:
        """(line number, message) for every invalid line, in file order."""
        return [(j.line, j.error) for j in self.invalid]


# ---------------------------------------------------------------------------------------------
# Reading and checking a job file


def _refuse_whole_json(path: str, text: str, entries: list[tuple[int, str]]) -> None:
    """A JSON array, or one object spread over several lines, is a common first try: say so once
    instead of one error per line."""
    first = entries[0][1].strip()
    if not (first.startswith("[") or (first == "{" and len(entries) > 1)):
        return
    try:
        whole = json.loads(text)
    except ValueError:
        return
    if isinstance(whole, list):
        raise JobsError(f"{path} is one JSON array of {len(whole)} jobs; write it as JSON Lines: one job object per "
                        "line, without the enclosing [ ] and commas")
    if isinstance(whole, dict):
        raise JobsError(f"{path} holds one JSON object over {len(entries)} lines; write each job on one line "
                        "(JSON Lines)")


def read_jobs(path: str, out_dir: str, samples: int = 2000, device: str = "auto") -> JobFile:
    """Parse and check every line of the job file ``path`` for a batch writing into ``out_dir``.

    Problems of single lines come back in ``JobFile.invalid`` (line numbers and messages);
    problems of the file itself (missing, a folder, not UTF-8, no jobs) raise JobsError.
    ``samples`` is the default polytope check size, ``device`` goes into every job's config.
    Reads image headers only (existence, format, declared size), never decodes them.
    """
    if not 0 <= samples <= MAX_SAMPLES:
        raise JobsError(f"--samples must be between 0 (no polytope check) and {MAX_SAMPLES:,}, got {samples}")
    if not os.path.exists(path):
        raise JobsError(f"{path}: no such job file; give a JSON Lines file with one job per line")
    if os.path.isdir(path):
        raise JobsError(f"{path} is a folder; give a JSON Lines file with one job per line")
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as e:
        raise JobsError(f"{path}: cannot read the job file ({e.strerror or e})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise JobsError(f"{path}: not UTF-8 text (undecodable byte at offset {e.start}); "
                        "save the job file as UTF-8") from None
    lines = [(no, ln.rstrip("\r")) for no, ln in enumerate(text.split("\n"), 1)]
    entries = [(no, ln) for no, ln in lines if ln.strip()]
    if not entries:
        raise JobsError(f"{path}: no jobs (the file is empty); write one JSON object per line")
    _refuse_whole_json(path, text, entries)
    base = os.path.dirname(os.path.abspath(path))
    images: dict[str, str | None] = {}
    parsed = []  # (line, position, id, out, problems, job fields)
    notices: list[tuple[int, str]] = []
    for pos, (no, ln) in enumerate(entries):
        said: list[str] = []
        parsed.append((no, pos, *_check_line(ln, base, out_dir, samples, device, images, said)))
        notices += [(no, n) for n in said]
    first_id: dict[str, int] = {}
    first_out: dict[str, tuple[int, str]] = {}
    jobs, invalid = [], []
    for no, pos, jid, out, problems, job in parsed:
        dup_id = jid is not None and jid in first_id
        if dup_id:
            problems.append(f"duplicate id {jid!r} (also on line {first_id[jid]})")
        elif jid is not None:
            first_id[jid] = no
        if out is not None:
            key = unicodedata.normalize("NFC", out).casefold()
            if key not in first_out:
                first_out[key] = (no, out)
            elif not (dup_id and out == jid and first_out[key][1] == out):  # said already
                other_no, other = first_out[key]
                case = "" if other == out else f" as {other!r} (output names must differ ignoring case)"
                problems.append(f'output name {out!r} is already used on line {other_no}{case}; give one of them '
                                'another "out"')
        if problems:
            invalid.append(InvalidJob(no, pos, jid, out, "; ".join(problems)))
        else:
            jobs.append(Job(id=jid, line=no, position=pos, out=out, **job))
    return JobFile(os.path.abspath(path), hashlib.sha256(data).hexdigest(), jobs, invalid, notices)


def _check_line(text: str, base: str, out_dir: str, samples: int, device: str, images: dict, notices: list):
    """-> (id or None, out or None, problems, Job fields or None); the notices of the
    line go into ``notices``."""
    obj, bad = _parse_line(text)
    if bad is not None:
        return None, None, [bad], None
    problems = _key_problems(obj)
    jid = _id_of(obj, problems)
    paths = _image_paths(obj, base, images, problems)
    out = _out_of(obj, jid, out_dir, problems)
    over = _overrides(obj, problems)
    n = _samples_of(obj, samples, problems)
    try:
        config = CollideConfig(device=device, **over)
    except CollideError as e:
        problems.append(f'"{e.field}" {e.problem}' if e.field else str(e))
    if problems:
        return jid, out, problems, None
    notices += [f'"{field}" {why}' for field, why in config.doubts()]
    return jid, out, problems, {"source": paths["source"], "target": paths["target"], "samples": n, "config": config}


def _parse_line(text: str) -> tuple[dict | None, str | None]:
    """(the line's JSON object, None), or (None, the one problem) for a line that is not one
    flat-enough JSON object of UTF-8 text with each key once."""
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates)
    except _Duplicate as e:
        return None, f"key {e.args[0]!r} is given twice; give each key once (JSON keeps only the last)"
    except RecursionError:
        return None, ("nested deeper than Python's JSON reader allows; a job is one flat object of "
                      "numbers, strings and short lists")
    except ValueError as e:
        return None, f"not valid JSON ({first_line(e, 200)}); write one JSON object per line"
    if (deep := _depth(obj)) > MAX_DEPTH:
        return None, (f"nested {deep} levels deep; a job is one flat object of numbers, strings and short "
                      f"lists (at most {MAX_DEPTH} levels)")
    if (bad := _not_utf8(obj)) is not None:
        return None, (f"{bad} is not UTF-8 text (a lone surrogate such as \\ud800); write the text itself "
                      "or a valid escape")
    if not isinstance(obj, dict):
        return None, f'expected a JSON object like {{"id": ..., "source": ..., "target": ...}}, got {_json_type(obj)}'
    return obj, None


def _key_problems(obj: dict) -> list[str]:
    """The problems of keys a job does not take: batch-wide settings (named with their option)
    and unknown keys (with the closest known one)."""
    problems: list[str] = []
    unknown = [k for k in obj if k not in job_keys()]
    if unknown:
        batch_wide = [k for k in unknown if k in BATCH_WIDE]
        if batch_wide:
            problems.append(f"{', '.join(map(repr, batch_wide))} is set for the whole batch: use "
                            f"{', '.join('--' + k for k in batch_wide)} of `patchcollide batch`")
        unknown = [k for k in unknown if k not in BATCH_WIDE]
    if unknown:
        close = {k: difflib.get_close_matches(k, job_keys(), n=1, cutoff=0.6) for k in unknown}
        meant = [f"{k!r} -> {m[0]!r}" for k, m in close.items() if m]
        problems.append(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}"
                        + (f" (did you mean {', '.join(meant)}?)" if meant else "")
                        + f"; allowed: {', '.join(job_keys())}")
    return problems


def _id_of(obj: dict, problems: list[str]) -> str | None:
    """The job's "id", or None (a problem noted) when it is missing or not a non-empty string."""
    jid = obj.get("id")
    if "id" not in obj:
        problems.append('missing "id"')
        return None
    if not isinstance(jid, str) or not jid.strip():
        problems.append(f'"id" must be a non-empty string, got {_show(jid)}')
        return None
    return jid


def _image_paths(obj: dict, base: str, images: dict, problems: list[str]) -> dict[str, str]:
    """{"source", "target"}: absolute paths (relative ones from ``base``), each image checked once
    per job file (``images`` caches the problem, or None, by path)."""
    paths = {}
    for key in ("source", "target"):
        v = obj.get(key)
        if key not in obj:
            problems.append(f'missing "{key}" (an image file)')
        elif not isinstance(v, str) or not v:
            problems.append(f'"{key}" must be a path (a string), got {_show(v)}')
        else:
            p = os.path.abspath(os.path.join(base, os.path.expanduser(v)))
            if p not in images:
                images[p] = _image_problem(p)
            if images[p]:
                problems.append(f'{key} {v!r}: {images[p]}')
            paths[key] = p
    return paths


def _out_of(obj: dict, jid: str | None, out_dir: str, problems: list[str]) -> str | None:
    """The job's output folder: its "out" name, else its id, under ``out_dir``."""
    out = None
    if "out" in obj:
        out, why = _check_out_name(obj["out"], out_dir)
        if why:
            problems.append(f'"out" {why}')
    elif jid is not None:
        out, why = _check_out_name(jid, out_dir)
        if why:
            problems.append(f'id {why}; give the job an "out" name')
    return out


def _overrides(obj: dict, problems: list[str]) -> dict:
    """The config fields the line sets, converted to their types."""
    over: dict = {}
    for key, hint in config_fields().items():
        if key in obj:
            try:
                over[key] = convert(hint, obj[key])
            except TypeError:
                problems.append(f'"{key}" must be {describe(hint)}, got {_show(obj[key])}')
    return over


def _samples_of(obj: dict, samples: int, problems: list[str]) -> int:
    """The line's "samples" (0 .. MAX_SAMPLES), else the batch's ``samples``."""
    if "samples" not in obj:
        return samples
    v = obj["samples"]
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_SAMPLES:
        problems.append(f'"samples" must be an integer from 0 (no polytope check) to {MAX_SAMPLES:,}, '
                        f'got {_show(v)}')
        return samples
    return v


MAX_DEPTH = 3  # {"prune": [[0.7, 8], [0.8, 4]]}: the deepest value a job key takes


class _Duplicate(ValueError):
    pass


def _no_duplicates(pairs: list) -> dict:
    """json's object hook that refuses a key given twice (json.loads keeps the last silently)."""
    out = {}
    for k, v in pairs:
        if k in out:
            raise _Duplicate(k)
        out[k] = v
    return out


def _depth(v, level: int = 1) -> int:
    """Nesting depth of a parsed JSON value (a scalar: 0; a flat object: 1)."""
    if isinstance(v, dict):
        return max([_depth(x, level + 1) for x in v.values()], default=level)
    if isinstance(v, list):
        return max([_depth(x, level + 1) for x in v], default=level)
    return level - 1


def _not_utf8(v, where: str = "the line") -> str | None:
    """Where a parsed value holds a string that cannot be encoded as UTF-8 (a lone surrogate,
    which JSON's \\u escapes allow), or None."""
    if isinstance(v, str):
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            return where
        return None
    items = v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, list) else ()
    for k, x in items:
        if isinstance(k, str) and _not_utf8(k, "a key") is not None:
            return "a key"
        if (bad := _not_utf8(x, f"{k!r}" if isinstance(k, str) else where)) is not None:
            return bad
    return None


def _check_out_name(value, out_dir: str) -> tuple[str | None, str | None]:
    """(normalised name, None) for a usable output directory name, else (None, why)."""
    if not isinstance(value, str) or not value:
        return None, f"must be a non-empty directory name, got {_show(value)}"
    if any(ord(c) < 32 or ord(c) == 127 for c in value) or "\\" in value:
        return None, f"{value!r} contains control characters or a backslash; use a plain directory name"
    if value.startswith("/") or os.path.isabs(value):
        return None, f"{value!r} is an absolute path; give a name inside the --out directory"
    norm = posixpath.normpath(value)
    if norm not in (value, value.rstrip("/")) and norm not in (".", "..") and not norm.startswith("../"):
        return None, f"{value!r} is not a plain name (it means {norm!r}); give a single directory name"
    if norm == ".":
        return None, f"{value!r} names the --out directory itself; give a sub-directory name"
    if norm == ".." or norm.startswith("../"):
        return None, f"{value!r} leads outside the --out directory; give a name inside it"
    if "/" in norm:
        return None, f"{value!r} has sub-folders; give a single directory name inside the --out directory"
    if norm.startswith("."):
        return None, f"{value!r}: names starting with '.' are kept for the batch's own files"
    if norm.casefold() in RESERVED:
        return None, f"{value!r} is kept for the batch's own files ({', '.join(RESERVED)})"
    if len(norm.encode("utf-8")) > MAX_OUT_BYTES:
        return None, f"{value[:20]!r}... is longer than {MAX_OUT_BYTES} bytes"
    final = os.path.join(out_dir, norm)
    real_dir = os.path.realpath(out_dir)
    if os.path.dirname(os.path.realpath(final)) != real_dir:
        return None, f"{value!r}: {final} is a link leading outside the --out directory"
    if os.path.lexists(final) and not replaceable(final):
        return None, (f"{value!r}: {final} holds files that are not a patchcollide run; "
                      "move them away or choose another name")
    return norm, None


def replaceable(path: str) -> bool:
    """An existing job directory that a batch may replace: empty, or a patchcollide run."""
    if os.path.islink(path) or not os.path.isdir(path):
        return False
    try:
        return not os.listdir(path) or is_run(path, RUN_KIND)
    except OSError:
        return False


def _image_problem(path: str) -> str | None:
    """Why ``path`` cannot be a job's input, from its header only; None when it looks fine."""
    from PIL import Image, UnidentifiedImageError

    if (why := file_problem(path)) is not None:
        return f"{path} {why}"
    pre = Preprocess(resize=None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
    except UnidentifiedImageError:
        return f"{path} is not an image (no decoder recognises it)"
    except Image.DecompressionBombError:
        return f"{path} declares too many pixels (decompression-bomb guard)"
    except (OSError, SyntaxError, ValueError) as e:
        return f"{path} cannot be read ({first_line(e, 200)})"
    if w * h > pre.max_pixels:
        return f"{path} declares {w}x{h} pixels, above the decompression-bomb guard of {pre.max_pixels}"
    if min(w, h) < pre.min_side:
        return f"{path} is {w}x{h}, smaller than a {pre.min_side}-pixel patch"
    return None


def _json_type(v) -> str:
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    return {list: "an array", str: "a string", int: "a number", float: "a number"}.get(type(v), type(v).__name__)


def _show(v) -> str:
    s = json.dumps(v, ensure_ascii=False, default=str)
    return s if len(s) <= 40 else s[:37] + "..."


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"I/N"`` -> (I, N) with 1 <= I <= N; None (no sharding) for None or N = 1."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m:
        raise JobsError(f"--shard must look like I/N (this process's share I of N, e.g. 1/4), got {text!r}")
    i, n = int(m.group(1)), int(m.group(2))
    if not 1 <= i <= n:
        raise JobsError(f"--shard {text}: I must be between 1 and N (shards are numbered from 1), got {i}/{n}")
    return None if n == 1 else (i, n)


def in_shard(position: int, shard: tuple[int, int] | None) -> bool:
    """Shard I of N takes the job lines at positions I-1, I-1+N, I-1+2N, ... (file order,
    blank lines aside, invalid lines counted): deterministic, balanced, the same on every machine."""
    return shard is None or position % shard[1] == shard[0] - 1


