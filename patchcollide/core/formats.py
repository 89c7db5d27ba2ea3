"""The names that outputs share across modules: the ``kind`` of report.json and batch.json,
the statuses of a batch's jobs, and its per-job metrics with their column labels (in column
order: batch.json, batch.csv, the summary table and the HTML page all take them from here),
and the functions that read a run's report into those metrics and write batch.csv.
Imports nothing of ours."""

RUN_KIND, BATCH_KIND = "patchcollide-run", "patchcollide-batch"
INDEX_DIR = "index"  # the built index's default home (every command's -i / --index)
JOB_STATUSES = ("done", "failed", "busy", "interrupted", "pending", "invalid")  # interrupted: pending, with a checkpoint at "step"
BATCH_METRICS = {  # batch.json / batch.csv job metrics, in column order: key -> column label
    "worst_rel_error": "worst rel. err", "worst_rel_error_png": "worst rel. err (PNG)", "min_push": "min push",
    "all_own_unit_lowest": "each lowest on its unit", "mean_sharpness": "sharpness", "mean_sources": "sources",
    "worst_argmax_rel_error": "worst argmax rel. err", "mean_pairwise_l2": "mean pairwise L2", "share_target_class": "share target class",
    "share_target_close": "share fooling (p within 0.01)", "mean_top_prob_samples": "mean top p (samples)",
    "top_prob_target": "top p (target)", "target_label": "target class", "mean_source_l2": "mean L2 to source",
    "judge_reads_source": "judge: vertices as source", "judge_share_source": "judge: samples as source",
    "steps": "steps", "converged": "converged"}
SHARE_METRICS = ("share_target_class", "share_target_close", "judge_reads_source", "judge_share_source")  # shown as %
VERTEX_METRICS = {  # report.json vertices.float / vertices.png -> column label
    "rel_error": "rel. error", "max_abs_active": "max |\u0394z| active", "n_inactive_positive": "inactive > 0",
    "unit_value": "z[unit]", "push": "push z[unit] / z_t[unit]", "own_unit_lowest": "lowest on its unit",
    "top1": "top-1 class", "top1_prob": "p(top-1)", "target_class_prob": "p(target class)"}
MIXING_METRICS = {  # report.json vertices.mixing -> column label
    "sharpness": "sharpness", "sources": "sources", "argmax_rel_error": "argmax rel. error"}
POLYTOPE_LABELS = {
    "samples": "Dirichlet(1) samples", "n": "Dirichlet(1) samples", "seed": "seed", "share_target_class": "share in the target's class",
    "target_class": "target class", "target_class_name": "target class name (the weights' categories)", "mean_top_prob_samples": "mean top-class prob. (samples)",
    "top_prob_target": "top-class prob. (target)", "share_target_close": "share in the target's class, top prob. within prob_gap",
    "prob_gap": "prob_gap", "max_prob_gap": "largest |top prob. - target's|", "fools_net": "fools the net (every sample)",
    "judge_source_class": "judge: source class", "judge_share_source": "judge: share read as the source",
    "judge_mean_source_prob": "judge: mean prob. of the source class", "rel_error_mean": "rel. error, mean",
    "rel_error_max": "rel. error, max", "vertex_mean_pairwise_l2": "mean pairwise L2, vertices",
    "dataset_mean_pairwise_l2": "mean pairwise L2, dataset images", "dataset_n_images": "dataset images",
    "units": "distance units"}


def polytope_samples(report: dict) -> int | None:
    """How many combinations a run's polytope check took (``n`` in reports before 0.2)."""
    poly = report.get("polytope") or {}
    return poly.get("samples", poly.get("n"))


CSV_COLUMNS = ("id", "line", "out", "status", "seconds", "error")


def batch_csv(entries: list[dict]) -> str:
    """DIR/batch.csv: one row per job line, batch.json's status columns then every metric
    (empty where a job has none), for spreadsheets and pandas."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*CSV_COLUMNS, *METRICS])
    for e in entries:
        m = e.get("metrics") or {}
        w.writerow([*("" if e.get(c) is None else e[c] for c in CSV_COLUMNS),
                    *("" if m.get(k) is None else m[k] for k in METRICS)])
    return buf.getvalue()


METRICS = tuple(BATCH_METRICS)  # metrics_of's keys, in column order


def metrics_of(report: dict) -> dict:
    """batch.json's key metrics of a finished run's report (the keys: METRICS)."""
    v, poly, tgt = report["vertices"], report.get("polytope") or {}, report.get("target") or {}
    mix = v.get("mixing") or {}

    def mean(xs):
        return sum(xs) / len(xs) if xs else None

    out = {
        "worst_rel_error": max(v["float"]["rel_error"]),
        "worst_rel_error_png": max(v["png"]["rel_error"]),
        "min_push": min(v["png"]["push"]) if v["png"].get("push") else None,
        "all_own_unit_lowest": all(v["png"]["own_unit_lowest"]) if v["png"].get("own_unit_lowest") else None,
        "mean_sharpness": mean(mix.get("sharpness")),
        "mean_sources": mean(mix.get("sources")),
        "worst_argmax_rel_error": max(mix["argmax_rel_error"]) if mix.get("argmax_rel_error") else None,
        "mean_pairwise_l2": v.get("mean_pairwise_l2"),
        "share_target_class": poly.get("share_target_class"),
        "share_target_close": poly.get("share_target_close"),
        "mean_top_prob_samples": poly.get("mean_top_prob_samples"),
        "top_prob_target": poly.get("top_prob_target", tgt.get("top_prob")),
        "target_label": tgt.get("label"),
        "mean_source_l2": mean((report.get("distances") or {}).get("vertex_source_l2") or []),
        "judge_reads_source": (None if not report.get("judge") else
                               report["judge"]["n_reads_as_source"] / len(report["judge"]["vertices"]["class"])),
        "judge_share_source": poly.get("judge_share_source"),
        "steps": report.get("steps"),
        "converged": report.get("converged"),
    }
    return out

WEIGHT_KINDS = ("imagenet", "random", "file")  # report.json's model.kind: where the weights came from
RANDOM_LABEL = "RANDOM WEIGHTS"  # every output of a run with random weights carries it
RANDOM_NOTICE = f"{RANDOM_LABEL} (smoke run): these colliders say nothing about a trained network"
