"""The search spaces' registry and their traits, without torch: what ``CollideConfig`` checks and
the CLI shows before anything loads (``--mode``, ``--start``).

A search space is one ``nn.Module`` class, a subclass of ``params.SearchSpace``, registered by
name in ``SPACES`` (a ``core.plugins.Registry``: the built-ins, and every package's
``patchcollide.search_spaces`` entry points). Its traits are here, on plain classes that the
module classes inherit (``SpaceTraits``, with their defaults): ``summary`` (its line in
``--mode``'s help), ``needs_index`` (candidates are retrieved from a patch index), ``mixes``,
``default_lr``, ``check_config(config)`` and ``state_bytes(config)`` (per checkpoint, for the
free-space check). Until ``params`` is imported, ``SPACES`` holds the built-ins' trait classes;
importing it (as everything that runs a search does) puts its module classes in their place, in
this same registry, so ``SPACES[mode].from_config`` is there wherever a search runs. A plug-in's
entry point names its module class, loaded when its name is first resolved (``core/plugins.py``).
"""
from __future__ import annotations

from ..core.images import PATCH, grid_positions
from ..core.plugins import Registry

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


class SpaceTraits:
    """The torch-free traits of every search space, with their defaults (``params.SearchSpace``
    inherits them; docs/extending.md has the whole contract).

    summary: one line for ``--mode``'s help. needs_index: the run retrieves candidates from a
    patch index and passes them to ``from_config`` (else ``candidates`` is None). mixes: the
    space is a mixture with mixing weights: the TV and entropy terms and the prune schedule
    apply, and it must give ``mixing_weights``, ``total_variation``, ``entropy``, ``prune`` and
    its logits as ``theta``. default_lr: the learning rate when ``--lr`` is not given.
    """

    summary = ""
    needs_index = False
    mixes = False
    default_lr = 0.01  # pixels in [0, 1]: the closest collider needs the collision reached in the first third of 300 steps

    @classmethod
    def check_config(cls, config) -> None:
        """ValueError(field, problem) for settings this space cannot run (before anything loads);
        by default nothing beyond CollideConfig's own checks."""

    @classmethod
    def state_bytes(cls, config) -> int:
        """A checkpoint's bound in bytes (the free-space check): by default that of parameters of
        the images' size, the pixels and Adam's two moments (float32); a space whose parameters
        are larger says so here."""
        return config.vertices * config.size * config.size * 3 * 4 * 3


class PixelSpace(SpaceTraits):
    """The traits of the pixel space (``params.PixelParam``): the defaults."""

    summary = "the pixels themselves"


class PatchSpace(SpaceTraits):
    """The traits of the patch space (``params.PatchParam``)."""

    summary = "a per-pixel mixture of retrieved real patches"
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


MIXING = ("total_variation", "entropy", "prune")  # what a space that mixes adds to SearchSpace's members


def check_space(obj) -> str | None:
    """What keeps ``obj`` from being a search space (``SPACES``' check of a plug-in), or None."""
    if not (isinstance(obj, type) and issubclass(obj, SpaceTraits)):
        return "it is no subclass of patchcollide.engine.params.SearchSpace"
    missing = [m for m in ("from_config", "forward") + (MIXING if obj.mixes else ()) if not hasattr(obj, m)]
    if missing:
        return f"it has no {', '.join(missing)}" + (" (a space that mixes needs them all)" if obj.mixes else "")
    return None


SPACES = Registry("patchcollide.search_spaces", "search space", "--mode",
                  {"patches": PatchSpace, "pixel": PixelSpace}, check_space)  # --mode: its search space
