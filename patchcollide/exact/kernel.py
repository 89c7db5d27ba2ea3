"""Kernel vectors of a first layer's weight matrix and the perturbations P built from them
(Ozbulak et al. 2022, the Null-space search), before the multiplier beta:

* Linear first layer: P in ker(W) (the layer reads the model input, flattened);
* a convolution whose stride is at least its kernel (padding 0, dilation 1, groups 1: patch
  embeddings such as ViT's): per-patch kernel vectors of W placed in every patch; pixels that
  lie in no patch are not read by the layer at all and are left unchanged.

Modes: ``repeat`` (one kernel vector in every patch: the paper's P = beta [phi ... phi]),
``several`` (``vectors`` different kernel vectors over the patches; for a linear layer a
random combination of them), ``regions`` (per-region multipliers beta_i on a 2 x 2 grid of
regions, one of them 0 so that part of the image stays untouched). Kernel vectors are unit
vectors drawn from the kernel (seeded Gaussian vectors projected on the kernel), in the
model's input space (ImageNet-normalised for torchvision classifiers).
"""
from __future__ import annotations


import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import NullspaceConfig, NullspaceError
from .table import Rank, matrix_rank

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

