"""The relative error between activations, the one number ``tol`` is about.

For a target post-activation relu(z_t) (D,) and a batch of activations (B, D), the relative
error of row b is ||x_b - relu(z_t)|| / ||relu(z_t)||, the target's norm floored at 1e-12 so
that an all-zero target divides by a tiny number instead of zero. The loop stops on it, the
metrics report it, the polytope samples are measured by it.
"""
from __future__ import annotations

import torch

FLOOR = 1e-12  # the smallest target norm divided by: an all-zero target gives large errors, not NaN


def reference_norm(ref: torch.Tensor) -> torch.Tensor:
    """||ref|| of the target's vector (D,), at least FLOOR: the relative error's denominator (0-dim)."""
    return ref.norm().clamp_min(FLOOR)


def relative_distance(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """||x_b - ref|| / ||ref|| per row of x (B, D) against ref (D,): (B,), same dtype."""
    return (x - ref).norm(dim=1) / reference_norm(ref)


def relative_error(z: torch.Tensor, target) -> torch.Tensor:
    """||relu(z) - relu(z_t)|| / ||relu(z_t)|| per row of pre-activations z (B, D): (B,), the
    error ``tol`` is about. ``target``: a Target (its ``post``, relu(z_t) (D,), on z's device)."""
    return relative_distance(torch.relu(z), target.post)
