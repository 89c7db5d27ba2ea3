"""The vertex objective of Li et al. 2019 and the collision metrics. Imports nothing of ours.

For a target with pre-activation z_t (D,), active set s = 1[z_t > 0] and vertex v's own
inactive unit j_v:

    L+(z)      = 0.5 * || relu(z_t) - z * s ||^2                 (sum, as the authors')
    L+post(z)  = 0.5 * || relu(z_t) - z * s - relu(z) * (1 - s) ||^2   (objective "post")
    L-^v(z)    = z[j_v] + sum_{j inactive, j != j_v} |z[j]|
    TV(w)      = sum |horizontal diff| + sum |vertical diff| of the mixing weights

A vertex minimises a * L+ + b * L-^v (+ c * TV). Every input whose active units equal
z_t's and whose inactive units stay <= 0 collides at the ReLU; pushing a different inactive
unit down for each vertex spreads the vertices over that polytope.

The authors' L+ looks at the active units only, and L-^v weighs a target-inactive unit that
turns positive no more than its own unit going down, so at the end a few inactive units sit
above zero and the collision is off by that much. "post" puts the post-activation mismatch
into L+ instead (its square root is the relative error the loop stops on). On the digit MLP
(scikit-learn digits, 4000 steps) it takes the worst relative error from 4.9e-2 to 4.7e-3 at
the same vertex spread; on random VGG-16 (64 x 64, 300 steps, far from converged) the two
end alike (6.2e-2 / 6.0e-2).
"""
from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass
class Target:
    """What a collision aims at. z: fc6 pre-activation (D,); units: (V,) inactive unit per vertex."""

    z: torch.Tensor
    units: torch.Tensor
    label: int  # the target's top-1 class
    prob: float  # its top-1 probability

    @property
    def active(self) -> torch.Tensor:
        return self.z > 0

    @property
    def post(self) -> torch.Tensor:
        return torch.relu(self.z)


def choose_units(z_t: torch.Tensor, n: int) -> torch.Tensor:
    """The target's ``n`` most negative pre-activations, most negative first (V,) int64.

    The authors took the first five inactive indices; the most negative ones are the units
    furthest from switching on, so pushing them further down moves the vertex without
    threatening the collision, and they differ for every target.
    """
    inactive = torch.nonzero(z_t <= 0).flatten()
    if len(inactive) < n:
        raise ValueError(f"the target has only {len(inactive)} inactive units; ask for at most that many vertices")
    order = torch.argsort(z_t[inactive])
    return inactive[order[:n]]


OBJECTIVES = ("paper", "post")


def loss_terms(z: torch.Tensor, target: Target, objective: str = "paper") -> tuple[torch.Tensor, torch.Tensor]:
    """(L+ (V,), L-^v (V,)) for pre-activations z (V, D), vertex v using target.units[v].

    objective "paper": L+ over the target's active units (the authors'); "post": L+ over the
    whole post-activation, so target-inactive units that turn positive are pulled back."""
    active = target.active
    reached = z * active
    if objective == "post":
        reached = reached + torch.relu(z) * (~active)
    elif objective != "paper":
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    pos = 0.5 * ((target.post - reached) ** 2).sum(1)
    own = z.gather(1, target.units[:, None]).squeeze(1)
    neg = (z.abs() * (~active)).sum(1) - own.abs() + own
    return pos, neg


def total_variation(w: torch.Tensor) -> torch.Tensor:
    """TV of mixing weights (V, ..., H, W) -> (V,): sum of absolute neighbour differences."""
    dx = (w[..., :, 1:] - w[..., :, :-1]).abs().flatten(1).sum(1)
    dy = (w[..., 1:, :] - w[..., :-1, :]).abs().flatten(1).sum(1)
    return dx + dy


@torch.no_grad()
def collision_metrics(z: torch.Tensor, logits: torch.Tensor | None, target: Target) -> dict[str, list]:
    """Per-vertex metrics (lists of V floats or ints):

    rel_error: ||relu(z) - relu(z_t)|| / ||relu(z_t)||; max_abs_active: max |z - z_t| over the
    target's active units; n_inactive_positive: target-inactive units that became positive;
    unit_value: z at the vertex's own unit; top1 / top1_prob: class and probability;
    target_class_prob: probability of the target's class.
    """
    active = target.active
    post = torch.relu(z)
    rel = (post - target.post).norm(dim=1) / target.post.norm().clamp_min(1e-12)
    out = {
        "rel_error": rel.tolist(),
        "max_abs_active": (z - target.z)[:, active].abs().amax(1).tolist() if active.any() else [0.0] * len(z),
        "n_inactive_positive": ((z > 0) & ~active).sum(1).tolist(),
        "unit": target.units.tolist(),
        "unit_value": z.gather(1, target.units[:, None]).squeeze(1).tolist(),
    }
    if logits is not None:
        p = torch.softmax(logits.float(), 1)
        prob, top = p.max(1)
        out.update(top1=top.tolist(), top1_prob=prob.tolist(), target_class_prob=p[:, target.label].tolist())
    return out
