"""The static HTML report of a run or a batch (``write_html``): one page per directory, opened
from disk. The pictures it shows are made by pictures.py; the statuses and metric columns come
from formats.py, the one-line verdicts from verdict.py, the style and script from report_assets.py."""
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
from ..engine.config import AUTO_LEAST_CHANGE, CollideError
from .inputs import check_report
from .report_assets import CSS, JS
# verdict and batch_verdict are importable from here too (cli/, as before verdict.py held them)
from .verdict import DASH, as_dict, batch_verdict, count_text, fmt, is_number, verdict

# One page per directory, opened from disk: relative image URLs (the page stays beside its PNGs),
# inline CSS and JS, nothing fetched from a network. Every string read from a file is HTML-escaped.

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


def _at(seq, i):
    return seq[i] if isinstance(seq, list) and i < len(seq) else None


def _kv_table(d: dict, labels: dict | None = None, pct: tuple = (), cls: str = "kv", shown: dict | None = None) -> str:
    """A key/value table; ``shown``: display text for some keys, in place of their raw value."""
    labels = labels or {}
    keys = [k for k in labels if k in d] + [k for k in d if k not in labels]
    shown = shown or {}
    rows = "".join(f"<tr><th>{_e(labels.get(k, k))}</th><td>{_e(shown[k] if k in shown else fmt(d[k], k in pct))}</td></tr>"
                   for k in keys)
    return _box(f'<table class="{cls}"><tbody>{rows}</tbody></table>')


def _box(table: str) -> str:
    """A table in a box of the page's width that scrolls sideways when the table is wider: the
    page itself never does."""
    return f'<div class="scroll">{table}</div>'


def _git_text(git) -> str:
    """versions.git as a reader wants it: the commit and whether the tree had changes."""
    if not isinstance(git, dict) or not git.get("commit"):
        return "not run from a git checkout" if git is None or isinstance(git, dict) else fmt(git)
    dirty = git.get("dirty")
    state = "with uncommitted changes" if dirty is True else "clean tree" if dirty is False else "tree state unknown"
    return f"commit {git['commit']} ({state})"


def _input_line(inputs: dict, which: str):
    """An input's path and how it was brought to size (report.json's inputs.transform, where recorded)."""
    how = as_dict(as_dict(inputs.get("transform")).get(which)).get("how")
    return f"{inputs.get(which)} ({how})" if how else inputs.get(which)


def _config_shown(cfg: dict, resolved: dict) -> dict:
    """Config values as the run used them: lr None, push_margin, least_change, fork and distinct_view auto, fit auto and device auto become what the run
    took (report.json's resolved), with where that came from."""
    shown = {}
    if cfg.get("lr") is None and "lr" in cfg:
        shown["lr"] = (f"{fmt(resolved['lr'])} (the {cfg.get('mode', '?')} space's default)" if is_number(resolved.get("lr"))
                       else f"{DASH} (the search space's default; not recorded by this version)")
    if cfg.get("fit") == "auto" and resolved.get("fit"):
        side = cfg.get("size", "size")
        shown["fit"] = f"auto: an input of {side} x {side} as given, any other {resolved['fit']}"
    if cfg.get("push_margin", 0) is None and is_number(resolved.get("push_margin")):
        shown["push_margin"] = f"{fmt(resolved['push_margin'])} (auto: {'random' if resolved['push_margin'] else 'trained'} weights)"
    if cfg.get("least_change", 0) is None and is_number(resolved.get("least_change")):
        shown["least_change"] = (f"{fmt(resolved['least_change'])} (auto: "
                                 f"{'trained' if resolved['least_change'] == AUTO_LEAST_CHANGE['decision'] else 'random'}"
                                 " weights)")
    if cfg.get("fork", 0) is None and is_number(resolved.get("fork")):
        step = resolved.get("fork_step")
        shown["fork"] = (f"{fmt(resolved['fork'])} (auto: {'trained' if resolved['fork'] else 'random'} weights"
                         + (f"; one vertex until step {step})" if step else ")"))
    if cfg.get("distinct_view") == "auto" and resolved.get("distinct_view"):
        shown["distinct_view"] = (f"{resolved['distinct_view']} (auto: "
                                  + ("pixel mode on a trained net)" if resolved["distinct_view"] == "strokes"
                                     else "random weights or not pixel mode)"))
    if "device" in cfg:
        used = resolved.get("device")
        shown["device"] = (f"{used} ({cfg['device']})" if used and used != cfg["device"] else fmt(used or cfg["device"]))
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
            f"<title>{_e(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n"
            f"<footer>written by patchcollide {_e(__version__)}; a static page, images are linked files</footer>\n"
            f"<script>{JS}</script>\n</body>\n</html>\n")


def _banner(text) -> str:
    return f'<div class="banner" role="alert">{_e(text)}</div>' if text else ""


def run_page(run_dir: str, report: dict, back: str | None = None, back_label: str = "batch") -> str:
    """The HTML page of one run directory (report.json already read); ``back``: relative URL
    of the batch (or folder) page it belongs to, ``back_label`` its link text."""
    r = report
    cfg, model, inputs, tgt = as_dict(r.get("config")), as_dict(r.get("model")), as_dict(r.get("inputs")), as_dict(r.get("target"))
    verts = as_dict(r.get("vertices"))
    fl, png = as_dict(verts.get("float")), as_dict(verts.get("png"))
    n_vertices = max((len(m["rel_error"]) for m in (png, fl) if isinstance(m.get("rel_error"), list)), default=0)
    if not n_vertices:
        n_vertices = sum(1 for n in os.listdir(run_dir) if n.startswith("vertex_") and n.endswith(".png"))
    name = os.path.basename(os.path.abspath(run_dir))
    notice = r.get("notice") or (f"{RANDOM_LABEL} (smoke run)" if model.get("kind") == "random" else None)
    weights = str(model.get("name", model.get("kind", DASH)))
    if model.get("sha256"):
        weights += f" (sha256 {str(model['sha256'])[:12]})"
    mode = fmt(cfg.get("mode"))
    if cfg.get("mode") == "patches":
        mode += f", k = {fmt(cfg.get('k'))}, index {fmt(inputs.get('index'))}"
    side = fmt(verts.get("size", cfg.get("size")))
    dist = as_dict(r.get("distances"))
    summary = [
        ("model", f"{model.get('arch', '?')}:{model.get('layer', '?')}"), ("weights", weights),
        ("source", _input_line(inputs, "source")), ("target", _input_line(inputs, "target")),
        ("target class", (f"{fmt(tgt.get('label'))} (p = {fmt(tgt.get('top_prob'))}), "
                          f"{fmt(tgt.get('n_active'))} / {fmt(tgt.get('dim'))} units active")),
        ("mode", mode), ("vertices", f"{n_vertices} at {side} x {side}"),
        ("steps", f"{fmt(r.get('steps'))} of at most {fmt(cfg.get('steps'))}"),
        ("converged", fmt(r.get("converged"))), ("time", f"{fmt(r.get('seconds'))} s"),
        *([("before the first step", _timings_line(r["timings"]))] if isinstance(r.get("timings"), dict) else []),
        ("mean pairwise L2", (f"vertices {fmt(verts.get('mean_pairwise_l2'))}, source-target "
                              f"{fmt(dist.get('source_target_l2'))} (0..255 pixel units)")),
        *([("L2 to the source", ", ".join(fmt(d) for d in dist["vertex_source_l2"]) + " (per vertex)")]
          if isinstance(dist.get("vertex_source_l2"), list) and dist["vertex_source_l2"] else []),
        *([("extent", f"{fmt(verts['extent'].get('extent'))} (the closest two vertices in the 7 x 7 block-mean "
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
           '<dl class="summary">' + "".join(f"<dt>{_e(k)}</dt><dd>{_e(fmt(v))}</dd>" for k, v in summary) + "</dl>",
           '<h2 id="images">Images</h2>',
           _figure(run_dir, "contact_sheet.png", "contact sheet: source, target, vertices, indicator",
                   "contact sheet: source, target, vertices, indicator", cls="wide"),
           '<div class="grid">',
           _figure(run_dir, "source.png", "source image", "source", min_side=160),
           _figure(run_dir, "target.png", "target image", "target", min_side=160)]
    for i in range(n_vertices):
        cap = f"vertex {i}: unit {fmt(_at(png.get('unit'), i))}, rel. error (PNG) {fmt(_at(png.get('rel_error'), i))}"
        out.append(_figure(run_dir, f"vertex_{i}.png", f"vertex {i}", cap, min_side=160))
    for i in range(n_vertices):
        if os.path.exists(os.path.join(run_dir, f"argmax_{i}.png")):
            err = _at(as_dict(verts.get("mixing")).get("argmax_rel_error"), i)
            out.append(_figure(run_dir, f"argmax_{i}.png", f"vertex {i}, every pixel from its heaviest candidate",
                               f"argmax {i}: pure composition, rel. error {fmt(err)}", min_side=160))
    out += [_figure(run_dir, "indicator.png", "indicator: vertex 0 with purple boxes where the vertices differ most",
                    "indicator: purple boxes where the vertices differ most", min_side=160), "</div>",
            _figure(run_dir, "loss.png", "loss terms and relative error per step", "loss and relative error per step",
                    cls="wide"),
            '<h2 id="vertices">Per-vertex metrics</h2>',
            _vertex_table(fl, png, n_vertices, as_dict(verts.get("mixing")), tgt.get("unit_values"))]
    if isinstance(r.get("judge"), dict):
        out += ['<h2 id="judge">Judge</h2>', _judge_table(r["judge"], n_vertices)]
    poly = r.get("polytope")
    if isinstance(poly, dict):
        out += ['<h2 id="polytope">Polytope check</h2>',
                _kv_table({k: v for k, v in poly.items() if k != "per_sample"}, POLYTOPE_LABELS,
                          pct=("share_target_class", "share_target_close", "judge_share_source"), cls="kv polytope")]
    vers = as_dict(r.get("versions"))
    out += ['<h2 id="model">Model</h2>', _kv_table(model), '<h2 id="config">Config</h2>',
            _kv_table(cfg, shown=_config_shown(cfg, as_dict(r.get("resolved")))),
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


def _verdict_line(cls: str, text: str) -> str:
    return f'<p class="verdict v-{_e(cls)}" id="verdict">{_e(text)}</p>'


TIMING_LABELS = {"inputs": "inputs", "model": "model", "target": "target", "retrieval": "retrieval",
                 "setup": "set-up", "first_step": "first step"}


def _timings_line(t: dict) -> str:
    """report.json's timings up to the end of the first step, in words."""
    parts = [f"{label} {t[k]:.2f}" for k, label in TIMING_LABELS.items() if is_number(t.get(k)) and t[k] >= 0.005]
    total = sum(t[k] for k in TIMING_LABELS if is_number(t.get(k)))
    line = f"{total:.2f} s: " + ", ".join(parts) if parts else DASH
    if is_number(t.get("process")):
        line += f" (the process was {t['process']:.2f} s old when the run began: interpreter, imports, command line)"
    return line


def _retrieval_line(ret: dict) -> str | None:
    if not is_number(ret.get("ratio")):
        return None
    return (f"source patches {fmt(ret.get('source_mean_distance'))} from their neighbours, stored patches "
            f"{fmt(ret.get('store_typical_distance'))} from theirs ({ret['ratio']:.2f}x; "
            f"{fmt(ret.get('store_patches'))} patches in the store)")


def _judge_line(j: dict) -> str:
    src, tgt = as_dict(j.get("source")), as_dict(j.get("target"))
    return (f"{as_dict(j.get('model')).get('arch', '?')}: source read as {fmt(src.get('class'))} (p = {fmt(src.get('prob'))}), "
            f"target as {fmt(tgt.get('class'))} (p = {fmt(tgt.get('prob'))}); {fmt(j.get('n_reads_as_source'))} / "
            f"{count_text(as_dict(j.get('vertices')).get('class'))} vertices read as the source")


def _judge_table(j: dict, n: int) -> str:
    """The judge's reading of each vertex: class, probability, probability of the source's class."""
    v = as_dict(j.get("vertices"))
    rows = "".join(f'<tr><td class="n">{i}</td><td class="n">{_e(fmt(_at(v.get("class"), i)))}</td>'
                   f'<td class="n">{_e(fmt(_at(v.get("prob"), i)))}</td>'
                   f'<td class="n">{_e(fmt(_at(v.get("source_class_prob"), i)))}</td>'
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
        cells = "".join(f'<td class="n">{_e(fmt(_at(m.get(k), i)))}</td>' for k in keys for m in (fl, png))
        cells += "".join(f'<td class="n">{_e(fmt(_at(mixing.get(k), i)))}</td>' for k in mix)
        rows.append(f'<tr><td class="n">{i}</td><td class="n">{_e(fmt(unit))}</td>'
                    f'<td class="n">{_e(fmt(_at(target_units, i)))}</td>{cells}</tr>')
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
        model_text = fmt(model)
    info = [("jobs file", batch.get("jobs_file")), ("jobs sha256", str(batch.get("jobs_sha256") or DASH)[:16]),
            ("model", model_text), ("created", batch.get("created")), ("updated", batch.get("updated"))]
    body = [f"<h1>patchcollide batch <code>{_e(name)}</code></h1>", _verdict_line(*batch_verdict(jobs)),
            _banner(next((n for n in notices if n), None)),
            '<dl class="summary">' + "".join(f"<dt>{_e(k)}</dt><dd>{_e(fmt(v))}</dd>" for k, v in info) + "</dl>",
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


def _status_class(status) -> str:
    return f"st-{status}" if status in JOB_STATUSES else "st-other"


def _one_line(text, limit: int = 240) -> str:
    line = next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "\u2026"


def _jobs_table(batch_dir: str, rows: list) -> str:
    metrics = dict(BATCH_METRICS)
    for _, job, _, _ in rows:  # keys a newer batch writer adds are shown too
        for k, v in as_dict(job.get("metrics")).items():
            if k not in metrics and (v is None or isinstance(v, (int, float, str))):
                metrics[k] = k
    cols = [("id", "id"), ("status", "status"), ("line", "line"), ("seconds", "seconds")] + list(metrics.items())

    def value(job, key):
        return job.get(key) if key in ("id", "status", "line", "seconds") else as_dict(job.get("metrics")).get(key)

    numeric = {k for k, _ in cols if k not in ("id", "status") and all(
        value(j, k) is None or is_number(value(j, k)) or isinstance(value(j, k), bool) for _, j, _, _ in rows)}

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
            text = _e(fmt(v, pct=k in SHARE_METRICS))
            if k == "id" and page:
                text = f'<a href="{_e(page)}">{text}</a>'
            elif k == "status":
                text = f'<span class="status {_status_class(v)}">{text}</span>'
            cls = ' class="n"' if k in numeric else ""
            cells.append(f'<td{cls} data-v="{_e(dv)}">{text}</td>')
        body.append(f'<tr class="{_status_class(job.get("status"))}" data-order="{order}">{"".join(cells)}</tr>')
    return (f'<div class="scroll"><table id="jobs" class="jobs"><thead><tr>{head}</tr></thead>\n<tbody>\n'
            + "\n".join(body) + "\n</tbody></table></div>")
