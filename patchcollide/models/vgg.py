"""torchvision's VGG-16 / VGG-19, built here (``ImageNetVGG``, ``TWINS``): a run starts
without importing torchvision, and ``--weights auto`` finds torchvision's cached file by its
name and URL (``TWIN_WEIGHTS``).
"""
from __future__ import annotations

import torch
import torch.nn as nn


# The VGG nets of Simonyan & Zisserman (2015) at ImageNet width, configurations D (16 layers) and
# E (19): conv widths, "M" a 2 x 2 max pool.
VGG_CONFIGS = {
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}


class ImageNetVGG(nn.Module):
    """VGG-16 / VGG-19 built here, without importing torchvision (whose import alone costs
    about 1.5 s: it loads torch._dynamo). The same modules under the same names as
    torchvision's VGG (``features.N``, ``avgpool``, ``classifier.N``), built in the same order
    and initialised the same way (conv: Kaiming normal, fan out; linear: N(0, 0.01); biases
    0), so torchvision's state dicts load into it and a seeded random build gives torchvision's
    weights bit for bit (tests/test_models.py compares them)."""

    def __init__(self, arch: str = "vgg16", num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for v in VGG_CONFIGS[arch]:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(c, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes))
        for m in self.modules():  # after every module's own default init, as torchvision does
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# torchvision's IMAGENET1K_V1 file for each: the enum's name and URL (checked against
# torchvision's own in tests/test_models.py), so that `--weights auto` finds a cached file
# without importing torchvision
TWIN_WEIGHTS = {
    "vgg16": ("VGG16_Weights.IMAGENET1K_V1", "https://download.pytorch.org/models/vgg16-397923af.pth"),
    "vgg19": ("VGG19_Weights.IMAGENET1K_V1", "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"),
}
TWINS = {arch: (lambda arch=arch: ImageNetVGG(arch)) for arch in VGG_CONFIGS}  # torchvision's names, built here
