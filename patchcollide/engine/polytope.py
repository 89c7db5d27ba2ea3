"""The polytope check: are random convex combinations of the vertices still (approximately)
colliding and classified as the target? Distances in the paper's units; the indicator of where
vertices differ.

At a ReLU layer deep in a net the set of colliding inputs is a polytope in the space of the
previous layer's activations, not in pixel space: a convex combination of colliding images
collides only approximately (exactly only where the layers before are linear on the segment).
So this check measures, it does not assume: the samples' relative error is reported beside
the vertices' (the project's demo, random VGG-16 at 128 x 128: mean 0.11 against 0.03).
"""
from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import torch

from .distance import relative_distance
from ..models.build import Tap
from .target import Target

PROB_GAP = 0.01  # a sample fools the net when it is in the target's class with a top-class prob. this close to the target's


def pairwise_l2(images: np.ndarray) -> float | None:
    """Mean pairwise L2 distance of (N, H, W, 3) images in 0..255 pixel units (the paper's
    units at 224 x 224 x 3); None for fewer than two images (no pair: JSON null)."""
    x = images.reshape(len(images), -1).astype(np.float64)
    if len(x) < 2:
        return None
    return float(np.mean([np.linalg.norm(x[i] - x[j]) for i, j in itertools.combinations(range(len(x)), 2)]))


BLOCK_VIEW = 7  # the block-mean view is BLOCK_VIEW x BLOCK_VIEW: pixel noise cancels there, strokes and regions do not


def block_view(images: np.ndarray, side: int = BLOCK_VIEW) -> np.ndarray:
    """(N, H, W, 3) uint8 (or float) images as (N, side * side * 3) float64 block means in 0..255
    units: each image cut into a side x side grid of near-equal blocks (numpy.array_split rows
    and columns) and every block replaced by its mean colour."""
    x = np.asarray(images, dtype=np.float64)
    rows = np.array_split(np.arange(x.shape[1]), side)
    cols = np.array_split(np.arange(x.shape[2]), side)
    out = np.stack([np.stack([x[:, r][:, :, c].mean((1, 2)) for c in cols], 1) for r in rows], 1)  # (N, s, s, 3)
    return out.reshape(len(x), -1)


def extent(vertices_u8: np.ndarray, source_u8: np.ndarray, target_u8: np.ndarray) -> dict:
    """How far apart the vertices are where a person sees it: the smallest L2 distance between two
    vertices (V, H, W, 3) in the 7 x 7 block-mean view (``block_view``), over the source-target
    distance in the same view. 0 for fewer than two vertices (a point has no extent). Returns
    {"extent", "min_pair_block_l2", "source_target_block_l2", "pairs_block_l2" (V(V-1)/2 floats)}."""
    v = block_view(vertices_u8)
    st = float(np.linalg.norm(block_view(source_u8[None]) - block_view(target_u8[None])))
    pairs = [float(np.linalg.norm(v[i] - v[j])) for i, j in itertools.combinations(range(len(v)), 2)]
    least = min(pairs) if pairs else 0.0
    return {"extent": least / st if st > 0 else 0.0, "min_pair_block_l2": least,
            "source_target_block_l2": st, "pairs_block_l2": pairs}


@torch.no_grad()
def sample_polytope(tap: Tap, vertices: torch.Tensor, target: Target, samples: int = 2000, seed: int = 0,
                    batch_size: int = 32, device: str | torch.device = "cpu",
                    progress: Callable[[int, int], None] | None = None, prob_gap: float = PROB_GAP,
                    judge=None, source_class: int | None = None, keep_samples: bool = False) -> dict:
    """Classify ``samples`` Dirichlet(1) convex combinations of vertices (V, 3, H, W) in [0, 1].

    Returns the share of samples whose top-1 class is the target's, the share that also have a
    top-class probability within ``prob_gap`` of the target's (``share_target_close``: the
    paper's functional test, "the target's class, with the target's confidence"; 1.0 makes
    ``fools_net`` true), the largest such gap, the mean top-class probability of the samples
    and the target's, and the samples' relative fc6 error (mean and max). With a ``judge``
    (judge.Judge) and the judge's ``source_class``: the share of samples it reads as the
    source, and their mean probability of that class. Seeded: the same seed gives the same
    combinations. progress(done, total) after every batch of samples. keep_samples: also
    return ``per_sample`` = {"rel_error", "in_class", "prob_gap"} (lists of ``samples``), the
    data of the tolerance curve (scripts/bench_tolerance.py).
    """
    if samples < 1:
        raise ValueError(f"--samples must be >= 1, got {samples}")
    n = samples
    V = len(vertices)
    w = torch.from_numpy(np.random.default_rng(seed).dirichlet(np.ones(V), size=n)).float()
    vertices = vertices.to(device)
    post = torch.relu(target.z.to(device))
    same, close, gaps, probs, rel, judged, judge_p, hits = 0, 0, [], [], [], 0, [], []
    for s in range(0, n, batch_size):
        x = torch.einsum("nv,vchw->nchw", w[s : s + batch_size].to(device), vertices)
        z, logits = tap.pre_and_logits(x)
        p = torch.softmax(logits.float(), 1)
        prob, top = p.max(1)
        hit = top == target.label
        gap = (prob - target.prob).abs()
        same += int(hit.sum())
        close += int((hit & (gap <= prob_gap)).sum())
        gaps.append(gap.cpu())
        hits.append(hit.cpu())
        probs.append(prob.cpu())
        if judge is not None:
            pj = judge.probs(x)
            judged += int((pj.argmax(1) == source_class).sum())
            judge_p.append(pj[:, source_class])
        rel.append(relative_distance(torch.relu(z), post).cpu())
        if progress:
            progress(min(s + batch_size, n), n)
    rel_t = torch.cat(rel)
    out = {
        "samples": n, "seed": seed, "share_target_class": same / n, "target_class": target.label,
        "share_target_close": close / n, "prob_gap": prob_gap, "max_prob_gap": float(torch.cat(gaps).max()),
        "fools_net": close == n,
        "mean_top_prob_samples": float(torch.cat(probs).mean()), "top_prob_target": target.prob,
        "rel_error_mean": float(rel_t.mean()), "rel_error_max": float(rel_t.max()),
    }
    if keep_samples:
        out["per_sample"] = {"rel_error": rel_t.tolist(), "in_class": torch.cat(hits).tolist(),
                             "prob_gap": torch.cat(gaps).tolist()}
    if judge is not None:
        out.update(judge_source_class=source_class, judge_share_source=judged / n,
                   judge_mean_source_prob=float(torch.cat(judge_p).mean()))
    return out


def difference_boxes(vertices_u8: np.ndarray, n_boxes: int = 4, box: int = 32) -> list[tuple[int, int]]:
    """Top-left corners of the ``n_boxes`` non-overlapping box x box windows where the
    vertices (V, H, W, 3) uint8 differ most (per-pixel standard deviation across vertices,
    summed over the window), as the paper's purple boxes."""
    sd = vertices_u8.astype(np.float32).std(0).sum(-1)  # (H, W)
    H, W = sd.shape
    ii = np.pad(sd, ((1, 0), (1, 0))).cumsum(0).cumsum(1)  # integral image
    win = ii[box:, box:] - ii[:-box, box:] - ii[box:, :-box] + ii[:-box, :-box]  # (H-box+1, W-box+1)
    boxes: list[tuple[int, int]] = []
    win = win.copy()
    for _ in range(n_boxes):
        y, x = np.unravel_index(int(np.argmax(win)), win.shape)
        if win[y, x] <= 0:
            break
        boxes.append((int(y), int(x)))
        win[max(0, y - box + 1) : y + box, max(0, x - box + 1) : x + box] = -1  # no overlap
    return boxes
