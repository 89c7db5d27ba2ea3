"""The digits nets: the trained digits world's (``world``), built by name like torchvision's
(``BUILDERS``), and the paper's MNIST nets.

``digits_vgg``: the attacked net. VGG's shape, narrow enough to train on 2 cores: four conv
blocks (16, 32, 64, 64 channels, 3 x 3 convs, ReLU, 2 x 2 max pool), an adaptive average pool
to 7 x 7, then ``classifier`` = fc6 (3,136 -> 256), ReLU, dropout, fc7 (256 -> 256), ReLU,
dropout, fc8 (256 -> 10). The same attribute names as torchvision's VGG (``features``,
``avgpool``, ``classifier``), so ``build.Tap`` taps its fc6 / fc7 the way it taps VGG-16's.
Inputs (B, 3, H, W) ImageNet-normalised, any H, W >= 32 (112 in the world: 37,632 input values
against 256 fc6 units, an under-determined collision layer).

``MLP`` and ``LeNet5``: the paper's MNIST nets (``papers.digits`` trains them).

``digits_lenet5``: the judge. ``LeNet5`` (another architecture) behind a fixed view of
the input: the mean of the three channels, area-downsampled to 28 x 28, the MNIST geometry.
Inputs (B, 3, H, W) in [0, 1], not normalised (``JUDGE_NORMALISED`` says so).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class MLP(nn.Module):
    """784 -> 256 -> ReLU -> 256 -> ReLU -> 10 (the paper's MNIST net). Layers: fc1, fc2, fc3."""

    def __init__(self, hidden: int = 256):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(784, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor, upto: str | None = None) -> torch.Tensor:
        h = self.fc1(x.flatten(1))
        if upto == "fc1":
            return h
        h = self.fc2(F.relu(h))
        if upto == "fc2":
            return h
        return self.fc3(F.relu(h))


class LeNet5(nn.Module):
    """LeNet-5 with ReLU and max pooling on 28 x 28 inputs padded to 32 x 32.
    Layers: conv1 (6, 28, 28), conv2 (16, 10, 10), fc1 (120), fc2 (84), fc3 (10)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5)
        self.fc1, self.fc2, self.fc3 = nn.Linear(400, 120), nn.Linear(120, 84), nn.Linear(84, 10)

    def forward(self, x: torch.Tensor, upto: str | None = None) -> torch.Tensor:
        h = self.conv1(F.pad(x, (2, 2, 2, 2)))
        if upto == "conv1":
            return h
        h = self.conv2(F.max_pool2d(F.relu(h), 2))
        if upto == "conv2":
            return h
        h = self.fc1(F.max_pool2d(F.relu(h), 2).flatten(1))
        if upto == "fc1":
            return h
        h = self.fc2(F.relu(h))
        if upto == "fc2":
            return h
        return self.fc3(F.relu(h))


class DigitVGG(nn.Module):
    """A narrow VGG for 10 digit classes (see the module docstring)."""

    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] = (16, 32, 64, 64), fc: int = 256,
                 dropout: float = 0.3):
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c = w
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(7)
        self.classifier = nn.Sequential(
            nn.Linear(c * 49, fc), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(fc, fc), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(fc, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def judge_view(x: torch.Tensor, side: int = 28) -> torch.Tensor:
    """What the digit judge sees of (B, 3, H, W) images in [0, 1]: (B, 1, side, side), the
    channel mean, area-downsampled (the inverse of ``world.render``'s upsampling)."""
    grey = x.mean(1, keepdim=True)
    return grey if grey.shape[-1] == side else F.adaptive_avg_pool2d(grey, side)


class DigitJudge(nn.Module):
    """LeNet-5 on ``judge_view`` of an RGB image: (B, 3, H, W) in [0, 1] -> (B, 10) logits.
    ``net`` holds the LeNet-5, so its state dict is LeNet-5's under ``net.``."""

    def __init__(self):
        super().__init__()
        self.net = LeNet5()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(judge_view(x))


BUILDERS = {"digits_vgg": DigitVGG, "digits_lenet5": DigitJudge}
HEADS = {"digits_vgg": {"fc6": 0, "fc7": 3}}  # the classifier index of each tappable Linear
JUDGE_NORMALISED = {"digits_vgg": True, "digits_lenet5": False}  # does the net take ImageNet-normalised inputs
