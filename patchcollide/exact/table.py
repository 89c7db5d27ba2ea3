"""The nullities of a model's weight matrices: Ozbulak et al. (2022), Table 1, and the numerical
rank behind it. Also what every module of :mod:`patchcollide.exact` shares: ``NullspaceError``
and the provenance (versions, machine) recorded beside every output.

Conventions (the paper's, checked against its Table 1):

* A weight is the matrix W = weight.reshape(out, -1) of shape (out, in): PyTorch layout, one
  row per output unit or channel, one column per input value of a patch (C * kh * kw for a
  convolution). nullity(W) = in - rank(W) = dim {phi : W phi = 0}; "fewer rows than columns"
  (mu) is out < in.
* The weights counted (n_theta) are those of Conv1d/2d/3d and Linear modules (attention output
  projections included) and MultiheadAttention's ``in_proj_weight``; not biases, norms, class
  tokens, position embeddings, nor ConvTranspose weights (the paper's counts for Mask R-CNN,
  73, and Keypoint R-CNN, 76, are reproduced only without the transposed convolutions).
* Numerical rank: singular values in float64; sigma counts as zero when sigma <= tol with
  tol = rtol * sigma_max and rtol = max(out, in) * eps(float32) (numpy's matrix_rank rule
  with the float32 epsilon, since weights are stored in float32). ``rtol`` overrides it.
  Matrices with min(out, in) <= 512 use ``torch.linalg.svdvals``; larger ones the eigenvalues
  of the float64 Gram matrix of the shorter side, which resolves sigma down to about
  sqrt(k * eps64) * sigma_max (k the longer side), far below the tolerance.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn as nn

from ..core.errors import first_line
from ..core.files import machine, versions
from ..core.formats import RANDOM_LABEL
from ..models.build import build_model
from ..models.weights import ModelError
from .config import NullityConfig, NullspaceError

log = logging.getLogger(__name__)

EPS32 = float(np.finfo(np.float32).eps)
EPS64 = float(np.finfo(np.float64).eps)
SVD_MAX_SIDE = 512  # min(out, in) up to this: svdvals; above: eigenvalues of the Gram matrix
EXACT_RANDOM_NOTICE = (f"{RANDOM_LABEL}: no pretrained weights here, so only the structure is tested; the kernel of a "
                 "trained layer can be larger (pretrained weights are often numerically rank-deficient)")




# --------------------------------------------------------------------------------------------
# The paper's Table 1 (reference data, never results) and the torchvision models that match it
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PaperRow:
    """One row of Ozbulak et al. (2022), Table 1, as printed (percentages truncated)."""

    name: str
    task: str
    nu: int
    nu_pct: int
    mu: int
    mu_pct: int
    sum_nullity: int
    first_nullity: int
    model: str | None  # our model key with the same structure, or None where torchvision has none
    note: str = ""


PAPER_TABLE1 = (
    PaperRow("AlexNet", "classification", 8, 100, 7, 87, 16547, 299, "alexnet"),
    PaperRow("Squeezenet", "classification", 16, 61, 16, 61, 3392, 0, "squeezenet1_1",
             "squeezenet1_1 matches every column (squeezenet1_0: mu 17, first 51)"),
    PaperRow("VGG-16", "classification", 15, 93, 14, 87, 53357, 0, "vgg16"),
    PaperRow("ResNet-50", "classification", 36, 66, 33, 61, 40701, 84, "resnet50"),
    PaperRow("DenseNet-121", "classification", 121, 100, 117, 96, 90388, 85, "densenet121"),
    PaperRow("Inception-V3", "classification", 95, 96, 95, 96, 80938, 0, "inception_v3",
             "with the auxiliary classifier (torchvision's default without weights)"),
    PaperRow("ViT-Base", "classification", 18, 36, 12, 24, 27665, 13, "vit_b_16"),
    PaperRow("ViT-Large", "classification", 46, 47, 25, 25, 73780, 0, "vit_l_16"),
    PaperRow("DeiT-Tiny", "classification", 15, 30, 13, 26, 7490, 576, "deit_tiny_shapes",
             "not in torchvision: a torchvision VisionTransformer with DeiT-Tiny's shapes"),
    PaperRow("DeiT-Base", "classification", 16, 32, 12, 24, 27653, 1, "deit_base_shapes",
             "not in torchvision: DeiT-Base has ViT-B/16's weight shapes"),
    PaperRow("UNet", "segmentation", 44, 93, 44, 93, 73626, 91, None, "not in torchvision"),
    PaperRow("Fcn", "segmentation", 39, 68, 36, 63, 67254, 84, "fcn_resnet50", "with the auxiliary head"),
    PaperRow("PSPNet", "segmentation", 38, 90, 38, 90, 61446, 90, None, "not in torchvision"),
    PaperRow("MobileNet-V3", "segmentation", 45, 71, 42, 66, 110267, 84, "deeplabv3_resnet50",
             "no MobileNet-V3 model has this structure; DeepLabV3-ResNet-50 with the auxiliary head matches "
             "n_theta, mu, the sum and nullity(W1) up to pretrained rank deficiency"),
    PaperRow("Lite R-ASPP", "segmentation", 32, 48, 27, 40, 8756, 11, "lraspp_mobilenet_v3_large"),
    PaperRow("Mask R-CNN", "localization", 54, 73, 50, 68, 74677, 83, "maskrcnn_resnet50_fpn"),
    PaperRow("Faster R-CNN", "localization", 38, 52, 32, 43, 27366, 11, "fasterrcnn_mobilenet_v3_large_fpn",
             "first nullity 11 = a 16 x 27 stem: the MobileNet-V3 variant, not fasterrcnn_resnet50_fpn"),
    PaperRow("Keypoint R-CNN", "localization", 57, 75, 53, 69, 97230, 84, "keypointrcnn_resnet50_fpn"),
    PaperRow("RetinaNet", "localization", 53, 74, 50, 70, 72845, 72, "retinanet_resnet50_fpn"),
)

CLASSIFICATION_MODELS = ("alexnet", "squeezenet1_1", "vgg16", "resnet50", "densenet121", "inception_v3",
                         "vit_b_16", "vit_l_16")
PAPER_MODELS = tuple(r.model for r in PAPER_TABLE1 if r.model)


def paper_row(model: str) -> PaperRow | None:
    return next((r for r in PAPER_TABLE1 if r.model == model), None)


# --------------------------------------------------------------------------------------------
# Rank and nullity of weight matrices
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Rank:
    """Numerical rank of one (out, in) matrix; singular values in float64."""

    out: int
    inp: int
    rank: int
    nullity: int  # inp - rank
    sigma_max: float
    sigma_min: float  # the smallest of the min(out, in) singular values
    tol: float  # sigma <= tol counts as zero
    rtol: float  # tol / sigma_max
    method: str  # "svdvals" | "gram"

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def default_rtol(out: int, inp: int) -> float:
    """max(out, in) * eps(float32): numpy's matrix_rank rule for float32 data."""
    return max(out, inp) * EPS32


def singular_values(W: torch.Tensor) -> tuple[torch.Tensor, str]:
    """Singular values (descending, float64) of a 2-D W, and the method used."""
    W = W.detach().to("cpu", torch.float64)
    if min(W.shape) <= SVD_MAX_SIDE:
        return torch.linalg.svdvals(W), "svdvals"
    G = W @ W.T if W.shape[0] <= W.shape[1] else W.T @ W
    ev = torch.linalg.eigvalsh(G).clamp_min(0).flip(0)
    return ev.sqrt(), "gram"


def matrix_rank(W: torch.Tensor, rtol: float | None = None) -> Rank:
    """Numerical rank and nullity of W (out, in), any float dtype; see the module docstring."""
    if W.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {tuple(W.shape)}")
    out, inp = W.shape
    s, method = singular_values(W)
    smax = float(s[0]) if s.numel() else 0.0
    r = default_rtol(out, inp) if rtol is None else rtol
    tol = r * smax
    rank = int((s > tol).sum()) if smax > 0 else 0
    return Rank(out, inp, rank, inp - rank, smax, float(s[-1]) if s.numel() else 0.0, tol, r, method)


def weight_matrices(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The weights the paper counts, in registration order, as (name, (out, in) matrix view)."""
    out = []
    for mname, m in model.named_modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            out.append((f"{mname}.weight", m.weight))
        elif isinstance(m, nn.MultiheadAttention):
            if m.in_proj_weight is not None:
                out.append((f"{mname}.in_proj_weight", m.in_proj_weight))
            else:
                out += [(f"{mname}.{p}", getattr(m, p)) for p in ("q_proj_weight", "k_proj_weight", "v_proj_weight")]
    return [(n, w.detach().reshape(w.shape[0], -1)) for n, w in out]


def structure_row(model: nn.Module) -> dict:
    """The columns that the weights' shapes alone decide (works on the meta device): n_theta,
    mu (weights with out < in), and the nullities any full-rank weights of these shapes have,
    max(0, in - out), summed and for the first weight."""
    shapes = [(n, W.shape[0], W.shape[1]) for n, W in weight_matrices(model)]
    if not shapes:
        raise NullspaceError("the model has no Conv or Linear weights")
    n = len(shapes)
    mu = sum(o < i for _, o, i in shapes)
    return {"n_theta": n, "mu": mu, "mu_pct": 100.0 * mu / n, "first_name": shapes[0][0],
            "first_shape": [shapes[0][1], shapes[0][2]],
            "structural_sum_nullity": sum(max(0, i - o) for _, o, i in shapes),
            "structural_first_nullity": max(0, shapes[0][2] - shapes[0][1])}


def nullity_row(model: nn.Module, rtol: float | None = None, progress: Callable[[int, int], None] | None = None) -> dict:
    """The paper's Table 1 columns for one model, with every weight's rank.

    n_theta: weights counted; nu: weights with nullity >= 1; mu: weights with out < in;
    sum_nullity; first: the first counted weight in registration order (for torchvision's
    models the first layer of the forward pass) and its nullity. ``structural_*``: the values
    any full-rank weights of these shapes give (see :func:`structure_row`).
    """
    row = structure_row(model)
    per = []
    mats = weight_matrices(model)
    for i, (name, W) in enumerate(mats):
        r = matrix_rank(W, rtol)
        per.append({"name": name, **r.to_json()})
        if progress:
            progress(i + 1, len(mats))
    nu = sum(p["nullity"] > 0 for p in per)
    row.update(nu=nu, nu_pct=100.0 * nu / len(per), sum_nullity=sum(p["nullity"] for p in per),
               square=sum(p["out"] == p["inp"] for p in per),
               square_deficient=sum(p["out"] == p["inp"] and p["nullity"] > 0 for p in per),
               first_nullity=per[0]["nullity"],
               rank_deficient=[p["name"] for p in per if p["nullity"] > max(0, p["inp"] - p["out"])], weights=per)
    return row


def pct_matches(count: int, n: int, printed: int) -> bool:
    """Whether ``printed`` is 100 * count / n as the paper prints it: mostly truncated (AlexNet's
    7 of 8 is 87%), once rounded (ViT-Large's 46 of 98 is 47%)."""
    return printed in (math.floor(100 * count / n), round(100 * count / n))


def compare_with_paper(row: dict, paper: PaperRow) -> dict:
    """Which of our values structure alone decides, and whether they match the paper's.

    mu and n_theta are structural (n_theta is implied by the paper's percentages).
    nullity(W1) and the sum are at least their structural values for any weights; where the
    paper's value equals that bound our random-weight value must equal it; where it is larger
    the excess is numerical rank deficiency of the pretrained weights (random weights cannot
    show it) or of square matrices, whose smallest singular value is about sigma_max / (2n)
    for random weights and falls below the tolerance n * eps32 * sigma_max about as often as
    not (random AlexNet and VGG-16 fc7, 4096 x 4096, have numerical nullity 2).
    """
    n = row["n_theta"]
    pct_ok = pct_matches(paper.nu, n, paper.nu_pct) and pct_matches(paper.mu, n, paper.mu_pct)

    def bounded(ours: int, bound: int, theirs: int) -> str:
        if theirs < bound:
            return f"paper {theirs} < {bound}, impossible for these shapes"
        if theirs == bound:
            return "match" if ours == theirs else f"MISMATCH (ours {ours})"
        return f"paper +{theirs - bound} over the shapes' value (ours {ours - bound:+d})"

    return {
        "n_theta_consistent": pct_ok,
        "mu": "match" if row["mu"] == paper.mu else f"MISMATCH (ours {row['mu']}, paper {paper.mu})",
        "nu": "match" if row["nu"] == paper.nu else f"paper {paper.nu - row['nu']:+d}",
        "sum_nullity": bounded(row["sum_nullity"], row["structural_sum_nullity"], paper.sum_nullity),
        "first_nullity": bounded(row["first_nullity"], row["structural_first_nullity"], paper.first_nullity),
    }


def nullity_table(models: list[str], weights: str = "random", seed: int = NullityConfig.seed,
                  rtol: float | None = NullityConfig.rtol,
                  progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Table 1 for ``models``; a model that cannot be built or loaded is one entry in
    ``failed`` (name, one-line reason), not an exception. Returns a JSON-able dict. ``seed``
    and ``rtol``: ``NullityConfig``'s, checked by it."""
    if weights not in ("auto", "random", "imagenet"):
        raise NullspaceError(f"--weights must be auto, random or imagenet for the table, got {weights!r}")
    NullityConfig(rtol=rtol, seed=seed)
    rows, failed, kinds = [], [], set()
    t_all = time.perf_counter()
    for name in models:
        t0 = time.perf_counter()
        try:
            model, info = build_model(name, weights, seed)
        except (ModelError, NullspaceError, RuntimeError, ValueError, TypeError) as e:
            failed.append({"model": name, "reason": first_line(e, 200)})
            log.info("%s: %s", name, failed[-1]["reason"])
            continue
        row = nullity_row(model, rtol, (lambda d, t, _n=name: progress(_n, d, t)) if progress else None)
        del model
        kinds.add(info.kind)
        paper = paper_row(name)
        rows.append({"model": name, "weights": dataclasses.asdict(info), **row,
                     "paper": dataclasses.asdict(paper) if paper else None,
                     "check": compare_with_paper(row, paper) if paper else None,
                     "seconds": round(time.perf_counter() - t0, 2)})
    used = sorted(kinds) or [weights]  # auto: decided per model
    return {"kind": "patchcollide-nullity", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "weights": "/".join(used), "seed": seed, "tolerance": tolerance_rule(rtol),
            "notice": EXACT_RANDOM_NOTICE if "random" in used else None,
            "rows": rows, "failed": failed,
            "not_in_torchvision": [r.name for r in PAPER_TABLE1 if r.model is None],
            "versions": versions(), "machine": machine(), "seconds": round(time.perf_counter() - t_all, 1)}


def tolerance_rule(rtol: float | None) -> str:
    if rtol is None:
        return ("sigma <= max(out, in) * eps(float32) * sigma_max counts as zero (eps(float32) = 1.19e-07); "
                "singular values in float64")
    return f"sigma <= {rtol:g} * sigma_max counts as zero (--rtol); singular values in float64"


def table_markdown(table: dict) -> str:
    """The table as Markdown: ours beside the paper's, and what structure decides."""
    lines = [f"Weights: {table['weights']}" + (f" (seed {table['seed']})" if "random" in table["weights"] else ""),
             f"Tolerance: {table['tolerance']}.", ""]
    if table.get("notice"):
        lines += [f"**{table['notice']}.**", ""]
    lines += [("| model | paper row | n_theta | nu | nu % | mu | mu % | sum nullity | nullity(W1) | W1 shape "
               "| paper nu / mu / sum / W1 | check mu | check nullity(W1) | check sum | check nu | square, rank-deficient |"),
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- | --- | --- | --- | --- |"]
    for r in table["rows"]:
        p, c = r["paper"], r["check"]
        pv = f"{p['nu']} / {p['mu']} / {p['sum_nullity']:,} / {p['first_nullity']}" if p else "-"
        lines.append(
            f"| {r['model']} | {p['name'] if p else '-'} | {r['n_theta']} | {r['nu']} | {r['nu_pct']:.1f} | {r['mu']} "
            f"| {r['mu_pct']:.1f} | {r['sum_nullity']:,} | {r['first_nullity']} | {r['first_shape'][0]} x "
            f"{r['first_shape'][1]} | {pv} | {c['mu'] if c else '-'} | {c['first_nullity'] if c else '-'} "
            f"| {c['sum_nullity'] if c else '-'} | {c['nu'] if c else '-'} | {r['square']} / {r['square_deficient']} |")
    for f in table["failed"]:
        lines.append(f"| {f['model']} | failed: {f['reason']} |" + " |" * 14)
    if table.get("not_in_torchvision"):
        lines += ["", "Not in torchvision (no row): " + ", ".join(table["not_in_torchvision"]) + "."]
    return "\n".join(lines) + "\n"


