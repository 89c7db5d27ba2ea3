"""Search spaces: what the vertex loop optimises, and how it draws the image.

A search space is one ``nn.Module`` class, a subclass of ``SearchSpace`` (its docstring and
docs/extending.md have the whole contract), registered by name in ``SPACES`` (``--mode``; the
registry and the traits that need no torch are in ``spaces.py``, and this module puts its
classes into that same registry when imported; other packages add theirs through the
``patchcollide.search_spaces`` entry points, ``core/plugins.py``). The loop, the run folder and
``load_run`` ask only ``SearchSpace``'s members. Pixel and patch space share one loop.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from ..core.images import PATCH
from .spaces import SPACES, STARTS, PatchSpace, PixelSpace, SpaceTraits


class SearchSpace(SpaceTraits, nn.Module):
    """The base of every search space: a new one is its logic only, ``from_config``,
    ``__init__`` (its ``nn.Parameter``s), ``forward`` and, where its values have bounds,
    ``project``; every other member has a default here.

    Class members (torch-free, ``spaces.SpaceTraits``): ``summary``, ``needs_index``, ``mixes``,
    ``default_lr``, ``check_config(config)``, ``state_bytes(config)``. And:

    * ``from_config(config, source, target, candidates) -> instance`` (required): source and
      target (1, 3, S, S) float32 in [0, 1] on the run's device; candidates: where
      ``needs_index``, a dict of ``patches`` (L, K, w, w, 3) uint8 (w = ``config.window``), ``yx``
      (L, 2) int top-left corners of the retrieved 32 x 32 patches, ``ids`` (L, K) store ids,
      ``distances``; else None. ``config.vertices`` gives V; the instance must be on the
      inputs' device (build it from tensors there).
    * ``mixing_from_state(state, window) -> dict | None`` (static): ``load_run``'s view of a
      saved state.npz (numpy arrays); default None.

    Instances:

    * ``forward() -> (V, 3, S, S)`` float32 in [0, 1], differentiable: the vertices.
    * ``project()``: after every optimiser step, puts the parameters back into their domain
      (default: nothing).
    * ``core_state() -> dict[str, Tensor]`` on the CPU: what ``restore`` needs to continue
      (checkpoints; state.npz). Default: every parameter of this module (not its submodules'),
      by name.
    * ``restore(state)``: continue from a ``core_state``; ValueError where it does not fit.
      Default: the parameters of the same names, shapes and float dtype.
    * ``fork(config)``: the one vertex of a space built with ``vertices=1`` becomes
      ``config.vertices`` copies that differ by ``config.noise`` (``--fork``: a run walks out
      from one collider). Default: every parameter and buffer of this module whose first
      dimension is 1 (the vertex's) repeated, seeded noise N(0, ``config.noise``) on each
      repeated parameter, then ``project`` (``PatchParam``: its logits, kept entries and seam
      tables; ``PixelParam`` writes its own, the start's low-frequency noise).
    * ``mixing_weights() -> (V, S*S, M) | None``, ``mixing_stats() -> dict | None`` (lists of
      V floats, report.json's vertices.mixing), ``argmax_image() -> (V, 3, S, S) | None``:
      default None (the space mixes nothing).

    A space with ``mixes = True`` also gives ``mixing_weights`` (V, S*S, M) summing to 1 over M,
    ``total_variation(w)`` and ``entropy(w)`` (V,) differentiable (the TV and entropy terms),
    ``prune(keep) -> (V, S*S, keep)`` int64 (the kept slots: the loop carries Adam's moments
    over to them) and keeps its optimised logits in the parameter ``theta`` (the prune swaps
    it in the optimiser). ``PatchParam`` is the example.
    """

    @staticmethod
    def mixing_from_state(state: dict, window: int) -> dict | None:
        return None

    @torch.no_grad()
    def project(self) -> None:
        """Nothing to project (a space whose parameters have bounds clamps them here)."""

    def core_state(self) -> dict:
        """Every parameter of this module, by name, on the CPU."""
        return {name: p.detach().cpu().clone() for name, p in self.named_parameters(recurse=False)}

    @torch.no_grad()
    def restore(self, state: dict) -> None:
        """The parameters from a :meth:`core_state` of the same names and shapes; ValueError otherwise."""
        own = dict(self.named_parameters(recurse=False))
        if set(state) != set(own):
            raise ValueError(f"state holds {sorted(state)}, the space {sorted(own)}")
        for name, p in own.items():
            x = state[name]
            if x.shape != p.shape or not x.is_floating_point():
                raise ValueError(f"{name} {tuple(x.shape)} {x.dtype} for {tuple(p.shape)} float")
        for name, p in own.items():
            setattr(self, name, nn.Parameter(state[name].to(p.device).clone()))

    @torch.no_grad()
    def fork(self, config) -> None:
        """One vertex becomes ``config.vertices`` copies: every parameter and buffer of this
        module whose first dimension is 1 repeated along it, each repeated parameter with seeded
        noise N(0, ``config.noise``) of its own (a direction between the copies for the distinct
        term), then ``project``."""
        V = config.vertices
        g = torch.Generator().manual_seed(config.seed)
        for name, b in list(self.named_buffers(recurse=False)):
            if b is not None and b.dim() and b.shape[0] == 1:
                setattr(self, name, b.repeat(V, *[1] * (b.dim() - 1)))
        for name, p in list(self.named_parameters(recurse=False)):
            if p.dim() and p.shape[0] == 1:
                x = p.detach().repeat(V, *[1] * (p.dim() - 1))
                setattr(self, name, nn.Parameter(x + config.noise * torch.randn(x.shape, generator=g).to(x.device)))
        self.project()

    def mixing_weights(self) -> torch.Tensor | None:
        return None

    def mixing_stats(self) -> dict | None:
        return None

    def argmax_image(self) -> torch.Tensor | None:
        return None


class PixelParam(PixelSpace, SearchSpace):
    """The paper's vanilla method: the pixels themselves, kept in [0, 1] by projection.

    init (V, 3, H, W) in [0, 1]: the target or another image, repeated per vertex. Its traits
    (``needs_index``, ``mixes``, ``default_lr``, ``check_config``, ``state_bytes``):
    ``spaces.PixelSpace``.
    """

    @classmethod
    def from_config(cls, config, source: torch.Tensor, target: torch.Tensor, candidates: dict | None) -> "PixelParam":
        init = (source if config.init == "source" else target).expand(config.vertices, -1, -1, -1)
        return cls(apart(init, config))

    def __init__(self, init: torch.Tensor):
        super().__init__()
        self.x = nn.Parameter(init.detach().clone().float().clamp(0, 1))

    def forward(self) -> torch.Tensor:
        return self.x

    @torch.no_grad()
    def project(self) -> None:
        self.x.clamp_(0, 1)

    @torch.no_grad()
    def fork(self, config) -> None:
        """The one vertex's pixels repeated, each copy with the start's seeded low-frequency noise."""
        self.x = nn.Parameter(apart(self.x.detach().expand(config.vertices, -1, -1, -1), config))

    def core_state(self) -> dict:
        """What :meth:`restore` needs to continue from here (on the CPU)."""
        return {"x": self.x.detach().cpu().clone()}

    @torch.no_grad()
    def restore(self, state: dict) -> None:
        """Continue from a :meth:`core_state` of the same shape; ValueError otherwise."""
        x = state["x"]
        if x.shape != self.x.shape or not x.is_floating_point():
            raise ValueError(f"pixels {tuple(x.shape)} {x.dtype} for {tuple(self.x.shape)} float")
        self.x = nn.Parameter(x.to(self.x.device).clone())


def apart(x: torch.Tensor, config) -> torch.Tensor:
    """Images (V, 3, H, W) in [0, 1] with seeded low-frequency noise of ``config.noise`` (7 x 7,
    upsampled; a draw of its own per vertex from ``config.seed``) where V > 1: vertices that
    start apart, each pair with a direction for the distinct term."""
    if len(x) < 2 or config.noise <= 0:
        return x
    g = torch.Generator().manual_seed(config.seed)
    low = torch.randn(len(x), 3, 7, 7, generator=g).to(x.device)
    up = torch.nn.functional.interpolate(low, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return (x + config.noise * up).clamp(0, 1)


def tent(size: int = PATCH) -> torch.Tensor:
    """Separable tent (bilinear) window (size, size), positive everywhere, peak in the middle."""
    c = (size - 1) / 2
    t = 1.0 - (torch.arange(size, dtype=torch.float32) - c).abs() / (c + 1)
    return t[:, None] * t[None, :]


def masked_softmax(logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis of the valid entries only (0 on the others)."""
    return torch.softmax(logits.masked_fill(~valid, -float("inf")), dim=-1)


def covering_entries(yx: torch.Tensor, K: int, size: tuple[int, int], side: int = PATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """Every pixel's entries: the (location, candidate, row, column) that cover it.

    yx (L, 2) top-left corners of the ``side`` x ``side`` candidates in an (H, W) image (a
    context window may reach past the image's edge: those of its pixels are no entries). Returns
    ``entries`` (H*W, C) int64, the flat index into (L, K, side, side), padded with 0 where a
    pixel has fewer than C = max coverage, and ``valid`` (H*W, C) bool. Entries of a pixel are
    ordered by location, then candidate.
    """
    L = len(yx)
    H, W = size
    area = side * side
    dy, dx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    y, x = yx[:, 0, None, None] + dy, yx[:, 1, None, None] + dx  # (L, side, side)
    inside = ((y >= 0) & (y < H) & (x >= 0) & (x < W)).reshape(-1)
    # the K candidates of a location cover the same pixels: group the locations' pixels (L * side^2,
    # not L * K * side^2), then give each covering location its K candidates in rank order
    pix = (y * W + x).reshape(-1)[inside]
    at = torch.arange(L * area)[inside]  # location * side^2 + the pixel's place in the window
    order = torch.argsort(pix, stable=True)  # grouped by pixel, in location order
    counts = torch.bincount(pix, minlength=H * W)
    if (counts == 0).any():
        raise ValueError("the locations leave pixels uncovered; use a grid that covers the image")
    n = int(counts.max())
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(len(pix)) - starts[pix[order]]
    covering = torch.zeros(H * W, n, dtype=torch.int64)
    here = torch.zeros(H * W, n, dtype=torch.bool)
    covering[pix[order], slot] = at[order]
    here[pix[order], slot] = True
    loc, place = covering // area, covering % area
    entries = ((loc[:, :, None] * K + torch.arange(K)) * area + place[:, :, None]).reshape(H * W, n * K)
    valid = here[:, :, None].expand(-1, -1, K).reshape(H * W, n * K)
    entries = entries.masked_fill(~valid, 0)
    return entries, valid


def _seam_tables(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For neighbouring pixels' candidate ids a, b (V, h, w, M): the slot of b holding each of
    a's candidates (or -1; the first such slot if b held one twice), and b's slots that a does
    not hold. By sorting each pixel's M ids and searching them (M log M per pixel, not M x M)."""
    M = a.shape[-1]
    b_sorted, b_slot = b.sort(dim=-1, stable=True)  # equal ids keep slot order: the first is found first
    at = torch.searchsorted(b_sorted, a.contiguous()).clamp_max(M - 1)
    match = torch.where(b_sorted.gather(-1, at) == a, b_slot.gather(-1, at), -1)
    a_sorted = a.sort(dim=-1).values
    alone = a_sorted.gather(-1, torch.searchsorted(a_sorted, b.contiguous()).clamp_max(M - 1)) != b
    return match, alone


class PatchParam(PatchSpace, SearchSpace):
    """Per-pixel softmax mixture of retrieved real patches.

    candidates: (L, K, 3, S, S) float32 in [0, 1]: for each of L locations the K nearest
    stored patches (S = 32), nearest first, or their S x S context windows in their source images
    (S > 32, the authors' candidates: the matched patch in the middle); yx: (L, 2) top-left
    corners of the candidates in the (H, W) image (a window's may lie outside it). Every image
    pixel is covered by up to (S / stride)^2 locations x K candidates: its *entries* (the
    candidate's pixel that falls on it). Each pixel keeps ``slots`` of them; the logits
    theta (V, H*W, slots) give, per vertex and pixel, a softmax over the kept entries, so each
    output pixel is a convex combination of retrieved patch pixels.

    Start: the score of an entry is ``spatial * log(tent)`` at its place in its patch (the
    authors' bilinear window, sharpened: at ``spatial`` 4 the location whose centre is nearest
    dominates a pixel) plus ``bonus`` on one candidate per location, plus N(0, noise) seeded
    per vertex. "distinct": vertex v favours its (v mod K)-th nearest candidate everywhere, so
    the vertices start as different compositions of real patches; "nearest": every vertex
    favours the nearest candidate; "tent": no bonus (the authors' start, a blend of all
    candidates). Each pixel keeps its ``slots`` best-scoring entries (all when 0) and the
    logits start at their scores.

    ``prune(keep)`` keeps, at every pixel, only its ``keep`` heaviest entries from then on: the
    mixture then draws each pixel from at most ``keep`` real pixels, and every step after it
    costs less.

    ``block`` > 1 shares the learnt logits: within each block x block square of pixels, one
    trainable logit per candidate (``shared``, (V, U)) is added to every pixel's fixed start
    score of that candidate (``offset``, (V, P, M)), so a square moves to another candidate as
    a whole (``inv`` (V, P, M): each slot's shared logit). 1: every pixel its own logits.

    Memory: theta holds V * H*W * slots float32 (V=5 at 224, 32 slots: 32 MB), Adam two more
    copies, the entries' colours three times theta, the candidates L * K * 3072 float32
    (123 MB at 224, k = 16). Logits are clamped to [-30, 30].
    """

    CLAMP = 30.0

    @classmethod
    def from_config(cls, config, source: torch.Tensor, target: torch.Tensor, candidates: dict) -> "PatchParam":
        cand = torch.from_numpy(candidates["patches"]).permute(0, 1, 4, 2, 3).float() / 255.0  # (L, K, 3, S, S)
        corner = np.asarray(candidates["yx"]) - (config.window - PATCH) // 2  # a window's corner: the patch in its middle
        return cls(cand, corner, (config.size, config.size), config.vertices, noise=config.noise, seed=config.seed,
                   start=config.start, spatial=config.spatial, slots=config.slots, block=config.block)

    @staticmethod
    def mixing_from_state(state: dict, window: int) -> dict:
        """From a saved state (numpy arrays: ``theta``, ``entries``, ``valid``, ``candidate_ids``):
        per vertex and pixel the kept candidates' normalised ``weights`` (V, H*W, M), the store
        ``patch_ids`` they come from (-1 on padding) and ``pixel`` (y, x) inside each candidate."""
        theta, entries, valid = state["theta"], state["entries"], state["valid"]
        w = masked_softmax(torch.from_numpy(theta).float(), torch.from_numpy(valid)).numpy()
        ids = state["candidate_ids"]  # (L, K)
        cand = entries // (window * window)  # location * K + rank
        pid = np.where(valid, ids.reshape(-1)[np.clip(cand, 0, ids.size - 1)], -1)
        pixel = np.stack([(entries // window) % window, entries % window], axis=-1)
        return {"weights": w.astype(np.float32), "patch_ids": pid.astype(np.int64), "pixel": pixel,
                "candidates_per_location": ids.shape[1]}

    def __init__(self, candidates: torch.Tensor, yx: np.ndarray | torch.Tensor, size: tuple[int, int], vertices: int,
                 noise: float = 0.01, seed: int = 0, start: str = "tent", spatial: float = 1.0, bonus: float = 5.0,
                 slots: int = 0, block: int = 1):
        super().__init__()
        self.block = block
        L, K = candidates.shape[:2]
        S = self.side = int(candidates.shape[-1])
        H, W = size
        self.size = (H, W)
        if start not in STARTS:
            raise ValueError(f"start must be one of {', '.join(STARTS)}, got {start!r}")
        yx = torch.as_tensor(np.asarray(yx), dtype=torch.int64)
        if yx.shape != (L, 2) or (S == PATCH and (int(yx[:, 0].max()) + S > H or int(yx[:, 1].max()) + S > W)):
            raise ValueError(f"locations {tuple(yx.shape)} do not fit candidates {tuple(candidates.shape)} in {size}")
        self.K = K
        # the candidates' pixels as a table (L*K*S*S, 3), indexed by flat entry
        self.register_buffer("table", candidates.float().permute(0, 1, 3, 4, 2).reshape(-1, 3).contiguous())
        entries, valid = covering_entries(yx, K, size, S)
        P, C = entries.shape
        g = torch.Generator().manual_seed(seed)
        # the window's score table, indexed by each entry's place in its window: (P, C), then per vertex
        score = (spatial * tent(S).log()).reshape(-1)[entries % (S * S)].expand(vertices, P, C).clone()
        if start != "tent":
            rank = (entries // (S * S)) % K  # the entry's candidate rank at its location
            want = torch.tensor([v % K if start == "distinct" else 0 for v in range(vertices)])
            score += bonus * (rank[None] == want[:, None, None])
        score += noise * torch.randn(score.shape, generator=g)
        score = score.masked_fill(~valid[None], -float("inf"))
        keep = C if slots <= 0 else min(slots, C)
        top = torch.topk(score, keep, dim=2).indices  # (V, P, keep)
        ent = entries[None].expand(vertices, -1, -1).gather(2, top)
        ok = valid[None].expand(vertices, -1, -1).gather(2, top)
        start_logits = score.gather(2, top).masked_fill(~ok, 0.0).clamp(-self.CLAMP, self.CLAMP)
        self._set_entries(ent, ok)
        if block == 1:
            self.theta = nn.Parameter(start_logits)
        else:
            self.register_buffer("offset", start_logits)
            self._share(ent)

    def _share(self, entries: torch.Tensor) -> None:
        """One logit per (vertex, block, candidate): ``inv`` and a zero ``shared`` parameter."""
        H, W = self.size
        V, P, M = entries.shape
        y, x = torch.arange(P, device=entries.device) // W, torch.arange(P, device=entries.device) % W
        bid = (y // self.block) * ((W + self.block - 1) // self.block) + x // self.block  # (P,)
        area = self.side * self.side
        key = bid[None, :, None] * (int(self.table.shape[0]) // area) + entries // area
        inv, sizes = [], []
        for v in range(V):
            u, i = torch.unique(key[v], return_inverse=True)
            inv.append(i)
            sizes.append(len(u))
        self.register_buffer("inv", torch.stack(inv))
        self.shared = nn.Parameter(torch.zeros(V, max(sizes), device=entries.device))

    def logits(self) -> torch.Tensor:
        """(V, H*W, M): every pixel's logits over its kept entries."""
        if self.block == 1:
            return self.theta
        V = self.inv.shape[0]
        return self.offset + self.shared.gather(1, self.inv.view(V, -1)).view_as(self.inv)

    def _set_entries(self, entries: torch.Tensor, valid: torch.Tensor) -> None:
        """Entries (V, P, M) int64 and their validity; the colours and the seam tables follow."""
        self.register_buffer("entries", entries)
        self.register_buffer("valid", valid)
        self.register_buffer("colours", self.table[entries])  # (V, P, M, 3)
        # TV's neighbour tables: which slot of the right / lower neighbour holds the same candidate
        H, W = self.size
        V, P, M = entries.shape
        cid = torch.where(valid, entries // (self.side * self.side), -1 - torch.arange(M, device=entries.device))
        grid = cid.view(V, H, W, M)
        for name, a, b in (("right", grid[:, :, :-1], grid[:, :, 1:]), ("down", grid[:, :-1], grid[:, 1:])):
            match, alone = _seam_tables(a, b)
            self.register_buffer(f"{name}_match", match)  # slot in b or -1
            self.register_buffer(f"{name}_alone", alone)  # b's slots that a does not hold

    @property
    def pixels(self) -> int:
        return self.size[0] * self.size[1]

    def mixing_weights(self) -> torch.Tensor:
        """Normalised weight of every kept entry at every pixel: (V, H*W, M); each pixel's
        weights sum to 1 (padding and pruned slots hold 0)."""
        return masked_softmax(self.logits(), self.valid)

    def render(self, w: torch.Tensor) -> torch.Tensor:
        """Images (V, 3, H, W) of per-pixel weights w (V, H*W, M)."""
        img = torch.einsum("vpm,vpmc->vcp", w, self.colours)
        return img.reshape(w.shape[0], 3, *self.size)

    def forward(self) -> torch.Tensor:
        return self.render(self.mixing_weights())

    def entropy(self, w: torch.Tensor | None = None) -> torch.Tensor:
        """Mean over pixels of the entropy (nats) of the mixing weights (V,); differentiable."""
        w = self.mixing_weights() if w is None else w
        return -(w * torch.log(w.clamp_min(1e-30))).sum(2).mean(1)  # finite gradient at w = 0

    def total_variation(self, w: torch.Tensor | None = None) -> torch.Tensor:
        """(V,): the L1 distance between the weights of neighbouring pixels (right and lower
        neighbour), over the candidates either of them draws on, averaged per pixel. For a sharp
        mixture it counts, twice, the neighbour pairs whose pixels come from different
        candidates: the length of the seams, so it favours coherent regions over speckle."""
        w = self.mixing_weights() if w is None else w
        V, P, M = w.shape
        H, W = self.size
        grid = w.view(V, H, W, M)
        out = w.new_zeros(V)
        for name, a, b in (("right", grid[:, :, :-1], grid[:, :, 1:]), ("down", grid[:, :-1], grid[:, 1:])):
            match = getattr(self, f"{name}_match")
            same = torch.where(match >= 0, b.gather(-1, match.clamp_min(0)), torch.zeros_like(a))
            out = out + (a - same).abs().flatten(1).sum(1) + (b * getattr(self, f"{name}_alone")).flatten(1).sum(1)
        return out / P

    @torch.no_grad()
    def prune(self, keep: int) -> torch.Tensor:
        """Keep only the ``keep`` heaviest entries of every pixel from now on. theta becomes a
        new parameter; returns the kept slots (V, P, keep), to carry an optimiser's state over."""
        keep = min(keep, self.entries.shape[2])
        top = torch.topk(self.mixing_weights(), keep, dim=2).indices
        ok = self.valid.gather(2, top)
        if self.block == 1:
            self.theta = nn.Parameter(self.theta.detach().gather(2, top))
        else:  # the shared logits stay as they are; the slots' links to them are pruned
            self.offset = self.offset.gather(2, top)
            self.inv = self.inv.gather(2, top)
        self._set_entries(self.entries.gather(2, top), ok)
        return top

    @torch.no_grad()
    def mixing_stats(self) -> dict:
        """Per vertex (lists of V floats): ``sharpness``, the mean over pixels of the largest
        normalised weight (1: every pixel from one candidate); ``sources``, the mean over pixels
        of exp(entropy) (the effective number of candidates mixed at a pixel)."""
        w = self.mixing_weights()
        h = -(w * torch.log(w.clamp_min(1e-30))).sum(2)
        return {"sharpness": w.amax(2).mean(1).tolist(), "sources": h.exp().mean(1).tolist()}

    @torch.no_grad()
    def argmax_image(self) -> torch.Tensor:
        """(V, 3, H, W): every pixel taken from its heaviest candidate alone, a pure composition
        of stored patch pixels."""
        w = self.mixing_weights()
        return self.render(torch.zeros_like(w).scatter_(2, w.argmax(2, keepdim=True), 1.0))

    @torch.no_grad()
    def project(self) -> None:
        (self.theta if self.block == 1 else self.shared).clamp_(-self.CLAMP, self.CLAMP)

    def _check_state(self, state: dict) -> None:
        """A saved state fits: entries (V, P, m) int64 into the table, with m no more slots than
        now; valid and the logits of the same shape; shared logits and their links as here."""
        V, P, M = self.entries.shape
        e, ok = state["entries"], state["valid"]
        if e.dim() != 3 or e.shape[:2] != (V, P) or not 1 <= e.shape[2] <= M or e.dtype != torch.int64:
            raise ValueError(f"entries {tuple(e.shape)} {e.dtype} for ({V}, {P}, <= {M}) int64")
        if ok.shape != e.shape or ok.dtype != torch.bool:
            raise ValueError(f"valid {tuple(ok.shape)} {ok.dtype} for {tuple(e.shape)} bool")
        if e.numel() and (int(e.min()) < 0 or int(e.max()) >= len(self.table)):
            raise ValueError(f"entries outside the candidates' {len(self.table)} pixels")
        logits = ("theta", state["theta"]) if self.block == 1 else ("offset", state["offset"])
        if self.block > 1:
            inv, shared = state["inv"], state["shared"]
            if shared.shape != self.shared.shape or not shared.is_floating_point():
                raise ValueError(f"shared {tuple(shared.shape)} for {tuple(self.shared.shape)}")
            if inv.shape != e.shape or inv.dtype != torch.int64 or (inv.numel() and (
                    int(inv.min()) < 0 or int(inv.max()) >= shared.shape[1])):
                raise ValueError(f"inv {tuple(inv.shape)} {inv.dtype} does not link {tuple(e.shape)} to shared")
        if logits[1].shape != e.shape or not logits[1].is_floating_point():
            raise ValueError(f"{logits[0]} {tuple(logits[1].shape)} {logits[1].dtype} for {tuple(e.shape)} float")

    def core_state(self) -> dict:
        """What :meth:`restore` needs to continue from here, pruning included (on the CPU):
        the logits ``theta`` of every slot and, per slot, its entry and validity; with shared
        logits also ``shared``, ``offset`` and ``inv``."""
        out = {"theta": self.logits().detach().cpu().clone(), "entries": self.entries.cpu().clone(),
               "valid": self.valid.cpu().clone()}
        if self.block > 1:
            out.update(shared=self.shared.detach().cpu().clone(), offset=self.offset.cpu().clone(),
                       inv=self.inv.cpu().clone())
        return out

    @torch.no_grad()
    def restore(self, state: dict) -> None:
        """Continue from a :meth:`core_state` of a mixture over the same candidates; ValueError
        when its shapes, types or entries do not fit this mixture."""
        self._check_state(state)
        dev = self.table.device
        self._set_entries(state["entries"].to(dev), state["valid"].to(dev))
        if self.block == 1:
            self.theta = nn.Parameter(state["theta"].to(dev).clone())
        else:
            self.offset, self.inv = state["offset"].to(dev).clone(), state["inv"].to(dev).clone()
            self.shared = nn.Parameter(state["shared"].to(dev).clone())


SPACES.update(patches=PatchParam, pixel=PixelParam)  # the module classes take their traits' places (spaces.py)
