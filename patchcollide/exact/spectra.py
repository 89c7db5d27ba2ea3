"""Overlapping convolutions (ResNet's 7x7/2, AlexNet's 11x11/4) as linear maps on the whole
image, R^(C*H*W) -> R^(O*H'*W'): the kernel that matters for an exact collision is that of this
map, not the kernel of the unfolded weight W.

:func:`conv_map_analysis` computes it exactly (dense Gram matrix) at small sizes, exactly for
the circular (periodic) variant at the real size (Fourier symbol), and estimates sigma_min at
the real size with LOBPCG; its one-line verdict never claims more than was found.
:func:`naive_tiling` builds the paper's tiling of a per-patch kernel vector, which the search
shows to change the layer's output. No collider is built here.
"""
from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import NullspaceConfig
from .kernel import kernel_vectors
from .table import EPS64, default_rtol, matrix_rank


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
    whole-image map: :func:`patchcollide.exact.verify.verify` shows how much it changes the
    layer's output."""
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

