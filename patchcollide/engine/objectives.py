"""The vertex objective of Li et al. 2019, its normalised form, and the collision metrics.
The objectives are classes of ``objective_traits.Objective`` (the contract), put into the
torch-free registry ``OBJECTIVES`` in place of their traits when this module is imported.

For a target with pre-activation z_t (D,), active set s = 1[z_t > 0] and vertex v's own
inactive unit j_v, the authors' terms (objective "paper") are sums:

    L+(z)      = 0.5 * || relu(z_t) - z * s ||^2
    L+post(z)  = 0.5 * || relu(z_t) - z * s - relu(z) * (1 - s) ||^2   (objective "post")
    L-^v(z)    = z[j_v] + sum_{j inactive, j != j_v} |z[j]|

The default objective "relative" normalises both terms, so that one set of weights carries
across input sizes, layers and models:

    L+(z)      = || relu(z_t) - z * s - relu(z) * (1 - s) || / || relu(z_t) ||
    L-^v(z)    = relu(z[j_v] / |z_t[j_v]| + m)

L+ is then the relative post-activation error the loop stops on (on the active units it
compares pre-activations, so a unit that should be on is pulled up even while it is off).
It is the norm, not its square: with Adam the squared loss's gradient shrinks with the
error and the steps stall. L-^v is a hinge on the vertex's own unit in units of the target's
value there: it pushes z[j_v] down to -m |z_t[j_v]| (``push_margin``, 2.2: below twice the
target's value) and then lets go, so that the collision can tighten without the push
pulling against it for ever. The authors' sum over the other inactive units is left out:
it pulls every inactive unit towards zero, towards the polytope's faces, and works against
the push.

    TV(w), H(w): the seams and the entropy of the patch mixture's weights, per pixel
                 (``params.PatchParam.total_variation`` and ``entropy``)

A vertex minimises a * L+ + b * L-^v (+ c * TV + e * H), each a term of ``terms.py`` (L+ and
L-^v come from one call of the registered objective per step). Every input whose active units
equal z_t's and whose inactive units stay <= 0 collides at the ReLU; pushing a different
inactive unit down for each vertex spreads the vertices over that polytope.
"""
from __future__ import annotations

import torch

from .distance import relative_distance
from .objective_traits import OBJECTIVES, Objective, PaperTraits, PostTraits, RelativeTraits
from .target import Target


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


def unit_values(z: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """z[v, units[v]] for pre-activations z (V, D): each vertex's value at its own unit (V,)."""
    return z.gather(1, units[:, None].to(z.device)).squeeze(1)


def push_ratio(z: torch.Tensor, target: Target) -> torch.Tensor:
    """z_v[j_v] / z_t[j_v] per vertex (V,): 1 where the vertex sits at the target's value, 2 at
    twice as far below zero. The target's units are inactive (z_t[j] <= 0); a unit at exactly 0
    is measured against a tiny negative value instead of dividing by zero."""
    zt = target.z[target.units.to(target.z.device)].to(z.device)
    return unit_values(z, target.units) / zt.clamp(max=-1e-6)


def own_unit_lowest(z: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """(V,) bool: vertex v's value at its own unit j_v is below every other vertex's value at
    j_v, i.e. each vertex is the furthest corner in its own direction (True for one vertex)."""
    at = z[:, units.to(z.device)]  # (V vertices, V units)
    own = at.diagonal()
    others = at.masked_fill(torch.eye(len(units), dtype=torch.bool, device=z.device), float("inf"))
    return own < others.amin(0)


def _reached(z: torch.Tensor, target: Target, whole_post: bool) -> torch.Tensor:
    """z on the target's active units; with ``whole_post`` also relu(z) on its inactive ones."""
    active = target.active
    reached = z * active
    if whole_post:
        reached = reached + torch.relu(z) * (~active)
    return reached


def _authors_sums(z: torch.Tensor, target: Target, reached: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pos = 0.5 * ((target.post - reached) ** 2).sum(1)
    own = unit_values(z, target.units)
    neg = (z.abs() * (~target.active)).sum(1) - own.abs() + own
    return pos, neg


class Relative(RelativeTraits):
    """Normalised L+ (the relative post-activation error) and the hinge L-^v that pushes z[j_v]
    to -push_margin * |z_t[j_v]|."""

    def __call__(self, z: torch.Tensor, target: Target) -> tuple[torch.Tensor, torch.Tensor]:
        reached = _reached(z, target, whole_post=True)
        pos = relative_distance(reached, target.post)
        neg = torch.relu(self.push_margin - push_ratio(z, target))
        return pos, neg


class Paper(PaperTraits):
    """The authors' sums, L+ over the target's active units."""

    def __call__(self, z: torch.Tensor, target: Target) -> tuple[torch.Tensor, torch.Tensor]:
        return _authors_sums(z, target, _reached(z, target, whole_post=False))


class Post(PostTraits):
    """The authors' sums, L+ over the whole post-activation, so target-inactive units that turn
    positive are pulled back."""

    def __call__(self, z: torch.Tensor, target: Target) -> tuple[torch.Tensor, torch.Tensor]:
        return _authors_sums(z, target, _reached(z, target, whole_post=True))


OBJECTIVES.update(relative=Relative, paper=Paper, post=Post)  # the classes take their traits' places


def make_objective(name: str = "relative", push_margin: float = 2.2, options=()) -> Objective:
    """The registered objective ``name`` (``OBJECTIVES``) with its push margin and its own
    ``options`` ((name, value) pairs, as ``CollideConfig.objective_options``)."""
    if name not in OBJECTIVES:
        raise ValueError(OBJECTIVES.unknown(name))
    return OBJECTIVES[name](push_margin, **dict(options))


def loss_terms(z: torch.Tensor, target: Target, objective: str = "relative",
               push_margin: float = 2.2, options=()) -> tuple[torch.Tensor, torch.Tensor]:
    """(L+ (V,), L-^v (V,)) for pre-activations z (V, D), vertex v using target.units[v], by the
    registered ``objective`` (``OBJECTIVES``) with its ``options``."""
    return make_objective(objective, push_margin, options)(z, target)


@torch.no_grad()
def collision_metrics(z: torch.Tensor, logits: torch.Tensor | None, target: Target) -> dict[str, list]:
    """Per-vertex metrics (lists of V floats or ints):

    rel_error: ||relu(z) - relu(z_t)|| / ||relu(z_t)||; max_abs_active: max |z - z_t| over the
    target's active units; n_inactive_positive: target-inactive units that became positive;
    unit_value: z at the vertex's own unit; push: unit_value / z_t[unit] (2: twice as far below
    zero as the target); top1 / top1_prob: class and probability; target_class_prob:
    probability of the target's class.
    """
    active = target.active
    post = torch.relu(z)
    rel = relative_distance(post, target.post)
    out = {
        "rel_error": rel.tolist(),
        "max_abs_active": (z - target.z)[:, active].abs().amax(1).tolist() if active.any() else [0.0] * len(z),
        "n_inactive_positive": ((z > 0) & ~active).sum(1).tolist(),
        "unit": target.units.tolist(),
        "unit_value": unit_values(z, target.units).tolist(),
        "push": push_ratio(z, target).tolist(),
        "own_unit_lowest": own_unit_lowest(z, target.units).tolist(),
    }
    if logits is not None:
        p = torch.softmax(logits.float(), 1)
        prob, top = p.max(1)
        out.update(top1=top.tolist(), top1_prob=prob.tolist(), target_class_prob=p[:, target.label].tolist())
    return out
