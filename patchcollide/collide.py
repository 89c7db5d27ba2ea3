"""The batched vertex loop: models + objectives + params.

``collide(tap, source, target, config, index=...)`` finds ``config.vertices`` vertices of the
collision polytope of ``target`` at the tap's layer, all optimised together as one batch
(one forward/backward per step for all of them), and stops early once every vertex meets
``config.tol``. In patch mode the vertices are mixtures of real patches retrieved from the
index for every location of a grid on ``source``.

Optimiser: Adam, learning rate cut by 10x for the last 30% of the steps, loss weights
(a, b) = (1000, 1) on (L+, L-^i). The authors used a gradient EMA with a hand-made 8-step
learning-rate ramp over 20,000 iterations and weights (100, 10) switched to (1000, 1) at
14,000; both phases stay configurable (``weights_early``, ``weights_late``, ``switch``). With
Adam, (100, 10) in the first phase keeps the error flat (random VGG-16, 64 x 64, patch mode:
worst relative error 0.41 -> 0.29 in 80 steps) where (1000, 1) throughout reaches 0.085, so
(1000, 1) is the default for both. The benchmark reports the steps needed.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

import numpy as np
import torch

from .models import Tap
from .objectives import OBJECTIVES, Target, choose_units, collision_metrics, loss_terms, total_variation
from .images import grid_positions
from .params import PATCH, PatchParam, PixelParam

log = logging.getLogger(__name__)

MAX_PARAM_BYTES = 16 * 2**30  # refuse patch-mode settings whose logits alone would need more


class CollideError(Exception):
    """Bad collide arguments; ``str(e)`` is a one-line message."""


@dataclasses.dataclass(frozen=True)
class CollideConfig:
    mode: str = "patches"  # patches | pixel
    vertices: int = 5
    steps: int = 400  # at most; stops earlier when every vertex meets tol
    min_steps: int = 50  # never stop before: a start that already collides (init=target) must still move
    tol: float = 1e-2  # relative post-activation error ||relu(z)-relu(z_t)|| / ||relu(z_t)|| to stop at
    lr: float | None = None  # None: 0.1 on patch logits, 5e-3 on pixels
    weights_early: tuple[float, float] = (1000.0, 1.0)  # (a, b) on (L+, L-^i); the authors began with (100, 10)
    weights_late: tuple[float, float] = (1000.0, 1.0)  # after `switch` (the authors' final phase)
    switch: float = 0.7  # share of the steps before the late phase (authors: 14,000 / 20,000)
    objective: str = "paper"  # paper: L+ on active units (the authors'); post: on the whole post-activation
    tv: float = 0.0  # weight of TV on the mixing weights (patch mode; the authors used 100 at their scale)
    size: int = 224  # side of the square input (the store's geometry; smaller for CPU smoke runs)
    k: int = 16  # candidates per location (patch mode)
    grid_stride: int = 8  # location grid on the source: 25 x 25 = 625 locations at 224
    init: str = "source"  # pixel mode: start from the source or from the target
    noise: float = 0.01  # patch mode: seeded noise on the initial logits
    first_unit: int = 0  # skip the target's first (most negative) units: more vertices in a later run
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        checks = [
            (self.mode in ("patches", "pixel"), f"--mode must be patches or pixel, got {self.mode!r}"),
            (1 <= self.vertices <= 64, f"--vertices must be between 1 and 64, got {self.vertices}"),
            (self.steps >= 1, f"--steps must be >= 1, got {self.steps}"),
            (self.min_steps >= 0, f"--min-steps must be >= 0, got {self.min_steps}"),
            (self.tol > 0, f"--tol must be > 0, got {self.tol}"),
            (self.lr is None or self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (0 <= self.switch <= 1, f"switch must be in [0, 1], got {self.switch}"),
            (self.tv >= 0, f"--tv must be >= 0, got {self.tv}"),
            (self.objective in OBJECTIVES, f"--objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}"),
            (PATCH <= self.size <= 1024, f"--size must be between {PATCH} and 1024, got {self.size}"),
            (self.k >= 1, f"-k must be >= 1, got {self.k}"),
            (1 <= self.grid_stride <= PATCH, f"--grid-stride must be between 1 and {PATCH}, got {self.grid_stride}"),
            (self.init in ("source", "target"), f"--init must be source or target, got {self.init!r}"),
            (self.seed >= 0, f"--seed must be >= 0, got {self.seed}"),
            (self.first_unit >= 0, f"--first-unit must be >= 0, got {self.first_unit}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise CollideError(msg)
        if self.mode == "patches":
            L = len(grid_positions((self.size, self.size), self.grid_stride, PATCH, cover=True))
            need = self.vertices * L * self.k * PATCH * PATCH * 4 * 4  # logits, their grad, Adam's two moments
            if need > MAX_PARAM_BYTES:
                raise CollideError(f"-k {self.k} with {self.vertices} vertices at {self.size}x{self.size} needs about "
                                   f"{need / 2**30:.1f} GiB for the mixing logits; lower -k or --vertices")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (0.1 if self.mode == "patches" else 5e-3)


@dataclasses.dataclass
class CollideResult:
    """vertices (V, 3, H, W) float32 in [0, 1] on the CPU; metrics per vertex for the float
    images; history: per step the mean L+, mean L-, mean TV and the worst relative error."""

    vertices: torch.Tensor
    target: Target
    metrics: dict
    history: dict
    steps: int
    converged: bool
    seconds: float
    param_state: dict  # the final logits (patch mode) or pixels, to inspect or continue a run
    candidates: dict | None  # patch mode: ids (L, K) int64, yx (L, 2), distances (L, K)


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
        msg = str(e).strip().splitlines()[0][:160]
        raise CollideError(f"{tap.arch} cannot take a {target.shape[-1]}x{target.shape[-2]} input ({msg}); "
                           "use another --size") from None
    z = z[0]
    p = torch.softmax(logits.float(), 1)[0]
    try:
        units = choose_units(z, first_unit + vertices)[first_unit:]
    except ValueError as e:
        raise CollideError(str(e)) from None
    return Target(z=z, units=units, label=int(p.argmax()), prob=float(p.max()))


def retrieve_candidates(index, source_img: np.ndarray, k: int, grid_stride: int) -> dict:
    """k nearest stored patches for every location of the covering grid on ``source_img``
    (H, W, 3) uint8: patches (L, K, 32, 32, 3) uint8, ids, distances, yx."""
    res = index.search_image(source_img, k=k, stride=grid_stride)
    L = len(res.ids)
    patches = index.store.get(res.ids.ravel()).reshape(L, k, PATCH, PATCH, 3)
    return {"patches": patches, "ids": res.ids, "distances": res.distances, "yx": res.query_yx}


def make_param(config: CollideConfig, source: torch.Tensor, target: torch.Tensor, candidates: dict | None):
    V = config.vertices
    if config.mode == "pixel":
        init = source if config.init == "source" else target
        return PixelParam(init.expand(V, -1, -1, -1))
    cand = torch.from_numpy(candidates["patches"]).permute(0, 1, 4, 2, 3).float() / 255.0  # (L, K, 3, 32, 32)
    return PatchParam(cand, candidates["yx"], (config.size, config.size), V, noise=config.noise, seed=config.seed)


def optimise(tap: Tap, param: torch.nn.Module, target: Target, config: CollideConfig,
             progress: Callable[[int, int, float, float], None] | None = None) -> tuple[dict, int, bool]:
    """The loop shared by every search space. Returns (history, steps taken, converged).

    progress(step, total, loss, worst relative error) after every step.
    """
    opt = torch.optim.Adam(param.parameters(), lr=config.learning_rate)
    switch_step = int(round(config.switch * config.steps))
    hist: dict[str, list] = {"pos": [], "neg": [], "tv": [], "worst_rel_error": [], "mean_rel_error": []}
    post_norm = target.post.norm().clamp_min(1e-12)
    converged, step = False, 0
    for step in range(1, config.steps + 1):
        late = step > switch_step
        if late and step == switch_step + 1:
            for g in opt.param_groups:
                g["lr"] = config.learning_rate * 0.1
        a, b = config.weights_late if late else config.weights_early
        x = param()
        z = tap.pre(x)
        pos, neg = loss_terms(z, target, config.objective)
        w = param.mixing_weights() if config.tv > 0 else None
        tv = total_variation(w.flatten(1, 2)) if w is not None else torch.zeros_like(pos)
        loss = (a * pos + b * neg + config.tv * tv).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        param.project()
        with torch.no_grad():
            rel = (torch.relu(z) - target.post).norm(dim=1) / post_norm
        hist["pos"].append(float(pos.detach().mean()))
        hist["neg"].append(float(neg.detach().mean()))
        hist["tv"].append(float(tv.detach().mean()))
        hist["worst_rel_error"].append(float(rel.max()))
        hist["mean_rel_error"].append(float(rel.mean()))
        if progress:
            progress(step, config.steps, float(loss.detach()), float(rel.max()))
        if float(rel.max()) <= config.tol and step >= min(config.min_steps, config.steps):
            # measured before this step's update: confirm on the current images
            with torch.no_grad():
                now = (torch.relu(tap.pre(param())) - target.post).norm(dim=1) / post_norm
            if float(now.max()) <= config.tol:
                converged = True
                break
    return hist, step, converged


def collide(tap: Tap, source_img: np.ndarray, target_img: np.ndarray, config: CollideConfig = CollideConfig(),
            index=None, progress: Callable | None = None, target: Target | None = None) -> CollideResult:
    """Find ``config.vertices`` colliders of ``target_img`` ((S, S, 3) uint8, S = config.size).

    Patch mode retrieves candidates for ``source_img`` from ``index`` (a knn.PatchIndex);
    pixel mode starts from the source (or the target, ``init="target"``).
    ``target``: a precomputed ``target_of(tap, target_img, config.vertices, config.first_unit)``
    (batch jobs that share a target compute it once); None computes it here.
    """
    from .models import resolve_device

    t0 = time.time()
    S = config.size
    for name, img in (("source", source_img), ("target", target_img)):
        if img.shape != (S, S, 3):
            raise CollideError(f"{name} image is {img.shape[1]}x{img.shape[0]}, expected {S}x{S} (the --size)")
    if config.mode == "patches" and index is None:
        raise CollideError("patch mode needs an index; build one with `patchcollide index build` or use --mode pixel")
    dev = resolve_device(config.device)
    torch.manual_seed(config.seed)
    tap = tap.to(dev)
    src, tgt = to_tensor(source_img).to(dev), to_tensor(target_img).to(dev)
    if target is None:
        target = target_of(tap, tgt, config.vertices, config.first_unit)
    else:
        if len(target.units) != config.vertices:
            raise CollideError(f"the precomputed target has {len(target.units)} units for {config.vertices} vertices")
        target = Target(target.z.to(dev), target.units.to(dev), target.label, target.prob)
    candidates = retrieve_candidates(index, source_img, config.k, config.grid_stride) if config.mode == "patches" else None
    param = make_param(config, src, tgt, candidates).to(dev)
    hist, steps, converged = optimise(tap, param, target, config, progress)
    with torch.no_grad():
        x = param().detach()
        metrics = collision_metrics(tap.pre(x), tap.logits(x), target)
    state = {k: v.detach().cpu() for k, v in param.state_dict().items() if k in ("theta", "x")}
    cand_meta = None if candidates is None else {k: candidates[k] for k in ("ids", "yx", "distances")}
    return CollideResult(vertices=x.cpu(), target=Target(target.z.cpu(), target.units.cpu(), target.label, target.prob),
                         metrics=metrics, history=hist, steps=steps, converged=converged, seconds=time.time() - t0,
                         param_state=state, candidates=cand_meta)


@torch.no_grad()
def quantised_metrics(tap: Tap, vertices_u8: np.ndarray, target: Target, device: str = "auto") -> dict:
    """Metrics of the vertices as saved: (V, H, W, 3) uint8 (e.g. PNGs read back from disk)."""
    from .models import resolve_device

    dev = resolve_device(device)
    tap = tap.to(dev)
    x = torch.from_numpy(np.ascontiguousarray(vertices_u8)).permute(0, 3, 1, 2).float().to(dev) / 255.0
    t = Target(target.z.to(dev), target.units.to(dev), target.label, target.prob)
    return collision_metrics(tap.pre(x), tap.logits(x), t)
