"""The peers: the reference methods the engine is benchmarked beside, one collider per pair.

* ``plain_attack``: x starts at the source; Adam on the pixels in [0, 1]; loss
  ``||fc6(x) - fc6(t)||^2 / ||fc6(t)||^2 + lam * mean((x - s)^2)`` with fc6 after its ReLU;
  x clamped to [0, 1] after each step. No patches, no polytope, no probability term.
* ``lam_sweep``: the plain attack at each lam of ``PLAIN_LAMS``; the collider is the one of the
  largest lam whose 8-bit image fools the net (the target's class with a top-class probability
  within ``polytope.PROB_GAP`` of the target's). The judge is not consulted.
* ``art_feature_collision``: IBM ART's ``FeatureCollisionAttack`` (Shafahi et al. 2018, "Poison
  Frogs!") on a ``PyTorchClassifier`` that wraps the same net, feature layer fc6 after its ReLU,
  inputs in [0, 1]. ART is an optional extra: ``pip install 'patchcollide[peers]'``.

Images are (1, 3, H, W) float32 in [0, 1], the attacked net's ``models.build.Tap`` normalising inside,
as everywhere in the engine. Nothing here is random: the same inputs give the same collider.
``scripts/bench_world.py --methods`` runs them on the digits world's pairs.
"""
from __future__ import annotations

import collections
import dataclasses
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.errors import PatchcollideError
from ..engine.collide import quantise, target_of
from ..models.build import KNOWN_HEADS, Tap
from ..engine.polytope import PROB_GAP, sample_polytope

PLAIN_LAMS = (1.0, 3.0, 10.0, 30.0)  # the least-change weights of the sweep (notes/measurements.md)
PLAIN_STEPS, PLAIN_LR = 1000, 0.01  # Adam in [0, 1] pixel units
# ART 1.20's own defaults (its learning rate is set for [0, 255] images: 500 * 255 = 127,500)
ART_DEFAULTS = {"learning_rate": 500 * 255.0, "max_iter": 120}
# tuned on the digits world's 15 frontier pairs, for success (the sweep: notes/measurements.md; the
# outcome beside its defaults: benchmarks/results/bench_world-peers-cpu.json)
ART_TUNED = {"learning_rate": 100.0, "max_iter": 1000}
ART_EXTRA = "pip install 'patchcollide[peers]'"  # what installs ART


class PeerError(PatchcollideError):
    """A peer that cannot run (bad arguments, ART missing); ``str(e)`` is a one-line message."""


def _check_images(source: torch.Tensor, target: torch.Tensor) -> None:
    for name, x in (("source", source), ("target", target)):
        if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3:
            raise PeerError(f"{name} must be (1, 3, H, W) float in [0, 1], got shape {tuple(x.shape)}")
    if source.shape != target.shape:
        raise PeerError(f"source {tuple(source.shape)} and target {tuple(target.shape)} differ in shape; "
                        "load both at the same size")


def fc6_post(tap: Tap, x: torch.Tensor) -> torch.Tensor:
    """The tapped layer after its ReLU: (B, 3, H, W) in [0, 1] -> (B, D) float32."""
    return F.relu(tap.pre(x))


def plain_attack(tap: Tap, source: torch.Tensor, target: torch.Tensor, lam: float, steps: int = PLAIN_STEPS,
                 lr: float = PLAIN_LR) -> torch.Tensor:
    """The plain feature-collision attack from the source (see the module docstring).

    source, target: (1, 3, H, W) float32 in [0, 1]; lam >= 0 weighs the mean squared pixel
    change (pixels in [0, 1]) against the relative squared fc6 error; ``steps`` Adam steps of
    learning rate ``lr`` (in [0, 1] pixel units). Returns the collider (1, 3, H, W) float32 in
    [0, 1], detached, on the source's device.
    """
    _check_images(source, target)
    if lam < 0:
        raise PeerError(f"lam must be >= 0, got {lam}")
    if steps < 1 or lr <= 0:
        raise PeerError(f"steps must be >= 1 and lr > 0, got steps={steps}, lr={lr}")
    source = source.detach()
    with torch.no_grad():
        post_t = fc6_post(tap, target.detach())
        scale = post_t.pow(2).sum().clamp_min(1e-12)
    x = source.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    for _ in range(steps):
        loss = (fc6_post(tap, x) - post_t).pow(2).sum() / scale + lam * (x - source).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            x.clamp_(0, 1)
    return x.detach()


@dataclasses.dataclass
class Sweep:
    """``lam_sweep``'s result. collider: (1, 3, H, W) float32 on the 8-bit levels; lam: the chosen
    one (the largest that fools; the smallest when none does); fools: whether it fools the net;
    colliders: one per lam, in ``lams`` order; per_lam: {"lam", "fools", "rel_error", "seconds"}
    per lam (rel_error: ||fc6(x) - fc6(t)|| / ||fc6(t)|| after the ReLU, of the 8-bit image);
    seconds: the whole sweep's."""

    collider: torch.Tensor
    lam: float
    fools: bool
    lams: tuple[float, ...]
    colliders: list[torch.Tensor]
    per_lam: list[dict]
    seconds: float


def lam_sweep(tap: Tap, source: torch.Tensor, target: torch.Tensor, lams: tuple[float, ...] = PLAIN_LAMS,
              steps: int = PLAIN_STEPS, lr: float = PLAIN_LR, prob_gap: float = PROB_GAP) -> Sweep:
    """The plain attack at every lam; the collider of the largest lam whose 8-bit image fools the
    net (``sample_polytope``'s rule on one point: the target's class, top-class probability within
    ``prob_gap`` of the target's). source, target: (1, 3, H, W) float32 in [0, 1]. Every lam is run
    (the seconds are the whole sweep's, what a user who does not know the right lam pays)."""
    if not lams:
        raise PeerError("lams is empty; give at least one weight, e.g. 1 3 10 30")
    _check_images(source, target)
    aim = target_of(tap, target, vertices=1)
    t_all = time.perf_counter()
    colliders, per_lam = [], []
    for lam in lams:
        t0 = time.perf_counter()
        x = quantise(plain_attack(tap, source, target, lam, steps=steps, lr=lr))
        check = sample_polytope(tap, x, aim, samples=1, prob_gap=prob_gap, device=x.device)
        colliders.append(x)
        per_lam.append({"lam": float(lam), "fools": bool(check["fools_net"]), "rel_error": check["rel_error_max"],
                        "seconds": round(time.perf_counter() - t0, 3)})
    fooling = [i for i, r in enumerate(per_lam) if r["fools"]]
    pick = max(fooling, key=lambda i: lams[i]) if fooling else min(range(len(lams)), key=lambda i: lams[i])
    return Sweep(collider=colliders[pick], lam=float(lams[pick]), fools=bool(fooling), lams=tuple(map(float, lams)),
                 colliders=colliders, per_lam=per_lam, seconds=round(time.perf_counter() - t_all, 3))


class _Normalise(nn.Module):
    """The Tap's ImageNet normalisation as a module, so ART's classifier takes [0, 1] inputs."""

    def __init__(self, tap: Tap):
        super().__init__()
        self.tap = [tap]  # a list: not a submodule, so its parameters are not the wrapper's twice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tap[0].normalise(x)


ART_FEATURE_LAYER = "feature"  # the wrapper's child whose output is the tapped layer after its ReLU


def art_network(tap: Tap) -> nn.Sequential:
    """The tapped net as an ``nn.Sequential`` whose top-level children ART can name (ART's
    PyTorchClassifier lists only top-level children as layers): normalise (the Tap's, so inputs
    stay in [0, 1]), features, avgpool, flatten, ``pre`` (the classifier up to the tapped Linear),
    ``feature`` (a fresh, not in-place ReLU: the tapped layer after its ReLU, e.g. fc6), ``head``
    (the rest of the classifier). The modules are the tap's own; (B, 3, H, W) -> (B, C) logits,
    the same as ``tap.logits``. For the heads of ``models.build.KNOWN_HEADS`` (VGG-16/19, AlexNet,
    digits_vgg); PeerError for other layers."""
    index = KNOWN_HEADS.get(tap.arch, {}).get(tap.layer)
    if index is None:
        raise PeerError(f"ART's wrapper needs a known head; {tap.arch} {tap.layer} is not one of "
                        f"{', '.join(f'{a} {l}' for a, ls in KNOWN_HEADS.items() for l in ls)}")
    m = tap.model
    if not isinstance(m.classifier[index + 1], nn.ReLU):
        raise PeerError(f"{tap.arch} {tap.layer} is not followed by a ReLU (classifier[{index + 1}] is "
                        f"{type(m.classifier[index + 1]).__name__}); ART's feature layer is the layer after its ReLU")
    return nn.Sequential(collections.OrderedDict([
        ("normalise", _Normalise(tap)), ("features", m.features), ("avgpool", m.avgpool), ("flatten", nn.Flatten(1)),
        ("pre", m.classifier[: index + 1]), (ART_FEATURE_LAYER, nn.ReLU()), ("head", m.classifier[index + 2 :]),
    ])).eval()


def art_feature_collision(tap: Tap, source: torch.Tensor, target: torch.Tensor,
                          learning_rate: float = ART_DEFAULTS["learning_rate"],
                          max_iter: int = ART_DEFAULTS["max_iter"], similarity_coeff: float = 256.0,
                          decay_coeff: float = 0.5) -> torch.Tensor:
    """ART's ``FeatureCollisionAttack`` from the source towards the target at the tapped layer
    after its ReLU (``art_network``), clip values (0, 1). source, target: (1, 3, H, W) float32 in
    [0, 1]. learning_rate: ART's forward step on the gradient of ||f(x) - f(t)|| in [0, 1] pixel
    units (ART's default, 127,500, is set for [0, 255] images; ``ART_TUNED`` has the digits
    world's); max_iter, similarity_coeff, decay_coeff: ART's. A fresh attack object per call (ART
    halves its learning rate in place as it goes). Returns the collider (1, 3, H, W) float32 in
    [0, 1] on the source's device. PeerError naming the extra when ART is not installed."""
    try:
        from art.attacks.poisoning import FeatureCollisionAttack
        from art.estimators.classification import PyTorchClassifier
    except ImportError:
        raise PeerError(f"ART (adversarial-robustness-toolbox) is not installed; {ART_EXTRA}") from None
    _check_images(source, target)
    if learning_rate <= 0 or max_iter < 1:
        raise PeerError(f"learning_rate must be > 0 and max_iter >= 1, got {learning_rate}, {max_iter}")
    device = next(iter(tap.model.parameters())).device
    net = art_network(tap)
    with torch.no_grad():
        classes = int(net(target.to(device)).shape[1])
    classifier = PyTorchClassifier(model=net, loss=nn.CrossEntropyLoss(), input_shape=tuple(source.shape[1:]),
                                   nb_classes=classes, clip_values=(0.0, 1.0),
                                   device_type="gpu" if device.type == "cuda" else "cpu")
    attack = FeatureCollisionAttack(classifier, target.detach().cpu().numpy().astype("float32"), ART_FEATURE_LAYER,
                                    learning_rate=float(learning_rate), max_iter=int(max_iter),
                                    similarity_coeff=float(similarity_coeff), decay_coeff=float(decay_coeff),
                                    verbose=False)
    poison, _ = attack.poison(source.detach().cpu().numpy().astype("float32"))
    tap.model.eval()  # ART switches the wrapper (the tap's own modules) to train mode and back; make sure
    return torch.from_numpy(poison).float().clamp(0, 1).to(source.device)
