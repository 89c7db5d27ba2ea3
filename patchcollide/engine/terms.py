"""The vertex loss as terms (lucent's ``objectives.py``): each term of the loss is an object that
carries its own parameters, its weight rule and its history column, and the loop
(``collide.optimise``) only sums ``weight * value`` over the list, steps, records and stops.

The built-in terms, in the order the loss adds them (``BUILT_INS``), with their history columns:

    collision     "pos"           L+ (V,); weight a of ``loss_early`` / ``loss_late`` by phase
    push          "neg"           L-^v (V,); weight b of the same
    least_change  "least_change"  each vertex's mean squared distance (V,) to its anchor (1 at an
                                  RMS change of 0.1); a weight per vertex that follows the net's
                                  decision, kept in "least_change_weight" with the fooled count
                                  in "fooled"
    polytope      "polytope"      the relative error of the step's polytope samples (the centroid
                                  and one random convex combination), shared by the vertices;
                                  weight ``polytope``
    distinct      "distinct"      a hinge on each pair of vertices' distance in the 7 x 7
                                  block-mean view (of the colour images, or of the brightness on
                                  the source's strokes: ``distinct_view``), below ``extent`` of
                                  the source-target distance there; weight ``distinct``
    tv            "tv"            the mixing weights' seams (V,); weight ``tv``
    entropy       "entropy"       the mixing weights' entropy (V,), nats; weight ``entropy``
                                  after ``switch``, 0 before
    (TV and entropy weights are multiplied by ``settle_factor`` after the last prune.)

L+ and L-^v come from the registered objective (``objectives.OBJECTIVES``, ``--objective``),
computed once per step for both terms; the mixing weights are computed once for TV and entropy
(``Context``). A term that is off in a run (``--least-change 0``, TV and entropy in a space that
does not mix) is built as :class:`Off`: it adds nothing and keeps its history column at 0, as
the reports read it.

A new term is one class, and one name to add it by (``term_traits.TERMS``: a package's
``patchcollide.terms`` entry point, or one line in code)::

    class Brightness(Term):
        key = "brightness"                       # its history column
        options = {"weight": 0.1}                # its own settings: --term-option brightness.weight:1
        def value(self, ctx): return -ctx.x.mean((1, 2, 3))   # (V,), differentiable
        def weight(self, ctx): return self.settings["weight"] # a float, or (V,) per vertex

    term_traits.TERMS["brightness"] = Brightness # a run with --terms brightness adds it last

A term whose parameters come from the run reads them in ``from_config(setup)`` (``Setup``: the
config, the tap, the target, the search space, the anchor, the source and target images, and an
added term's ``options``); one with a state that changes from step to step keeps it in the
history (``ctx.history``; the least-change weights), so that a resumed run goes on
bit-identical; random numbers are drawn from the seed and the step (``polytope_samples``),
never from a running generator. Imports the engine's ``objectives``, ``polytope``, ``distance``
and ``target``, and the torch-free ``config`` and ``term_traits``.
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np
import torch

from .config import AUTO_FORK, AUTO_LEAST_CHANGE, AUTO_PUSH, CollideError
from .distance import relative_error
from .objectives import loss_terms
from .polytope import BLOCK_VIEW
from .target import Target
from .term_traits import COLUMNS, TERMS, Term

FOOL_GAP = 0.005  # a vertex "fools" the net: the target's class, top-class prob. this close to the target's
# (half the benchmark's 0.01: room for the polytope's samples and the 8-bit rounding)


@dataclasses.dataclass
class Setup:
    """What a term may be built from (``Term.from_config``): the run's ``config``, the ``tap``,
    the ``target`` statistics, the search space ``param``, the least-change ``anchor``
    (1, 3, H, W) or None when the term is off, the run's ``source`` and ``target_image``
    (1, 3, H, W) in [0, 1] as the net sees them, and for an added term its ``options``: every
    one of its ``Term.options``, the run's ``--term-option`` values in place of the defaults."""

    config: object  # config.CollideConfig
    tap: object
    target: Target
    param: torch.nn.Module
    anchor: torch.Tensor | None = None
    source: torch.Tensor | None = None
    target_image: torch.Tensor | None = None
    options: dict = dataclasses.field(default_factory=dict)


def polytope_samples(vertices: int, seed: int, step: int) -> torch.Tensor:
    """The convex combinations a step checks the polytope at (S, V) float32: the vertices'
    centroid, and for more than one vertex one Dirichlet(1) draw of its own for (seed, step)
    (drawn afresh from those two numbers: a resumed run draws the same)."""
    rows = [torch.full((1, vertices), 1.0 / vertices)]
    if vertices > 1:
        rng = np.random.default_rng([seed, step])
        rows.append(torch.from_numpy(rng.dirichlet(np.ones(vertices))).float()[None])
    return torch.cat(rows)


@dataclasses.dataclass
class Context:
    """What the terms of one step share, each computed once.

    x (V, 3, H, W) the rendered vertices in [0, 1] (before a fork: the one vertex, and
    ``target`` with its first unit only); z (V, D) their pre-activations; where a
    term reads the net's decision (``decision``), also ``weights`` (S, V), the polytope samples
    of the step (``polytope_samples``: the centroid and one random convex combination; none
    for one vertex, its own polytope), and
    z_all (V + S, D) (differentiable) and logits (V + S, K) (detached) of the vertices and the
    samples, from one forward pass (z: z_all's first V rows); ``history``: the run's record up
    to the step before. ``objective`` (L+ (V,), L-^v (V,)) and ``mixing_weights``
    (V, H*W, M) are computed at their first use and kept.
    """

    step: int
    config: object  # the run's config.CollideConfig
    phases: dict  # config.phases()
    param: torch.nn.Module
    target: Target
    history: dict
    x: torch.Tensor
    z: torch.Tensor
    z_all: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    weights: torch.Tensor | None = None

    @classmethod
    def of(cls, tap, param: torch.nn.Module, target: Target, config, phases: dict, step: int, history: dict,
           decision: bool) -> "Context":
        """Render the vertices and run the net on them (and on the step's polytope samples where
        ``decision``)."""
        x = param()
        if len(x) < len(target.units):  # before the fork: one vertex, the first unit
            target = dataclasses.replace(target, units=target.units[: len(x)])
        if not decision:
            return cls(step, config, phases, param, target, history, x, tap.pre(x))
        # one vertex is its own polytope: no samples to add
        w = polytope_samples(len(x), config.seed, step).to(x.device) if len(x) > 1 else x.new_zeros(0, 1)
        z_all, logits = tap.pre_and_logits(torch.cat([x, torch.einsum("sv,vchw->schw", w, x)]))
        return cls(step, config, phases, param, target, history, x, z_all[: len(x)], z_all, logits.detach(), w)

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
        return loss_terms(self.z, self.target, self.config.objective, self.config.push_margin,
                          self.config.objective_options)

    @functools.cached_property
    def mixing_weights(self) -> torch.Tensor | None:
        return self.param.mixing_weights()


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
    def from_config(cls, setup: Setup) -> Term:
        return cls(setup.config.loss_early[0], setup.config.loss_late[0])

    def value(self, ctx: Context) -> torch.Tensor:
        return ctx.objective[0]

    def weight(self, ctx: Context) -> float:
        return self.late if ctx.late else self.early


class Push(Collision):
    """L-^v: each vertex's push on its own unit, from the registered objective; weight b."""

    key = "neg"

    @classmethod
    def from_config(cls, setup: Setup) -> Term:
        return cls(setup.config.loss_early[1], setup.config.loss_late[1])

    def value(self, ctx: Context) -> torch.Tensor:
        return ctx.objective[1]


LEAST_CHANGE_UNIT = 0.1  # the least-change term is 1 at an RMS change of 0.1 (pixels in [0, 1])


def least_change_distance(x: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """Mean squared distance (V,) of images x (V, 3, H, W) to ``anchor`` (1, 3, H, W), pixels in
    [0, 1], in units of LEAST_CHANGE_UNIT squared: 1 at an RMS change of 0.1. Squared, so that
    its pull grows with the change (a penalty like C&W's and the plain attack's) instead of
    pulling with the same force at any distance."""
    return ((x - anchor) ** 2).flatten(1).mean(1) / LEAST_CHANGE_UNIT**2


def frontier_of(tap) -> str:
    """What the least-change weights follow: "decision", the net's class and confidence on each
    vertex (a trained net), or "tol", the collision within ``tol`` (random weights, whose
    decision is degenerate: random VGG-16 puts most photos in one class)."""
    return "tol" if getattr(getattr(tap, "weights", None), "kind", None) == "random" else "decision"


def push_margin_of(config, tap) -> float:
    """The push margin a run takes: ``config.push_margin``, or for auto (None) AUTO_PUSH with
    random weights and 0 with trained ones, whose vertices the distinct term spreads by look."""
    if config.push_margin is not None:
        return config.push_margin
    return AUTO_PUSH if frontier_of(tap) == "tol" else 0.0


def fork_of(config, tap) -> float:
    """The share of the steps one vertex takes alone (``config.fork``), or for auto (None)
    AUTO_FORK on a trained net and 0 with random weights, whose corners the unit push makes
    from the first step."""
    if config.fork is not None:
        return config.fork
    return AUTO_FORK if frontier_of(tap) == "decision" else 0.0


def least_change_of(config, tap) -> float:
    """The least-change term's start weight (``config.least_change``), or for auto (None)
    AUTO_LEAST_CHANGE of what the weights follow (``frontier_of``): 1 on a trained net, where
    a start on the source's side of the decision walks back to a closer collider than one
    that lets the collision pull first (patch mode on the digits world: 91% of 45 pairs at 1
    against 80% at 0.1), and 0.1 with random weights, as measured there before."""
    if config.least_change is not None:
        return config.least_change
    return AUTO_LEAST_CHANGE[frontier_of(tap)]


def distinct_view_of(config, tap) -> str:
    """What the distinct term compares two vertices by (``config.distinct_view``), or for auto
    "strokes" in pixel mode on a trained net and "blocks" otherwise: on the digits world, pixel
    vertices spread in the block view differ by colour tints over the whole image, and in the
    strokes view by the brightness of different strokes (patch vertices, compositions of grey
    patches, have no tints to lose and spread less far in the strokes view: median extent 0.079
    against 0.108 on 9 pairs, benchmarks/results/bench_world-strokes/sweep-pa_v5_*.json)."""
    if config.distinct_view != "auto":
        return config.distinct_view
    return "strokes" if frontier_of(tap) == "decision" and config.mode == "pixel" else "blocks"


def concrete(config, tap):
    """``config`` with its auto settings (``push_margin``, ``fork``, ``least_change``,
    ``distinct_view``) made concrete for ``tap``."""
    return dataclasses.replace(config, push_margin=push_margin_of(config, tap), fork=fork_of(config, tap),
                               least_change=least_change_of(config, tap),
                               distinct_view=distinct_view_of(config, tap))


GROW_UNTIL = 0.85  # share of the steps after which a least-change weight only shrinks: every vertex ends fooling
WEIGHT_RANGE = (1e-2, 1e3)  # a least-change weight stays within these multiples of --least-change


def least_change_weights(config, previous: list[float] | None, fooled: torch.Tensor,
                         grow: bool = True) -> list[float]:
    """Each vertex's least-change weight for the next step (V,), from its weight at this step
    (None: ``least_change``) and whether the vertex fools the net now (``fooled`` (V,) bool:
    the vertex and the step's polytope samples are in the target's class, with a top-class
    probability within FOOL_GAP of the target's). A vertex that fools the net moves closer to
    its anchor (weight times ``least_change_rate``, unless ``grow`` is False: the last steps,
    so that every vertex ends on the fooling side); one that does not lets the collision pull
    (weight divided by the rate), within WEIGHT_RANGE times ``least_change``.

    The rule is symmetric in the log of the weight (DDN's adaptive norm, Rony et al. 2019,
    applied to the penalty's weight): from the source, which never fools, the weight falls
    until the vertex fools; from there it rises as fast as it fell until the vertex stops
    fooling, and so each vertex walks back and settles at the edge of the net's decision,
    as close to its anchor as that allows. The weights are kept in the history: a resumed
    run takes the same."""
    base = config.least_change
    w = torch.full((len(fooled),), base) if previous is None else torch.tensor(previous)
    r = config.least_change_rate
    w = torch.where(fooled.cpu(), w * (r if grow else 1.0), w / r)
    return w.clamp(base * WEIGHT_RANGE[0], base * WEIGHT_RANGE[1]).tolist()


@torch.no_grad()
def fooling(ctx: Context, frontier: str, tol: float) -> torch.Tensor:
    """(V + S,) bool over the vertices and the step's polytope samples: in the target's class with
    a top-class probability within FOOL_GAP of the target's (frontier "decision", a trained net),
    or the collision within ``tol`` (frontier "tol", random weights)."""
    t = ctx.target
    if frontier == "decision":
        prob, top = torch.softmax(ctx.logits.float(), 1).max(1)
        return (top == t.label) & ((prob - t.prob).abs() <= FOOL_GAP)
    return relative_error(ctx.z_all.detach(), t) <= tol


class LeastChange(Term):
    """Each vertex's squared distance to ``anchor`` (1, 3, H, W) (``least_change_distance``), with
    a weight per vertex that follows the net's decision (``least_change_weights``; kept in the
    history as "least_change_weight", with the number of fooling vertices as "fooled"). A vertex
    counts as fooling when it and the step's polytope samples all fool the net. The run takes
    all its steps (``holds``) and has converged when every vertex fools the net at its last
    step."""

    key = "least_change"
    decision = True
    holds = True

    def __init__(self, config, anchor: torch.Tensor, frontier: str):
        self.config, self.anchor, self.frontier = config, anchor, frontier

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.key, "least_change_weight", "fooled")

    @classmethod
    def from_config(cls, setup: Setup) -> Term:
        if setup.anchor is None:
            return Off(cls)
        return cls(setup.config, setup.anchor, frontier_of(setup.tap))

    def value(self, ctx: Context) -> torch.Tensor:
        return least_change_distance(ctx.x, self.anchor)

    def weight(self, ctx: Context) -> torch.Tensor:
        w = ctx.history["least_change_weight"]
        return torch.tensor(w[-1] if w else [self.config.least_change] * len(ctx.z), device=ctx.z.device)

    def fooled(self, ctx: Context) -> torch.Tensor:
        """(V,) bool: the vertex fools the net, and so do all the step's polytope samples."""
        at = fooling(ctx, self.frontier, self.config.tol)
        V = len(ctx.z)
        return at[:V] & at[V:].all()

    def next_weights(self, ctx: Context, fooled: torch.Tensor) -> list[float]:
        """The weight rule: ``least_change_weights``, no growth after GROW_UNTIL of the steps."""
        w = ctx.history["least_change_weight"]
        return least_change_weights(self.config, w[-1] if w else None, fooled,
                                    grow=ctx.step <= GROW_UNTIL * self.config.steps)

    def record(self, ctx: Context, value: torch.Tensor, history: dict) -> None:
        super().record(ctx, value, history)
        fooled = self.fooled(ctx)
        history["least_change_weight"].append(self.next_weights(ctx, fooled))
        history["fooled"].append(int(fooled.sum()))

    def converged(self, history: dict) -> bool:
        # the vertices hold at the edge of the net's decision, not at tol: a run whose every
        # vertex fools the net at its last step has done what it was for
        return bool(history["fooled"]) and history["fooled"][-1] == len(history["least_change_weight"][-1])


class Polytope(Term):
    """The collision of the step's polytope samples (``polytope_samples``: the vertices' centroid
    and one random convex combination): their relative error (what ``tol`` is about, whatever the
    objective) summed, shared equally by the vertices (V,);
    weight ``polytope``. Vertices that each fool the net by their own pixel noise do not make a
    polytope whose inside fools it (the noise averages out between them); this term makes the
    vertices share what collides and differ where the net does not look. Off for one vertex."""

    key = "polytope"
    decision = True

    def __init__(self, weight: float):
        self.base = weight

    @classmethod
    def from_config(cls, setup: Setup) -> Term:
        c = setup.config
        return cls(c.polytope) if c.polytope > 0 and c.vertices > 1 else Off(cls)

    def value(self, ctx: Context) -> torch.Tensor:
        V = len(ctx.z)
        return (relative_error(ctx.z_all[V:], ctx.target).sum() / V).expand(V)

    def weight(self, ctx: Context) -> float:
        return self.base


def block_means(x: torch.Tensor, side: int = BLOCK_VIEW, sigma: float = 0.0) -> torch.Tensor:
    """Images (N, C, H, W) in [0, 1] as (N, side * side * C) block means in 0..255 units: the
    view of ``polytope.block_view`` (the same near-equal blocks), differentiable. ``sigma`` > 0:
    of the images smoothed first by a Gaussian of that many pixels (zero beyond the border),
    folded into the averaging matrices (one einsum, as cheap as the plain view)."""
    def averaging(n: int) -> torch.Tensor:
        m = torch.zeros(side, n, dtype=x.dtype, device=x.device)
        for i, idx in enumerate(np.array_split(np.arange(n), side)):
            m[i, idx[0] : idx[-1] + 1] = 1.0 / len(idx)
        if sigma > 0:
            r = int(np.ceil(3 * sigma))
            k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
            offsets = np.arange(n)[:, None] - np.arange(n)[None, :]  # (out, in): in = out - offset
            blur = np.where(np.abs(offsets) <= r, k[np.clip(offsets + r, 0, 2 * r)], 0.0) / k.sum()
            m = m @ torch.as_tensor(blur, dtype=x.dtype, device=x.device)
        return m

    rows, cols = averaging(x.shape[2]), averaging(x.shape[3])
    b = torch.einsum("ih,nchw,jw->nijc", rows, x, cols) * 255.0
    return b.reshape(len(x), -1)


STROKE_INK = 0.3  # the source's strokes: brightness above this share of its range (min to max)


class StrokeView:
    """The strokes view of images (N, 3, H, W) in [0, 1]: their brightness (the channels' mean)
    on and near the source's strokes, smoothed, as BLOCK_VIEW x BLOCK_VIEW block means (N, side
    * side), 0..255 units. Near: within H / (4 side) pixels of a stroke pixel (4 at 112 px), the
    Gaussian's sigma too. Two images that differ only off the strokes (a grey square on the
    background) or only in colour (a tint) are the same here; two that differ in a stroke's
    brightness or width are not. A source of one flat brightness has no strokes: every pixel
    counts then. ``masked=False``: the whole image's brightness, smoothed (the scale the
    distinct term measures against)."""

    def __init__(self, source: torch.Tensor, side: int = BLOCK_VIEW):
        self.side, self.sigma = side, source.shape[-1] / (4 * side)
        lum = source.mean(1, keepdim=True)
        lo, hi = float(lum.min()), float(lum.max())
        near = max(1, round(self.sigma))
        if hi - lo < 1e-6:
            self.mask = torch.ones_like(lum)
        else:
            ink = (lum > lo + STROKE_INK * (hi - lo)).to(source.dtype)
            self.mask = torch.nn.functional.max_pool2d(ink, 2 * near + 1, 1, near)

    def __call__(self, x: torch.Tensor, masked: bool = True) -> torch.Tensor:
        g = x.mean(1, keepdim=True)
        return block_means(g * self.mask if masked else g, self.side, self.sigma)


class Distinct(Term):
    """Vertices that differ where a person sees it: a hinge on each pair's distance in a 7 x 7
    block-mean view (``distinct_view``: "blocks", ``polytope.extent``'s view of the colour
    images, where pixel noise cancels; "strokes", ``StrokeView``, the brightness on and near
    the source's strokes, smoothed), relative to the source-target distance there (in the
    strokes view: of the whole images' brightness): relu(extent - d_ij / d_st), summed over
    the pairs, each vertex taking half of its pairs' hinges (V,). It pushes two vertices apart
    until their views are ``extent`` of the source-target distance apart, then lets go; weight
    ``distinct``. Where the vertices start identical (pixel mode, a fork), the search space's
    seeded start noise (``noise``) gives each pair a direction. Off for one vertex."""

    key = "distinct"

    def __init__(self, weight: float, margin: float, scale: float, view=block_means):
        self.base, self.margin, self.scale, self.view = weight, margin, scale, view

    @classmethod
    def from_config(cls, setup: Setup) -> Term:
        c = setup.config
        if c.distinct <= 0 or c.vertices < 2 or setup.source is None or setup.target_image is None:
            return Off(cls)
        with torch.no_grad():
            both = torch.cat([setup.source, setup.target_image])
            if c.distinct_view == "strokes":
                view = StrokeView(setup.source)
                b = view(both, masked=False)
            else:
                view = block_means
                b = view(both)
            scale = float((b[0] - b[1]).norm())
        return cls(c.distinct, c.extent, max(scale, 1e-6), view)

    def value(self, ctx: Context) -> torch.Tensor:
        b = self.view(ctx.x)
        V = len(b)
        i, j = torch.triu_indices(V, V, 1, device=b.device)
        d = ((b[i] - b[j]).pow(2).sum(1) + 1e-9).sqrt() / self.scale
        hinge = torch.relu(self.margin - d)
        per = torch.zeros(V, device=b.device, dtype=b.dtype)
        return per.index_add(0, i, hinge / 2).index_add(0, j, hinge / 2)

    def weight(self, ctx: Context) -> float:
        return self.base


class Seams(Term):
    """TV of the mixing weights (V,): coherent regions over speckle; weight ``tv`` (times the
    settle factor after the last prune). Off where the space does not mix."""

    key = "tv"

    def __init__(self, weight: float):
        self.base = weight

    @classmethod
    def from_config(cls, setup: Setup) -> Term:
        return cls(setup.config.tv) if setup.param.mixes else Off(cls)

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
    def from_config(cls, setup: Setup) -> Term:
        return cls(setup.config.entropy) if setup.param.mixes else Off(cls)

    def value(self, ctx: Context) -> torch.Tensor:
        return ctx.param.entropy(ctx.mixing_weights)

    def weight(self, ctx: Context) -> float:
        return ctx.calm * self.base * ctx.late


BUILT_INS: dict[str, type[Term]] = {  # the loss's own terms, in the order it adds them
    "collision": Collision,
    "push": Push,
    "least_change": LeastChange,
    "polytope": Polytope,
    "distinct": Distinct,
    "tv": Seams,
    "entropy": Entropy,
}


def build_terms(setup: Setup) -> list[Term]:
    """The run's terms, built from ``setup``: one per entry of ``BUILT_INS`` (``Off`` where the
    config or the space turns one off), then the config's added ``terms`` (``term_traits.TERMS``)
    with their options."""
    config = concrete(setup.config, setup.tap)
    setup = dataclasses.replace(setup, config=config)
    built = [cls.from_config(setup) for cls in BUILT_INS.values()]
    built += [TERMS[name].from_config(dataclasses.replace(setup, options=config.term_settings(name)))
              for name in config.terms]
    columns = [*COLUMNS, *(c for t in built[len(BUILT_INS):] for c in t.columns)]
    for name, term in zip(config.terms, built[len(BUILT_INS):]):
        taken = [c for c in term.columns if columns.count(c) > 1]
        if taken:
            problem = (f"{name!r} writes the history column {taken[0]!r}, which another term or the loop writes too; "
                       "give the term columns of its own")
            raise CollideError(f"terms {problem}", "terms", problem)
    return built


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
