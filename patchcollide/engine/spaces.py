"""The search spaces' registry and their traits, without torch: what ``CollideConfig`` checks and
the CLI shows before anything loads (``--mode``, ``--start``).

A search space is one ``nn.Module`` class of ``params.py``, registered by name in ``SPACES``.
Its traits are here, on plain classes that the module classes inherit: ``needs_index``
(candidates are retrieved from a patch index), ``mixes``, ``default_lr``,
``check_config(config)`` and ``state_bytes(config)`` (per checkpoint, for the free-space
check). Until ``params`` is imported, ``SPACES`` holds these trait classes; importing it (as
everything that runs a search does) puts its module classes in their place, in this same
dict, so ``SPACES[mode].from_config`` is there wherever a search runs. A third space is one
module class (with these traits) plus one line in ``SPACES``.
"""
from __future__ import annotations

from ..core.images import PATCH, grid_positions

import os

STARTS = ("distinct", "nearest", "tent")  # patch mode's start (params.PatchParam)
MAX_PARAM_BYTES = 16 * 2**30  # refuse patch-mode settings whose logits alone would need more


def memory_bytes() -> int | None:
    """This machine's physical memory, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def param_cap() -> tuple[int, str]:
    """The most a patch mixture may need, and why: MAX_PARAM_BYTES, or half of this machine's
    memory where that is less (a setting that passes must not fail in the allocator)."""
    mem = memory_bytes()
    if mem is not None and mem // 2 < MAX_PARAM_BYTES:
        return mem // 2, f"half of this machine's {mem / 2**30:.0f} GiB of memory"
    return MAX_PARAM_BYTES, f"the {MAX_PARAM_BYTES / 2**30:.0f} GiB limit"


class PixelSpace:
    """The traits of the pixel space (``params.PixelParam``)."""

    needs_index = False
    mixes = False
    default_lr = 0.01  # pixels in [0, 1]: the closest collider needs the collision reached in the first third of 300 steps

    @classmethod
    def check_config(cls, config) -> None:
        """Nothing beyond CollideConfig's own checks."""

    @classmethod
    def state_bytes(cls, config) -> int:
        """A checkpoint's bound: the pixels, Adam's two moments (float32)."""
        return config.vertices * config.size * config.size * 3 * 4 * 3


class PatchSpace:
    """The traits of the patch space (``params.PatchParam``)."""

    needs_index = True
    mixes = True
    default_lr = 0.4

    @classmethod
    def check_config(cls, config) -> None:
        """ValueError (field, problem) when the mixture would not fit in memory."""
        L = len(grid_positions((config.size, config.size), config.grid_stride, PATCH, cover=True))
        P = config.size * config.size
        K = config.k * (2 if config.retrieve == "source+target" else 1)
        covering = min(L, (config.window // config.grid_stride + 1) ** 2) * K  # entries over one pixel, at most
        # the start scores every covering entry of every pixel (float32 + int64 index); the loop
        # keeps `slots` of them: logits, gradient, Adam's two moments and three colour channels
        need = (config.vertices * P * covering * 12 + config.vertices * P * min(config.slots, covering) * 4 * 7
                + L * K * config.window * config.window * 3 * 9)  # the candidates: uint8, and two float32 copies
        cap, why = param_cap()
        if need > cap:
            field = "window" if config.window > PATCH else "k"
            lower = "--window, -k, --slots or --vertices" if config.window > PATCH else "-k, --slots or --vertices"
            value = config.window if field == "window" else config.k
            raise ValueError(field, f"{value} with -k {config.k}, {config.vertices} vertices at {config.size}x"
                                    f"{config.size} needs about {need / 2**30:.1f} GiB for the patch mixture, more than "
                                    f"{why}; lower {lower}")

    @classmethod
    def state_bytes(cls, config) -> int:
        """A checkpoint's bound before the first prune: per slot its logit, Adam's two moments,
        its entry (int64) and validity."""
        return config.vertices * config.size * config.size * config.slots * (4 * 3 + 8 + 1)


SPACES: dict[str, type] = {"patches": PatchSpace, "pixel": PixelSpace}  # --mode: its search space
