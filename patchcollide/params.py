"""Search spaces: what the vertex loop optimises, and how it draws the image.

Each parameterisation is an ``nn.Module`` whose ``forward()`` returns the V vertex images
(V, 3, H, W) float32 in [0, 1], with ``project()`` to apply after each optimiser step and
``mixing_weights()`` (or None) for the TV term. Pixel and patch space share one loop.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

PATCH = 32


class PixelParam(nn.Module):
    """The paper's vanilla method: the pixels themselves, kept in [0, 1] by projection.

    init (V, 3, H, W) in [0, 1]: the target or another image, repeated per vertex.
    """

    def __init__(self, init: torch.Tensor):
        super().__init__()
        self.x = nn.Parameter(init.detach().clone().float().clamp(0, 1))

    def forward(self) -> torch.Tensor:
        return self.x

    @torch.no_grad()
    def project(self) -> None:
        self.x.clamp_(0, 1)

    def mixing_weights(self) -> torch.Tensor | None:
        return None


def tent(size: int = PATCH) -> torch.Tensor:
    """Separable tent (bilinear) window (size, size), positive everywhere, peak in the middle."""
    c = (size - 1) / 2
    t = 1.0 - (torch.arange(size, dtype=torch.float32) - c).abs() / (c + 1)
    return t[:, None] * t[None, :]


class PatchParam(nn.Module):
    """Per-pixel softmax mixture of retrieved real patches.

    candidates: (L, K, 3, 32, 32) float32 in [0, 1]: the K nearest stored patches for each
    of L locations; yx: (L, 2) top-left corners of the locations in the (H, W) image.
    Logits theta (V, L, K, 32, 32): one per vertex, candidate and covered pixel. At every
    pixel, the weights of all candidates covering it are a softmax of their logits there,
    so each output pixel is a convex combination of retrieved patch pixels.

    Memory: theta holds V * L * K * 1024 float32 (V=5, L=625, K=16: 205 MB), Adam two
    more copies, the candidates L * K * 3072 float32 (123 MB).
    Logits start at log(tent) (the authors' normalised bilinear window) plus N(0, noise)
    seeded per vertex; they are clamped to [-30, 30] so the softmax cannot underflow.
    """

    CLAMP = 30.0

    def __init__(self, candidates: torch.Tensor, yx: np.ndarray | torch.Tensor, size: tuple[int, int], vertices: int,
                 noise: float = 0.01, seed: int = 0):
        super().__init__()
        L, K = candidates.shape[:2]
        H, W = size
        self.size = (H, W)
        self.register_buffer("cand", candidates.float())
        yx = torch.as_tensor(np.asarray(yx), dtype=torch.int64)
        if yx.shape != (L, 2) or int(yx[:, 0].max()) + PATCH > H or int(yx[:, 1].max()) + PATCH > W:
            raise ValueError(f"locations {tuple(yx.shape)} do not fit candidates {tuple(candidates.shape)} in {size}")
        dy, dx = torch.meshgrid(torch.arange(PATCH), torch.arange(PATCH), indexing="ij")
        pix = (yx[:, 0, None, None] + dy) * W + (yx[:, 1, None, None] + dx)  # (L, 32, 32) flat pixel index
        self.register_buffer("pix", pix.reshape(-1))
        coverage = torch.zeros(H * W).index_add_(0, self.pix, torch.ones(self.pix.numel()))
        if (coverage == 0).any():
            raise ValueError("the locations leave pixels uncovered; use a grid that covers the image")
        g = torch.Generator().manual_seed(seed)
        base = tent().log().expand(vertices, L, K, PATCH, PATCH)
        self.theta = nn.Parameter(base + noise * torch.randn(base.shape, generator=g))

    def _weights_unnormalised(self) -> torch.Tensor:
        # A shift by the per-vertex max keeps exp() in range; the softmax is shift invariant.
        t = self.theta
        return torch.exp(t - t.detach().flatten(1).amax(1).view(-1, 1, 1, 1, 1))

    def _scatter(self, v: torch.Tensor) -> torch.Tensor:
        """(V, C, L*32*32) values at the locations' pixels -> (V, C, H*W) summed per pixel."""
        out = v.new_zeros(v.shape[0], v.shape[1], self.size[0] * self.size[1])
        return out.index_add(2, self.pix, v)

    def forward(self) -> torch.Tensor:
        V, L, K = self.theta.shape[:3]
        e = self._weights_unnormalised()  # (V, L, K, 32, 32)
        num = torch.einsum("vlkyx,lkcyx->vclyx", e, self.cand).reshape(V, 3, -1)
        den = e.sum(2).reshape(V, 1, -1)
        img = self._scatter(num) / self._scatter(den)
        return img.view(V, 3, *self.size)

    def mixing_weights(self) -> torch.Tensor:
        """Normalised weight of every candidate at every pixel it covers: (V, L, K, 32, 32);
        at each image pixel the weights of the candidates covering it sum to 1."""
        V, L, K = self.theta.shape[:3]
        e = self._weights_unnormalised()
        den = self._scatter(e.sum(2).reshape(V, 1, -1))[:, 0]  # (V, H*W)
        return e / den[:, self.pix].view(V, L, 1, PATCH, PATCH)

    @torch.no_grad()
    def project(self) -> None:
        self.theta.clamp_(-self.CLAMP, self.CLAMP)
