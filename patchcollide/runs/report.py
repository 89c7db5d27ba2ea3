"""The static HTML report of a run or a batch (``write_html``): one page per directory, opened
from disk. The pictures it shows are made by pictures.py; the statuses and metric columns come
from formats.py."""
from __future__ import annotations

import html
import json
import os
import urllib.parse

from PIL import Image

from ..core import files
from ..core.errors import PatchcollideError
from ..core.formats import (
    BATCH_KIND,
    BATCH_METRICS,
    JOB_STATUSES,
    MIXING_METRICS,
    POLYTOPE_LABELS,
    RANDOM_LABEL,
    RUN_KIND,
    SHARE_METRICS,
    VERTEX_METRICS,
)
from ..core.version import __version__
from ..engine.config import CollideError
from .inputs import check_report

# One page per directory, opened from disk: relative image URLs (the page stays beside its PNGs),
# inline CSS and JS, nothing fetched from a network. Every string read from a file is HTML-escaped.

DASH = "\u2013"
_HINT = "give a run directory (from `patchcollide collide`) or a batch directory (from `patchcollide batch`)"


class ReportError(PatchcollideError):
    """A path that no report can be made of: missing, not a run or batch, damaged JSON."""


def write_html(path: str) -> str:
    """Write ``path/report.html`` for a run directory (report.json) or a batch directory
    (batch.json: one row per job, and a page inside each done job's run directory, linked from
    its row). Returns the path of the top page.

    Every input is read and every page rendered before anything is written; each page is
    written under a temporary name and renamed. Raises ReportError for a path that is missing
    or holds neither a run nor a batch (no, truncated or foreign report.json / batch.json).
    """
    kind, doc = detect(path)
    if kind == "run":
        pages = [(os.path.join(path, "report.html"), run_page(path, doc, back=_parent_batch_page(path)))]
    elif kind == "folder":
        pages = folder_pages(path, doc)
    else:
        pages = batch_pages(path, doc)
    for out, text in pages[1:] + pages[:1]:  # the batch page last: its links then all work
        files.write_text(out, text, tmp=f"{out}.{os.getpid()}.tmp")  # two `report` processes may write one page
    return pages[0][0]


def detect(path: str) -> tuple[str, dict]:
    """("batch", batch.json) or ("run", report.json) of a directory; ReportError otherwise."""
    if not os.path.exists(path):
        raise ReportError(f"{path}: no such directory; {_HINT}")
    if not os.path.isdir(path):
        raise ReportError(f"{path} is a file, not a directory; {_HINT}")
    for name, kind, want in (("batch.json", "batch", BATCH_KIND), ("report.json", "run", RUN_KIND)):
        f = os.path.join(path, name)
        if os.path.isfile(f):
            doc = _read_kind(f, want)
            if kind == "batch" and not isinstance(doc.get("jobs"), list):
                raise ReportError(f"{f}: has no list of jobs; write it again with `patchcollide batch`")
            return kind, doc
    runs = _runs_below(path)
    if runs:
        return "folder", {"runs": runs}
    raise ReportError(f"{path}: neither report.json nor batch.json here, nor in a folder inside it; {_HINT}")


def _runs_below(path: str) -> list[str]:
    """The run directories one level inside ``path`` (a demo's folder: its collision, or one
    run per mode), by name."""
    found = []
    for name in sorted(os.listdir(path)):
        f = os.path.join(path, name, "report.json")
        if os.path.isfile(f):
            try:
                _read_kind(f, RUN_KIND)
            except ReportError:
                continue
            found.append(name)
    return found


def folder_pages(path: str, doc: dict) -> list[tuple[str, str]]:
    """[(path, html)]: a page for a folder of runs (a demo's), each run's verdict and a link to
    its own page, then the runs' pages."""
    pages, items = [], []
    for name in doc["runs"]:
        run_dir = os.path.join(path, name)
        rep = _read_kind(os.path.join(run_dir, "report.json"), RUN_KIND)
        pages.append((os.path.join(run_dir, "report.html"), run_page(run_dir, rep, back="../report.html", back_label="all runs")))
        cls, text = verdict(rep)
        thumb = _img(run_dir, "contact_sheet.png", f"{name}: contact sheet", prefix=name + os.sep) or ""
        items.append(f'<h2><a href="{_e(_url(name + "/report.html"))}">{_e(name)}</a></h2>'
                     f"{_verdict_line(cls, text)}{thumb}")
    title = f"patchcollide runs in {os.path.basename(os.path.abspath(path))}"
    top = _page(title, f"<h1>{_e(title)}</h1>\n" + "\n".join(items))
    return [(os.path.join(path, "report.html"), top)] + pages


def _read_kind(f: str, want: str) -> dict:
    try:
        with open(f, encoding="utf-8") as fh:
            doc = json.load(fh)
    except OSError as e:
        raise ReportError(f"{f}: cannot be read ({e.strerror or e}); fix its permissions or {_HINT}") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise ReportError(f"{f}: not valid JSON ({e}), so the file is truncated or damaged; make it again with "
                          "`patchcollide collide` or `patchcollide batch`, or give another directory") from None
    kind = doc.get("kind") if isinstance(doc, dict) else None
    if kind != want:
        raise ReportError(f"{f}: not a {want} file (kind {kind!r}); {_HINT}")
    return doc


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _url(relpath: str) -> str:
    """A relative URL (percent-encoded, so it is never read as a scheme) for a relative path."""
    return urllib.parse.quote(relpath.replace(os.sep, "/"), safe="/")


def _d(x) -> dict:
    return x if isinstance(x, dict) else {}


def _at(seq, i):
    return seq[i] if isinstance(seq, list) and i < len(seq) else None


def _fmt(v, pct: bool = False) -> str:
    """Display text (not yet escaped) of a value read from JSON; missing -> an en dash."""
    if v is None or v == "":
        return DASH
    if isinstance(v, bool):
        return "yes" if v else "no"
    if pct and isinstance(v, (int, float)):
        return f"{100 * v:.1f}%"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        a = abs(v)
        return f"{v:.2e}" if a and (a < 1e-2 or a >= 1e5) else f"{v:.4g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _kv_table(d: dict, labels: dict | None = None, pct: tuple = (), cls: str = "kv", shown: dict | None = None) -> str:
    """A key/value table; ``shown``: display text for some keys, in place of their raw value."""
    labels = labels or {}
    keys = [k for k in labels if k in d] + [k for k in d if k not in labels]
    shown = shown or {}
    rows = "".join(f"<tr><th>{_e(labels.get(k, k))}</th><td>{_e(shown[k] if k in shown else _fmt(d[k], k in pct))}</td></tr>"
                   for k in keys)
    return _box(f'<table class="{cls}"><tbody>{rows}</tbody></table>')


def _box(table: str) -> str:
    """A table in a box of the page's width that scrolls sideways when the table is wider: the
    page itself never does."""
    return f'<div class="scroll">{table}</div>'


def _git_text(git) -> str:
    """versions.git as a reader wants it: the commit and whether the tree had changes."""
    if not isinstance(git, dict) or not git.get("commit"):
        return "not run from a git checkout" if git is None or isinstance(git, dict) else _fmt(git)
    dirty = git.get("dirty")
    state = "with uncommitted changes" if dirty is True else "clean tree" if dirty is False else "tree state unknown"
    return f"commit {git['commit']} ({state})"


def _input_line(inputs: dict, which: str):
    """An input's path and how it was brought to size (report.json's inputs.transform, where recorded)."""
    how = _d(_d(inputs.get("transform")).get(which)).get("how")
    return f"{inputs.get(which)} ({how})" if how else inputs.get(which)


def _config_shown(cfg: dict, resolved: dict) -> dict:
    """Config values as the run used them: lr None, push_margin auto, fit auto and device auto become what the run
    took (report.json's resolved), with where that came from."""
    shown = {}
    if cfg.get("lr") is None and "lr" in cfg:
        shown["lr"] = (f"{_fmt(resolved['lr'])} (the {cfg.get('mode', '?')} space's default)" if _num(resolved.get("lr"))
                       else f"{DASH} (the search space's default; not recorded by this version)")
    if cfg.get("fit") == "auto" and resolved.get("fit"):
        side = cfg.get("size", "size")
        shown["fit"] = f"auto: an input of {side} x {side} as given, any other {resolved['fit']}"
    if cfg.get("push_margin", 0) is None and _num(resolved.get("push_margin")):
        shown["push_margin"] = f"{_fmt(resolved['push_margin'])} (auto: {'random' if resolved['push_margin'] else 'trained'} weights)"
    if "device" in cfg:
        used = resolved.get("device")
        shown["device"] = (f"{used} ({cfg['device']})" if used and used != cfg["device"] else _fmt(used or cfg["device"]))
    return shown


def _png_size(f: str) -> tuple[int, int] | None:
    """(width, height) of a readable image file, else None (then no <img> is written)."""
    try:
        with Image.open(f) as im:
            return im.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):  # a damaged header: PIL's errors
        return None


def _img(folder: str, name: str, alt: str, prefix: str = "", min_side: int = 0) -> str | None:
    """An <img> for ``folder/name`` at URL ``prefix + name``, shown at least ``min_side`` pixels
    (whole multiples, pixelated); None when the file is missing or not an image."""
    size = _png_size(os.path.join(folder, name))
    if size is None:
        return None
    w, h = size
    s = max(1, min_side // max(w, h, 1))
    return f'<img src="{_e(_url(prefix + name))}" alt="{_e(alt)}" width="{w * s}" height="{h * s}">'


def _figure(folder: str, name: str, alt: str, caption: str, min_side: int = 0, cls: str = "") -> str:
    img = _img(folder, name, alt, min_side=min_side)
    if img is None:
        return f'<figure class="missing"><p>{_e(name)} is missing</p><figcaption>{_e(caption)}</figcaption></figure>'
    attr = f' class="{cls}"' if cls else ""
    return f"<figure{attr}>{img}<figcaption>{_e(caption)}</figcaption></figure>"


def _page(title: str, body: str) -> str:
    return ('<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{body}\n"
            f"<footer>written by patchcollide {_e(__version__)}; a static page, images are linked files</footer>\n"
            f"<script>{_JS}</script>\n</body>\n</html>\n")


def _banner(text) -> str:
    return f'<div class="banner" role="alert">{_e(text)}</div>' if text else ""


def run_page(run_dir: str, report: dict, back: str | None = None, back_label: str = "batch") -> str:
    """The HTML page of one run directory (report.json already read); ``back``: relative URL
    of the batch (or folder) page it belongs to, ``back_label`` its link text."""
    r = report
    cfg, model, inputs, tgt = _d(r.get("config")), _d(r.get("model")), _d(r.get("inputs")), _d(r.get("target"))
    verts = _d(r.get("vertices"))
    fl, png = _d(verts.get("float")), _d(verts.get("png"))
    n_vertices = max((len(m["rel_error"]) for m in (png, fl) if isinstance(m.get("rel_error"), list)), default=0)
    if not n_vertices:
        n_vertices = sum(1 for n in os.listdir(run_dir) if n.startswith("vertex_") and n.endswith(".png"))
    name = os.path.basename(os.path.abspath(run_dir))
    notice = r.get("notice") or (f"{RANDOM_LABEL} (smoke run)" if model.get("kind") == "random" else None)
    weights = str(model.get("name", model.get("kind", DASH)))
    if model.get("sha256"):
        weights += f" (sha256 {str(model['sha256'])[:12]})"
    mode = _fmt(cfg.get("mode"))
    if cfg.get("mode") == "patches":
        mode += f", k = {_fmt(cfg.get('k'))}, index {_fmt(inputs.get('index'))}"
    side = _fmt(verts.get("size", cfg.get("size")))
    dist = _d(r.get("distances"))
    summary = [
        ("model", f"{model.get('arch', '?')}:{model.get('layer', '?')}"), ("weights", weights),
        ("source", _input_line(inputs, "source")), ("target", _input_line(inputs, "target")),
        ("target class", (f"{_fmt(tgt.get('label'))} (p = {_fmt(tgt.get('top_prob'))}), "
                          f"{_fmt(tgt.get('n_active'))} / {_fmt(tgt.get('dim'))} units active")),
        ("mode", mode), ("vertices", f"{n_vertices} at {side} x {side}"),
        ("steps", f"{_fmt(r.get('steps'))} of at most {_fmt(cfg.get('steps'))}"),
        ("converged", _fmt(r.get("converged"))), ("time", f"{_fmt(r.get('seconds'))} s"),
        *([("before the first step", _timings_line(r["timings"]))] if isinstance(r.get("timings"), dict) else []),
        ("mean pairwise L2", (f"vertices {_fmt(verts.get('mean_pairwise_l2'))}, source-target "
                              f"{_fmt(dist.get('source_target_l2'))} (0..255 pixel units)")),
        *([("L2 to the source", ", ".join(_fmt(d) for d in dist["vertex_source_l2"]) + " (per vertex)")]
          if isinstance(dist.get("vertex_source_l2"), list) and dist["vertex_source_l2"] else []),
        *([("extent", f"{_fmt(verts['extent'].get('extent'))} (the closest two vertices in the 7 x 7 block-mean "
                      "view, over the source-target distance there)")]
          if isinstance(verts.get("extent"), dict) and verts["extent"].get("pairs_block_l2") else []),
        *([("judge", _judge_line(r["judge"]))] if isinstance(r.get("judge"), dict) else []),
        *([("retrieval", _retrieval_line(r["retrieval"]))]
          if isinstance(r.get("retrieval"), dict) and _retrieval_line(r["retrieval"]) else []),
        ("created", r.get("created")),
    ]
    out = [f'<p class="nav"><a href="{_e(back)}">&larr; {_e(back_label)}</a></p>' if back else "",
           f"<h1>patchcollide run <code>{_e(name)}</code></h1>", _verdict_line(*verdict(r)), _damage_note(run_dir, r),
           _banner(notice),
           '<dl class="summary">' + "".join(f"<dt>{_e(k)}</dt><dd>{_e(_fmt(v))}</dd>" for k, v in summary) + "</dl>",
           '<h2 id="images">Images</h2>',
           _figure(run_dir, "contact_sheet.png", "contact sheet: source, target, vertices, indicator",
                   "contact sheet: source, target, vertices, indicator", cls="wide"),
           '<div class="grid">',
           _figure(run_dir, "source.png", "source image", "source", min_side=160),
           _figure(run_dir, "target.png", "target image", "target", min_side=160)]
    for i in range(n_vertices):
        cap = f"vertex {i}: unit {_fmt(_at(png.get('unit'), i))}, rel. error (PNG) {_fmt(_at(png.get('rel_error'), i))}"
        out.append(_figure(run_dir, f"vertex_{i}.png", f"vertex {i}", cap, min_side=160))
    for i in range(n_vertices):
        if os.path.exists(os.path.join(run_dir, f"argmax_{i}.png")):
            err = _at(_d(verts.get("mixing")).get("argmax_rel_error"), i)
            out.append(_figure(run_dir, f"argmax_{i}.png", f"vertex {i}, every pixel from its heaviest candidate",
                               f"argmax {i}: pure composition, rel. error {_fmt(err)}", min_side=160))
    out += [_figure(run_dir, "indicator.png", "indicator: vertex 0 with purple boxes where the vertices differ most",
                    "indicator: purple boxes where the vertices differ most", min_side=160), "</div>",
            _figure(run_dir, "loss.png", "loss terms and relative error per step", "loss and relative error per step",
                    cls="wide"),
            '<h2 id="vertices">Per-vertex metrics</h2>',
            _vertex_table(fl, png, n_vertices, _d(verts.get("mixing")), tgt.get("unit_values"))]
    if isinstance(r.get("judge"), dict):
        out += ['<h2 id="judge">Judge</h2>', _judge_table(r["judge"], n_vertices)]
    poly = r.get("polytope")
    if isinstance(poly, dict):
        out += ['<h2 id="polytope">Polytope check</h2>',
                _kv_table({k: v for k, v in poly.items() if k != "per_sample"}, POLYTOPE_LABELS,
                          pct=("share_target_class", "share_target_close", "judge_share_source"), cls="kv polytope")]
    vers = _d(r.get("versions"))
    out += ['<h2 id="model">Model</h2>', _kv_table(model), '<h2 id="config">Config</h2>',
            _kv_table(cfg, shown=_config_shown(cfg, _d(r.get("resolved")))),
            '<h2 id="versions">Versions</h2>', _kv_table(vers, shown={"git": _git_text(vers["git"])} if "git" in vers else None)]
    return _page(f"patchcollide run {name}", "\n".join(x for x in out if x))


def _damage_note(run_dir: str, report: dict) -> str:
    """What report.json lacks of a run's structure (``inputs.check_report``, which names the key
    and the fix), above the page that shows what it holds; empty for a sound report."""
    try:
        check_report(report, run_dir)
    except CollideError as e:
        return (f'<p class="damaged" role="alert" id="damaged">This run cannot be sampled or loaded as it is: {_e(e)}. '
                "The page shows what report.json holds.</p>")
    return ""


def _count(x) -> str:
    """How many values a list from JSON holds, as text (a dash for anything else)."""
    return str(len(x)) if isinstance(x, list) else DASH


def verdict(report: dict) -> tuple[str, str]:
    """(css class, one line) that says first what a run came to: converged or not against its
    tol, by the worst vertex as saved (PNG); the polytope's share in the target's class; the
    judge's reading. For example "not converged: worst rel. error 0.254 > tol 0.01 after 300
    steps; 0.0% of 200 samples in the target's class"."""
    r = report
    cfg, verts, poly = _d(r.get("config")), _d(r.get("vertices")), r.get("polytope")
    errs = next((e for e in (_d(verts.get(k)).get("rel_error") for k in ("png", "float")) if isinstance(e, list)), [])
    worst = max(errs) if errs and all(_num(x) for x in errs) else None  # as saved (PNG) where recorded
    tol, steps = cfg.get("tol"), r.get("steps")
    err = f"worst rel. error {_fmt(worst)}"
    after = f" after {_fmt(steps)} steps" if steps is not None else ""
    fooled = _d(r.get("history")).get("fooled") or []
    if r.get("converged") is True and _num(worst) and _num(tol) and worst > tol and fooled:
        parts, cls = [f"converged at the net's decision: every vertex fools it at its last step, {err} (tol "
                      f"{_fmt(tol)} not needed with least change){after}"], "ok"
    elif r.get("converged") is True:
        parts, cls = [f"converged: {err} <= tol {_fmt(tol)}{after}"], "ok"
    elif r.get("converged") is False:
        parts, cls = [f"not converged: {err} > tol {_fmt(tol)}{after}"], "bad"
    else:
        parts, cls = [f"convergence not recorded; {err}"], "unknown"
    if isinstance(poly, dict) and _num(poly.get("share_target_class")):
        n = poly.get("samples", poly.get("n"))
        parts.append(f"{_fmt(poly['share_target_class'], pct=True)} of {_fmt(n)} samples in the target's class")
        if _num(poly.get("share_target_close")) and _num(poly.get("prob_gap")):
            parts[-1] += (f", {_fmt(poly['share_target_close'], pct=True)} fool the net (top-class prob. within "
                          f"{_fmt(poly['prob_gap'])} of the target's)")
        if poly["share_target_class"] < 0.5:
            cls = "bad"
    else:
        parts.append("polytope not checked (patchcollide sample --out RUN)")
    j = r.get("judge")
    if isinstance(j, dict):
        parts.append(f"judge: {_fmt(j.get('n_reads_as_source'))} / {_count(_d(j.get('vertices')).get('class'))} "
                     "vertices read as the source")
    return cls, "; ".join(parts)


def _verdict_line(cls: str, text: str) -> str:
    return f'<p class="verdict v-{_e(cls)}" id="verdict">{_e(text)}</p>'


TIMING_LABELS = {"inputs": "inputs", "model": "model", "target": "target", "retrieval": "retrieval",
                 "setup": "set-up", "first_step": "first step"}


def _timings_line(t: dict) -> str:
    """report.json's timings up to the end of the first step, in words."""
    parts = [f"{label} {t[k]:.2f}" for k, label in TIMING_LABELS.items() if _num(t.get(k)) and t[k] >= 0.005]
    total = sum(t[k] for k in TIMING_LABELS if _num(t.get(k)))
    line = f"{total:.2f} s: " + ", ".join(parts) if parts else DASH
    if _num(t.get("process")):
        line += f" (the process was {t['process']:.2f} s old when the run began: interpreter, imports, command line)"
    return line


def _retrieval_line(ret: dict) -> str | None:
    if not _num(ret.get("ratio")):
        return None
    return (f"source patches {_fmt(ret.get('source_mean_distance'))} from their neighbours, stored patches "
            f"{_fmt(ret.get('store_typical_distance'))} from theirs ({ret['ratio']:.2f}x; "
            f"{_fmt(ret.get('store_patches'))} patches in the store)")


def _judge_line(j: dict) -> str:
    src, tgt = _d(j.get("source")), _d(j.get("target"))
    return (f"{_d(j.get('model')).get('arch', '?')}: source read as {_fmt(src.get('class'))} (p = {_fmt(src.get('prob'))}), "
            f"target as {_fmt(tgt.get('class'))} (p = {_fmt(tgt.get('prob'))}); {_fmt(j.get('n_reads_as_source'))} / "
            f"{_count(_d(j.get('vertices')).get('class'))} vertices read as the source")


def _judge_table(j: dict, n: int) -> str:
    """The judge's reading of each vertex: class, probability, probability of the source's class."""
    v = _d(j.get("vertices"))
    rows = "".join(f'<tr><td class="n">{i}</td><td class="n">{_e(_fmt(_at(v.get("class"), i)))}</td>'
                   f'<td class="n">{_e(_fmt(_at(v.get("prob"), i)))}</td>'
                   f'<td class="n">{_e(_fmt(_at(v.get("source_class_prob"), i)))}</td>'
                   f'<td>{"yes" if _at(v.get("reads_as_source"), i) else "no"}</td></tr>' for i in range(n))
    return (f'<p>{_e(_judge_line(j))}. {_e(j.get("rule", ""))}.</p>' + _box(
        '<table class="judge"><thead><tr><th>vertex</th>'
        "<th>judge's class</th><th>p</th><th>p(source's class)</th><th>reads as the source</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"))


def _vertex_table(fl: dict, png: dict, n: int, mixing: dict | None = None, target_units: list | None = None) -> str:
    """Per-vertex metrics: the float and PNG columns side by side, then the mixing (patch mode)."""
    mixing = mixing or {}
    keys = [k for k in VERTEX_METRICS if k in fl or k in png]
    keys += [k for k in list(fl) + [k for k in png if k not in fl] if k not in VERTEX_METRICS and k != "unit"]
    mix = [k for k in MIXING_METRICS if k in mixing]
    head1 = ("<th rowspan=2>vertex</th><th rowspan=2>unit</th><th rowspan=2>z_t[unit]</th>"
             + "".join(f'<th colspan=2 title="{_e(k)}">{_e(VERTEX_METRICS.get(k, k))}</th>' for k in keys)
             + "".join(f'<th rowspan=2 title="mixing: {_e(k)}">{_e(MIXING_METRICS[k])}</th>' for k in mix))
    head2 = "<th>float</th><th>PNG</th>" * len(keys)
    rows = []
    for i in range(n):
        unit = _at(png.get("unit"), i) if isinstance(png.get("unit"), list) else _at(fl.get("unit"), i)
        cells = "".join(f'<td class="n">{_e(_fmt(_at(m.get(k), i)))}</td>' for k in keys for m in (fl, png))
        cells += "".join(f'<td class="n">{_e(_fmt(_at(mixing.get(k), i)))}</td>' for k in mix)
        rows.append(f'<tr><td class="n">{i}</td><td class="n">{_e(_fmt(unit))}</td>'
                    f'<td class="n">{_e(_fmt(_at(target_units, i)))}</td>{cells}</tr>')
    return _box(f'<table class="vertices"><thead><tr>{head1}</tr><tr>{head2}</tr></thead>'
                f"<tbody>{''.join(rows)}</tbody></table>")


def _parent_batch_page(run_dir: str) -> str | None:
    """The relative URL of the batch page when ``run_dir`` is a job of a batch that has one."""
    here = os.path.abspath(run_dir)
    parent = os.path.dirname(here)
    try:
        with open(os.path.join(parent, "batch.json"), encoding="utf-8") as fh:
            batch = json.load(fh)
        jobs = batch["jobs"] if batch.get("kind") == BATCH_KIND else []
        mine = any(isinstance(j, dict) and isinstance(j.get("out"), str)
                   and os.path.abspath(os.path.join(parent, j["out"])) == here for j in jobs)
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return None
    return "../report.html" if mine and os.path.isfile(os.path.join(parent, "report.html")) else None


def batch_pages(batch_dir: str, batch: dict) -> list[tuple[str, str]]:
    """[(path, html)]: the batch page first, then one page per done job with a readable run."""
    jobs = [j for j in batch.get("jobs", []) if isinstance(j, dict)]
    pages, rows, notices = [], [], []
    for order, job in enumerate(jobs):
        out = job.get("out")
        run_dir = os.path.normpath(os.path.join(batch_dir, out)) if isinstance(out, str) and out else None
        page = None
        if run_dir and job.get("status") == "done" and os.path.isdir(run_dir):
            try:
                run = _read_kind(os.path.join(run_dir, "report.json"), RUN_KIND)
            except ReportError:
                run = None
            if run is not None:
                back = _url(os.path.join(os.path.relpath(batch_dir, run_dir), "report.html"))
                pages.append((os.path.join(run_dir, "report.html"), run_page(run_dir, run, back=back)))
                page = _url(os.path.join(os.path.relpath(run_dir, batch_dir), "report.html"))
                notices.append(run.get("notice"))
        rows.append((order, job, run_dir, page))
    model = batch.get("model")
    if isinstance(model, dict) and model.get("kind") == "random" and not any(notices):
        notices.append(f"{RANDOM_LABEL} (smoke run)")
    name = os.path.basename(os.path.abspath(batch_dir))
    counts: dict = {}
    for j in jobs:
        counts[str(j.get("status"))] = counts.get(str(j.get("status")), 0) + 1
    order = [s for s in JOB_STATUSES if s in counts] + sorted(s for s in counts if s not in JOB_STATUSES)
    summary = " ".join(f'<span class="status {_status_class(s)}">{_e(s)}: {counts[s]}</span>' for s in order)
    if isinstance(model, dict):
        model_text = (f"{model.get('arch', '?')}:{model.get('layer', '?')}, "
                      f"weights {model.get('name', model.get('kind', DASH))}")
    else:
        model_text = _fmt(model)
    info = [("jobs file", batch.get("jobs_file")), ("jobs sha256", str(batch.get("jobs_sha256") or DASH)[:16]),
            ("model", model_text), ("created", batch.get("created")), ("updated", batch.get("updated"))]
    body = [f"<h1>patchcollide batch <code>{_e(name)}</code></h1>", _verdict_line(*batch_verdict(jobs)),
            _banner(next((n for n in notices if n), None)),
            '<dl class="summary">' + "".join(f"<dt>{_e(k)}</dt><dd>{_e(_fmt(v))}</dd>" for k, v in info) + "</dl>",
            f'<p class="counts" id="counts">{len(jobs)} jobs: {summary}</p>',
            '<h2 id="jobs-title">Jobs</h2><p class="hint">Click a column header to sort by it; again to reverse.</p>',
            _jobs_table(batch_dir, rows)]
    if isinstance(batch.get("options"), dict):
        body += ['<h2 id="options">Options</h2>', _kv_table(batch["options"])]
    if isinstance(batch.get("model"), dict):
        body += ['<h2 id="model">Model</h2>', _kv_table(batch["model"])]
    if isinstance(batch.get("versions"), dict):
        vers = batch["versions"]
        body += ['<h2 id="versions">Versions</h2>',
                 _kv_table(vers, shown={"git": _git_text(vers["git"])} if "git" in vers else None)]
    top = _page(f"patchcollide batch {name}", "\n".join(x for x in body if x))
    return [(os.path.join(batch_dir, "report.html"), top)] + pages


def batch_verdict(jobs: list[dict]) -> tuple[str, str]:
    """(css class, one line) of a batch: how many jobs are done, how many of those converged,
    the worst relative error (PNG) among them, and the failures."""
    n = len(jobs)
    done = [j for j in jobs if j.get("status") == "done"]
    failed = sum(1 for j in jobs if j.get("status") == "failed")
    rest = n - len(done) - failed
    metrics = [_d(j.get("metrics")) for j in done]
    conv = sum(1 for m in metrics if m.get("converged") is True)
    worst = [m.get("worst_rel_error_png", m.get("worst_rel_error")) for m in metrics]
    worst = [w for w in worst if _num(w)]
    parts = [f"{len(done)} of {n} jobs done" + (f", {failed} failed" if failed else "")
             + (f", {rest} not run or not finished" if rest else "")]
    if done:
        parts.append(f"{conv} of {len(done)} done converged" + (f", worst rel. error {_fmt(max(worst))}" if worst else ""))
    shares = [m["share_target_class"] for m in metrics if _num(m.get("share_target_class"))]
    if shares:
        span = _fmt(min(shares), pct=True) + ("" if min(shares) == max(shares) else f" to {_fmt(max(shares), pct=True)}")
        parts.append(f"{span} of samples in the target's class ({len(shares)} of {len(done)} done sampled)")
    fool = [m["share_target_close"] for m in metrics if _num(m.get("share_target_close"))]
    if fool:
        parts.append(f"{sum(1 for f in fool if f >= 1)} of {len(fool)} sampled fool the net with every sample")
    reads = [m["judge_reads_source"] for m in metrics if _num(m.get("judge_reads_source"))]
    if reads:
        span = _fmt(min(reads), pct=True) + ("" if min(reads) == max(reads) else f" to {_fmt(max(reads), pct=True)}")
        parts.append(f"judge: {span} of the vertices read as the source ({len(reads)} of {len(done)} done judged)")
    cls = "bad" if failed or (done and conv < len(done)) else ("ok" if done and not rest else "unknown")
    return cls, "; ".join(parts)


def _status_class(status) -> str:
    return f"st-{status}" if status in JOB_STATUSES else "st-other"


def _one_line(text, limit: int = 240) -> str:
    line = next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "\u2026"


def _jobs_table(batch_dir: str, rows: list) -> str:
    metrics = dict(BATCH_METRICS)
    for _, job, _, _ in rows:  # keys a newer batch writer adds are shown too
        for k, v in _d(job.get("metrics")).items():
            if k not in metrics and (v is None or isinstance(v, (int, float, str))):
                metrics[k] = k
    cols = [("id", "id"), ("status", "status"), ("line", "line"), ("seconds", "seconds")] + list(metrics.items())

    def value(job, key):
        return job.get(key) if key in ("id", "status", "line", "seconds") else _d(job.get("metrics")).get(key)

    numeric = {k for k, _ in cols if k not in ("id", "status") and all(
        value(j, k) is None or _num(value(j, k)) or isinstance(value(j, k), bool) for _, j, _, _ in rows)}

    def th(k, label):
        return (f'<th data-key="{_e(k)}" data-type="{"num" if k in numeric else "text"}" tabindex="0" aria-sort="none" '
                f'title="{_e(k)}: click to sort">{_e(label)}</th>')

    # the error beside the status, where a failed row is read first; the metrics after it scroll in its box
    head = ('<th class="thumb">run</th>' + "".join(th(k, label) for k, label in cols[:2]) + '<th class="err">error</th>'
            + "".join(th(k, label) for k, label in cols[2:]))
    body = []
    for order, job, run_dir, page in rows:
        thumb = None
        if run_dir and os.path.isdir(run_dir):
            prefix = os.path.relpath(run_dir, batch_dir) + os.sep
            for f in ("contact_sheet.png", "vertex_0.png"):
                thumb = _img(run_dir, f, f"{job.get('id')}: {f}", prefix=prefix)
                if thumb:
                    break
        if thumb and page:
            thumb = f'<a href="{_e(page)}">{thumb}</a>'
        err = ""
        if job.get("error"):
            err = f'<span title="{_e(str(job["error"])[:4000])}">{_e(_one_line(job["error"]))}</span>'
        tb = job.get("traceback")
        if isinstance(tb, str) and tb:
            if os.path.isfile(os.path.join(batch_dir, tb)):
                err += f' <a class="tb" href="{_e(_url(tb))}">traceback</a>'
            else:
                err += f' <span class="missing">(traceback {_e(tb)} is missing)</span>'
        if job.get("status") == "done" and not page:
            err += f' <span class="missing">(run directory {_e(job.get("out"))} missing or unreadable)</span>'
        cells = [f'<td class="thumb">{thumb or DASH}</td>']
        for k, _ in cols:
            if k == "line":
                cells.append(f'<td class="err">{err.strip()}</td>')
            v = value(job, k)
            dv = "" if v is None or isinstance(v, (list, dict)) else (
                int(v) if isinstance(v, bool) else json.dumps(v) if isinstance(v, float) else v)  # Infinity, NaN
            text = _e(_fmt(v, pct=k in SHARE_METRICS))
            if k == "id" and page:
                text = f'<a href="{_e(page)}">{text}</a>'
            elif k == "status":
                text = f'<span class="status {_status_class(v)}">{text}</span>'
            cls = ' class="n"' if k in numeric else ""
            cells.append(f'<td{cls} data-v="{_e(dv)}">{text}</td>')
        body.append(f'<tr class="{_status_class(job.get("status"))}" data-order="{order}">{"".join(cells)}</tr>')
    return (f'<div class="scroll"><table id="jobs" class="jobs"><thead><tr>{head}</tr></thead>\n<tbody>\n'
            + "\n".join(body) + "\n</tbody></table></div>")


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5em 2em;color:#1f2328;background:#fff}
h1{font-size:1.45em;margin:.2em 0 .6em}h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #d0d7de}
code{font-family:ui-monospace,Menlo,Consolas,monospace}
.banner{background:#fde68a;border:2px solid #b45309;color:#451a03;padding:.6em 1em;font-weight:700;margin:1em 0}
.damaged{background:#fff5f5;border:2px solid #cf222e;color:#a40e26;padding:.6em 1em;margin:1em 0;overflow-wrap:anywhere}
dl.summary{display:grid;grid-template-columns:max-content auto;gap:2px 1.2em;margin:0}
dl.summary dt{font-weight:600}dl.summary dd{margin:0;overflow-wrap:anywhere}
table{border-collapse:collapse;margin:.6em 0}
th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:left;vertical-align:middle}
th{background:#f6f8fa}td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.vertices{font-size:.86em}table.vertices th,table.vertices td{padding:2px 4px}
table.kv th{font-weight:600}table.kv td{overflow-wrap:anywhere}
#jobs th[data-key]{cursor:pointer;user-select:none}#jobs th[data-key]:hover{background:#eaeef2}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
figure{display:inline-block;margin:0 1.2em 1.2em 0;vertical-align:top}figure.wide{display:block}
figcaption{font-size:.85em;color:#57606a;max-width:28em}
img{image-rendering:pixelated;max-width:100%;height:auto;border:1px solid #d0d7de;background:#fff}
td.thumb img{max-height:56px;max-width:220px;width:auto;height:auto}
.scroll{overflow-x:auto;max-width:100%;margin:.6em 0}.scroll>table{margin:0}
.verdict{font-weight:600;font-size:1.05em;padding:.45em .9em;margin:.4em 0 .8em;border-left:6px solid #6e7781;background:#f6f8fa}
.verdict.v-ok{border-color:#1a7f37}.verdict.v-bad{border-color:#cf222e}
.status{display:inline-block;padding:0 7px;border-radius:4px;color:#fff;font-weight:600}
.status.st-done{background:#1a7f37}.status.st-failed{background:#cf222e}
.status.st-pending{background:#6e7781}.status.st-interrupted{background:#bc4c00}.status.st-busy{background:#0969da}.status.st-invalid{background:#9a6700}
.status.st-other{background:#424a53}tr.st-failed td{background:#fff5f5}
td.err{color:#a40e26;min-width:18em;max-width:28em;overflow-wrap:anywhere}.missing{color:#6e7781;font-style:italic}
.counts .status{margin-right:.4em}.hint{color:#57606a;font-size:.9em}
footer{margin-top:2.5em;color:#6e7781;font-size:.8em}
"""

_JS = """
// Self-check for tests and for people: how many images are on the page and how many loaded.
window.addEventListener("load", function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++;
  document.body.setAttribute("data-images-total", imgs.length);
  document.body.setAttribute("data-images-loaded", ok);
});
(function () {
  // Sortable jobs table: click a header (or Enter on it) to sort by it, again to reverse.
  // Numbers sort as numbers; empty cells go last in both directions; ties keep file order.
  var table = document.getElementById("jobs");
  if (!table) return;
  var body = table.tBodies[0], heads = table.tHead.rows[0].cells, k;
  function value(row, i, num) {
    var v = row.cells[i].getAttribute("data-v");
    if (v === null || v === "") return null;
    if (!num) return v.toLowerCase();
    v = parseFloat(v);
    return isNaN(v) ? null : v;
  }
  function sortBy(th) {
    var i = th.cellIndex, num = th.getAttribute("data-type") === "num";
    var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
    for (var j = 0; j < heads.length; j++) {
      if (heads[j].hasAttribute("data-key")) heads[j].setAttribute("aria-sort", "none");
    }
    th.setAttribute("aria-sort", dir > 0 ? "ascending" : "descending");
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = value(a, i, num), y = value(b, i, num), tie = a.getAttribute("data-order") - b.getAttribute("data-order");
      if (x === null || y === null) return x === y ? tie : (x === null ? 1 : -1);
      return x < y ? -dir : x > y ? dir : tie;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    table.setAttribute("data-sort-key", th.getAttribute("data-key"));
    table.setAttribute("data-sort-dir", dir > 0 ? "asc" : "desc");
  }
  for (k = 0; k < heads.length; k++) {
    if (!heads[k].hasAttribute("data-key")) continue;
    heads[k].addEventListener("click", function () { sortBy(this); });
    heads[k].addEventListener("keydown", function (e) {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(this); }
    });
  }
  // report.html#sort=KEY opens sorted ascending, #sort=-KEY descending (by clicking the header).
  var m = /(?:^#|&)sort=(-?)([^&]+)/.exec(location.hash);
  if (m) for (k = 0; k < heads.length; k++) {
    var key = m[2];
    try { key = decodeURIComponent(key); } catch (e) { /* keep it as written */ }
    if (heads[k].getAttribute("data-key") !== key) continue;
    heads[k].click();
    if (m[1]) heads[k].click();
  }
})();
"""
