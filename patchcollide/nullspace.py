"""Exact feature collisions from the kernel of the first trainable layer (Ozbulak et al. 2022,
"Exact Feature Collisions", the Null-space search), and their Table 1 (nullities of every
weight matrix of a model).

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

Colliders (:func:`nullspace_search`): for a model whose first trainable layer is

* Linear: x' = x + P with P in ker(W) (the layer reads the model input, flattened);
* a convolution whose stride is at least its kernel (padding 0, dilation 1, groups 1: patch
  embeddings such as ViT's): per-patch kernel vectors of W placed in every patch; pixels that
  lie in no patch are not read by the layer at all and are left unchanged;
* an overlapping convolution (ResNet's 7x7/2, AlexNet's 11x11/4): the relevant kernel is that
  of the convolution as a linear map on the whole image, R^(C*H*W) -> R^(O*H'*W'), not the
  kernel of the unfolded W. :func:`conv_map_analysis` computes it exactly (dense Gram matrix)
  at small sizes, exactly for the circular (periodic) variant at the real size (Fourier
  symbol), and estimates sigma_min at the real size with LOBPCG. No collider is built and
  none is called exact; the paper's tiling of a per-patch kernel vector is shown to change
  the layer's output.

Modes: ``repeat`` (one kernel vector in every patch: the paper's P = beta [phi ... phi]),
``several`` (``vectors`` different kernel vectors over the patches; for a linear layer a
random combination of them), ``regions`` (per-region multipliers beta_i on a 2 x 2 grid of
regions, one of them 0 so that part of the image stays untouched). Every collider is verified
in float32 and in float64 (first layer's output and logits), beside beta and its size.
Kernel vectors are unit vectors drawn from the kernel (seeded Gaussian vectors projected on
the kernel), in the model's input space (ImageNet-normalised for torchvision classifiers).
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import platform
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import __version__
from .models import (IMAGENET_MEAN, IMAGENET_STD, ModelError, WeightsInfo, file_sha256, fit_state,
                     load_imagenet_state, load_state_file)

log = logging.getLogger(__name__)

EPS32 = float(np.finfo(np.float32).eps)
EPS64 = float(np.finfo(np.float64).eps)
SVD_MAX_SIDE = 512  # min(out, in) up to this: svdvals; above: eigenvalues of the Gram matrix
RANDOM_NOTICE = ("RANDOM WEIGHTS: no pretrained weights here, so only the structure is tested; the kernel of a "
                 "trained layer can be larger (pretrained weights are often numerically rank-deficient)")
MODES = ("repeat", "several", "regions")


class NullspaceError(Exception):
    """Bad input for the null-space search or the nullity table; ``str(e)`` is one line."""


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

# Keyword arguments that give torchvision's builders the structure of the paper's models.
_BUILD_KWARGS = {
    "fcn_resnet50": {"aux_loss": True},
    "deeplabv3_resnet50": {"aux_loss": True},
}
_SHAPE_ONLY = {  # models torchvision does not ship, built from its VisionTransformer class
    "deit_tiny_shapes": dict(image_size=224, patch_size=16, num_layers=12, num_heads=3, hidden_dim=192, mlp_dim=768),
    "deit_base_shapes": dict(image_size=224, patch_size=16, num_layers=12, num_heads=12, hidden_dim=768,
                             mlp_dim=3072),
}


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


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------

def builder(name: str):
    import torchvision.models as tvm

    if name in _SHAPE_ONLY:
        from torchvision.models.vision_transformer import VisionTransformer

        return lambda **kw: VisionTransformer(**_SHAPE_ONLY[name])
    try:
        b = tvm.get_model_builder(name)
    except (ValueError, KeyError):
        raise ModelError(f"unknown model {name!r}; use a torchvision model name (torchvision.models.list_models()) "
                         f"or one of {', '.join(_SHAPE_ONLY)}") from None
    import inspect

    params = inspect.signature(b).parameters
    extra = dict(_BUILD_KWARGS.get(name, {}))
    if "weights_backbone" in params:
        extra["weights_backbone"] = None  # never download a backbone

    def build(**kw):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # inception_v3's notice about its default init
            return b(**kw, **extra)

    return build


def build_model(name: str, weights: str = "random", seed: int = 0,
                image_size: int | None = None) -> tuple[nn.Module, WeightsInfo]:
    """A torchvision model (or one of the ``*_shapes`` stand-ins) in eval mode with frozen
    parameters, weights "random" (seeded), "imagenet" (torchvision's, via the torch cache)
    or a state-dict PATH (loaded with weights_only=True). ``image_size``: vision transformers
    (vit_*) with random weights are built for this input side (their patch embedding is the
    same; only the number of patches changes); other models ignore it."""
    build = builder(name)
    kw = {}
    if image_size and name.startswith("vit_") and weights == "random":
        kw["image_size"] = image_size
    torch.manual_seed(seed)
    model = build(weights=None, **kw)
    if weights == "random":
        redrawn = _redraw_zero_weights(model)
        info = WeightsInfo("random", f"random(seed={seed})" + (f"; zero-initialised {', '.join(redrawn)} redrawn"
                                                               if redrawn else ""), None, False)
    elif weights == "imagenet":
        if name in _SHAPE_ONLY:
            raise ModelError(f"{name} has no torchvision weights (only its shapes are built); use --weights random")
        state, where = load_imagenet_state(name)
        fit_state(model, state, name, "imagenet")
        info = WeightsInfo("imagenet", "torchvision default (IMAGENET1K_V1 where present)", file_sha256(where) if os.path.exists(where) else None, True)
    else:
        state = load_state_file(weights)
        fit_state(model, state, name, weights)
        info = WeightsInfo("file", os.path.abspath(weights), file_sha256(weights), True)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, info


def _redraw_zero_weights(model: nn.Module) -> list[str]:
    """torchvision initialises some heads to zero (ViT's heads.head): a zero matrix has rank 0,
    which says nothing about the structure, and zero logits verify nothing. With random weights
    such matrices are drawn like nn.Linear's default (Kaiming uniform, a = sqrt(5)), seeded by
    the generator state after the build. Returns their names."""
    names = []
    for name, m in model.named_modules():
        w = getattr(m, "weight", None)
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and w is not None and not w.any():
            with torch.no_grad():
                nn.init.kaiming_uniform_(w, a=math.sqrt(5))
            names.append(name)
    return names


def nullity_table(models: list[str], weights: str = "random", seed: int = 0, rtol: float | None = None,
                  progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Table 1 for ``models``; a model that cannot be built or loaded is one entry in
    ``failed`` (name, one-line reason), not an exception. Returns a JSON-able dict."""
    if weights not in ("random", "imagenet"):
        raise NullspaceError(f"--weights must be random or imagenet for the table, got {weights!r}")
    if rtol is not None and not (math.isfinite(rtol) and 0 < rtol < 1):
        raise NullspaceError(f"--rtol must be in (0, 1), got {rtol}")
    rows, failed = [], []
    t_all = time.perf_counter()
    for name in models:
        t0 = time.perf_counter()
        try:
            model, info = build_model(name, weights, seed)
        except (ModelError, NullspaceError, RuntimeError, ValueError, TypeError) as e:
            failed.append({"model": name, "reason": str(e).strip().splitlines()[0][:200] or type(e).__name__})
            log.info("%s: %s", name, failed[-1]["reason"])
            continue
        row = nullity_row(model, rtol, (lambda d, t, _n=name: progress(_n, d, t)) if progress else None)
        del model
        paper = paper_row(name)
        rows.append({"model": name, "weights": dataclasses.asdict(info), **row,
                     "paper": dataclasses.asdict(paper) if paper else None,
                     "check": compare_with_paper(row, paper) if paper else None,
                     "seconds": round(time.perf_counter() - t0, 2)})
    return {"kind": "patchcollide-nullity", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "weights": weights, "seed": seed, "tolerance": tolerance_rule(rtol),
            "notice": RANDOM_NOTICE if weights == "random" else None,
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
    lines = [f"Weights: {table['weights']}" + (f" (seed {table['seed']})" if table["weights"] == "random" else ""),
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


# --------------------------------------------------------------------------------------------
# The first trainable layer
# --------------------------------------------------------------------------------------------

class _Stop(Exception):
    pass


@dataclasses.dataclass
class FirstLayer:
    name: str
    module: nn.Module
    kind: str  # "linear" | "patch-conv" | "overlapping-conv" | "unsupported"
    input_shape: tuple[int, ...]  # the layer's input for one sample
    output_shape: tuple[int, ...]
    reads_model_input: bool  # its input is the model's input (up to a reshape)

    def describe(self) -> dict:
        m = self.module
        d = {"name": self.name, "type": type(m).__name__, "kind": self.kind, "weight_shape": list(m.weight.shape),
             "matrix_shape": [m.weight.shape[0], int(m.weight[0].numel())], "input_shape": list(self.input_shape),
             "output_shape": list(self.output_shape)}
        if isinstance(m, nn.Conv2d):
            d.update(stride=list(m.stride), padding=m.padding if isinstance(m.padding, str) else list(m.padding),
                     dilation=list(m.dilation), groups=m.groups)
        return d


def _is_patch_conv(m: nn.Conv2d) -> bool:
    pad = (0, 0) if m.padding == "valid" else m.padding
    return (not isinstance(pad, str) and tuple(pad) == (0, 0) and tuple(m.dilation) == (1, 1) and m.groups == 1
            and m.stride[0] >= m.kernel_size[0] and m.stride[1] >= m.kernel_size[1])


def find_first_layer(model: nn.Module, x: torch.Tensor) -> FirstLayer:
    """The first module with a weight matrix that the forward pass of ``x`` (1, ...) calls
    (registration order is not forward order in general)."""
    box: list = []

    def hook(name):
        def fn(mod, args, out):
            box.append((name, mod, args[0].detach(), out.detach()))
            raise _Stop

        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
               if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.ndim >= 2
               and "weight" in dict(m.named_parameters(recurse=False))]
    try:
        with torch.no_grad():
            model(x)
    except _Stop:
        pass
    except (AssertionError, RuntimeError, ValueError) as e:
        msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise NullspaceError(f"the model does not accept input {tuple(x.shape[1:])} ({msg}); use the input size "
                             "it was built for (ViT: --size 224)") from None
    finally:
        for h in handles:
            h.remove()
    if not box:
        raise NullspaceError("no Conv or Linear layer was called in the forward pass")
    name, mod, inp, out = box[0]
    reads = inp.numel() == x.numel() and torch.equal(inp.reshape(-1), x.detach().reshape(-1).to(inp.dtype))
    if isinstance(mod, nn.Linear):
        kind = "linear"
    elif isinstance(mod, nn.Conv2d):
        kind = "patch-conv" if _is_patch_conv(mod) else "overlapping-conv"
    else:
        kind = "unsupported"
    return FirstLayer(name, mod, kind, tuple(inp.shape[1:]), tuple(out.shape[1:]), reads)


# --------------------------------------------------------------------------------------------
# Kernel vectors and colliders
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class NullspaceConfig:
    mode: str = "repeat"  # repeat | several | regions (see the module docstring)
    beta: float | None = None  # None: scaled so that max |P| = 1 in model-input units (~58 of 255 levels)
    vectors: int = 4  # distinct kernel vectors for several / regions (repeat uses one)
    seed: int = 0  # kernel vectors, their assignment to patches, region multipliers, LOBPCG start
    rtol: float | None = None  # None: max(out, in) * eps(float32); see tolerance_rule
    dense_sizes: tuple[int, ...] = (16, 32)  # overlapping convs: exact whole-image analysis at these sides
    max_dense: int = 8192  # dense analysis only up to this many input values (Gram n x n in float64)
    iters: int = 100  # overlapping convs: LOBPCG iterations at the real size
    pgd_steps: int = 0  # > 0: start from an untargeted L-inf PGD adversarial example
    pgd_eps: float = 4.0  # PGD radius in 0..255 pixel levels (model-input units without normalisation)

    def __post_init__(self):
        checks = [
            (self.mode in MODES, f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}"),
            (self.beta is None or (math.isfinite(self.beta) and self.beta != 0),
             f"--beta must be a finite non-zero number, got {self.beta}"),
            (self.vectors >= 1, f"--vectors must be >= 1, got {self.vectors}"),
            (self.seed >= 0, f"--seed must be >= 0, got {self.seed}"),
            (self.rtol is None or (math.isfinite(self.rtol) and 0 < self.rtol < 1),
             f"--rtol must be in (0, 1), got {self.rtol}"),
            (all(s >= 1 for s in self.dense_sizes), f"dense sizes must be >= 1, got {self.dense_sizes}"),
            (self.iters >= 1, f"--iters must be >= 1, got {self.iters}"),
            (self.pgd_steps >= 0, f"--pgd-steps must be >= 0, got {self.pgd_steps}"),
            (math.isfinite(self.pgd_eps) and self.pgd_eps > 0, f"--pgd-eps must be > 0, got {self.pgd_eps}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise NullspaceError(msg)


def kernel_vectors(W: torch.Tensor, count: int, gen: torch.Generator, rtol: float | None = None,
                   rank: Rank | None = None) -> tuple[torch.Tensor, Rank]:
    """``count`` unit vectors (count, in) float64 of the numerical kernel of W (out, in): seeded
    Gaussian vectors with their row-space part (right singular vectors with sigma > tol)
    removed. Raises NullspaceError when the kernel is trivial."""
    W64 = W.detach().to("cpu", torch.float64)
    rank = rank or matrix_rank(W64, rtol)
    if rank.nullity == 0:
        raise NullspaceError(f"the weight matrix {W.shape[0]} x {W.shape[1]} has a trivial kernel (rank {rank.rank}); "
                             "no null-space collider")
    _, _, Vh = torch.linalg.svd(W64, full_matrices=False)
    Vr = Vh[: rank.rank]
    g = torch.randn(count, W64.shape[1], generator=gen, dtype=torch.float64)
    phi = g - (g @ Vr.T) @ Vr
    phi = phi - (phi @ Vr.T) @ Vr  # twice is enough (Kahan's re-orthogonalisation)
    return phi / phi.norm(dim=1, keepdim=True), rank


def _checked_rank(W: torch.Tensor, vectors: int, rtol: float | None, what: str) -> Rank:
    rank = matrix_rank(W, rtol)
    if rank.nullity == 0:
        raise NullspaceError(f"the first layer's{what} weight matrix {W.shape[0]} x {W.shape[1]} has a trivial kernel "
                             f"(rank {rank.rank}): no null-space collider from it")
    if vectors > rank.nullity:
        raise NullspaceError(f"--vectors {vectors} exceeds the{what} nullity {rank.nullity} of the first layer; "
                             f"use at most {rank.nullity}")
    return rank


def _region_of(rows: int, cols: int) -> torch.Tensor:
    """(rows, cols) ints 0..3: the 2 x 2 grid of regions (top-left, top-right, bottom-left, ...)."""
    r = (torch.arange(rows) >= max(1, rows // 2)).long() if rows > 1 else torch.zeros(rows, dtype=torch.long)
    c = (torch.arange(cols) >= max(1, cols // 2)).long() if cols > 1 else torch.zeros(cols, dtype=torch.long)
    return r[:, None] * 2 + c[None, :]


def _multipliers(gen: torch.Generator) -> torch.Tensor:
    """4 region multipliers: magnitudes in [0.5, 1], random signs, one region (seeded) at 0."""
    m = (0.5 + 0.5 * torch.rand(4, generator=gen, dtype=torch.float64)) * (
        torch.randint(0, 2, (4,), generator=gen) * 2 - 1).double()
    m[int(torch.randint(0, 4, (1,), generator=gen))] = 0.0
    return m


def patch_perturbation(conv: nn.Conv2d, in_shape: tuple[int, int, int], config: NullspaceConfig,
                       gen: torch.Generator) -> tuple[torch.Tensor, dict]:
    """P (C, H, W) float64 for a non-overlapping conv, before beta (unit kernel vectors per
    patch), and a description (kernel, patches, assignment, multipliers, unread pixels)."""
    _, H, Wd = in_shape
    kh, kw = conv.kernel_size
    sh, sw = conv.stride
    Wm = conv.weight.reshape(conv.weight.shape[0], -1)
    rows, cols = (H - kh) // sh + 1, (Wd - kw) // sw + 1
    if rows < 1 or cols < 1:
        raise NullspaceError(f"input {H}x{Wd} is smaller than the {kh}x{kw} kernel of the first layer")
    L = rows * cols
    t = 1 if config.mode == "repeat" else config.vectors
    rank = _checked_rank(Wm, t, config.rtol, " per-patch")
    phi, rank = kernel_vectors(Wm, t, gen, config.rtol, rank)
    if config.mode == "repeat":
        assign = torch.zeros(L, dtype=torch.long)
    else:  # every vector used at least once (where there are enough patches), in a seeded order
        assign = torch.randperm(L, generator=gen) % t
    mult = torch.ones(L, dtype=torch.float64)
    region_mult = None
    if config.mode == "regions":
        region_mult = _multipliers(gen)
        mult = region_mult[_region_of(rows, cols).reshape(-1)]
    cols_ = (phi[assign] * mult[:, None]).T.unsqueeze(0)  # (1, C*kh*kw, L)
    P = F.fold(cols_, output_size=(H, Wd), kernel_size=(kh, kw), stride=(sh, sw))[0]
    unread = H * Wd - rows * kh * cols * kw  # patches do not overlap (stride >= kernel)
    info = {"kernel": rank.to_json(), "patches": [rows, cols], "vectors_used": t,
            "assignment": assign.reshape(rows, cols).tolist() if t > 1 else None,
            "region_multipliers": region_mult.tolist() if region_mult is not None else None,
            "untouched_patches": int((mult == 0).sum()),
            "unread_pixels": int(unread),
            "unread_note": (f"{unread} pixel positions lie in no {kh}x{kw} patch and are not read by the layer; "
                            "left unchanged" if unread else None)}
    return P, info


def linear_perturbation(lin: nn.Linear, in_shape: tuple[int, ...], config: NullspaceConfig,
                        gen: torch.Generator) -> tuple[torch.Tensor, dict]:
    """P (in_shape) float64 for a linear first layer reading the model input flattened, before beta.

    repeat: one unit kernel vector; several: a seeded random combination of ``vectors`` of
    them; regions: per-region multipliers times unit vectors of ker W[:, region] (supported on
    the region, so the untouched region stays exactly unchanged).
    """
    Wm = lin.weight
    D = Wm.shape[1]
    if config.mode in ("repeat", "several"):
        t = 1 if config.mode == "repeat" else config.vectors
        rank = _checked_rank(Wm, t, config.rtol, "")
        phi, rank = kernel_vectors(Wm, t, gen, config.rtol, rank)
        c = torch.randn(t, generator=gen, dtype=torch.float64) if t > 1 else torch.ones(1, dtype=torch.float64)
        p = (c[:, None] * phi).sum(0)
        p = p / p.norm()
        return p.reshape(in_shape), {"kernel": rank.to_json(), "vectors_used": t, "coefficients": c.tolist()}
    # regions: a 2 x 2 grid over the spatial dims of (C, H, W), else 4 contiguous chunks
    if len(in_shape) >= 2:
        reg = _region_of(in_shape[-2], in_shape[-1]).expand(*in_shape).reshape(-1)
    else:
        reg = (torch.arange(D) * 4 // D).long()
    mult = _multipliers(gen)
    p = torch.zeros(D, dtype=torch.float64)
    per = []
    for r in range(4):
        idx = (reg == r).nonzero().reshape(-1)
        entry = {"region": r, "size": int(idx.numel()), "multiplier": float(mult[r])}
        if mult[r] != 0 and idx.numel():
            rk = matrix_rank(Wm[:, idx], config.rtol)
            entry["nullity"] = rk.nullity
            if rk.nullity:
                phi, _ = kernel_vectors(Wm[:, idx], 1, gen, config.rtol, rk)
                p[idx] += mult[r] * phi[0]
            else:
                entry["multiplier"] = 0.0
        per.append(entry)
    if p.abs().max() == 0:
        raise NullspaceError(f"no kernel vector of the first layer ({Wm.shape[0]} x {D}) is supported on a quarter "
                             "of the input (each quarter has too few values); use --mode repeat or several")
    rank = matrix_rank(Wm, config.rtol)
    return p.reshape(in_shape), {"kernel": rank.to_json(), "regions": per,
                                 "region_multipliers": [e["multiplier"] for e in per]}


# --------------------------------------------------------------------------------------------
# Overlapping convolutions: the kernel of the whole-image linear map
# --------------------------------------------------------------------------------------------

def _conv_map(conv: nn.Conv2d) -> Callable[[torch.Tensor], torch.Tensor]:
    """The conv's linear part (no bias) in float64: (B, C, H, W) -> (B, O, H', W')."""
    W64 = conv.weight.detach().to("cpu", torch.float64)
    return lambda x: conv._conv_forward(x, W64, None)


def _gram_apply(A: Callable, x: torch.Tensor) -> torch.Tensor:
    """A^T A x for a linear A, by one forward and one backward pass (float64)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        y = A(x)
        (g,) = torch.autograd.grad(y, x, grad_outputs=y.detach())
    return g.detach()


def map_rtol(conv: nn.Conv2d, rtol: float | None = None) -> float:
    """Relative tolerance for the whole-image map: ``rtol`` or the rule of the per-patch matrix,
    max(out, C*kh*kw) * eps(float32). Every output of the map is one of that matrix's dot
    products, so float32 rounding of one output is of this relative size; numpy's rule for a
    dense matrix, max(m, n) * eps with m, n in the hundreds of thousands, would call sigma up to
    10% of sigma_max zero."""
    return default_rtol(conv.weight.shape[0], int(conv.weight[0].numel())) if rtol is None else rtol


def dense_spectrum(conv: nn.Conv2d, in_shape: tuple[int, int, int], rtol: float | None = None,
                   chunk: int = 256) -> dict:
    """Exact singular values of the whole-image map of ``conv`` on (C, H, W), from the float64
    Gram matrix A^T A (n x n, n = C*H*W). Returns sigma_min/max, the tolerance (map_rtol), the
    numerical nullity, the input values the layer never reads (exact kernel vectors) and the
    resolution (sigma below about sqrt(n * eps64) * sigma_max is not resolved by the Gram matrix)."""
    A = _conv_map(conv)
    n = int(np.prod(in_shape))
    G = torch.empty(n, n, dtype=torch.float64)
    for c0 in range(0, n, chunk):
        b = min(chunk, n - c0)
        E = torch.zeros(b, n, dtype=torch.float64)
        E[torch.arange(b), torch.arange(c0, c0 + b)] = 1.0
        G[c0 : c0 + b] = _gram_apply(A, E.reshape(b, *in_shape)).reshape(b, n)
    G = 0.5 * (G + G.T)
    m = int(np.prod(A(torch.zeros(1, *in_shape, dtype=torch.float64)).shape[1:]))
    ev = torch.linalg.eigvalsh(G).clamp_min(0)
    s = ev.sqrt()
    smax = float(s[-1])
    r = map_rtol(conv, rtol)
    tol = r * smax
    return {"input": list(in_shape), "n_in": n, "n_out": m, "sigma_min": float(s[0]), "sigma_max": smax,
            "tol": tol, "rtol": r, "nullity": int((s <= tol).sum()), "unread_inputs": int((G.diagonal() == 0).sum()),
            "resolution": math.sqrt(n * EPS64) * smax, "method": "eigvalsh of the float64 Gram matrix (exact, dense)"}


def circular_spectrum(conv: nn.Conv2d, in_shape: tuple[int, int, int], rtol: float | None = None) -> dict | None:
    """Exact singular values of the circular (periodic) version of ``conv`` on (C, H, W) from
    its Fourier symbol: with stride s the map block-diagonalises into (H/s)(W/s) matrices of
    shape (O, C*s*s) (polyphase components). Differs from the zero-padded layer only at the
    border. None where it does not apply (unequal strides, H or W not a multiple of the
    stride, dilation, groups)."""
    C, H, Wd = in_shape
    s = conv.stride[0]
    if conv.stride[1] != s or H % s or Wd % s or tuple(conv.dilation) != (1, 1) or conv.groups != 1:
        return None
    w = conv.weight.detach().to("cpu", torch.float64)
    O, _, kh, kw = w.shape
    qh, qw = -(-kh // s), -(-kw // s)
    wp = F.pad(w, (0, qw * s - kw, 0, qh * s - kh))  # (O, C, qh*s, qw*s)
    wp = wp.reshape(O, C, qh, s, qw, s).permute(0, 1, 3, 5, 2, 4).reshape(O, C * s * s, qh, qw)
    Mh, Mw = H // s, Wd // s
    if qh > Mh or qw > Mw:
        return None
    Hs = torch.fft.fft2(wp, s=(Mh, Mw))  # (O, C*s*s, Mh, Mw)
    sv = torch.linalg.svdvals(Hs.permute(2, 3, 0, 1))  # (Mh, Mw, min(O, C*s*s)), descending
    n, m = C * H * Wd, O * Mh * Mw
    smax = float(sv.max())
    tol = map_rtol(conv, rtol) * smax
    if O < C * s * s:  # every block is wide: C*s*s - O kernel dimensions per frequency
        smin, nullity = 0.0, (C * s * s - O) * Mh * Mw + int((sv[..., -1] <= tol).sum())
    else:
        smin, nullity = float(sv[..., -1].min()), int((sv[..., -1] <= tol).sum())
    return {"input": list(in_shape), "n_in": n, "n_out": m, "sigma_min": smin, "sigma_max": smax, "tol": tol,
            "nullity": nullity, "frequencies": Mh * Mw, "block_shape": [O, C * s * s],
            "method": "Fourier symbol of the circular (periodic) convolution: exact for that map"}


def lobpcg_spectrum(conv: nn.Conv2d, in_shape: tuple[int, int, int], iters: int = 100, block: int = 4,
                    seed: int = 0, rtol: float | None = None) -> dict:
    """Estimates for the whole-image map at a size too large for the dense analysis:
    sigma_max by 30 power iterations (a lower bound), sigma_min from LOBPCG on A^T A (the
    Ritz value is an upper bound on sigma_min^2; the residual says how close it is to an
    eigenvalue; neither is a proof of a lower bound)."""
    from scipy.sparse.linalg import LinearOperator, lobpcg

    A = _conv_map(conv)
    n = int(np.prod(in_shape))
    m = int(np.prod(A(torch.zeros(1, *in_shape, dtype=torch.float64)).shape[1:]))

    def matmat(X):
        X = np.asarray(X).reshape(n, -1)
        xt = torch.from_numpy(np.ascontiguousarray(X.T)).reshape(-1, *in_shape)
        return _gram_apply(A, xt).reshape(X.shape[1], n).T.numpy()

    op = LinearOperator((n, n), matvec=lambda v: matmat(v.reshape(n, 1))[:, 0], matmat=matmat, dtype=np.float64)
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, 1))
    lam = 0.0
    for _ in range(30):
        w = matmat(v)
        lam = float(np.linalg.norm(w))
        v = w / lam
    smax = math.sqrt(lam)
    X0 = rng.standard_normal((n, block))
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "did not converge": reported through the residual
        vals, vecs = lobpcg(op, X0, largest=False, maxiter=iters, tol=1e-10)
    order = np.argsort(vals)
    theta, v = float(vals[order[0]]), vecs[:, order[0]]
    v = v / np.linalg.norm(v)
    res = float(np.linalg.norm(matmat(v.reshape(n, 1))[:, 0] - theta * v))
    r = map_rtol(conv, rtol)
    return {"input": list(in_shape), "n_in": n, "n_out": m, "sigma_min_estimate": math.sqrt(max(theta, 0.0)),
            "ritz_value": theta, "residual": res, "sigma_max_estimate": smax, "tol": r * smax, "rtol": r,
            "iterations": iters, "block": block, "seconds": round(time.perf_counter() - t0, 1),
            "converged": res <= 1e-3 * max(theta, 1e-300),  # residual small against the Ritz value itself
            "method": "LOBPCG on A^T A (float64, no preconditioner): Ritz value >= sigma_min^2; an eigenvalue of A^T A lies within the "
                      "residual of it"}


def conv_map_analysis(conv: nn.Conv2d, in_shape: tuple[int, int, int], config: NullspaceConfig = NullspaceConfig(),
                      progress: Callable[[str], None] | None = None, name: str = "the layer") -> dict:
    """What is known about the kernel of an overlapping conv as a map on (C, H, W) images:
    per-patch (unfolded W) nullity, dense exact spectra at small sizes and at the real size
    where it fits, the circular variant's exact spectrum, an LOBPCG estimate at the real size,
    the input values never read; and a one-line verdict that never claims more than found."""
    C, H, Wd = in_shape
    say = progress or (lambda s: None)
    Wm = conv.weight.reshape(conv.weight.shape[0], -1)
    per_patch = matrix_rank(Wm, config.rtol)
    out: dict = {"per_patch_kernel": per_patch.to_json(), "dense": [], "circular": None, "lobpcg": None}
    sizes = sorted({s for s in config.dense_sizes if C * s * s <= config.max_dense and s < min(H, Wd)})
    if C * H * Wd <= config.max_dense:
        sizes.append(None)  # the real size itself, exactly
    for s in sizes:
        shape = in_shape if s is None else (C, s, s)
        if not _valid_input(conv, shape):
            continue
        say(f"dense spectrum of the whole-image map on {shape[0]}x{shape[1]}x{shape[2]}")
        out["dense"].append(dense_spectrum(conv, shape, config.rtol))
    out["circular"] = circular_spectrum(conv, in_shape, config.rtol)
    ones = torch.ones(1, *in_shape, dtype=torch.float64)
    absw = conv.weight.detach().abs().to(torch.float64)
    reads = torch.autograd.functional.vjp(lambda x: conv._conv_forward(x, absw, None), ones,
                                          torch.ones_like(_conv_map(conv)(ones)))[1]
    out["unread_inputs"] = int((reads == 0).sum())
    exact_here = any(d["input"] == list(in_shape) for d in out["dense"])
    if not exact_here:
        say(f"LOBPCG estimate of sigma_min on {C}x{H}x{Wd} ({config.iters} iterations)")
        out["lobpcg"] = lobpcg_spectrum(conv, in_shape, config.iters, seed=config.seed, rtol=config.rtol)
    out["finding"], out["verdict"] = _verdict(out, in_shape, name)
    out["evidence"] = _evidence(out)
    out["tolerance_rule"] = ("sigma <= rtol * sigma_max counts as zero, rtol = max(out, C*kh*kw) * eps(float32) = "
                             f"{map_rtol(conv, config.rtol):.3g} (the per-patch matrix's rule)" if config.rtol is None
                             else f"sigma <= {config.rtol:g} * sigma_max counts as zero (--rtol)")
    return out


def _valid_input(conv: nn.Conv2d, shape) -> bool:
    try:
        _conv_map(conv)(torch.zeros(1, *shape, dtype=torch.float64))
        return True
    except RuntimeError:
        return False


def _verdict(a: dict, in_shape, name: str) -> tuple[str, str]:
    """(finding, one line): trivial-exact | non-trivial | trivial-estimate | not-established | unknown."""
    C, H, W = in_shape
    where = f"kernel of {name} as a map on {C}x{H}x{W}"
    if a["unread_inputs"]:
        return "non-trivial", (f"{where}: non-trivial, {a['unread_inputs']} input values are never read by the layer "
                               "(changing only those collides exactly)")
    exact = next((d for d in a["dense"] if d["input"] == [C, H, W]), None)
    if exact:
        if exact["nullity"]:
            return "non-trivial", f"{where}: numerical nullity {exact['nullity']} (exact, dense)"
        return "trivial-exact", (f"{where}: trivial (exact, dense: sigma_min {exact['sigma_min']:.3g}, sigma_max "
                                 f"{exact['sigma_max']:.3g}, tol {exact['tol']:.3g}); no exact collider from the first "
                                 "layer")
    lo = a["lobpcg"]
    if lo is None:
        return "unknown", f"{where}: not established"
    if lo["sigma_min_estimate"] <= lo["tol"]:
        return "non-trivial", (f"{where}: numerically non-trivial (LOBPCG found a vector v with |Av| = "
                               f"{lo['sigma_min_estimate']:.3g} |v| <= tol {lo['tol']:.3g})")
    if not lo["converged"]:
        return "not-established", (f"{where}: no kernel vector found, triviality not established (LOBPCG did not "
                                   f"converge in {lo['iterations']} iterations: sigma_min <= "
                                   f"{lo['sigma_min_estimate']:.3g}, residual {lo['residual']:.1g}; tol "
                                   f"{lo['tol']:.2g}; see the exact small sizes); no exact collider from the first "
                                   "layer")
    return "trivial-estimate", (f"{where}: trivial to numerical precision (sigma_min ~ {lo['sigma_min_estimate']:.3g} "
                                f"by LOBPCG, an upper bound, residual {lo['residual']:.1g}; sigma_max "
                                f"{lo['sigma_max_estimate']:.3g}; tol {lo['tol']:.2g}); no exact collider from the "
                                "first layer")


def _evidence(a: dict) -> list[str]:
    """The other facts behind the verdict, one line each."""
    ev = [f"exact on {d['input'][0]}x{d['input'][1]}x{d['input'][2]} ({d['n_in']} -> {d['n_out']}): nullity "
          f"{d['nullity']}, sigma_min {d['sigma_min']:.3g}, sigma_max {d['sigma_max']:.3g}" for d in a["dense"]]
    c = a["circular"]
    if c:
        ev.append(f"circular (periodic) variant on {c['input'][0]}x{c['input'][1]}x{c['input'][2]}, exact: nullity "
                  f"{c['nullity']}, sigma_min {c['sigma_min']:.3g}, sigma_max {c['sigma_max']:.3g}")
    pp = a["per_patch_kernel"]
    ev.append(f"unfolded weight {pp['out']} x {pp['inp']}: nullity {pp['nullity']} (a statement about single "
              "patches, not about images)")
    return ev


def naive_tiling(conv: nn.Conv2d, in_shape: tuple[int, int, int], gen: torch.Generator,
                 rtol: float | None = None) -> torch.Tensor | None:
    """The paper's recipe applied to an overlapping conv: one kernel vector of the unfolded W
    (C*kh*kw) tiled over the image in non-overlapping kh x kw tiles. (C, H, W) float64, unit
    per tile; None when the unfolded W has a trivial kernel. It is not in the kernel of the
    whole-image map: :func:`verify` shows how much it changes the layer's output."""
    kh, kw = conv.kernel_size
    Wm = conv.weight.reshape(conv.weight.shape[0], -1)
    rank = matrix_rank(Wm, rtol)
    if rank.nullity == 0 or conv.groups != 1:
        return None
    phi, _ = kernel_vectors(Wm, 1, gen, rtol, rank)
    _, H, W = in_shape
    rows, cols = H // kh, W // kw
    cols_ = phi[0][None, :, None].expand(1, -1, rows * cols)
    return F.fold(cols_, output_size=(H, W), kernel_size=(kh, kw), stride=(kh, kw))[0]


# --------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------

def model_output(out) -> torch.Tensor:
    """Logits from a model's output: a tensor, ``.logits`` (Inception, GoogLeNet) or ``["out"]``."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, dict) and "out" in out:
        return out["out"]
    raise NullspaceError(f"the model's output ({type(out).__name__}) is not a tensor of logits")


def _layer_and_logits(model: nn.Module, layer: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    box = []
    h = dict(model.named_modules())[layer].register_forward_hook(lambda m, a, o: box.append(o.detach().clone()))
    try:
        with torch.no_grad():
            logits = model_output(model(x))
    finally:
        h.remove()
    return box[0], logits.detach()


def verify(model: nn.Module, layer: str, x: torch.Tensor, P: torch.Tensor, model64: nn.Module | None = None) -> dict:
    """How much x + P changes the first layer's output and the logits, against x, in float32
    (x + P rounded to float32, as saved) and in float64 (a float64 copy of the model; x and P
    in float64). x (1, ...) the model's input, P (...) float64. Max absolute changes and the
    same divided by the reference's max |value|."""
    model64 = model64 or copy.deepcopy(model).double()
    out = {}
    for key, m, dt in (("float32", model, torch.float32), ("float64", model64, torch.float64)):
        xa = x.to(dt)
        xb = xa + P.to(dt).reshape(x.shape)
        f0, l0 = _layer_and_logits(m, layer, xa)
        f1, l1 = _layer_and_logits(m, layer, xb)
        fd, ld = float((f1 - f0).abs().max()), float((l1 - l0).abs().max())
        fr, lr = float(f0.abs().max()), float(l0.abs().max())
        out[key] = {"first_layer_max_abs": fd, "first_layer_ref_max_abs": fr, "first_layer_rel": fd / max(fr, 1e-300),
                    "logits_max_abs": ld, "logits_ref_max_abs": lr, "logits_rel": ld / max(lr, 1e-300),
                    "top1": int(l0.reshape(l0.shape[0], -1)[0].argmax()),
                    "top1_collider": int(l1.reshape(l1.shape[0], -1)[0].argmax())}
    return out


def perturbation_size(P: torch.Tensor, x: torch.Tensor, pixel_scale: torch.Tensor | None) -> dict:
    """L2 and L-inf of P in model-input units, relative to x, and in 0..255 pixel levels
    (P * std * 255 per channel) when ``pixel_scale`` (C,) is given."""
    d = {"l2": float(P.norm()), "linf": float(P.abs().max()), "l2_over_x_l2": float(P.norm() / x.double().norm())}
    if pixel_scale is not None and P.ndim >= 3:
        Pp = P.reshape(-1, *P.shape[-2:]) * pixel_scale.double().view(-1, 1, 1)
        d.update(l2_pixels=float(Pp.norm()), linf_pixels=float(Pp.abs().max()))
    return d


# --------------------------------------------------------------------------------------------
# PGD start (the paper's colliding adversarial examples)
# --------------------------------------------------------------------------------------------

def pgd(model: nn.Module, x: torch.Tensor, steps: int, eps: float, pixel_scale: torch.Tensor | None,
        lo: torch.Tensor | None = None, hi: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Untargeted L-inf PGD from x (1, C, H, W) against the model's top-1 class. ``eps`` in
    0..255 pixel levels when ``pixel_scale`` (std * 255 per channel) is given, else in
    model-input units; steps of 2.5 * eps / steps; the result is kept inside [lo, hi]."""
    e = torch.full((x.shape[1],), float(eps)) if pixel_scale is None else eps / pixel_scale
    e = e.view(1, -1, *([1] * (x.ndim - 2))).to(x.dtype)
    alpha = 2.5 * e / steps
    with torch.no_grad():
        label = model_output(model(x)).reshape(1, -1).argmax(1)
    xa = x.clone()
    for _ in range(steps):
        xa.requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(model_output(model(xa)).reshape(1, -1), label)
            (g,) = torch.autograd.grad(loss, xa)
        with torch.no_grad():
            xa = torch.minimum(torch.maximum(xa + alpha * g.sign(), x - e), x + e)
            if lo is not None:
                xa = torch.minimum(torch.maximum(xa, lo), hi)
    with torch.no_grad():
        adv = int(model_output(model(xa)).reshape(1, -1).argmax(1))
    return xa.detach(), {"steps": steps, "eps": eps, "eps_units": "0..255 pixel levels" if pixel_scale is not None
                         else "model input", "label": int(label), "label_adversarial": adv, "success": adv != int(label)}


# --------------------------------------------------------------------------------------------
# The search
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class NullspaceResult:
    first_layer: dict
    kind: str
    start: torch.Tensor  # (1, ...) float32: the input the collider is compared with (x, or its PGD example)
    collider: torch.Tensor | None  # (1, ...) float32 = start + P rounded to float32, or None
    perturbation: torch.Tensor | None  # (...) float64 P
    beta: float | None
    construction: dict | None
    verification: dict | None
    size: dict | None
    analysis: dict | None  # overlapping convs: conv_map_analysis
    naive_tiling: dict | None
    pgd: dict | None
    exact: bool  # True only for a collider built from an exact kernel (linear / non-overlapping conv)
    summary: str
    seconds: float


def nullspace_search(model: nn.Module, x: torch.Tensor, config: NullspaceConfig = NullspaceConfig(),
                     pixel_scale: torch.Tensor | None = None, bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
                     progress: Callable[[str], None] | None = None) -> NullspaceResult:
    """Null-space search on ``model`` (eval mode) for one input ``x`` (1, ...) float32 in the
    model's input space. ``pixel_scale`` (C,): model-input units -> 0..255 pixel levels
    (std * 255 for ImageNet-normalised input); ``bounds``: the valid input range (for PGD).

    Linear and non-overlapping conv first layers: a collider x + beta * P, verified. Overlapping
    convs: no collider; the whole-image kernel analysis and the paper's naive tiling, measured.
    """
    t0 = time.perf_counter()
    say = progress or (lambda s: None)
    if x.ndim < 2 or x.shape[0] != 1:
        raise NullspaceError(f"expected one input of shape (1, ...), got {tuple(x.shape)}")
    model.eval()
    x = x.detach().float()
    fl = find_first_layer(model, x)
    desc = fl.describe()
    if not fl.reads_model_input:
        raise NullspaceError(f"the first trainable layer {fl.name} does not read the model's input directly (the "
                             "input is transformed first); the null-space search needs the input to reach it unchanged")
    gen = torch.Generator().manual_seed(config.seed)
    model64 = copy.deepcopy(model).double()
    pgd_info = None
    start = x
    if config.pgd_steps:
        say(f"PGD: {config.pgd_steps} steps, eps {config.pgd_eps}")
        lo, hi = bounds if bounds is not None else (None, None)
        start, pgd_info = pgd(model, x, config.pgd_steps, config.pgd_eps, pixel_scale, lo, hi)
    res = dict(first_layer=desc, kind=fl.kind, start=start, collider=None, perturbation=None, beta=None,
               construction=None, verification=None, size=None, analysis=None, naive_tiling=None, pgd=pgd_info,
               exact=False)
    if fl.kind in ("linear", "patch-conv"):
        say(f"kernel of {fl.name} ({desc['matrix_shape'][0]} x {desc['matrix_shape'][1]})")
        if fl.kind == "linear":
            P1, cons = linear_perturbation(fl.module, tuple(x.shape[1:]), config, gen)
        else:
            P1, cons = patch_perturbation(fl.module, tuple(x.shape[1:]), config, gen)
        beta = config.beta if config.beta is not None else 1.0 / float(P1.abs().max())
        P = beta * P1
        cons["beta_rule"] = "given" if config.beta is not None else "auto: max |P| = 1 in model-input units"
        cons["layer_residual_float64"] = _layer_residual(fl.module, P)
        say("verifying in float32 and float64")
        ver = verify(model, fl.name, start, P, model64)
        if pgd_info:
            ver["clean_top1"] = pgd_info["label"]
        collider = (start + P.float().reshape(start.shape)).detach()
        res.update(collider=collider, perturbation=P, beta=beta, construction=cons, verification=ver,
                   size=perturbation_size(P, start, pixel_scale), exact=True)
        v32, v64 = ver["float32"], ver["float64"]
        summary = (f"{fl.kind} first layer {fl.name}: kernel dimension {cons['kernel']['nullity']} "
                   f"(of {cons['kernel']['inp']}{' per patch' if fl.kind == 'patch-conv' else ''}); collider with "
                   f"beta {beta:.4g}: max rel. change of the first layer {v32['first_layer_rel']:.1e} (float32), "
                   f"{v64['first_layer_rel']:.1e} (float64); logits {v32['logits_rel']:.1e} / {v64['logits_rel']:.1e}")
    elif fl.kind == "overlapping-conv":
        conv = fl.module
        ana = conv_map_analysis(conv, tuple(x.shape[1:]), config, say, name=fl.name)
        naive = naive_tiling(conv, tuple(x.shape[1:]), gen, config.rtol)
        nt = None
        if naive is not None:
            P = naive / float(naive.abs().max())  # max |P| = 1, as the default beta of a collider
            v = verify(model, fl.name, start, P, model64)
            nt = {"beta": 1.0 / float(naive.abs().max()), "size": perturbation_size(P, start, pixel_scale),
                  "verification": v, "layer_residual_float64": _layer_residual(conv, P),
                  "note": "one kernel vector of the unfolded weight tiled in non-overlapping kernel-sized tiles "
                          "(the paper's P = beta [phi ... phi]); it is not in the kernel of the whole-image map"}
        res.update(analysis=ana, naive_tiling=nt)
        summary = ana["verdict"] + (f". Per-patch (unfolded weight {ana['per_patch_kernel']['out']} x "
                                    f"{ana['per_patch_kernel']['inp']}) nullity {ana['per_patch_kernel']['nullity']}")
        if nt:
            summary += (f"; the paper's tiling of one such vector changes the first layer's output by "
                        f"{nt['verification']['float64']['first_layer_rel']:.2g} (relative, float64)")
    else:
        summary = (f"first trainable layer {fl.name} is a {desc['type']}: not supported by the null-space search "
                   "(Linear and Conv2d are)")
    return NullspaceResult(**res, summary=summary, seconds=round(time.perf_counter() - t0, 2))


def _layer_residual(module: nn.Module, P: torch.Tensor) -> dict:
    """The layer's linear part (no bias) applied to P alone, in float64: max |W P|, and that
    divided by the largest sum of |w| |p| terms of one output (the scale of rounding errors)."""
    W64 = module.weight.detach().to("cpu", torch.float64)
    if isinstance(module, nn.Linear):
        p = P.reshape(1, -1)
        y, scale = p @ W64.T, p.abs() @ W64.abs().T
    else:
        p = P.reshape(1, *P.shape[-3:])
        y, scale = module._conv_forward(p, W64, None), module._conv_forward(p.abs(), W64.abs(), None)
    ymax = float(y.abs().max())
    return {"max_abs": ymax, "relative_to_sum_abs_terms": ymax / max(float(scale.max()), 1e-300)}


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------

def versions() -> dict:
    import scipy
    import torchvision

    return {"patchcollide": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": np.__version__, "scipy": scipy.__version__}


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"platform": platform.platform(), "cpu": cpu, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available()}


def imagenet_input(img: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float32 ImageNet-normalised model input."""
    x = torch.from_numpy(img).permute(2, 0, 1).float().unsqueeze(0) / 255.0
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def imagenet_pixels(x: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) model input (any float) -> (H, W, 3) float64 pixel values in 0..255 units (unclipped)."""
    x = x.detach().double()
    p = (x * torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)
         + torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1)) * 255.0
    return p[0].permute(1, 2, 0).numpy()


PIXEL_SCALE = torch.tensor(IMAGENET_STD) * 255.0  # model-input units -> 0..255 pixel levels, per channel


def imagenet_bounds() -> tuple[torch.Tensor, torch.Tensor]:
    """The model-input values of pixels 0 and 255, each (1, 3, 1, 1) float32."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (0 - mean) / std, (1 - mean) / std


def result_json(res: NullspaceResult) -> dict:
    return {"first_layer": res.first_layer, "kind": res.kind, "exact": res.exact, "summary": res.summary,
            "beta": res.beta, "construction": res.construction, "perturbation": res.size,
            "verification": res.verification, "analysis": res.analysis, "naive_tiling": res.naive_tiling,
            "pgd": res.pgd, "seconds": res.seconds}


def write_nullspace_run(out: str, res: NullspaceResult, image: np.ndarray, model: nn.Module, meta: dict,
                        overwrite: bool = False) -> dict:
    """Write the run directory ``out`` (into ``out.tmp-*``, renamed when complete).

    original.png   the input image (size x size) as the model saw it
    adversarial.png  with --pgd-steps: the PGD start, clipped to 0..255 for viewing
    collider.npy   (1, 3, H, W) float32 collider in the model's input space: exact (what was verified)
    collider.png   the collider in 0..255 pixels, rounded and clipped: for viewing, NOT exact
    perturbation.png  P scaled to 0..255 for viewing (128 = no change)
    report.json    config, versions, weights, first layer, kernel analysis, verification
    """
    from PIL import Image

    from .report import install_dir, save_png, write_json

    check_out(out, overwrite)
    parent = os.path.dirname(os.path.abspath(out)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(os.path.abspath(out)) + ".tmp-", dir=parent)
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the run directory is an ordinary folder
    report = {"kind": "patchcollide-nullspace", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **meta,
              "versions": versions(), "machine": machine(), "result": result_json(res)}
    try:
        save_png(Image.fromarray(image), os.path.join(tmp, "original.png"))
        if res.pgd:
            save_png(Image.fromarray(np.clip(np.rint(imagenet_pixels(res.start)), 0, 255).astype(np.uint8)),
                     os.path.join(tmp, "adversarial.png"))
        if res.collider is not None:
            np.save(os.path.join(tmp, "collider.npy.tmp.npy"), res.collider.numpy().astype(np.float32))
            os.replace(os.path.join(tmp, "collider.npy.tmp.npy"), os.path.join(tmp, "collider.npy"))
            pix = imagenet_pixels(res.collider)
            clipped = (pix < -0.5) | (pix > 255.5)
            png = np.clip(np.rint(pix), 0, 255).astype(np.uint8)
            save_png(Image.fromarray(png), os.path.join(tmp, "collider.png"))
            Pp = res.perturbation.reshape(3, *res.perturbation.shape[-2:]) * PIXEL_SCALE.double().view(3, 1, 1)
            Pp = Pp.permute(1, 2, 0).numpy()
            view = np.clip(np.rint(127.5 + 127.5 * Pp / max(float(np.abs(Pp).max()), 1e-12)), 0, 255).astype(np.uint8)
            save_png(Image.fromarray(view), os.path.join(tmp, "perturbation.png"))
            back = imagenet_input(png)
            with torch.no_grad():
                l0 = model_output(model(res.start))
                l1 = model_output(model(back))
            report["png"] = {
                "clipped_values": int(clipped.sum()), "clipped_pixels": int(clipped.any(axis=2).sum()),
                "values": int(clipped.size),
                "logits_rel_change_png": float((l1 - l0).abs().max() / max(float(l0.abs().max()), 1e-300)),
                "top1_png": int(l1.argmax()), "top1_start": int(l0.argmax()),
                "note": "collider.png is rounded to integers and clipped to 0..255: it is for viewing and does not "
                        "collide exactly; collider.npy holds the exact float32 collider in the model's input space"}
        write_json(report, os.path.join(tmp, "report.json"))
        check_out(out, overwrite)
        install_dir(tmp, out)
        tmp = None
    except BaseException:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def check_out(out: str, overwrite: bool) -> None:
    occupied = os.path.isfile(out) or (os.path.isdir(out) and bool(os.listdir(out)))
    if not occupied:
        return
    if not overwrite:
        raise NullspaceError(f"--out {out} already exists; choose another name or pass --overwrite")
    try:
        import json

        with open(os.path.join(out, "report.json")) as fh:
            ok = json.load(fh).get("kind") == "patchcollide-nullspace"
    except (OSError, ValueError, AttributeError):
        ok = False
    if not ok:
        raise NullspaceError(f"--out {out} holds files that are not a nullspace run; --overwrite only replaces those")
