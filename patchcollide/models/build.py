"""Networks by name, and a tap on one layer's pre-activation; the weights come from ``weights``.

``load_tap("vgg16", "fc6", weights="imagenet")`` returns a :class:`Tap`: ``tap.pre(x)`` is
the collision layer's pre-activation (B, D) for images x (B, 3, H, W) float in [0, 1], and
``tap.logits(x)`` the classifier's output (B, 1000). ImageNet normalisation happens inside.

The pre-activation is taken explicitly, not read by a forward hook: VGG's and AlexNet's
ReLUs are in-place, so a tensor captured by a hook on ``classifier[0]`` is overwritten by
the ReLU that follows it (a test shows the pitfall). For VGG-16/19:
``features -> avgpool -> flatten -> classifier[:i+1]`` with fc6 = classifier[0],
fc7 = classifier[3]; for AlexNet fc6 = classifier[1], fc7 = classifier[4]. Other
torchvision classifiers take ``--layer MODULE_NAME`` (a module whose output feeds a ReLU):
its output is cloned in a hook before any in-place ReLU can touch it.

``build_model("resnet50", "random", seed=0)`` builds any torchvision model by name (and the
``*_shapes`` stand-ins for models torchvision lacks) in eval mode with frozen parameters, for
the exact collisions and nullity tables (``patchcollide.exact``); its random weights leave the
caller's random stream untouched.
"""
from __future__ import annotations

import dataclasses
import math
import warnings

import torch
import torch.nn as nn

from .digits import BUILDERS as OWN_MODELS
from .digits import HEADS as OWN_HEADS
from .names import WEIGHTS
from .vgg import TWINS
from .weights import ModelError, WeightsInfo, load_weights, random_weights, resolve_weights

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# (classifier index of the Linear layer) for the architectures whose heads we know
KNOWN_HEADS = {
    "vgg16": {"fc6": 0, "fc7": 3},
    "vgg19": {"fc6": 0, "fc7": 3},
    "alexnet": {"fc6": 1, "fc7": 4},
    **OWN_HEADS,  # the trained digits world's attacked net (digits.py)
}


def imagenet_normalise(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> ImageNet-normalised, as ``Tap.normalise`` (for nets outside a Tap)."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


class _Stop(Exception):
    pass


def layer_choices(model: nn.Module, arch: str, limit: int = 24) -> list[str]:
    """The layer names a CLI user is likely to want: the known heads, the Linear layers and the
    top-level blocks, in model order (at most ``limit``, then "...")."""
    names = list(KNOWN_HEADS.get(arch, {}))
    top = {n for n, _ in model.named_children()}
    for name, m in model.named_modules():
        if name and (isinstance(m, nn.Linear) or name in top) and name not in names:
            names.append(name)
    return names[:limit] + (["..."] if len(names) > limit else [])


class Tap(nn.Module):
    """A classifier with a tap on one ReLU layer's pre-activation. Eval mode, frozen."""

    def __init__(self, model: nn.Module, arch: str, layer: str, weights: WeightsInfo):
        super().__init__()
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.arch, self.layer, self.weights = arch, layer, weights
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self._head_index = KNOWN_HEADS.get(arch, {}).get(layer)
        if self._head_index is None:
            modules = dict(self.model.named_modules())
            if layer not in modules or layer == "":
                raise ModelError(f"unknown layer {layer!r} for {arch}; use one of {', '.join(layer_choices(self.model, arch))}"
                                 " (any name in model.named_modules() works)")
            self._module = modules[layer]

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activation of the tapped layer: (B, 3, H, W) in [0, 1] -> (B, D) float32."""
        h = self.normalise(x)
        if self._head_index is not None:
            m = self.model
            h = torch.flatten(m.avgpool(m.features(h)), 1)
            return m.classifier[: self._head_index + 1](h)
        box: list[torch.Tensor] = []

        def hook(_m, _inp, out):
            box.append(out.clone())  # before an in-place ReLU after this module overwrites it
            raise _Stop

        handle = self._module.register_forward_hook(hook)
        try:
            self.model(h)
        except _Stop:
            pass
        finally:
            handle.remove()
        if not box:
            raise ModelError(f"layer {self.layer!r} was not reached in the forward pass")
        return torch.flatten(box[0], 1)

    def pre_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both in one forward pass where the head is known (the classifier continues from the
        tapped pre-activation); two passes otherwise."""
        if self._head_index is None:
            return self.pre(x), self.logits(x)
        z = self.pre(x)
        # the head starts with an in-place ReLU: give it a copy, or z itself would be rectified
        return z, self.model.classifier[self._head_index + 1 :](z.clone())

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (B, 1000) for (B, 3, H, W) images in [0, 1]."""
        return self.model(self.normalise(x))

    def identity(self) -> dict:
        return model_identity(self.arch, self.layer, self.weights)


def model_identity(arch: str, layer: str, weights: WeightsInfo) -> dict:
    """What a report records as the model: architecture, layer and where the weights came
    from. A batch compares it with finished jobs' to know whether they are still current."""
    return {"arch": arch, "layer": layer, **dataclasses.asdict(weights)}


def _builder(arch: str):
    if arch in OWN_MODELS:  # the digits world's nets: built like torchvision's, weights from a file
        return lambda weights=None: OWN_MODELS[arch]()
    if arch in TWINS:  # torchvision's VGG, built here: no torchvision import before the first step
        return lambda weights=None: TWINS[arch]()
    import torchvision.models as tvm

    try:
        return tvm.get_model_builder(arch)
    except (ValueError, KeyError):
        raise ModelError(f"unknown model {arch!r}; use vgg16, vgg19, alexnet or another torchvision classifier") from None


def input_fit(arch: str, weights: str) -> str:
    """What ``fit auto`` does to a source or target that is not already size x size, for
    ``arch`` with ``weights`` (a --weights value, or a loaded Tap's ``weights.kind``, where
    "file" is a user's): "imagenet", torchvision's evaluation transform, for torchvision's
    ImageNet weights and for random weights of a torchvision classifier, which stand in for
    them (so "auto" is "imagenet" either way); "crop", the centre square with no zoom, for a
    user's weights (nothing says they were trained on zoomed images) and the digits world's
    nets (trained on their images as rendered). Decided from the names alone: nothing is
    loaded or downloaded, so the inputs are checked before the model."""
    if arch in OWN_MODELS or arch in _SHAPE_ONLY:
        return "crop"
    return "imagenet" if weights in WEIGHTS else "crop"


def load_tap(arch: str = "vgg16", layer: str = "fc6", weights: str = "imagenet", seed: int = 0,
             allow_download: bool = True) -> Tap:
    """Build ``arch`` with ``weights`` ("auto", "imagenet", "random" or a state-dict PATH; see
    WEIGHTS_RULE) and tap ``layer``."""
    builder = _builder(arch)
    weights = resolve_weights(weights, arch, allow_download)
    if weights == "random":
        with torch.random.fork_rng(devices=[]):  # seeded, and the caller's RNG stream is left as it was
            torch.default_generator.manual_seed(seed)
            model = builder(weights=None)
        info = random_weights(seed)
    else:
        model = builder(weights=None)
        info = load_weights(model, arch, weights, allow_download)
    return Tap(model, arch, layer, info)


def resolve_device(device: "str | torch.device") -> torch.device:
    """auto -> cuda when available, else cpu; cuda without a GPU is an error. A torch.device
    (resolved before) is returned as it is."""
    if isinstance(device, torch.device):
        return device
    if device not in ("auto", "cpu", "cuda"):
        raise ModelError(f"--device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda was asked for but torch sees no GPU; use --device auto or cpu")
    return torch.device("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu")


def tap_on(tap: "Tap", device: torch.device) -> "Tap":
    """``tap`` on ``device`` without moving the caller's: the same object when it is there
    already, else a copy there (nn.Module.to would move the caller's model in place)."""
    here = next(iter(tap.buffers())).device
    if here.type == device.type and (device.index is None or here.index == device.index):
        return tap
    import copy

    return copy.deepcopy(tap).to(device)


# --------------------------------------------------------------------------------------------
# Any torchvision model by name, with seeded random or loaded weights (exact collisions, nullities)
# --------------------------------------------------------------------------------------------

# Keyword arguments that give torchvision's builders the structure of Ozbulak et al.'s models.
_BUILD_KWARGS = {
    "fcn_resnet50": {"aux_loss": True},
    "deeplabv3_resnet50": {"aux_loss": True},
}
_SHAPE_ONLY = {  # models torchvision does not ship, built from its VisionTransformer class
    "deit_tiny_shapes": dict(image_size=224, patch_size=16, num_layers=12, num_heads=3, hidden_dim=192, mlp_dim=768),
    "deit_base_shapes": dict(image_size=224, patch_size=16, num_layers=12, num_heads=12, hidden_dim=768,
                             mlp_dim=3072),
}


def builder(name: str):
    """A function ``build(weights=None, **kw) -> nn.Module`` for any torchvision model name
    (classification, segmentation, detection) or one of the ``*_shapes`` stand-ins; never
    downloads a backbone. ModelError naming the model for an unknown name. (``load_tap``'s
    ``_builder`` is the narrower one for classifiers with a tap.)"""
    import inspect

    import torchvision.models as tvm

    if name in _SHAPE_ONLY:
        from torchvision.models.vision_transformer import VisionTransformer

        return lambda **kw: VisionTransformer(**_SHAPE_ONLY[name])
    try:
        b = tvm.get_model_builder(name)
    except (ValueError, KeyError):
        raise ModelError(f"unknown model {name!r}; use a torchvision model name (torchvision.models.list_models()) "
                         f"or one of {', '.join(_SHAPE_ONLY)}") from None
    params = inspect.signature(b).parameters
    extra = dict(_BUILD_KWARGS.get(name, {}))
    if "weights_backbone" in params:
        extra["weights_backbone"] = None  # never download a backbone

    def build(**kw):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # inception_v3's notice about its default init
            return b(**kw, **extra)

    return build


def build_model(name: str, weights: str = "random", seed: int = 0, image_size: int | None = None,
                option: str = "--weights", model_option: str = "--model") -> tuple[nn.Module, WeightsInfo]:
    """A torchvision model (or one of the ``*_shapes`` stand-ins) in eval mode with frozen
    parameters, weights "random" (seeded), "imagenet" (torchvision's, via the torch cache)
    or a state-dict PATH (loaded with weights_only=True). ``image_size``: vision transformers
    (vit_*) with random weights are built for this input side (their patch embedding is the
    same; only the number of patches changes); other models ignore it.

    The random weights are drawn from torch's CPU generator seeded with ``seed`` inside
    ``torch.random.fork_rng``: the caller's random stream is left exactly as it was, and the
    same seed gives the same weights. "auto": see WEIGHTS_RULE."""
    build = builder(name)
    weights = resolve_weights(weights, name)
    kw = {}
    if image_size and name.startswith("vit_") and weights == "random":
        kw["image_size"] = image_size
    with torch.random.fork_rng(devices=[]):  # CPU only: the model is built on the CPU
        torch.default_generator.manual_seed(seed)
        model = build(weights=None, **kw)
        redrawn = _redraw_zero_weights(model) if weights == "random" else []
    if weights == "random":
        info = WeightsInfo("random", f"random(seed={seed})" + (f"; zero-initialised {', '.join(redrawn)} redrawn"
                                                               if redrawn else ""), None, False, "random weights")
    else:
        info = load_weights(model, name, weights, option=option, model_option=model_option)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, info


def _redraw_zero_weights(model: nn.Module) -> list[str]:
    """torchvision initialises some heads to zero (ViT's heads.head): a zero matrix has rank 0,
    which says nothing about the structure, and zero logits verify nothing. With random weights
    such matrices are drawn like nn.Linear's default (Kaiming uniform, a = sqrt(5)), seeded by
    the generator state after the build. Returns their names."""
    names = []
    for name, m in model.named_modules():
        w = getattr(m, "weight", None)
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and w is not None and not w.any():
            with torch.no_grad():
                nn.init.kaiming_uniform_(w, a=math.sqrt(5))
            names.append(name)
    return names
