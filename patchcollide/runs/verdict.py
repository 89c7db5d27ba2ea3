"""What a run or a batch came to, in one line each (``verdict``, ``batch_verdict``): the first
thing the report page, ``collide`` and the demo say. Plain text from report.json's and
batch.json's values, read defensively (a damaged file gives dashes, not an exception); the
report page escapes and styles it."""
from __future__ import annotations

import json

DASH = "\u2013"


def as_dict(x) -> dict:
    return x if isinstance(x, dict) else {}


def fmt(v, pct: bool = False) -> str:
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


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def count_text(x) -> str:
    """How many values a list from JSON holds, as text (a dash for anything else)."""
    return str(len(x)) if isinstance(x, list) else DASH


def verdict(report: dict) -> tuple[str, str]:
    """(css class, one line) that says first what a run came to: converged or not against its
    tol, by the worst vertex as saved (PNG); the polytope's share in the target's class; the
    judge's reading. For example "not converged: worst rel. error 0.254 > tol 0.01 after 300
    steps; 0.0% of 200 samples in the target's class"."""
    r = report
    cfg, verts, poly = as_dict(r.get("config")), as_dict(r.get("vertices")), r.get("polytope")
    errs = next((e for e in (as_dict(verts.get(k)).get("rel_error") for k in ("png", "float")) if isinstance(e, list)), [])
    worst = max(errs) if errs and all(is_number(x) for x in errs) else None  # as saved (PNG) where recorded
    tol, steps = cfg.get("tol"), r.get("steps")
    err = f"worst rel. error {fmt(worst)}"
    after = f" after {fmt(steps)} steps" if steps is not None else ""
    fooled = as_dict(r.get("history")).get("fooled") or []
    if r.get("converged") is True and is_number(worst) and is_number(tol) and worst > tol and fooled:
        parts, cls = [f"converged at the net's decision: every vertex fools it at its last step, {err} (tol "
                      f"{fmt(tol)} not needed with least change){after}"], "ok"
    elif r.get("converged") is True:
        parts, cls = [f"converged: {err} <= tol {fmt(tol)}{after}"], "ok"
    elif r.get("converged") is False:
        parts, cls = [f"not converged: {err} > tol {fmt(tol)}{after}"], "bad"
    else:
        parts, cls = [f"convergence not recorded; {err}"], "unknown"
    if isinstance(poly, dict) and is_number(poly.get("share_target_class")):
        n = poly.get("samples", poly.get("n"))
        parts.append(f"{fmt(poly['share_target_class'], pct=True)} of {fmt(n)} samples in the target's class")
        if is_number(poly.get("share_target_close")) and is_number(poly.get("prob_gap")):
            parts[-1] += (f", {fmt(poly['share_target_close'], pct=True)} fool the net (top-class prob. within "
                          f"{fmt(poly['prob_gap'])} of the target's)")
        if poly["share_target_class"] < 0.5:
            cls = "bad"
    else:
        parts.append("polytope not checked (patchcollide sample --out RUN)")
    j = r.get("judge")
    if isinstance(j, dict):
        parts.append(f"judge: {fmt(j.get('n_reads_as_source'))} / {count_text(as_dict(j.get('vertices')).get('class'))} "
                     "vertices read as the source")
    return cls, "; ".join(parts)


def batch_verdict(jobs: list[dict]) -> tuple[str, str]:
    """(css class, one line) of a batch: how many jobs are done, how many of those converged,
    the worst relative error (PNG) among them, and the failures."""
    n = len(jobs)
    done = [j for j in jobs if j.get("status") == "done"]
    failed = sum(1 for j in jobs if j.get("status") == "failed")
    rest = n - len(done) - failed
    metrics = [as_dict(j.get("metrics")) for j in done]
    conv = sum(1 for m in metrics if m.get("converged") is True)
    worst = [m.get("worst_rel_error_png", m.get("worst_rel_error")) for m in metrics]
    worst = [w for w in worst if is_number(w)]
    parts = [f"{len(done)} of {n} jobs done" + (f", {failed} failed" if failed else "")
             + (f", {rest} not run or not finished" if rest else "")]
    if done:
        parts.append(f"{conv} of {len(done)} done converged" + (f", worst rel. error {fmt(max(worst))}" if worst else ""))
    shares = [m["share_target_class"] for m in metrics if is_number(m.get("share_target_class"))]
    if shares:
        span = fmt(min(shares), pct=True) + ("" if min(shares) == max(shares) else f" to {fmt(max(shares), pct=True)}")
        parts.append(f"{span} of samples in the target's class ({len(shares)} of {len(done)} done sampled)")
    fool = [m["share_target_close"] for m in metrics if is_number(m.get("share_target_close"))]
    if fool:
        parts.append(f"{sum(1 for f in fool if f >= 1)} of {len(fool)} sampled fool the net with every sample")
    reads = [m["judge_reads_source"] for m in metrics if is_number(m.get("judge_reads_source"))]
    if reads:
        span = fmt(min(reads), pct=True) + ("" if min(reads) == max(reads) else f" to {fmt(max(reads), pct=True)}")
        parts.append(f"judge: {span} of the vertices read as the source ({len(reads)} of {len(done)} done judged)")
    cls = "bad" if failed or (done and conv < len(done)) else ("ok" if done and not rest else "unknown")
    return cls, "; ".join(parts)
