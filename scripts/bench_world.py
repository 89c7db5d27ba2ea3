#!/usr/bin/env python
"""Colliders judged by trained networks: the digits world's 45 pairs, patchcollide beside its peers.

For each of 45 seeded pairs of *test* digits (one per unordered pair of distinct digits, the
direction drawn by the seed: ``world.World.pairs``), against the world's trained ``digits_vgg``
fc6, read by its judge (LeNet-5), ``--methods``:

* ``patchcollide``: one ``collide`` run per mode at the engine's defaults (``--set KEY=VALUE``
  overrides; ``--set vertices=N`` its vertex count), then the polytope check with ``--samples``
  samples (for one vertex the sample is the vertex itself);
* the peers (``papers/peers.py``), pixel-space methods with one collider per pair, run once per
  pair whatever the modes: ``plain`` (the plain attack at each lam of ``--lams``, the collider
  of the largest lam that fools the net; the judge not consulted; its seconds the whole
  sweep's), ``art`` (ART's FeatureCollisionAttack at ``--art-lr`` / ``--art-iters``, tuned:
  lr 100, 1,000 iterations) and ``art-defaults`` (ART's own defaults); ART is the extra
  ``pip install 'patchcollide[peers]'``.

Every collider and vertex is an 8-bit PNG, read back before it is judged, on the inputs the
engine attacks (``runs.run.load_pair`` with the run's size and fit). For V vertices a pair
*succeeds* when
* every polytope sample is in the target's class per the attacked net, with a top-class
  probability within 0.01 of the target's (``polytope.fools_net``), and
* at least ceil(0.8 V) vertices are read as the source's class by the judge (4 of 5; 1 of 1);
a peer's one collider must fool the net and read as the source.

Writes one record per (pair, method, mode, vertices) with ``success`` and the numbers behind it
(L2 to the source in 0..255 units per vertex, ``polytope.extent`` of the PNGs, seconds per pair
and ``attack_seconds``, the attack alone), the summary per (method, mode, vertices), the
per-pair ``comparisons`` (``comparisons``: V vertices over 1 in attack seconds, over the plain
attack in L2 to the source), the machine, versions and commit, into ``--out``
(JSON), a Markdown table beside it (``X.json`` -> ``X.md``, one row per method) and one contact
sheet per method and mode. ``--resume`` keeps the records an earlier run of the same settings
(the vertex count apart) finished, so a second run with ``--set vertices=1`` adds its rows.

    python scripts/bench_world.py --every 3 --modes pixel --out /tmp/peers.json          # V = 5 and the peers
    python scripts/bench_world.py --every 3 --modes pixel --methods patchcollide --set vertices=1 \\
        --resume --out /tmp/peers.json                                                    # + V = 1
    python scripts/bench_world.py --pairs 10 --modes pixel --methods patchcollide --set least_change=0.5 --out /tmp/sweep.json
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
import typing

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

METHODS = ("patchcollide", "plain", "art", "art-defaults")
DEFAULT_METHODS = ("patchcollide", "plain", "art")
PEERS = ("plain", "art", "art-defaults")  # pixel space, one collider per pair: run once per pair
PEER_MODE = "pixel"


def min_reads(vertices: int) -> int:
    """Vertices the judge must read as the source: ceil(0.8 V) (4 of 5; 1 of 1)."""
    return -(-4 * vertices // 5)


def method_of(r: dict) -> str:
    return r.get("method", "patchcollide")  # records from before the peers are the engine's


def key_of(r: dict) -> tuple:
    return (r["pair"], method_of(r), r["mode"], r["vertices"])


def success_rule() -> str:
    return ("every polytope sample in the target's class with top prob. within 0.01 of the target's (attacked "
            "net) and >= ceil(0.8 V) of the V vertices read as the source by the judge (4 of 5; 1 of 1); for a "
            "peer's one collider: it fools the net and reads as the source")


def parse_set(items: list[str]) -> dict:
    from patchcollide.engine.config import CollideConfig
    from patchcollide.batch.jobfile import convert

    hints = typing.get_type_hints(CollideConfig)
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        if key not in hints:
            raise SystemExit(f"--set {item}: {key!r} is not a CollideConfig field")
        out[key] = convert(hints[key], json.loads(value) if value[:1] in "[{\"0123456789-." or value in
                           ("true", "false", "null") else value)
    return out


def _median(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(np.median(xs)) if xs else None


def summarise(records: list[dict]) -> dict:
    """Per (method, mode, vertices), keyed "method/mode/V": rates, medians and successes per wall second."""
    out = {}
    groups = sorted({(method_of(r), r["mode"], r["vertices"]) for r in records},
                    key=lambda g: (METHODS.index(g[0]) if g[0] in METHODS else len(METHODS), g[1], -g[2]))
    for method, mode, V in groups:
        rs = [r for r in records if (method_of(r), r["mode"], r["vertices"]) == (method, mode, V)]

        def stats(key):
            xs = [r[key] for r in rs if r.get(key) is not None]
            return None if not xs else {"mean": float(np.mean(xs)), "median": float(np.median(xs)),
                                        "min": float(np.min(xs)), "max": float(np.max(xs))}

        wins, secs = sum(r["success"] for r in rs), sum(r["seconds"] for r in rs)
        labels = list(dict.fromkeys(method_label(r) for r in rs))
        out[f"{method}/{mode}/{V}"] = {
            "method": method, "mode": mode, "vertices": V,
            "label": labels[0] if len(labels) == 1 else f"{method} (mixed settings: {'; '.join(labels)})",
            "pairs": len(rs), "successes": wins,
            "success_rate": wins / len(rs), "fools_net_rate": sum(r["fools_net"] for r in rs) / len(rs),
            "judge_ok_rate": sum(r["judge_reads_source"] >= min_reads(V) for r in rs) / len(rs),
            "median_source_l2": _median(r.get("median_source_l2") for r in rs),
            "median_extent": _median(r.get("extent") for r in rs),
            "median_seconds": _median(r["seconds"] for r in rs), "total_seconds": round(secs, 2),
            "median_attack_seconds": _median(r.get("attack_seconds") for r in rs),
            "success_per_second": wins / secs if secs > 0 else None,
            **{k: stats(k) for k in ("worst_rel_error_png", "min_push", "mean_sharpness", "mean_source_l2",
                                     "judge_reads_source", "share_target_close", "max_prob_gap", "steps", "seconds")}}
    return out


def comparisons(records: list[dict]) -> list[dict]:
    """Per pair, patchcollide's vertices against one vertex and against the plain attack, the
    median of the per-pair ratios over the pairs both ran: ``attack_seconds`` of V vertices over
    those of 1 in the same mode, and the V-vertex median L2 to the source over the plain
    attack's collider's."""
    def by_pair(method, mode, V):
        return {r["pair"]: r for r in records if (method_of(r), r["mode"], r["vertices"]) == (method, mode, V)}

    out = []
    plain = by_pair("plain", PEER_MODE, 1)
    for mode, V in sorted({(r["mode"], r["vertices"]) for r in records if method_of(r) == "patchcollide"
                           and r["vertices"] > 1}):
        many, one = by_pair("patchcollide", mode, V), by_pair("patchcollide", mode, 1)
        for what, other, key in (("attack seconds over 1 vertex's", one, "attack_seconds"),
                                 ("L2 to the source over the plain attack's", plain, "median_source_l2")):
            xs = [many[i][key] / other[i][key] for i in sorted(many) if i in other
                  and many[i].get(key) is not None and other[i].get(key)]
            if xs:
                out.append({"mode": mode, "vertices": V, "what": what, "key": key, "pairs": len(xs),
                            "median_ratio": float(np.median(xs))})
    return out


def method_label(r: dict) -> str:
    """The table's name of a record's method, with the setting it ran at (from the record)."""
    from patchcollide.papers.peers import ART_DEFAULTS, ART_TUNED

    method, V = method_of(r), r["vertices"]
    if method == "patchcollide":
        return f"patchcollide, {V} vert{'ex' if V == 1 else 'ices'}"
    if method == "plain":
        lams = "/".join(f"{x['lam']:g}" for x in r["per_lam"])
        return f"plain attack, largest lam of {lams} that fools ({r['plain_steps']:,} steps each)"
    art = {"learning_rate": r["learning_rate"], "max_iter": r["max_iter"]}
    said = "tuned" if art == ART_TUNED else "ART's defaults" if art == ART_DEFAULTS else "set by --art-lr/--art-iters"
    return f"ART FeatureCollisionAttack, lr {art['learning_rate']:,g}, {art['max_iter']:,} iterations ({said})"


def commit_of(result: dict) -> str:
    git = (result.get("versions") or {}).get("git") or {}
    return f"{str(git.get('commit'))[:10]}{' (uncommitted changes)' if git.get('dirty') else ''}"


def machine_of(result: dict) -> str:
    m = result.get("machine") or {}
    return f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, {result.get('torch_threads', '?')} torch thread(s)"


def table(result: dict) -> str:
    """The Markdown table of a result: one row per (method, mode, vertices)."""
    rows = ["| method | mode | pairs | success | every sample fools the net | judge reads the source "
            "(>= ceil(0.8 V) of V) | L2 to the source (median, 0..255) | extent (median) | seconds per pair "
            "(median) | attack seconds (median) | successes per wall second |", "|---" * 11 + "|"]
    for g in result["summary"].values():
        label = g.get("label") or g["method"]
        l2, ext, sps = g["median_source_l2"], g["median_extent"], g["success_per_second"]
        att = g.get("median_attack_seconds")
        rows.append(f"| {label} | {g['mode']} | {g['pairs']} | **{100 * g['success_rate']:.0f}%** "
                    f"({g['successes']}/{g['pairs']}) | {100 * g['fools_net_rate']:.0f}% | "
                    f"{100 * g['judge_ok_rate']:.0f}% | {'-' if l2 is None else f'{l2:,.0f}'} | "
                    f"{'-' if ext is None else f'{ext:.3f}'} | {g['median_seconds']:.0f} | "
                    f"{'-' if att is None else f'{att:.1f}'} | {'-' if sps is None else f'{sps:.3g}'} |")
    nets = (result.get("world") or {}).get("nets") or {}
    made = [result] if "versions" in result else result.get("parts", [])  # a combined result: its parts
    commits = ", ".join(dict.fromkeys(commit_of(p) for p in made))
    machines = ", ".join(dict.fromkeys(machine_of(p) for p in made))
    head = [f"# {result['benchmark']}: the digits world, patchcollide beside its peers", "",
            f"Attacked net digits_vgg at fc6 (test accuracy {nets.get('digits_vgg', {}).get('test_accuracy', '?')}), "
            f"judge digits_lenet5 ({nets.get('digits_lenet5', {}).get('test_accuracy', '?')}); pairs from the test "
            f"split. Commit {commits}; {machines} (wall seconds on that machine).", "",
            f"Success: {result['success_rule']}.", "",
            "Every collider and vertex is an 8-bit PNG read back before it is judged; a peer's extent is 0 (one "
            "point); a peer's seconds are its whole attack (the plain attack's: every lam of its sweep), its PNGs "
            "and judging included. Attack seconds: the attack alone (patchcollide's collide run; a peer's "
            "optimisation), without the PNGs, the judge and patchcollide's check of 2,000 polytope samples "
            "(one for one vertex).", ""]
    ratios = [f"* {c['mode']}, {c['vertices']} vertices: {c['what']}, median over {c['pairs']} pairs: "
              f"**{c['median_ratio']:.2f}**" for c in result.get("comparisons") or []]
    return "\n".join(head + rows + ([""] + ratios if ratios else [])) + "\n"


def write_result(path: str, result: dict) -> None:
    """The JSON and its Markdown table beside it (X.json -> X.md)."""
    from patchcollide.core.files import write_json, write_text

    write_json(path, result)
    write_text(os.path.splitext(path)[0] + ".md", table(result))


def _sheet(tiles: list[list], titles: list[str], path: str) -> None:
    """Rows of equal square PIL images, each row under its title, saved to ``path``."""
    from PIL import Image, ImageDraw

    side, pad, head = tiles[0][0].size[0], 4, 16
    cols = max(len(t) for t in tiles)
    sheet = Image.new("RGB", (cols * (side + pad) + pad, len(tiles) * (side + pad + head) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (title, row) in enumerate(zip(titles, tiles)):
        y = pad + i * (side + pad + head)
        draw.text((pad, y), title, fill="black")
        for j, im in enumerate(row):
            sheet.paste(im, (pad + j * (side + pad), y + head))
    sheet.save(path)


def contact_sheet(records: list[dict], path: str, rows: int = 10) -> None:
    from PIL import Image

    rs = records[:rows]
    if not rs:
        return
    tiles = []
    for r in rs:
        names = ["source.png", "target.png", *(f"vertex_{i}.png" for i in range(r["vertices"]))]
        tiles.append([Image.open(os.path.join(r["run"], n)).convert("RGB") for n in names])
    _sheet(tiles, [f"{r['source_digit']} -> {r['target_digit']}: {'success' if r['success'] else 'fail'}; "
                   f"rel.err {r['worst_rel_error_png']:.2f}, fooling {100 * r['share_target_close']:.0f}%, "
                   f"judge reads {r['judge_classes']} (source {r['source_digit']})" for r in rs], path)


def difference_sheet(records: list[dict], path: str, rows: int = 10, gain: float = 4.0) -> None:
    """Where the vertices differ, for the first ``rows`` records with more than one vertex: per
    pair, each vertex's brightness minus the vertices' mean brightness, times ``gain``, on grey
    (128: no difference; lighter: this vertex is brighter there). A tint and a stroke change look
    alike on the contact sheet at a glance; here a stroke change is a stroke-shaped light or
    dark mark, a tint nearly nothing (brightness only), pixel noise a fine speckle."""
    import numpy as np
    from PIL import Image

    rs = [r for r in records if r["vertices"] > 1][:rows]
    if not rs:
        return
    tiles = []
    for r in rs:
        v = np.stack([np.asarray(Image.open(os.path.join(r["run"], f"vertex_{i}.png")).convert("L"), dtype=float)
                      for i in range(r["vertices"])])
        tiles.append([Image.fromarray(np.clip(128 + gain * (x - v.mean(0)), 0, 255).astype(np.uint8)).convert("RGB")
                      for x in v])
    _sheet(tiles, [f"{r['source_digit']} -> {r['target_digit']}: each vertex's brightness minus the vertices' mean, "
                   f"x{gain:g} (extent {r['extent']:.3f})" for r in rs], path)


def sheet_path(base: str, method: str, mode: str, vertices: int) -> str:
    if method == "patchcollide":
        return f"{base}-{mode}.png" if vertices == 5 else f"{base}-{mode}-v{vertices}.png"
    return f"{base}-{method}.png"


def combine(paths: list[str], out: str) -> int:
    """One result from several (e.g. one process per mode): records concatenated (the first of
    each (pair, method, mode, vertices) kept), the summary recomputed, each part's config,
    settings, machine and versions kept under ``parts``."""
    parts = [json.load(open(p)) for p in paths]
    records, seen = [], set()
    for p, path in zip(parts, paths):
        for r in p["records"]:
            if key_of(r) in seen:
                print(f"{path}: pair {r['pair']} {method_of(r)} {r['mode']} V={r['vertices']} is already in an "
                      "earlier part; the earlier one is kept", file=sys.stderr)
                continue
            seen.add(key_of(r))
            records.append(r)
    settings = [p.get("settings") for p in parts]
    result = {"benchmark": "bench_world", "world": parts[0]["world"], "success_rule": parts[0]["success_rule"],
              "settings": next((s for s in settings if s and s.get("peers")), settings[0]),
              "summary": summarise(records), "comparisons": comparisons(records), "records": records,
              "parts": [part for p, path in zip(parts, paths) for part in parts_of(p, os.path.basename(path))]}
    write_result(out, result)
    print(table(result))
    return 0


def parts_of(result: dict, file: str) -> list[dict]:
    """What ``combine`` keeps of one input: its config, settings, machine and versions, or, for
    a result that is itself combined, those of each of its parts (named ``file``: theirs)."""
    keys = ("config", "settings", "machine", "versions", "seconds", "torch_threads")
    if "parts" in result and "versions" not in result:
        return [{**p, "file": f"{file}: {p.get('file')}"} for p in result["parts"]]
    return [{k: result.get(k) for k in keys} | {"file": file}]


def judge_collider(tap, judge, aim, src, tgt, png: str) -> dict:
    """One collider's verdict from its PNG, read back: the net (``sample_polytope`` on the one point)
    and the judge (``judge_run``); src, tgt (H, W, 3) uint8."""
    import torch

    from patchcollide.models.judge import judge_run
    from patchcollide.engine.polytope import sample_polytope
    from patchcollide.runs.pictures import read_png
    from patchcollide.runs.run import source_distances

    back = read_png(png)
    jd = judge_run(judge, src, tgt, back[None])
    x = torch.from_numpy(back).permute(2, 0, 1)[None].float() / 255.0
    poly = sample_polytope(tap, x, aim, samples=1, judge=judge, source_class=jd["source"]["class"])
    return {"fools_net": bool(poly["fools_net"]), "reads_as_source": bool(jd["vertices"]["reads_as_source"][0]),
            "judge": jd, "polytope": poly, "source_l2": source_distances(back[None], src), "png": back}


def run_peer(method: str, src, tgt, out: str, tap, judge, peers_settings: dict) -> tuple[dict, float]:
    """One peer on one pair: its collider(s) saved as PNGs in ``out`` (vertex_0.png the one it
    gives; the plain attack's every lam as lam_<lam>.png), read back and judged. Returns the
    record's fields and the seconds of the attack alone."""
    from PIL import Image

    from patchcollide.engine.collide import target_of, to_tensor
    from patchcollide.engine.polytope import extent
    from patchcollide.papers import peers
    from patchcollide.runs.pictures import save_png, to_uint8

    s, t = to_tensor(src), to_tensor(tgt)
    aim = target_of(tap, t, vertices=1)
    os.makedirs(out, exist_ok=True)
    save_png(Image.fromarray(src), os.path.join(out, "source.png"))
    save_png(Image.fromarray(tgt), os.path.join(out, "target.png"))
    t0 = time.perf_counter()
    extra: dict = {}
    if method == "plain":
        ps = peers_settings["plain"]
        sweep = peers.lam_sweep(tap, s, t, lams=tuple(ps["lams"]), steps=ps["steps"], lr=ps["lr"])
        attack_s = time.perf_counter() - t0
        per_lam = []
        for x, row in zip(sweep.colliders, sweep.per_lam):
            png = save_png(Image.fromarray(to_uint8(x)[0]), os.path.join(out, f"lam_{row['lam']:g}.png"))
            v = judge_collider(tap, judge, aim, src, tgt, png)
            per_lam.append({**row, "fools_net": v["fools_net"], "reads_as_source": v["reads_as_source"],
                            "judge_class": v["judge"]["vertices"]["class"][0], "source_l2": v["source_l2"][0],
                            "rel_error_png": v["polytope"]["rel_error_max"],
                            "success": v["fools_net"] and v["reads_as_source"]})
        collider = sweep.collider
        extra = {"lam": sweep.lam, "any_lam_fools": sweep.fools, "plain_steps": ps["steps"], "per_lam": per_lam}
    else:
        cfg = peers_settings[method]
        collider = peers.art_feature_collision(tap, s, t, learning_rate=cfg["learning_rate"], max_iter=cfg["max_iter"])
        attack_s = time.perf_counter() - t0
        extra = {"learning_rate": cfg["learning_rate"], "max_iter": cfg["max_iter"]}
    png = save_png(Image.fromarray(to_uint8(collider)[0]), os.path.join(out, "vertex_0.png"))
    v = judge_collider(tap, judge, aim, src, tgt, png)
    poly, jd = v["polytope"], v["judge"]
    ext = extent(v["png"][None], src, tgt)
    rec = {"fools_net": v["fools_net"], "share_target_class": poly["share_target_class"],
           "share_target_close": poly["share_target_close"], "max_prob_gap": poly["max_prob_gap"],
           "target_class": aim.label, "target_prob": aim.prob, "collider_prob": poly["mean_top_prob_samples"],
           "judge_reads_source": int(v["reads_as_source"]), "judge_classes": jd["vertices"]["class"],
           "judge_source_class": jd["source"]["class"], "worst_rel_error_png": poly["rel_error_max"],
           "source_l2": v["source_l2"], "median_source_l2": float(np.median(v["source_l2"])),
           "mean_source_l2": float(np.mean(v["source_l2"])), "extent": ext["extent"],
           "attack_seconds": round(attack_s, 2), **extra}
    return rec, attack_s


def patch_record(report: dict, out: str, V: int) -> dict:
    """The record's fields of a finished, sampled ``collide`` run in ``out``."""
    from patchcollide.engine.polytope import extent
    from patchcollide.runs.pictures import read_png

    poly, jd, v = report["polytope"], report["judge"], report["vertices"]
    mix = v.get("mixing") or {}
    reads = jd["n_reads_as_source"]
    verts = np.stack([read_png(os.path.join(out, f"vertex_{i}.png")) for i in range(V)])
    src, tgt = (read_png(os.path.join(out, n)) for n in ("source.png", "target.png"))
    ext = extent(verts, src, tgt)
    dsrc = report["distances"]["vertex_source_l2"]
    return {
        "success": bool(poly["fools_net"] and reads >= min_reads(V)),
        "attack_seconds": report["seconds"],  # the collide run alone (its target, retrieval and steps)
        "fools_net": bool(poly["fools_net"]), "share_target_class": poly["share_target_class"],
        "share_target_close": poly["share_target_close"], "max_prob_gap": poly["max_prob_gap"],
        "samples": poly["samples"], "target_class": report["target"]["label"], "target_prob": report["target"]["top_prob"],
        "judge_reads_source": reads, "judge_classes": jd["vertices"]["class"],
        "judge_source_class": jd["source"]["class"], "judge_share_samples_source": poly["judge_share_source"],
        "worst_rel_error_png": max(v["png"]["rel_error"]), "worst_rel_error": max(v["float"]["rel_error"]),
        "samples_rel_error_max": poly["rel_error_max"], "min_push": min(v["png"]["push"]),
        "mean_sharpness": float(np.mean(mix["sharpness"])) if mix else None,
        "source_l2": dsrc, "median_source_l2": float(np.median(dsrc)), "mean_source_l2": float(np.mean(dsrc)),
        "extent": ext["extent"], "min_pair_block_l2": ext["min_pair_block_l2"],
        "source_target_l2": report["distances"]["source_target_l2"],
        "steps": report["steps"], "converged": report["converged"],
    }


def main(argv=None) -> int:
    from patchcollide.papers.peers import ART_DEFAULTS, ART_TUNED, PLAIN_LAMS, PLAIN_LR, PLAIN_STEPS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", default=os.path.join(ROOT, "worlds", "digits"))
    ap.add_argument("--pairs", type=int, default=45)
    ap.add_argument("--pair-seed", type=int, default=0)
    ap.add_argument("--every", type=int, default=1,
                    help="keep every K-th of the pairs (a subset spread over all digits, for frontier points)")
    ap.add_argument("--only", type=int, nargs="+", default=None, metavar="I",
                    help="run only these pair numbers (probes of single pairs; the table then covers only them)")
    ap.add_argument("--skip-every", type=int, default=0, metavar="K",
                    help="leave out every K-th pair (the ones an --every K run already holds; --combine the two "
                         "for all the pairs)")
    ap.add_argument("--modes", nargs="+", default=["patches", "pixel"], choices=["patches", "pixel"],
                    help="patchcollide's modes (the peers are pixel-space and run once per pair)")
    ap.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=METHODS,
                    help="patchcollide and the peers: plain (the lam sweep), art (ART, tuned), art-defaults")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="CollideConfig overrides (vertices=N: patchcollide's vertex count)")
    ap.add_argument("--vertices", nargs="+", type=int, default=None, metavar="V",
                    help="patchcollide's vertex counts, each run on a pair before the next pair (in place of "
                         "--set vertices=N): their seconds share the machine's conditions, for the comparisons")
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--lams", nargs="+", type=float, default=list(PLAIN_LAMS), help="the plain attack's sweep")
    ap.add_argument("--plain-steps", type=int, default=PLAIN_STEPS)
    ap.add_argument("--art-lr", type=float, default=ART_TUNED["learning_rate"],
                    help="ART's learning rate for --methods art (tuned on the 15 frontier pairs: 100)")
    ap.add_argument("--art-iters", type=int, default=ART_TUNED["max_iter"])
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "bench_world-cpu.json"))
    ap.add_argument("--runs", default=None, help="where the run folders go [default: a temporary folder]")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--combine", nargs="+", metavar="JSON",
                    help="merge the records of runs made apart (one mode each, in parallel) into --out, and stop")
    args = ap.parse_args(argv)
    if args.combine:
        return combine(args.combine, args.out)
    if args.every < 1:
        ap.error(f"--every must be >= 1, got {args.every}")
    if args.skip_every < 0 or args.skip_every == 1 or (args.skip_every and args.every != 1):
        ap.error(f"--skip-every must be 0 (off) or >= 2 and goes without --every, got {args.skip_every}")
    wants_art = [m for m in args.methods if m.startswith("art")]
    if wants_art and importlib.util.find_spec("art") is None:
        ap.error(f"--methods {' '.join(wants_art)} needs ART: pip install 'patchcollide[peers]' (or leave it out)")

    import torch

    from patchcollide.core.files import machine, versions
    from patchcollide.engine.config import CollideConfig
    from patchcollide.models.judge import load_judge
    from patchcollide.models.build import load_tap
    from patchcollide.offline.knn import PatchIndex
    from patchcollide.papers.peers import PeerError
    from patchcollide.world.build import world_at
    from patchcollide.world.config import ATTACKED, JUDGE
    from patchcollide.runs.run import load_pair, run_collide, run_sample

    world = world_at(args.world)
    overrides = parse_set(args.set)
    base = CollideConfig(**{"mode": "pixel", "size": world.config.size, "device": "cpu",
                            **{k: v for k, v in overrides.items() if k != "mode"}})
    counts = args.vertices or [base.vertices]
    if any(not 1 <= v <= 64 for v in counts):
        ap.error(f"--vertices must be between 1 and 64, got {counts}")
    V = counts[-1]
    tap = load_tap(ATTACKED, "fc6", world.weights)
    judge = load_judge(world.judge, JUDGE)
    pairs = world.pairs(args.pairs, args.pair_seed)
    kept = [i for i in range(0, len(pairs), args.every) if not (args.skip_every and i % args.skip_every == 0)]
    if args.only:
        kept = [i for i in kept if i in set(args.only)]
    runs = args.runs or tempfile.mkdtemp(prefix="bench_world-")
    peers_settings = {"plain": {"lams": args.lams, "steps": args.plain_steps, "lr": PLAIN_LR},
                      "art": {"learning_rate": args.art_lr, "max_iter": args.art_iters},
                      "art-defaults": dict(ART_DEFAULTS)}
    settings = {"overrides": {k: v for k, v in overrides.items() if k != "vertices"},  # records carry vertices
                "samples": args.samples, "pair_seed": args.pair_seed, "pairs": args.pairs, "every": args.every,
                **({"skip_every": args.skip_every} if args.skip_every else {}),
                **({"only": sorted(args.only)} if args.only else {}),
                **({"vertices": counts} if args.vertices else {}), "peers": peers_settings}
    records: list[dict] = []
    if args.resume and os.path.isfile(args.out):
        with open(args.out) as fh:
            old = json.load(fh)
        if old.get("settings") == json.loads(json.dumps(settings)):
            records = old["records"]
        else:
            print(f"--resume: {args.out} was made with other settings; starting over", file=sys.stderr)
    done = {key_of(r) for r in records}
    configs = {mode: dataclasses.replace(base, mode=mode, vertices=V) for mode in args.modes}
    todo = [(i, m, mode, v) for i in kept for m in args.methods
            for mode in ([PEER_MODE] if m in PEERS else args.modes) for v in (counts if m == "patchcollide" else [1])]
    t_all = time.time()

    def result() -> dict:
        return {"benchmark": "bench_world", "world": world.record, "settings": settings,
                # the engine's config of this invocation (its vertex count: the last one run; records carry theirs)
                "config": dataclasses.asdict(configs[args.modes[0]]) if len(args.modes) == 1
                else {m: dataclasses.asdict(c) for m, c in configs.items()},
                "success_rule": success_rule(), "summary": summarise(records), "comparisons": comparisons(records),
                "records": records,
                "machine": machine(), "versions": versions(), "seconds": round(time.time() - t_all, 1),
                "torch_threads": torch.get_num_threads()}

    with PatchIndex(world.index) as pindex:
        for i, method, mode, vertices in todo:
            if (i, method, mode, vertices) in done:
                continue
            p = pairs[i]
            name = f"{i:02d}-{p['source_digit']}to{p['target_digit']}"
            out = os.path.join(runs, f"patchcollide-v{vertices}", mode, name) if method == "patchcollide" else \
                os.path.join(runs, method, name)
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(out + ".partial", ignore_errors=True)  # a killed earlier run's checkpoint
            t0 = time.time()
            if method == "patchcollide":
                config = dataclasses.replace(configs[mode], vertices=vertices)
                run_collide(p["source"], p["target"], out, config, arch=ATTACKED, weights=world.weights,
                            index_dir=world.index, tap=tap, pindex=pindex, judge=judge)
                report = run_sample(out, samples=1 if vertices == 1 else args.samples, device="cpu", tap=tap,
                                    judge=judge)
                fields = patch_record(report, out, vertices)
            else:
                src, tgt = load_pair(p["source"], p["target"], base)  # the inputs the engine attacks
                try:
                    fields, _ = run_peer(method, src, tgt, out, tap, judge, peers_settings)
                except PeerError as e:
                    raise SystemExit(f"--methods {method}: {e}") from None
                fields["success"] = bool(fields["fools_net"] and fields["judge_reads_source"] >= min_reads(1))
            rec = {"pair": i, "method": method, "mode": mode, "vertices": vertices,
                   "source": os.path.relpath(p["source"], world.root), "target": os.path.relpath(p["target"], world.root),
                   "source_digit": p["source_digit"], "target_digit": p["target_digit"], **fields,
                   "seconds": round(time.time() - t0, 2), "run": out}
            records.append(rec)
            what = f"{method}{f' V={vertices}' if method == 'patchcollide' else ''} {mode}"
            lam = f" lam {rec['lam']:g}" if method == "plain" else ""
            print(f"{what:22s} pair {i:2d} {p['source_digit']}->{p['target_digit']}: "
                  f"{'OK  ' if rec['success'] else 'fail'} rel {rec['worst_rel_error_png']:.3f} "
                  f"fool {rec['share_target_close']:.3f} judge {rec['judge_reads_source']}/{vertices} "
                  f"L2src {rec['median_source_l2']:.0f} extent {rec['extent']:.3f}{lam} {rec['seconds']:.0f}s",
                  flush=True)
            write_result(args.out, result())
    stem = os.path.splitext(args.out)[0]
    for method, mode, vertices in sorted({(m, md, v) for _, m, md, v in todo}):
        mine = [r for r in records if (method_of(r), r["mode"], r["vertices"]) == (method, mode, vertices)]
        contact_sheet(mine, sheet_path(stem, method, mode, vertices))
        difference_sheet(mine, sheet_path(stem, method, mode, vertices).replace(".png", "-differences.png"))
    print(table(result()) if records else "no records")
    return 0


if __name__ == "__main__":
    sys.exit(main())
