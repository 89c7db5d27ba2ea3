"""The index directory's format: its file names, index.json's checks and checksums, and the
errors of building, opening and searching an index. ``index_build`` writes the directory,
``knn`` opens, searches and verifies it.

    index.faiss                 the FAISS index, CPU form (faiss.write_index layout)
    index.json                  manifest: store id + fingerprint, factory, descriptor, nprobe,
                                k_factor, N, training sample, sha256 of index.faiss, versions, build time,
                                manifest_sha256 over all of these

Opening an index checks index.faiss (``quick_checksum``: the size, first and last MiB; and
for a file up to FULL_CHECK_MAX, 1 GiB, the sha256 of all of it), the store's id and recorded
fingerprint, and every value of index.json (``check_manifest``); ``knn.verify_index`` reads
everything whatever its size (``manifest_sha256``, the full ``sha256``, the store's
fingerprint recomputed).
"""
from __future__ import annotations

import hashlib
import json
import os
import re

from ..core.errors import PatchcollideError, first_line
from ..core.files import digest_of
from ..core.settings import field_error
from .descriptors import make_descriptor

INDEX_FILE = "index.faiss"
MANIFEST_FILE = "index.json"
STORE_FILE = "patches.h5"
FORMAT_VERSION = 1
# Upper bounds of the search parameters, from index.json or the command line. A refine search
# allocates 12 bytes per query per candidate (k * k_factor): k 16, k_factor 1024 and a 625-query
# grid is 123 MB, where an unbounded k_factor read from a damaged index.json fails in C++ (std::bad_alloc).
NPROBE_MAX = 1 << 20  # above the largest nlist of the default rule (131,072 at 1B patches); faiss clamps to nlist
K_FACTOR_MAX = 1024
REBUILD = "rebuild with `patchcollide index build`"
# an index.faiss up to this size is hashed whole each time it is opened (one read of the file), so a damaged
# byte anywhere is an error, not a changed answer; a larger one is checked by size, first and last MiB at open
# and in full by `patchcollide index verify`
FULL_CHECK_MAX = 1 << 30


class IndexError_(PatchcollideError):
    """An index that cannot be built, opened or used with a store; one-line message."""


def check_search_params(nprobe: int | None, k_factor: int | None) -> None:
    """nprobe and k_factor (None: not given) within 1..NPROBE_MAX and 1..K_FACTOR_MAX; the
    error names the field (the CLI: --nprobe, --k-factor)."""
    for name, v, top in (("nprobe", nprobe, NPROBE_MAX), ("k_factor", k_factor, K_FACTOR_MAX)):
        if v is not None and v < 1:
            raise field_error(IndexError_, name, f"must be >= 1, got {v}")
        if v is not None and v > top:
            raise field_error(IndexError_, name, f"must be at most {top:,}, got {v}")


def _whole(v, lo: int, hi: int) -> bool:
    """v is an int (not a bool, float or null) within lo..hi."""
    return type(v) is int and lo <= v <= hi


def check_manifest(m: dict, mpath: str):
    """Check every value of an index.json that opening and searching use, as strictly as the
    command line's: nprobe and k_factor whole numbers within their bounds, n a whole number,
    factory a string, sha256 (when there) 64 hex digits, the descriptor known and its
    params accepted. Returns the descriptor. IndexError_ (one line naming index.json, the key,
    the bad value and the fix) otherwise. The structure (keys present) is checked before."""
    def bad(key: str, value, want: str):
        return IndexError_(f"{mpath}: {key} is {_show(value)}, expected {want}; the file is damaged or edited: "
                           f"{REBUILD}")

    if m.get("format_version") != FORMAT_VERSION or type(m.get("format_version")) is not int:
        raise bad("format_version", m.get("format_version"), f"{FORMAT_VERSION}")
    if not _whole(m["nprobe"], 1, NPROBE_MAX):
        raise bad("nprobe", m["nprobe"], f"a whole number from 1 to {NPROBE_MAX:,}")
    if not _whole(m["k_factor"], 1, K_FACTOR_MAX):
        raise bad("k_factor", m["k_factor"], f"a whole number from 1 to {K_FACTOR_MAX:,}")
    if not _whole(m.get("n"), 1, 1 << 62):
        raise bad("n", m.get("n"), "the number of patches, a whole number >= 1")
    if not isinstance(m["factory"], str) or not m["factory"]:
        raise bad("factory", m["factory"], "a faiss index_factory string")
    if "sha256" in m and not (isinstance(m["sha256"], str) and re.fullmatch(r"[0-9a-f]{64}", m["sha256"])):
        raise bad("sha256", m["sha256"], "64 hex digits")
    if "manifest_sha256" in m and not (isinstance(m["manifest_sha256"], str)
                                       and re.fullmatch(r"[0-9a-f]{64}", m["manifest_sha256"])):
        raise bad("manifest_sha256", m["manifest_sha256"], "64 hex digits")
    if not isinstance(m["quick_sha256"], str):
        raise bad("quick_sha256", m["quick_sha256"], "64 hex digits")
    d = m["descriptor"]
    if not isinstance(d["name"], str):
        raise bad("descriptor.name", d["name"], "a descriptor name")
    if not isinstance(d["params"], dict):
        raise bad("descriptor.params", d["params"], "an object of the descriptor's parameters")
    try:
        desc = make_descriptor(d["name"], d["params"])
    except ValueError as e:
        raise bad("descriptor.name", d["name"], first_line(e).split("; ")[-1].replace("known: ", "one of ")) from None
    except TypeError:
        raise bad("descriptor.params", d["params"], f"parameters descriptor {d['name']!r} accepts") from None
    if "dim" in d and d["dim"] != desc.dim:
        raise bad("descriptor.dim", d["dim"], f"{desc.dim} (descriptor {desc.name!r})")
    return desc


def manifest_sha256(m: dict) -> str:
    """SHA-256 of an index.json's values: its canonical JSON (sorted keys, no spaces) without the
    ``manifest_sha256`` key itself. Recorded at build, recomputed at every open: a value changed
    later (damage, a hand edit) that is still valid is an error, not another search. The same
    digest as a run's report.json (``files.digest_of``)."""
    return digest_of(m, "manifest_sha256")


def _show(value) -> str:
    """A value from a JSON file as JSON writes it (null, "abc", 2.5), cut to 60 characters."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def faiss_reason(exc: Exception) -> str:
    """The human part of a faiss C++ exception ("could not parse code description Bogus ..."),
    without the C++ signature and source location."""
    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"^Error in .*? at \S+:\d+: ", "", text)
    for marker in ("failed: ", "Error: "):
        if marker in text:
            text = text.rsplit(marker, 1)[1]
    return text.strip().strip("'")


def quick_checksum(path: str, span: int = 1 << 20) -> str:
    """SHA-256 of a file's size, first and last MiB: detects an index.faiss that is not the one
    its index.json describes (an interrupted rebuild) without reading gigabytes on open."""
    h = hashlib.sha256()
    size = os.path.getsize(path)
    h.update(str(size).encode())
    with open(path, "rb") as fh:
        h.update(fh.read(span))
        if size > span:
            fh.seek(max(span, size - span))
            h.update(fh.read(span))
    return h.hexdigest()
