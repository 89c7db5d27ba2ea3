"""The settings of a null-space search and its one-line error, without torch: the ``nullspace``
command's options are derived from ``NullspaceConfig`` and checked before anything loads.
The search itself is ``runs.py`` (with ``kernel.py``: what ``mode`` means)."""
from __future__ import annotations

import dataclasses
import functools
import math
import os

from ..core import files
from ..core.errors import PatchcollideError, raise_first
from ..core.settings import check_fields, field_error, setting
from ..models.names import ANY_MODEL, check_model_name

RUN_KIND = "patchcollide-nullspace"  # report.json's kind
MODES = ("repeat", "several", "regions")
MAX_DENSE_SIZE = 64  # dense Gram matrices grow as size^4
SIZE = 224  # nullspace --size: the input side ViT-B/32 is built for (its pretrained weights need it)


class NullspaceError(PatchcollideError):
    """Bad input for the null-space search or the nullity table; ``str(e)`` is one line."""


@dataclasses.dataclass(frozen=True)
class NullspaceConfig:
    mode: str = setting("repeat", "repeat: one kernel vector in every patch; several: --vectors different ones; "
                        "regions: per-region multipliers, one region untouched.", choices=MODES)
    # None: scaled so that max |P| = 1 in model-input units (~58 of 255 levels)
    beta: float | None = setting(None, "Multiplier of the unit kernel vectors.",
                                 default_text="max |P| = 1 in model-input units, about 58 of 255 pixel levels")
    # distinct kernel vectors for several / regions (repeat uses one)
    vectors: int = setting(4, "Kernel vectors for several/regions.", bounds=(1, None))
    # kernel vectors, their assignment to patches, region multipliers, LOBPCG start
    seed: int = setting(0, "Random weights and kernel vectors.", bounds=(0, 2**63 - 1))
    rtol: float | None = setting(None, "Rank tolerance relative to sigma_max.",
                                 default_text="max(m, n) * eps(float32) of the weight matrix")  # see tolerance_rule
    # overlapping convs: exact whole-image analysis at these sides
    dense_sizes: tuple[int, ...] = setting((16, 32), "Overlapping convs: image sides for the exact (dense) "
                                           "whole-image analysis.")
    # dense analysis only up to this many input values (Gram n x n in float64)
    max_dense: int = setting(8192, "Input values of the largest dense analysis.", bounds=(1, None), cli=False)
    iters: int = setting(100, "Overlapping convs: LOBPCG iterations at the full size (about 0.5 s each for "
                         "ResNet-50 at 224).", bounds=(1, None))
    # > 0: start from an untargeted L-inf PGD adversarial example
    pgd_steps: int = setting(0, "> 0: start from a PGD adversarial example.", bounds=(0, None))
    # PGD radius in 0..255 pixel levels (model-input units without normalisation)
    pgd_eps: float = setting(4.0, "PGD L-inf radius in 0..255 pixel levels.")

    def __post_init__(self):
        check_fields(self, NullspaceError)
        checks = [
            (self.beta is None or (math.isfinite(self.beta) and self.beta != 0), "beta",
             f"must be a finite non-zero number, got {self.beta}"),
            _rtol_check(self.rtol),
            (all(1 <= s <= MAX_DENSE_SIZE for s in self.dense_sizes), "dense_sizes",
             f"must be between 1 and {MAX_DENSE_SIZE} (dense Gram matrices grow as size^4), got "
             f"{','.join(map(str, self.dense_sizes))}"),
            (math.isfinite(self.pgd_eps) and self.pgd_eps > 0, "pgd_eps", f"must be > 0, got {self.pgd_eps}"),
        ]
        raise_first(checks, functools.partial(field_error, NullspaceError))


@dataclasses.dataclass(frozen=True)
class NullityConfig:
    """The settings of the nullity table (``table.nullity_table``; the ``nullity`` command's
    options are derived from it), checked when made."""

    rtol: float | None = setting(None, "Rank tolerance relative to sigma_max.",
                                 default_text="max(m, n) * eps(float32) per matrix")  # see table.tolerance_rule
    seed: int = setting(0, "Random weights.", bounds=(0, 2**63 - 1))

    def __post_init__(self):
        check_fields(self, NullspaceError)
        raise_first([_rtol_check(self.rtol)], functools.partial(field_error, NullspaceError))


def _rtol_check(rtol: float | None) -> tuple:
    """(ok, field, problem) of a rank tolerance: None (the default rule) or in (0, 1)."""
    return rtol is None or (math.isfinite(rtol) and 0 < rtol < 1), "rtol", f"must be in (0, 1), got {rtol}"


def check_out(out: str, overwrite: bool) -> None:
    """``out`` can take a nullspace run (a new folder, or one to replace with ``overwrite``)."""
    files.check_out(out, overwrite, RUN_KIND, "nullspace run", NullspaceError)


def check_nullspace(model: str, out: str, size: int, image: str | None, overwrite: bool) -> None:
    """The checks of a nullspace run that need no torch (``run_nullspace`` makes them first; the
    CLI before it imports torch): the model's name, the input side, the run folder, the image."""
    check_model_name(model, "--model", ANY_MODEL)
    if not 32 <= size <= 1024:
        raise NullspaceError(f"--size must be between 32 and 1024, got {size}")
    check_out(out, overwrite)
    if image is not None and not os.path.isfile(image):
        raise NullspaceError(f"--source {image!r} does not exist; pass an image file")
