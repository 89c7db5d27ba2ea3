"""The batched vertex loop: models + terms + params.

``collide(tap, source, target, config, index=...)`` finds ``config.vertices`` vertices of the
collision polytope of ``target`` at the tap's layer, all optimised together as one batch
(one forward/backward per step for all of them). In patch mode the vertices are mixtures of
real patches retrieved from the index for every location of a grid on ``source``.

The loss is a list of terms (terms.py: the collision, the push, the least-change term, the
polytope term, the distinct term, TV and entropy, each with its own weight rule and history
column); ``optimise`` sums them, steps, records and stops.

The closest collider (``least_change``): each vertex's squared distance to the source is in its
loss with a weight of its own that follows the net's decision, symmetric in its log (DDN's
adaptive norm applied to the penalty's weight): it falls while the vertex (or any of the step's
polytope samples) does not fool the net, and rises as fast while it does, so that each vertex
walks back from the collision to the edge of the net's decision. The polytope term holds the
inside of the polytope there too (the centroid and a random convex combination of the vertices
collide each step), and the distinct term keeps the vertices apart where a person sees it (the
7 x 7 block-mean view, ``polytope.extent``).

Schedule (fractions of ``steps``; the measurements behind the defaults: docs/benchmarks.md):

1. *separate* (until ``switch``): weights ``loss_early`` = (a, b) on the normalised
   (L+, L-^i): each vertex pushes its own unit below ``push_margin`` times the target's
   value while the collision is only loosely held; the vertices start as different
   compositions (``start="distinct"``) and TV keeps their regions coherent.
2. *sharpen* (patch mode): at each ``prune`` point (fraction, keep) every pixel keeps only its
   ``keep`` heaviest candidates, and from ``switch`` on an entropy term (``entropy``)
   concentrates the weights on fewer candidates.
3. *tighten* (after ``switch``): ``loss_late`` hold the push at the margin (the hinge is
   zero once the unit is there) while L+ pulls the collision in.

4. *fork* (``fork``; auto: on trained nets from 80% of the steps): until then one vertex takes
   the steps alone, as a 1-vertex run does, and walks back to the closest collider it can find;
   at the fork it becomes ``vertices`` copies (the search space's ``fork``: its seeded start
   noise between them, Adam's moments repeated) that the distinct and polytope terms spread
   apart and hold inside the net's decision. Each step before the fork forwards one image
   where a 5-vertex step forwards seven, so five vertices cost about twice one.

The run stops early once every vertex meets ``tol`` *as it would be saved* (8-bit pixels,
as in the PNG), but never before the separate and sharpen phases are over.

Optimiser: Adam with betas (0.8, 0.9): the shorter memories track the shrinking gradients of
the tightening phase. The authors used a gradient EMA with a hand-made 8-step learning-rate
ramp over 20,000 iterations and the unnormalised weights (100, 10) then (1000, 1):
``objective="paper"`` with those weights reproduces their loss.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import signal
import time
from collections.abc import Callable

import numpy as np
import torch

from ..core.errors import first_line
from ..core.images import PATCH
from .checkpoints import Checkpointer, Interrupted, restoring
from .config import CollideConfig, CollideError
from .distance import relative_error
from ..models.build import Tap, resolve_device, tap_on
from .objectives import choose_units, collision_metrics, push_ratio
from .optimisers import SGD, Adam, Optimiser
from .params import PatchParam
from .target import Target
from .term_traits import COLUMNS
from .terms import Context, Setup, Term, build_terms, concrete, loss_of

log = logging.getLogger(__name__)

@dataclasses.dataclass
class CollideResult:
    """vertices (V, 3, H, W) float32 in [0, 1] on the CPU; metrics per vertex for the float
    images; history: per step the mean L+, mean L-, mean TV and entropy, the worst and mean
    relative error and the smallest push; mixing (patch mode): per vertex ``sharpness``,
    ``sources`` and ``argmax_rel_error`` (params.PatchParam.mixing_stats, argmax_image)."""

    vertices: torch.Tensor
    target: Target
    metrics: dict
    history: dict
    steps: int
    converged: bool
    seconds: float
    param_state: dict  # the final logits (patch mode) or pixels, to inspect or continue a run
    candidates: dict | None  # patch mode: ids (L, K) int64, yx (L, 2), distances (L, K)
    mixing: dict | None = None
    argmax_vertices: torch.Tensor | None = None  # patch mode: (V, 3, H, W) pure compositions
    timings: dict | None = None  # seconds of the phases before the steps (target, retrieval, setup) and the steps


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)[None].float() / 255.0


@torch.no_grad()
def target_of(tap: Tap, target: torch.Tensor, vertices: int, first_unit: int = 0) -> Target:
    """Target statistics for (1, 3, H, W) in [0, 1]: z_t, its top-1 class and the vertices' units
    (the target's most negative pre-activations, skipping the first ``first_unit``)."""
    try:
        z, logits = tap.pre_and_logits(target)
    except RuntimeError as e:
        msg = first_line(e)
        raise CollideError(f"{tap.arch} cannot take a {target.shape[-1]}x{target.shape[-2]} input ({msg}); "
                           "use another --size") from None
    z = z[0]
    p = torch.softmax(logits.float(), 1)[0]
    inactive = int((z <= 0).sum())
    if first_unit + vertices > inactive:
        raise CollideError(f"the target has {inactive} inactive units at {tap.layer}, fewer than --first-unit "
                           f"{first_unit} + --vertices {vertices}; ask for at most {inactive} in all (--first-unit "
                           f"{max(0, inactive - vertices)} with {vertices} vertices), or another target")
    units = choose_units(z, first_unit + vertices)[first_unit:]
    return Target(z=z, units=units, label=int(p.argmax()), prob=float(p.max()))


def retrieve_candidates(index, source_img: np.ndarray, k: int, grid_stride: int, window: int = PATCH,
                        target_img: np.ndarray | None = None) -> dict:
    """k nearest stored patches for every location of the covering grid on ``source_img``
    (H, W, 3) uint8: ids, distances, yx (L, 2) and the candidates' pixels, ``patches``
    (L, K, S, S, 3) uint8 (``index.candidate_pixels``). With ``target_img`` the k nearest of the
    target's patch at each location follow the source's (K = 2k; distances to the target's patch)."""
    res = index.search_image(source_img, k=k, stride=grid_stride)
    c = {"ids": res.ids, "distances": res.distances, "yx": res.query_yx}
    if target_img is not None:
        t = index.search_image(target_img, k=k, stride=grid_stride)
        c = {"ids": np.concatenate([res.ids, t.ids], 1), "distances": np.concatenate([res.distances, t.distances], 1),
             "yx": res.query_yx}
    return {**c, "patches": index.candidate_pixels(c["ids"], window)}


def make_param(config: CollideConfig, source: torch.Tensor, target: torch.Tensor, candidates: dict | None):
    """The search space's parameters for this run (``params.SPACES[config.mode].from_config``)."""
    return config.space.from_config(config, source, target, candidates)


def alone(config: CollideConfig) -> CollideConfig:
    """The config a forked run's search space is built from: one vertex (``fork_vertices``
    makes the rest at the fork step)."""
    return dataclasses.replace(config, vertices=1) if config.phases()["fork"] else config


def fork_vertices(param: torch.nn.Module, opt: Optimiser, config: CollideConfig) -> None:
    """``param.fork(config)``: the one vertex becomes ``config.vertices``, with Adam's moments
    (or SGD's momentum) repeated for the copies, as ``prune`` carries them over."""
    old = dict(param.named_parameters())
    param.fork(config)
    new = dict(param.named_parameters())
    opt.param_groups[0]["params"] = list(new.values())
    for name, p in old.items():
        state = opt.state.pop(p, {})
        if state and name in new:
            opt.state[new[name]] = {k: (v.expand(new[name].shape).clone() if torch.is_tensor(v) and v.shape == p.shape
                                        else v) for k, v in state.items()}


def least_change_anchor(config: CollideConfig, source: torch.Tensor, candidates: dict | None) -> torch.Tensor:
    """(1, 3, H, W): the source image, or (``least_change_to="nearest"``, patch mode) its
    nearest-neighbour composition: every pixel from the nearest candidate of its location."""
    if config.least_change_to == "source":
        return source
    one = dataclasses.replace(config, vertices=1, start="nearest", noise=0.0)
    with torch.no_grad():
        return make_param(one, source, source, candidates).argmax_image().to(source.device)


def quantise(x: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] rounded to the 8-bit levels a PNG stores (pictures.to_uint8's rounding)."""
    return torch.round(x.clamp(0, 1) * 255.0) / 255.0


def prune(param: PatchParam, opt: Optimiser, keep: int) -> None:
    """``param.prune(keep)`` with Adam's moments carried over to the kept slots (shared logits
    stay the same parameter: nothing to carry)."""
    old = next(param.parameters())
    top = param.prune(keep)
    if next(param.parameters()) is old:
        return
    state = opt.state.pop(old, {})
    opt.param_groups[0]["params"] = [param.theta]
    if state:
        opt.state[param.theta] = {k: (v.gather(2, top) if torch.is_tensor(v) and v.shape == old.shape else v)
                                  for k, v in state.items()}


def make_optimizer(param: torch.nn.Module, config: CollideConfig) -> Optimiser:
    """torch.optim's Adam or SGD (momentum 0.9), computed in optimisers.py: the same numbers,
    without torch.optim's import of torch._dynamo at the first step."""
    if config.optimizer == "sgd":
        return SGD(param.parameters(), lr=config.learning_rate, momentum=0.9)
    return Adam(param.parameters(), lr=config.learning_rate, betas=config.betas)


def new_history(terms: list[Term]) -> dict[str, list]:
    """An empty history: ``term_traits.COLUMNS``, then any other column of the terms."""
    return {key: [] for key in (*COLUMNS, *(c for t in terms for c in t.columns))}


def optimise(tap: Tap, param: torch.nn.Module, target: Target, config: CollideConfig,
             progress: Callable[[int, int, float, float], None] | None = None,
             checkpoint: Checkpointer | None = None, resume: dict | None = None,
             anchor: torch.Tensor | None = None, terms: list[Term] | None = None,
             images: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[dict, int, bool]:
    """The loop shared by every search space (module docstring: the schedule). Returns
    (history, steps taken, converged); converged means every vertex met ``config.tol`` as
    8-bit pixels or, with the least-change term, fooled the net at the last step (the
    target's class, top-class probability within FOOL_GAP of the target's).

    Each step: prune where due, render, the loss (the sum of weight * value over ``terms``,
    default ``terms.build_terms``: the collision, the push, the least-change term, TV and
    entropy), one optimiser step, the projection, the record (each term under its columns and
    the loop's relative errors and push), the stop on ``tol`` and the checkpoint.

    progress(step, total, loss, worst relative error) after every step.
    checkpoint: saves the loop's state when due, after the last step, and on SIGINT/SIGTERM
    (then raises checkpoints.Interrupted). resume: a checkpoint to go on from (``param``
    already restored from it); the loop draws no random numbers and the terms keep their
    state in the history, so the run ends as if it had never stopped. anchor (1, 3, H, W):
    what the least-change term (``config.least_change``) keeps each vertex close to. images:
    the (source, target) images (1, 3, H, W) the terms may measure against (the distinct term's
    scale).
    """
    config = concrete(config, tap)
    if terms is None:
        terms = default_terms(tap, param, target, config, anchor, images)
    opt = make_optimizer(param, config)
    ph = config.phases()
    with torch.no_grad():
        if len(param()) == config.vertices:  # built with every vertex (``alone`` not applied): nothing to fork
            ph["fork"] = 0
    with restoring(resume_path(checkpoint)):
        hist, step, converged, before = resumed(resume, opt, terms, config.steps)
    if resume is not None and resume["done"]:
        return hist, step, converged
    started = time.time()
    decision, holds = any(t.decision for t in terms), any(t.holds for t in terms)
    for step in range(step + 1, config.steps + 1):
        loss, worst = take_step(tap, param, opt, terms, target, config, ph, step, hist, decision)
        if progress:
            progress(step, config.steps, float(loss.detach().sum()), worst)
        if not holds and tolerance_met(tap, param, target, config, ph, step, worst):
            converged = True
            break
        if checkpoint is not None and step < config.steps and checkpoint.due(step):
            seconds = before + time.time() - started
            save_or_stop(checkpoint, loop_state(step, False, converged, param, opt, hist, seconds), config.steps)
    converged = converged or any(t.converged(hist) for t in terms)
    if checkpoint is not None:
        seconds = before + time.time() - started
        checkpoint.save(loop_state(step, True, converged, param, opt, hist, seconds), final=True)
    return hist, step, converged


def default_terms(tap: Tap, param: torch.nn.Module, target: Target, config: CollideConfig,
                  anchor: torch.Tensor | None, images: tuple[torch.Tensor, torch.Tensor] | None) -> list[Term]:
    """``terms.build_terms`` for this run: the collision, the push, the least-change term, TV and
    entropy, with the (source, target) ``images`` where given."""
    source, target_image = images if images is not None else (None, None)
    return build_terms(Setup(config, tap, target, param, anchor, source, target_image))


def take_step(tap: Tap, param: torch.nn.Module, opt: Optimiser, terms: list[Term], target: Target,
              config: CollideConfig, ph: dict, step: int, hist: dict, decision: bool) -> tuple[torch.Tensor, float]:
    """One step of the loop: fork and prune where due, render, the loss, the optimiser's step at the
    step's learning rate, the projection, the record. Returns (loss (V,), worst relative error
    measured before the update)."""
    if step == ph["fork"]:
        fork_vertices(param, opt, config)
    if param.mixes and step in ph["prune"]:
        prune(param, opt, ph["prune"][step])
    ctx = Context.of(tap, param, target, config, ph, step, hist, decision)
    loss, values = loss_of(terms, ctx)
    opt.param_groups[0]["lr"] = learning_rate(config, step)
    opt.zero_grad(set_to_none=True)
    loss.sum().backward()
    opt.step()
    param.project()
    return loss, record(hist, terms, ctx, values)


def tolerance_met(tap: Tap, param: torch.nn.Module, target: Target, config: CollideConfig, ph: dict, step: int,
                  worst: float) -> bool:
    """Stop on ``tol``: the step's worst error is within it, the separate and sharpen phases are
    over (``settle``), and the images as saved meet it too (``confirmed``)."""
    return worst <= config.tol and step >= min(ph["settle"], config.steps) and confirmed(tap, param, target, config.tol)


def learning_rate(config: CollideConfig, step: int) -> float:
    """The rate of ``step`` (1-based): ``config.learning_rate`` until the last ``decay`` share of
    the steps, then a cosine down to a tenth of it at the last step."""
    base, start = config.learning_rate, (1.0 - config.decay) * config.steps
    if config.decay <= 0 or step <= start:
        return base
    t = (step - start) / (config.steps - start)
    return base * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * t)))


def resumed(resume: dict | None, opt: Optimiser, terms: list[Term], steps: int) -> tuple[dict, int, bool, float]:
    """(history, last step taken, converged, seconds so far) of a fresh run, or of the checkpoint
    ``resume`` (the optimiser's state restored from it; columns a checkpoint of an older
    version lacks start empty). ValueError when the checkpoint's state does not fit the run
    (``checkpoints.restoring`` makes it a DamagedCheckpoint)."""
    hist = new_history(terms)
    if resume is None:
        return hist, 0, False, 0.0
    if not 0 <= resume["step"] <= steps:
        raise ValueError(f"step {resume['step']} of a run of {steps} steps")
    opt.load_state_dict(resume["opt"])
    for p, st in opt.state.items():
        for k, v in st.items():
            if k != "step" and torch.is_tensor(v) and v.shape != p.shape:
                raise ValueError(f"the optimiser's {k} is {tuple(v.shape)} for a parameter of {tuple(p.shape)}")
    if not all(isinstance(v, list) for v in resume["history"].values()):
        raise ValueError("its history holds something other than lists")
    for key in hist:
        resume["history"].setdefault(key, [])
    return resume["history"], resume["step"], resume["converged"], resume["seconds"]


def resume_path(checkpoint: Checkpointer | None) -> str:
    """What a DamagedCheckpoint names: the checkpoint's file, or the ``resume`` argument."""
    return checkpoint.path if checkpoint is not None else "given as resume"


def record(hist: dict, terms: list[Term], ctx: Context, values: list[torch.Tensor]) -> float:
    """Append the step to the history: each term's columns, and the loop's relative errors
    (measured before the step's update) and smallest push. Returns the worst relative error."""
    for t, v in zip(terms, values):
        t.record(ctx, v, hist)
    with torch.no_grad():
        rel = relative_error(ctx.z, ctx.target)
        push = push_ratio(ctx.z, ctx.target)
    hist["worst_rel_error"].append(float(rel.max()))
    hist["mean_rel_error"].append(float(rel.mean()))
    hist["min_push"].append(float(push.min()))
    return hist["worst_rel_error"][-1]


@torch.no_grad()
def confirmed(tap: Tap, param: torch.nn.Module, target: Target, tol: float) -> bool:
    """Every vertex meets ``tol`` on the current images as saved (8-bit pixels): the errors the
    loop records are measured before the step's update."""
    return float(relative_error(tap.pre(quantise(param())), target).max()) <= tol


def loop_state(step: int, done: bool, converged: bool, param: torch.nn.Module, opt: Optimiser, hist: dict,
               seconds: float) -> dict:
    """What a checkpoint holds of the loop (``resume`` goes on from it)."""
    return {"step": step, "done": done, "converged": converged, "param": param.core_state(),
            "opt": opt.state_dict(), "history": hist, "seconds": seconds}


def save_or_stop(checkpoint: Checkpointer, state: dict, steps: int) -> None:
    """Save a due checkpoint; after SIGINT/SIGTERM raise Interrupted, saying where it went."""
    where = checkpoint.save(state)
    if checkpoint.stopping:
        name = signal.Signals(checkpoint.stop.signum).name
        how = "Ctrl-C (SIGINT)" if name == "SIGINT" else name
        raise Interrupted(f"stopped by {how} at step {state['step']}/{steps}: "
                          + (f"checkpoint saved in {where}" if where else "the checkpoint could not be saved"),
                          checkpoint.stop.signum)


def progress_callback(progress):
    """``progress`` as the loop's ``fn(step, total, loss, worst)``: a callable as it is, a
    tqdm-compatible bar (``update(n)``, ``total``) advanced by the steps done, None as None."""
    if progress is None or callable(progress):
        return progress
    if not hasattr(progress, "update"):
        raise CollideError(f"progress must be a callable(step, total, loss, worst) or a bar with update(n) (tqdm), "
                           f"got {type(progress).__name__}")
    done = [0]

    def advance(step: int, total: int, loss: float, worst: float) -> None:
        if getattr(progress, "total", None) in (None, 0):
            progress.total = total
        if hasattr(progress, "set_postfix_str"):
            progress.set_postfix_str(f"worst rel.err {worst:.2e}", refresh=False)
        progress.update(step - done[0])
        done[0] = step

    return advance


def collide(tap: Tap, source_img: np.ndarray, target_img: np.ndarray, config: CollideConfig = CollideConfig(),
            index=None, progress: Callable | None = None, target: Target | None = None,
            checkpoint: Checkpointer | None = None, resume: dict | None = None) -> CollideResult:
    """Find ``config.vertices`` colliders of ``target_img`` ((S, S, 3) uint8, S = config.size).

    Patch mode retrieves candidates for ``source_img`` from ``index`` (a knn.PatchIndex);
    pixel mode starts from the source (or the target, ``init="target"``).
    ``target``: a precomputed ``target_of(tap, target_img, config.vertices, config.first_unit)``
    (batch jobs that share a target compute it once); None computes it here.
    ``checkpoint``: saves the loop's state (checkpoints.Checkpointer); ``resume``: a checkpoint
    of this run (``Checkpointer.load``) to go on from: its target and candidates are used, so
    the run ends as if it had never stopped.
    ``progress``: off by default; a callable ``progress(step, total, loss, worst)``, or a
    tqdm-compatible bar (anything with ``update(n)``; its ``total`` is set when unset).
    """
    t0 = time.time()
    clock = Clock()
    progress = progress_callback(progress)
    config = concrete(config, tap)
    S = config.size
    for name, img in (("source", source_img), ("target", target_img)):
        if img.shape != (S, S, 3):
            raise CollideError(f"{name} image is {img.shape[1]}x{img.shape[0]}, expected {S}x{S} (the --size)")
    if config.space.needs_index and index is None:
        raise CollideError("patch mode needs an index; build one with `patchcollide index build` or use --mode pixel")
    dev = resolve_device(config.device)
    tap = tap_on(tap, dev)
    src, tgt = to_tensor(source_img).to(dev), to_tensor(target_img).to(dev)
    if resume is not None:
        with restoring(resume_path(checkpoint)):
            target = Target.from_dict(resume["target"])
    if target is None:
        target = target_of(tap, tgt, config.vertices, config.first_unit)
    elif len(target.units) != config.vertices:
        raise CollideError(f"the precomputed target has {len(target.units)} units for {config.vertices} vertices")
    target = target.to(dev)
    clock.lap("target")
    candidates = None
    if config.space.needs_index:
        if resume is not None:  # the same candidates, by id: no search, whatever the index would answer now
            with restoring(resume_path(checkpoint)):
                c = {k: v.numpy() for k, v in resume["candidates"].items()}
                check_candidates(c, config, len(index.store))
                candidates = {**c, "patches": index.candidate_pixels(c["ids"], config.window)}
        else:
            candidates = retrieve_candidates(index, source_img, config.k, config.grid_stride, config.window,
                                             target_img if config.retrieve == "source+target" else None)
    cand_meta = None if candidates is None else {k: candidates[k] for k in ("ids", "yx", "distances")}
    clock.lap("retrieval")
    param = make_param(alone(config), src, tgt, candidates).to(dev)
    if resume is not None:
        with restoring(resume_path(checkpoint)):
            if 0 < config.phases()["fork"] <= resume["step"]:
                param.fork(config)
            param.restore(resume["param"])
    if checkpoint is not None:
        checkpoint.static.update(  # tensors and plain values only: the file loads with weights_only=True
            target=target.as_dict(),
            candidates=None if cand_meta is None else {k: torch.from_numpy(np.asarray(v)) for k, v in cand_meta.items()})
    anchor = least_change_anchor(config, src, candidates).to(dev) if config.least_change > 0 else None
    clock.lap("setup")
    hist, steps, converged = optimise(tap, param, target, config, clock.first_call(progress, "first_step"),
                                      checkpoint, resume, anchor, images=(src, tgt))
    clock.lap("steps")  # after the first
    with torch.no_grad():
        x = param().detach()
        metrics = collision_metrics(tap.pre(x), tap.logits(x), target)
        mixing, hard = param.mixing_stats(), param.argmax_image()
        if hard is not None:
            mixing["argmax_rel_error"] = relative_error(tap.pre(hard), target).tolist()
    before = resume["seconds"] if resume is not None else 0.0
    return CollideResult(vertices=x.cpu(), target=target.to("cpu"),
                         metrics=metrics, history=hist, steps=steps, converged=converged,
                         seconds=before + time.time() - t0, param_state=param.core_state(), candidates=cand_meta,
                         mixing=mixing, argmax_vertices=None if hard is None else hard.cpu(), timings=clock.laps)


def check_candidates(c: dict, config: CollideConfig, patches: int) -> None:
    """A checkpoint's candidates (``ids`` (L, K), ``yx`` (L, 2), ``distances`` (L, K)) fit the
    run and a store of ``patches``; ValueError otherwise."""
    ids, yx = c["ids"], c["yx"]
    k = config.k * (2 if config.retrieve == "source+target" else 1)
    if ids.ndim != 2 or ids.shape[1] != k or yx.shape != (len(ids), 2) or c["distances"].shape != ids.shape:
        raise ValueError(f"candidates {ids.shape} at {yx.shape} for k = {k}")
    if ids.size and (ids.min() < 0 or ids.max() >= patches):
        raise ValueError(f"candidate ids outside the store's {patches} patches")


class Clock:
    """Seconds between laps, by name (``laps``), on a monotonic clock."""

    def __init__(self):
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> float:
        now = time.perf_counter()
        self.laps[name] = round(self.laps.get(name, 0.0) + now - self._last, 4)
        self._last = now
        return self.laps[name]

    def first_call(self, fn: Callable | None, name: str) -> Callable:
        """``fn`` (or nothing) that also takes the lap ``name`` at its first call: the loop's
        progress callback times its first step (the optimiser's first use included)."""
        def call(*args):
            if name not in self.laps:
                self.lap(name)
            if fn is not None:
                fn(*args)

        return call


@torch.no_grad()
def quantised_metrics(tap: Tap, vertices_u8: np.ndarray, target: Target, device: "str | torch.device" = "auto") -> dict:
    """Metrics of the vertices as saved: (V, H, W, 3) uint8 (e.g. PNGs read back from disk)."""
    dev = resolve_device(device)
    tap = tap_on(tap, dev)
    x = torch.from_numpy(np.ascontiguousarray(vertices_u8)).permute(0, 3, 1, 2).float().to(dev) / 255.0
    return collision_metrics(tap.pre(x), tap.logits(x), target.to(dev))
