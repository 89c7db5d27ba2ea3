"""The names that outputs share across modules: the ``kind`` of report.json and batch.json,
the statuses of a batch's jobs, and its per-job metrics with their column labels (in column
order: batch.json, batch.csv, the summary table and the HTML page all take them from here).
Imports nothing."""

RUN_KIND, BATCH_KIND = "patchcollide-run", "patchcollide-batch"
JOB_STATUSES = ("done", "failed", "busy", "pending", "invalid")
BATCH_METRICS = {  # batch.json / batch.csv job metrics, in column order: key -> column label
    "worst_rel_error": "worst rel. err", "worst_rel_error_png": "worst rel. err (PNG)", "min_push": "min push",
    "all_own_unit_lowest": "each lowest on its unit", "mean_sharpness": "sharpness", "mean_sources": "sources",
    "worst_argmax_rel_error": "worst argmax rel. err", "mean_pairwise_l2": "mean pairwise L2", "share_target_class": "share target class",
    "mean_top_prob_samples": "mean top p (samples)", "top_prob_target": "top p (target)",
    "target_label": "target class", "steps": "steps", "converged": "converged"}
VERTEX_METRICS = {  # report.json vertices.float / vertices.png -> column label
    "rel_error": "rel. error", "max_abs_active": "max |\u0394z| active", "n_inactive_positive": "inactive > 0",
    "unit_value": "z[unit]", "push": "push z[unit] / z_t[unit]", "own_unit_lowest": "lowest on its unit",
    "top1": "top-1 class", "top1_prob": "p(top-1)", "target_class_prob": "p(target class)"}
MIXING_METRICS = {  # report.json vertices.mixing -> column label
    "sharpness": "sharpness", "sources": "sources", "argmax_rel_error": "argmax rel. error"}
POLYTOPE_LABELS = {
    "samples": "Dirichlet(1) samples", "n": "Dirichlet(1) samples", "seed": "seed", "share_target_class": "share in the target's class",
    "target_class": "target class", "mean_top_prob_samples": "mean top-class prob. (samples)",
    "top_prob_target": "top-class prob. (target)", "rel_error_mean": "rel. error, mean",
    "rel_error_max": "rel. error, max", "vertex_mean_pairwise_l2": "mean pairwise L2, vertices",
    "dataset_mean_pairwise_l2": "mean pairwise L2, dataset images", "dataset_n_images": "dataset images",
    "units": "distance units"}
