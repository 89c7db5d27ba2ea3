"""The settings of one collide run, without torch: ``CollideConfig`` (every field with its
default, help, choices and checks), its one-line ``CollideError`` and the names every interface
shows. The ``collide`` command's options and the job files' keys are derived from it, and the
command line, a job file and the Python API are checked here before anything loads: importing
this module loads neither torch nor faiss. The vertex loop that takes a config is ``collide.py``
(which re-exports these names).
"""
from __future__ import annotations

import dataclasses

from ..core.errors import PatchcollideError, raise_first
from ..core.images import GRID_STRIDE, NEIGHBOURS, PATCH
from ..core.settings import check_fields, setting
from .objective_traits import OBJECTIVES
from .spaces import SPACES, STARTS
from .term_traits import TERMS, check_term

# --mode, --objective and --terms name entries of registries (core/plugins.py): the built-ins' torch-free
# traits, and the plug-ins of installed packages, loaded when a config names them (docs/extending.md)

AUTO_PUSH = 2.2  # push_margin auto with random weights: below twice the target's value (the paper's corners)
AUTO_FORK = 0.8  # fork auto on a trained net: one vertex takes the first 80% of the steps alone
# least_change auto: the start weight on a trained net (the walk back starts on the source's side of the decision)
# and with random weights (the weight follows the collision within tol there)
AUTO_LEAST_CHANGE = {"decision": 1.0, "tol": 0.1}
# what the distinct term compares two vertices by: the extent's 7 x 7 block means of the colour images, or the
# same blocks of the brightness on and near the source's strokes, smoothed (terms.StrokeView); auto: strokes in
# pixel mode on a trained net, whose vertices otherwise differ by colour tints a person reads as one image
DISTINCT_VIEWS = ("auto", "blocks", "strokes")

OPTIMIZERS = ("adam", "sgd")
ANCHORS = ("source", "nearest")  # what the least-change term measures each vertex's distance to
RETRIEVE = ("source", "source+target")  # whose patches the candidates are the neighbours of


class CollideError(PatchcollideError):
    """Bad collide arguments; ``str(e)`` is a one-line message. Errors about one config field
    carry it (``field``) and the bare ``problem``, so that a job file can name its key instead
    of the CLI option."""

    def __init__(self, message: str, field: str | None = None, problem: str | None = None):
        super().__init__(message)
        self.field, self.problem = field, problem


def field_error(field: str, problem: str) -> CollideError:
    """An error about one config field: ``str(e)`` names the field; the CLI and job files name
    their own spelling of it (``--min-steps``, ``"min_steps"``) from ``field`` and ``problem``."""
    return CollideError(f"{field} {problem}", field, problem)


INITS = ("source", "target")
DEVICES = ("auto", "cpu", "cuda")
MAX_STEPS = 1_000_000  # the authors ran 20,000; more is a typo, not a run
MAX_UNIT = 1_000_000  # first_unit: more than any layer's units here
SAMPLES = 2000  # polytope samples of sample --samples, batch --samples and a job's "samples"
MAX_SAMPLES = 1_000_000  # polytope samples (sample --samples, a job's "samples"): a share to about 0.1%; 2,000 is the default
MAX_SEED = 2**63  # seeds below it: torch's and numpy's seeding and the seeds derived from them stay in int64
FITS = ("auto", "imagenet", "crop", "pad")  # how a source or target becomes size x size (runs.run.fit_input)


@dataclasses.dataclass(frozen=True)
class CollideConfig:
    mode: str = setting("patches", "Search space, one of the registered ones (docs/extending.md adds one).", choices=SPACES)
    vertices: int = setting(5, "Vertices of the polytope; each pushes its own inactive unit of the target down.")
    steps: int = setting(300, "At most; stops once every vertex meets tol (not before the last phase).")
    min_steps: int = setting(50, "Never stop before this step (a start that already collides must still move).")
    tol: float = setting(3e-2, "Relative error of the layer's post-activation (8-bit images) that counts as a "
                         "collision; the run stops there unless the least-change term is on. The default comes from the "
                         "trained digits world's tolerance curve (docs/benchmarks.md).")
    lr: float | None = setting(None, "Learning rate.", default_text="the search space's: patches 0.4, pixel 0.01")
    optimizer: str = setting("adam", "adam, or sgd (momentum 0.9, like the authors' gradient EMA).",
                             choices=OPTIMIZERS)
    betas: tuple[float, float] = setting((0.8, 0.9), "Adam's betas (shorter memories than (0.9, 0.999) converge "
                                         "faster here).", metavar="B1 B2")
    objective: str = setting("relative", "The vertex objective, the collision L+ and each vertex's push L-^v: one "
                             "of the registered ones (docs/extending.md adds one).", choices=OBJECTIVES)
    objective_options: tuple[tuple[str, float], ...] = setting((), "An option of the objective's own, NAME:VALUE "
                                                               "(repeatable; the objective's options and their "
                                                               "defaults: its documentation).", metavar="NAME:VALUE",
                                                               flags=("--objective-option",))
    terms: tuple[str, ...] = setting((), "Loss terms to add after the built-in ones, by name (comma-separated): "
                                     "registered ones (docs/extending.md adds one).", choices=TERMS,
                                     metavar="NAME,...", default_text="none")
    term_options: tuple[tuple[str, float], ...] = setting((), "An option of an added term's own, TERM.NAME:VALUE "
                                                          "(repeatable; the term's options and their defaults: its "
                                                          "documentation).", metavar="TERM.NAME:VALUE",
                                                          flags=("--term-option",))
    push_margin: float | None = setting(None, "Objectives that push (--push-margin in their summary): push each "
                                        "vertex's unit to this many times the target's value (the paper's corners). On a trained net the distinct term "
                                        "spreads the vertices by their look, and the unit push only costs closeness "
                                        "to the source, so auto leaves it off there.",
                                        default_text="auto: 2.2 with random weights, 0 with trained ones")
    loss_early: tuple[float, float] = setting((1.0, 0.3), "Weights a, b of L+ and L-^i in the separate phase (the "
                                              "authors': 100 10, objective paper).", metavar="A B")
    loss_late: tuple[float, float] = setting((1.0, 0.1), "Weights a, b of L+ and L-^i after switch (the authors': "
                                             "1000 1, objective paper).", metavar="A B")
    decay: float = setting(0.3, "Share of the steps at the end over which the learning rate falls (cosine) to a tenth "
                           "of --lr: the vertices settle inside the net's decision instead of jittering across its "
                           "edge (0: a constant rate).")
    switch: float = setting(0.33, "Share of the steps in the separate phase (the authors': 14,000 of 20,000).")
    tv: float = setting(0.003, "Weight of the mixing weights' seams (TV, per pixel): coherent regions over speckle.")
    entropy: float = setting(0.003, "Weight of the mixing weights' entropy after switch: sharper mixtures.")
    prune: tuple[tuple[float, int], ...] = setting(((0.7, 8), (0.8, 4)), "At SHARE of the steps keep KEEP "
                                                   "candidates per pixel (repeatable; 'none' for no pruning). Late, "
                                                   "so that the least-change term's walk back can still reach the "
                                                   "source's own candidates.",
                                                   metavar="SHARE:KEEP")
    settle_factor: float = setting(1.0, "TV and entropy weights are multiplied by this after the last prune.")
    start: str = setting("distinct", "Patch mode start: each vertex on a different neighbour rank, all on the "
                         "nearest, or a blend (the authors' tent).", choices=STARTS)
    spatial: float = setting(4.0, "Patch mode: sharpness of the start's spatial window (1: the authors' tent).")
    slots: int = setting(32, "Patch mode: candidate pixels kept per image pixel from the start.")
    block: int = setting(1, "Patch mode: side of the pixel squares that share one learnt logit per candidate "
                         "(1: per pixel).")
    window: int = setting(PATCH, "Patch mode: side of each candidate: 32, the retrieved patch; more, its context "
                          "in its source image (the authors: 112 at 224 with k 1), re-cut from the store's image "
                          "files.")
    size: int = setting(224, "Input side in pixels.")
    fit: str = setting("auto", "How the source and target become size x size. auto: an image already size x size "
                       "as it is (no resampling), any other as the model's weights saw theirs: imagenet for "
                       "torchvision's ImageNet weights (and random weights of a torchvision classifier, which stand "
                       "in for them), crop for a user's --weights PATH and the digits world's nets. imagenet: "
                       "torchvision's evaluation transform, shorter side to size * 256 / 224 and the centre "
                       "size x size (it zooms in, a size x size image too); crop: shorter side to size and the "
                       "centre square (no zoom); pad: the whole image on a --background border, resized. A warning "
                       "says how much a crop cuts; report.json's inputs.transform says what each input got.",
                       choices=FITS)
    background: tuple[int, int, int] = setting((255, 255, 255), "R G B (0..255) that transparent pixels of the "
                                               "source and target are composited on, and that --fit pad pads with.",
                                               metavar="R G B")
    k: int = setting(NEIGHBOURS, "Candidates per location (patch mode).", flags=("-k",))
    grid_stride: int = setting(GRID_STRIDE, "Step of the location grid on the source (8: 25 x 25 locations at 224).")
    retrieve: str = setting("source+target", "Patch mode: candidates are the neighbours of the source's patches, or "
                            "of the source's and the target's at each location (2k; where the source's neighbours "
                            "cannot make what the collision needs: a black background has only black neighbours).",
                            choices=RETRIEVE)
    init: str = setting("source", "Pixel mode: start from the source or from the target.", choices=INITS)
    noise: float = setting(0.01, "Seeded noise on the start: on the start logits (patch mode); low-frequency "
                           "(7 x 7, upsampled) on each vertex's pixels, in [0, 1] units (pixel mode, more than one "
                           "vertex: it gives the distinct term a direction between vertices that start identical).")
    first_unit: int = setting(0, "Skip the target's first N most negative units (more vertices of the same "
                              "polytope).")
    least_change: float | None = setting(None, "Start weight of the least-change term: each vertex's mean squared "
                                         "distance to its anchor (pixels in [0, 1], 1 at an RMS change of 0.1), so it "
                                         "collides as close to the source as the net's decision allows (0: off).",
                                         default_text="auto: 1 on trained nets, 0.1 with random weights")
    least_change_to: str = setting("source", "The anchor: the source image, or (patch mode) its nearest-neighbour "
                                   "composition.", choices=ANCHORS)
    least_change_rate: float = setting(1.05, "Per step, a vertex's least-change weight is multiplied by this factor "
                                       "while the vertex fools the net (it and the step's polytope samples in the "
                                       "target's class, top-class prob. within 0.005 of the target's; not in the last "
                                       "15% of the steps) and divided by it otherwise: each vertex walks back to "
                                       "the edge of the net's decision.")
    polytope: float = setting(3.0, "Weight of the polytope term: the collision of each step's polytope samples (the "
                              "vertices' centroid and one random convex combination), so that the inside of the "
                              "polytope fools the net as its vertices do (0: off).")
    fork: float | None = setting(None, "Share of the steps one vertex takes alone before it splits into --vertices "
                                 "copies that the distinct term spreads: a walk out from one collider, so that more "
                                 "vertices cost little more than one (0: every vertex from the first step).",
                                 default_text="auto: 0.8 on trained nets, 0 with random weights (their corners come "
                                              "from the unit push)")
    distinct: float = setting(1.0, "Weight of the distinct term: it pushes two vertices apart in the 7 x 7 block-mean "
                              "view until they are --extent of the source-target distance apart there (0: off).")
    distinct_view: str = setting("auto", "What the distinct term compares two vertices by: blocks, the 7 x 7 "
                                 "block means of the colour images (the extent's view); strokes, the same blocks of "
                                 "the brightness on and near the source's strokes, smoothed, so that the vertices "
                                 "differ in the brightness of different strokes, not in colour tints or marks on "
                                 "the background.", choices=DISTINCT_VIEWS,
                                 default_text="auto: strokes in pixel mode on trained nets, blocks otherwise")
    extent: float = setting(0.15, "The polytope's extent the distinct term holds the vertices to: the smallest "
                            "distance between two vertices in the 7 x 7 block-mean view, as a share of the "
                            "source-target distance there.")
    seed: int = setting(0, "Seed of everything random in the run (through generators).")
    device: str = setting("auto", "Where the run computes (auto: CUDA when present).", choices=DEVICES)

    def __post_init__(self):
        check_fields(self, CollideError)  # the choices, from the fields' metadata
        checks = [  # (fine, field, what is wrong otherwise)
            (1 <= self.vertices <= 64, "vertices", f"must be between 1 and 64, got {self.vertices}"),
            (1 <= self.steps <= MAX_STEPS, "steps", f"must be between 1 and {MAX_STEPS:,}, got {self.steps}"),
            (self.min_steps >= 0, "min_steps", f"must be >= 0, got {self.min_steps}"),
            (0 < self.tol <= 1, "tol", f"must be in (0, 1] (a relative error: 1 would call anything a collision), "
                                       f"got {self.tol}"),
            (self.lr is None or self.lr > 0, "lr", f"must be > 0, got {self.lr}"),
            (all(0 <= b < 1 for b in self.betas), "betas", f"must be in [0, 1), got {self.betas}"),
            (self.push_margin is None or self.push_margin >= 0, "push_margin",
             f"must be >= 0, got {self.push_margin}"),
            (all(w >= 0 for w in self.loss_early), "loss_early", f"must be >= 0, got {self.loss_early}"),
            (all(w >= 0 for w in self.loss_late), "loss_late", f"must be >= 0, got {self.loss_late}"),
            (0 <= self.switch <= 1, "switch", f"must be in [0, 1], got {self.switch}"),
            (0 <= self.decay <= 1, "decay", f"must be in [0, 1], got {self.decay}"),
            (self.tv >= 0, "tv", f"must be >= 0, got {self.tv}"),
            (self.entropy >= 0, "entropy", f"must be >= 0, got {self.entropy}"),
            (all(0 <= f <= 1 and keep >= 1 for f, keep in self.prune), "prune",
             f"takes SHARE:KEEP pairs with SHARE in [0, 1] and KEEP >= 1, got {self.prune}"),
            (self.settle_factor >= 0, "settle_factor", f"must be >= 0, got {self.settle_factor}"),
            (self.spatial > 0, "spatial", f"must be > 0, got {self.spatial}"),
            (self.slots >= 1, "slots", f"must be >= 1, got {self.slots}"),
            (1 <= self.block <= PATCH, "block", f"must be between 1 and {PATCH}, got {self.block}"),
            (PATCH <= self.window <= 1024 and self.window % 2 == 0, "window",
             f"must be an even side between {PATCH} and 1024, got {self.window}"),
            (PATCH <= self.size <= 1024, "size", f"must be between {PATCH} and 1024, got {self.size}"),
            (len(self.background) == 3 and all(0 <= c <= 255 for c in self.background), "background",
             f"must be three values R G B in 0..255, got {self.background}"),
            (self.k >= 1, "k", f"must be >= 1, got {self.k}"),
            (1 <= self.grid_stride <= PATCH, "grid_stride", f"must be between 1 and {PATCH}, got {self.grid_stride}"),
            (self.noise >= 0, "noise", f"must be >= 0, got {self.noise}"),
            (0 <= self.first_unit <= MAX_UNIT, "first_unit", f"must be between 0 and {MAX_UNIT:,}, got {self.first_unit}"),
            (self.least_change is None or self.least_change >= 0, "least_change",
             f"must be >= 0, got {self.least_change}"),
            (self.least_change_rate >= 1, "least_change_rate", f"must be >= 1, got {self.least_change_rate}"),
            (self.polytope >= 0, "polytope", f"must be >= 0, got {self.polytope}"),
            (self.fork is None or 0 <= self.fork < 1, "fork", f"must be in [0, 1) (0: no fork), got {self.fork}"),
            (self.distinct >= 0, "distinct", f"must be >= 0, got {self.distinct}"),
            (0 <= self.extent <= 1, "extent", f"must be in [0, 1], got {self.extent}"),
            (self.least_change_to == "source" or self.space.needs_index, "least_change_to",
             "nearest needs a search space of retrieved patches (mode patches: the nearest-neighbour composition)"),
            (0 <= self.seed < MAX_SEED, "seed", f"must be between 0 and 2^63 - 1, got {self.seed}"),
        ]
        raise_first(checks, field_error)
        try:
            self.space.check_config(self)
        except ValueError as e:
            raise field_error(*e.args) from None
        self._check_objective_options()
        self._check_terms()

    def _check_objective_options(self) -> None:
        """The options are the objective's own (``Objective.options``), each given once, and it
        takes their values (``Objective.check_options``)."""
        kind = OBJECTIVES[self.objective]
        check_options("objective_options", kind, f"objective {self.objective}", self.objective_options)

    def _check_terms(self) -> None:
        """Each added term once, a proper term (``term_traits.check_term``) whose history column
        no other term of the run writes, and its options its own, given once, values it takes."""
        keys: dict[str, str] = {}
        for name in self.terms:
            if self.terms.count(name) > 1:
                raise field_error("terms", f"{name!r} is given {self.terms.count(name)} times; give it once")
            problem = check_term(TERMS[name])
            if problem:
                raise field_error("terms", f"{name!r} is not a loss term: {problem}; see docs/extending.md")
            key = TERMS[name].key
            if key in keys:
                raise field_error("terms", f"{keys[key]!r} and {name!r} both write the history column {key!r}; add "
                                  "one of them, or give one a key of its own")
            keys[key] = name
        by_term: dict[str, list] = {}
        for name, value in self.term_options:
            term, _, option = name.rpartition(".")  # a term's name may hold dots; an option's may not
            if term not in self.terms or not option:
                raise field_error("term_options", f"{name!r} is no option of a term the run adds ("
                                  + (", ".join(self.terms) if self.terms else "it adds none")
                                  + "); name one as TERM.NAME")
            by_term.setdefault(term, []).append((option, value))
        for term, given in by_term.items():
            check_options("term_options", TERMS[term], f"term {term}", tuple(given), prefix=f"{term}.")

    def term_settings(self, name: str) -> dict[str, float]:
        """Every option of the added term ``name``, the run's values in place of the defaults."""
        given = {key.rpartition(".")[2]: value for key, value in self.term_options if key.rpartition(".")[0] == name}
        return {**TERMS[name].options, **given}

    def doubts(self) -> list[tuple[str, str]]:
        """Valid settings that defeat the method: (field, why) pairs the CLI and the job file
        turn into one warning line each, naming the option or key."""
        out = []
        if self.push_margin == 0 and self.distinct == 0 and self.vertices > 1 and OBJECTIVES[self.objective].pushes:
            out.append(("push_margin", f"0 with {self.vertices} vertices and no distinct term: nothing pushes the "
                                       f"vertices apart, so they come out nearly identical; give a margin > 0 ({AUTO_PUSH} "
                                       "is the paper's corners), --distinct > 0 or one vertex"))
        return out

    @property
    def space(self) -> type:
        """The search space ``mode`` names (``spaces.SPACES``, which is ``params.SPACES``)."""
        return SPACES[self.mode]

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else self.space.default_lr

    def phases(self) -> dict:
        """Step numbers of the schedule: ``switch`` (last step of the separate phase), ``prune``
        ({step: keep}, patch mode only), ``fork`` (the step at which one vertex becomes
        ``vertices``; 0: none; auto counts as none here: ``terms.concrete`` decides it) and
        ``settle`` (no early stop before it)."""
        switch = int(round(self.switch * self.steps))
        prune = {max(1, int(round(f * self.steps))): keep for f, keep in self.prune} if self.space.mixes else {}
        fork = min(self.steps, max(2, int(round(self.fork * self.steps)))) if self.vertices > 1 and self.fork else 0
        last = max([switch + 1, *prune, fork])
        return {"switch": switch, "prune": prune, "last_prune": max(prune, default=0), "fork": fork,
                "settle": max(self.min_steps, last)}


def not_installed(fields: dict) -> tuple[str, str] | None:
    """For the settings of a recorded run (report.json's or a checkpoint's config): the first
    search space, objective or added loss term it names that no installed package provides here,
    as (field, problem): ("mode", "'grey' is a search space that is not installed here; install
    the package that provides it (...)"), or None."""
    for field, registry in (("mode", SPACES), ("objective", OBJECTIVES), ("terms", TERMS)):
        value = fields.get(field)
        for name in (value if isinstance(value, (list, tuple)) else [value]):
            if isinstance(name, str) and name not in registry:
                return field, (f"{name!r} is a {registry.what} that is not installed here; install the package that "
                               f"provides it (entry-point group {registry.group}, docs/extending.md)")
    return None


def check_options(field: str, kind: type, what: str, given: tuple[tuple[str, float], ...], prefix: str = "") -> None:
    """``given`` (name, value) pairs are options of ``kind`` (an objective or a term: its
    ``options``), each once, with values its ``check_options`` takes; else an error about
    ``field`` that names ``what`` and each option as the user wrote it (``prefix`` + name)."""
    names = [name for name, _ in given]
    for name in names:
        if name not in kind.options:
            raise field_error(field, f"{prefix + name!r}: {what} has "
                              + (f"the options {', '.join(kind.options)}" if kind.options else "no options"))
        if names.count(name) > 1:
            raise field_error(field, f"{prefix + name!r} is given {names.count(name)} times; give it once")
    try:
        kind.check_options({**kind.options, **dict(given)})
    except ValueError as e:
        raise field_error(field, str(e)) from None


def _config_doc() -> str:
    lines = ["The settings of one collide run (frozen). A bad value raises a one-line CollideError",
             "naming the field. Every field, with its default:", ""]
    for f in dataclasses.fields(CollideConfig):
        shown = f.metadata.get("default_text") or repr(f.default)
        lines.append(f"{f.name} = {shown}: {f.metadata['help']}")
    return "\n".join(lines)


CollideConfig.__doc__ = _config_doc()
