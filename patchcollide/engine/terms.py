"""The vertex loss as terms (lucent's ``objectives.py``): each term of the loss is an object that
carries its own parameters, its weight rule and its history column, and the loop
(``collide.optimise``) only sums ``weight * value`` over the list, steps, records and stops.

The built-in terms, in the order the loss adds them (``TERMS``), with their history columns:

    collision     "pos"           L+ (V,); weight a of ``loss_early`` / ``loss_late`` by phase
    push          "neg"           L-^v (V,); weight b of the same
    least_change  "least_change"  each vertex's RMS distance (V,) to its anchor, pixels in [0, 1];
                                  a weight per vertex that follows the net's decision, kept in
                                  "least_change_weight" with the fooled count in "fooled"
    tv            "tv"            the mixing weights' seams (V,); weight ``tv``
    entropy       "entropy"       the mixing weights' entropy (V,), nats; weight ``entropy``
                                  after ``switch``, 0 before
    (TV and entropy weights are multiplied by ``settle_factor`` after the last prune.)

L+ and L-^v come from the registered objective (``objectives.OBJECTIVES``, ``--objective``),
computed once per step for both terms; the mixing weights are computed once for TV and entropy
(``Context``). A term that is off in a run (``--least-change 0``, TV and entropy in a space that
does not mix) is built as :class:`Off`: it adds nothing and keeps its history column at 0, as
the reports read it.

A new term is one class and one line::

    class Brightness(Term):
        key = "brightness"                       # its history column
        def value(self, ctx): return -ctx.x.mean((1, 2, 3))   # (V,), differentiable
        def weight(self, ctx): return 0.1        # a float, or (V,) per vertex

    terms.TERMS["brightness"] = Brightness       # the loss adds it after the built-ins

A term whose parameters come from the config reads them in ``from_config``; one with a state
that changes from step to step keeps it in the history (``ctx.history``; the least-change
weights), so that a resumed run goes on bit-identical. Imports only ``objectives``.
"""
from __future__ import annotations

import dataclasses
import functools

import torch

from .objectives import Target, loss_terms, relative_error

FOOL_GAP = 0.002  # a vertex "fools" the net: the target's class, top-class prob. this close to the target's


@dataclasses.dataclass
class Context:
    """What the terms of one step share, each computed once.

    x (V, 3, H, W) the rendered vertices in [0, 1]; z (V, D) their pre-activations; with
    ``centroid`` (a term reads the net's decision) also z_all (V + 1, D) and logits (V + 1, K)
    (detached) of the vertices and their centroid, from one forward pass (z: z_all's first V
    rows); ``history``: the run's record up to the step before. ``objective`` (L+ (V,), L-^v (V,)) and ``mixing_weights``
    (V, H*W, M) are computed at their first use and kept.
    """

    step: int
    config: object  # the run's collide.CollideConfig
    phases: dict  # config.phases()
    param: torch.nn.Module
    target: Target
    history: dict
    x: torch.Tensor
    z: torch.Tensor
    z_all: torch.Tensor | None = None
    logits: torch.Tensor | None = None

    @classmethod
    def of(cls, tap, param: torch.nn.Module, target: Target, config, phases: dict, step: int, history: dict,
           centroid: bool) -> "Context":
        """Render the vertices and run the net on them (with their centroid where ``centroid``)."""
        x = param()
        if not centroid:
            return cls(step, config, phases, param, target, history, x, tap.pre(x))
        z_all, logits = tap.pre_and_logits(torch.cat([x, x.mean(0, keepdim=True)]))
        return cls(step, config, phases, param, target, history, x, z_all[:-1], z_all, logits.detach())

    @property
    def late(self) -> bool:
        """After ``switch``: the tighten phase."""
        return self.step > self.phases["switch"]

    @property
    def calm(self) -> float:
        """``settle_factor`` after the last prune, else 1."""
        settled = self.phases["prune"] and self.step > self.phases["last_prune"]
        return self.config.settle_factor if settled else 1.0

    @functools.cached_property
    def objective(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(L+ (V,), L-^v (V,)) of the registered ``config.objective``."""
        return loss_terms(self.z, self.target, self.config.objective, self.config.push_margin)

    @functools.cached_property
    def mixing_weights(self) -> torch.Tensor | None:
        return self.param.mixing_weights()


class Term:
    """One term of the vertex loss. ``value(ctx)`` (V,) differentiable; ``weight(ctx)`` a float
    or (V,); ``record`` appends what the step measured under the term's history columns.

    Class members: ``key`` (its history column), ``columns`` (every column it writes),
    ``centroid`` (it reads ``ctx.logits`` / ``ctx.z_all``), ``holds`` (the run does not stop on
    ``tol`` while the term is in the loss: it holds the vertices somewhere else)."""

    key: str = ""
    centroid = False
    holds = False

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.key,)

    @classmethod
    def from_config(cls, config, tap, target: Target, anchor: torch.Tensor | None, param) -> "Term":
        """The term for this run (``Off(cls)`` where it is off); by default ``cls()``."""
        return cls()

    def value(self, ctx: Context) -> torch.Tensor:
        raise NotImplementedError

    def weight(self, ctx: Context) -> float | torch.Tensor:
        raise NotImplementedError

    def record(self, ctx: Context, value: torch.Tensor, history: dict) -> None:
        """After the step: the mean of the step's value over the vertices."""
        history.setdefault(self.key, []).append(float(value.detach().mean()))

    def converged(self, history: dict) -> bool:
        """Whether the run has done what the term is for at its end (beside ``tol``)."""
        return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.key!r})"


class Off(Term):
    """A term that is off in this run: it adds 0 and keeps its history column at 0."""

    def __init__(self, term: type[Term]):
        self.key = term.key

    def value(self, ctx: Context) -> torch.Tensor:
        return torch.zeros(len(ctx.z), device=ctx.z.device)

    def weight(self, ctx: Context) -> float:
        return 0.0


class Collision(Term):
    """L+: the collision, from the registered objective; weight a of (a, b) by phase."""

    key = "pos"

    def __init__(self, early: float, late: float):
        self.early, self.late = early, late

    @classmethod
    def from_config(cls, config, tap, target, anchor, param) -> Term:
        return cls(config.loss_early[0], config.loss_late[0])

    def value(self, ctx: Context) -> torch.Tensor:
        return ctx.objective[0]

    def weight(self, ctx: Context) -> float:
        return self.late if ctx.late else self.early


class Push(Collision):
    """L-^v: each vertex's push on its own unit, from the registered objective; weight b."""

    key = "neg"

    @classmethod
    def from_config(cls, config, tap, target, anchor, param) -> Term:
        return cls(config.loss_early[1], config.loss_late[1])

    def value(self, ctx: Context) -> torch.Tensor:
        return ctx.objective[1]


def least_change_distance(x: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """RMS distance (V,) of images x (V, 3, H, W) to ``anchor`` (1, 3, H, W), pixels in [0, 1]."""
    return ((x - anchor) ** 2).flatten(1).mean(1).add(1e-12).sqrt()


def frontier_of(tap) -> str:
    """What the least-change weights follow: "decision", the net's class and confidence on each
    vertex (a trained net), or "tol", the collision within ``tol`` (random weights, whose
    decision is degenerate: random VGG-16 puts 88% of photos in one class)."""
    return "tol" if getattr(getattr(tap, "weights", None), "kind", None) == "random" else "decision"


def least_change_weights(config, previous: list[float] | None, fooled: torch.Tensor,
                         grow: bool = True) -> list[float]:
    """Each vertex's least-change weight for the next step (V,), from its weight at this step
    (None: ``least_change``) and whether the vertex fools the net now (``fooled`` (V,) bool: it
    and the vertices' centroid are in the target's class, top-class probability within FOOL_GAP
    of the target's: the polytope's samples lie between the vertices). A vertex that fools
    the net moves closer to its anchor (weight times ``least_change_rate``, unless ``grow`` is
    False: the last fifth of the steps, so that every vertex ends on the fooling side); one that
    does not lets the collision pull at once (weight divided by the rate cubed), within
    0.1 .. 10 times ``least_change``.
    So every vertex settles where it stops fooling the net: as close to its source as the
    net's decision allows, however loose or tight that is for the pair (C&W's search for the
    constant, done per step). The weights are kept in the history: a resumed run takes the same."""
    base = config.least_change
    w = torch.full((len(fooled),), base) if previous is None else torch.tensor(previous)
    r = config.least_change_rate
    w = torch.where(fooled.cpu(), w * (r if grow else 1.0), w / r**3)
    return w.clamp(base * 0.1, base * 10).tolist()


class LeastChange(Term):
    """Each vertex's RMS distance to ``anchor`` (1, 3, H, W), with a weight per vertex that
    follows the net's decision (``next_weights``; kept in the history as
    "least_change_weight", with the number of fooling vertices as "fooled"). The run takes all
    its steps (``holds``) and has converged when every vertex fools the net at its last step."""

    key = "least_change"
    centroid = True
    holds = True

    def __init__(self, config, anchor: torch.Tensor, frontier: str):
        self.config, self.anchor, self.frontier = config, anchor, frontier

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.key, "least_change_weight", "fooled")

    @classmethod
    def from_config(cls, config, tap, target, anchor, param) -> Term:
        return Off(cls) if anchor is None else cls(config, anchor, frontier_of(tap))

    def value(self, ctx: Context) -> torch.Tensor:
        return least_change_distance(ctx.x, self.anchor)

    def weight(self, ctx: Context) -> torch.Tensor:
        w = ctx.history["least_change_weight"]
        return torch.tensor(w[-1] if w else [self.config.least_change] * len(ctx.z), device=ctx.z.device)

    @torch.no_grad()
    def fooled(self, ctx: Context) -> torch.Tensor:
        """(V,) bool: the vertex and the vertices' centroid fool the net: the target's class with a
        top-class probability within FOOL_GAP of the target's (a trained net), or the collision
        within ``tol`` (random weights, frontier "tol")."""
        t = ctx.target
        if self.frontier == "decision":
            prob, top = torch.softmax(ctx.logits.float(), 1).max(1)
            at = (top == t.label) & ((prob - t.prob).abs() <= FOOL_GAP)
        else:  # random weights: the net's decision says nothing; the collision within tol instead
            at = relative_error(ctx.z_all.detach(), t) <= self.config.tol
        return at[:-1] & at[-1]  # the polytope's samples lie between the vertices

    def next_weights(self, ctx: Context, fooled: torch.Tensor) -> list[float]:
        """The weight rule: ``least_change_weights``, no growth in the last fifth of the steps."""
        w = ctx.history["least_change_weight"]
        return least_change_weights(self.config, w[-1] if w else None, fooled,
                                    grow=ctx.step <= 0.8 * self.config.steps)

    def record(self, ctx: Context, value: torch.Tensor, history: dict) -> None:
        super().record(ctx, value, history)
        fooled = self.fooled(ctx)
        history["least_change_weight"].append(self.next_weights(ctx, fooled))
        history["fooled"].append(int(fooled.sum()))

    def converged(self, history: dict) -> bool:
        # the vertices hold at the edge of the net's decision, not at tol: a run whose every
        # vertex fools the net at its last step has done what it was for
        return bool(history["fooled"]) and history["fooled"][-1] == len(history["least_change_weight"][-1])


class Seams(Term):
    """TV of the mixing weights (V,): coherent regions over speckle; weight ``tv`` (times the
    settle factor after the last prune). Off where the space does not mix."""

    key = "tv"

    def __init__(self, weight: float):
        self.base = weight

    @classmethod
    def from_config(cls, config, tap, target, anchor, param) -> Term:
        return cls(config.tv) if param.mixes else Off(cls)

    def value(self, ctx: Context) -> torch.Tensor:
        return ctx.param.total_variation(ctx.mixing_weights)

    def weight(self, ctx: Context) -> float:
        return ctx.calm * self.base


class Entropy(Seams):
    """Entropy of the mixing weights (V,), nats: sharper mixtures; weight ``entropy`` after
    ``switch`` (times the settle factor after the last prune), 0 before. Off where the space
    does not mix."""

    key = "entropy"

    @classmethod
    def from_config(cls, config, tap, target, anchor, param) -> Term:
        return cls(config.entropy) if param.mixes else Off(cls)

    def value(self, ctx: Context) -> torch.Tensor:
        return ctx.param.entropy(ctx.mixing_weights)

    def weight(self, ctx: Context) -> float:
        return ctx.calm * self.base * ctx.late


TERMS: dict[str, type[Term]] = {  # the loss's terms, in the order it adds them; a new term is one line here
    "collision": Collision,
    "push": Push,
    "least_change": LeastChange,
    "tv": Seams,
    "entropy": Entropy,
}


def build_terms(config, tap, target: Target, anchor: torch.Tensor | None, param) -> list[Term]:
    """The run's terms, one per entry of ``TERMS`` (``Off`` where the config or the space turns
    one off). ``anchor`` (1, 3, H, W): what the least-change term keeps each vertex close to
    (None: the term is off)."""
    return [cls.from_config(config, tap, target, anchor, param) for cls in TERMS.values()]


def loss_of(terms: list[Term], ctx: Context) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The vertex loss (V,): the sum of weight * value over the terms, in their order, and the
    values (to record)."""
    values, loss = [], None
    for t in terms:
        v = t.value(ctx)
        part = t.weight(ctx) * v
        values.append(v)
        loss = part if loss is None else loss + part
    return loss, values
