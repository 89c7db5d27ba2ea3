"""The judge: a second classifier that stands in for the person looking at a collider.

A collider is *perceptually distinct* from its target when it still reads as its source.
``collide --judge PATH`` has a second net, of another architecture and seed than the attacked
one, classify the source, the target, every vertex and every polytope sample: a vertex
*reads as its source* when the judge gives it the class it gives the source.

The judge is built by name (``--judge-model``: ``digits_lenet5``, the digits world's LeNet-5,
or any torchvision classifier) with weights from a state-dict file (``--judge PATH``) or, for a
torchvision classifier, ``imagenet``. It never sees the attacked net's layer, only pixels.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import torch
import torch.nn as nn

from .build import build_model, builder, imagenet_normalise
from .digits import BUILDERS as OWN_MODELS
from .digits import JUDGE_NORMALISED
from .names import DEFAULT_JUDGE_MODEL  # torch-free: the CLI's --judge-model default
from ..core.files import file_sha256
from .weights import ModelError, WeightsInfo, fit_state, load_state_file



@dataclasses.dataclass
class Judge:
    """A classifier of (B, 3, H, W) images in [0, 1]; ``probs`` gives (B, C) softmax probabilities."""

    model: nn.Module
    arch: str
    weights: WeightsInfo
    normalised: bool  # the model takes ImageNet-normalised inputs

    @torch.no_grad()
    def probs(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        dev = next(iter(self.model.parameters())).device
        out = []
        for s in range(0, len(x), batch_size):
            h = x[s : s + batch_size].to(dev)
            if self.normalised:
                h = imagenet_normalise(h)
            out.append(torch.softmax(self.model(h).float(), 1).cpu())
        return torch.cat(out)

    def to(self, device) -> "Judge":
        self.model.to(device)
        return self

    def identity(self) -> dict:
        return {"arch": self.arch, **dataclasses.asdict(self.weights)}


def load_judge(weights: str, arch: str = DEFAULT_JUDGE_MODEL) -> Judge:
    """The judge ``arch`` with ``weights``: a state-dict PATH, or ``imagenet`` for a torchvision
    classifier. ModelError (one line, naming --judge) otherwise."""
    if arch in OWN_MODELS:
        if weights in ("imagenet", "random"):
            raise ModelError(f"--judge {weights}: the {arch} judge needs trained weights; pass --judge PATH "
                             "(`patchcollide world build` writes weights/judge_digits_lenet5.pt)")
        if not os.path.isfile(weights):
            raise ModelError(f"--judge {weights!r}: no such file; give the judge's state dict, e.g. "
                             "worlds/digits/weights/judge_digits_lenet5.pt from `patchcollide world build`")
        state = load_state_file(weights, "--judge")
        model = OWN_MODELS[arch]()
        fit_state(model, state, arch, weights, "--judge", "--judge-model")
        info = WeightsInfo("file", os.path.abspath(weights), file_sha256(weights), False, "user weights")
        normalised = JUDGE_NORMALISED[arch]
    else:
        if weights == "random":
            raise ModelError("--judge random: a judge with random weights says nothing about a look; pass "
                             "--judge PATH or --judge imagenet")
        try:
            builder(arch)
        except ModelError:
            raise ModelError(f"--judge-model {arch!r}: no such classifier; use digits_lenet5 (the judge `patchcollide "
                             "world build` trains) or a torchvision classifier name") from None
        model, info = build_model(arch, weights, option="--judge", model_option="--judge-model")
        normalised = True
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return Judge(model, arch, info, normalised)


def check_apart(judge: Judge, weights: "str | WeightsInfo | dict | None", option: str = "--weights") -> None:
    """ModelError when the judge's weights are the attacked net's own (the same sha256): a net
    that judges its own colliders reads every one as the source. ``weights``: the attacked
    net's --weights value (a PATH is hashed; auto, imagenet and random are not files), its
    WeightsInfo, or a report's ``model`` record."""
    if judge.weights.sha256 is None or weights is None:
        return
    if isinstance(weights, str):
        sha = file_sha256(weights) if os.path.isfile(weights) else None
    else:
        sha = weights.get("sha256") if isinstance(weights, dict) else weights.sha256
    if sha == judge.weights.sha256:
        raise ModelError(f"--judge {judge.weights.name}: it is the attacked net's own weights (the same sha256 as "
                         f"{option}), and a net judging its own colliders reads every one as the source; give a "
                         "second net, e.g. worlds/digits/weights/judge_digits_lenet5.pt with --judge-model "
                         "digits_lenet5")


def read_as(judge: Judge, x: torch.Tensor, source_class: int) -> dict:
    """The judge's reading of images (N, 3, H, W) in [0, 1]: per image its class and probability,
    the probability of ``source_class``, and whether it reads as the source (lists of N)."""
    p = judge.probs(x)
    prob, top = p.max(1)
    return {"class": top.tolist(), "prob": prob.tolist(), "source_class_prob": p[:, source_class].tolist(),
            "reads_as_source": (top == source_class).tolist()}


def judge_run(judge: Judge, source: np.ndarray, target: np.ndarray, vertices: np.ndarray) -> dict:
    """report.json's ``judge``: the judge's class of the source and the target ((H, W, 3)
    uint8) and its reading of each vertex ((V, H, W, 3) uint8, the PNGs)."""
    def t(a):
        return torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).float() / 255.0

    ps = judge.probs(t(np.stack([source, target])))
    src_class, tgt_class = int(ps[0].argmax()), int(ps[1].argmax())
    verts = read_as(judge, t(vertices), src_class)
    return {"model": judge.identity(),
            "source": {"class": src_class, "prob": float(ps[0].max())},
            "target": {"class": tgt_class, "prob": float(ps[1].max())},
            "vertices": verts, "n_reads_as_source": int(sum(verts["reads_as_source"])),
            "rule": "a vertex reads as its source when the judge gives it the class it gives the source"}
