"""Model + layer tap (pre-activation), weights, preprocessing. Imports nothing of ours.

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
import hashlib
import logging
import math
import os
import pickle
import re
import warnings

import torch
import torch.nn as nn

from ..core.errors import PatchcollideError, first_line
from .config import WEIGHTS, WEIGHTS_RULE  # noqa: F401 (torch-free, for the CLI's --weights help; WEIGHTS_RULE: its old home)
from .names import file_kind
from .nets import BUILDERS as OWN_MODELS
from .nets import HEADS as OWN_HEADS
from .nets import TWIN_WEIGHTS, TWINS

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# (classifier index of the Linear layer) for the architectures whose heads we know
KNOWN_HEADS = {
    "vgg16": {"fc6": 0, "fc7": 3},
    "vgg19": {"fc6": 0, "fc7": 3},
    "alexnet": {"fc6": 1, "fc7": 4},
    **OWN_HEADS,  # the trained digits world's attacked net (nets.py)
}


def imagenet_normalise(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> ImageNet-normalised, as ``Tap.normalise`` (for nets outside a Tap)."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


class ModelError(PatchcollideError):
    """Bad model, layer or weights; ``str(e)`` is a one-line message."""


@dataclasses.dataclass(frozen=True)
class WeightsInfo:
    """Where the weights came from, saved in every report."""

    kind: str  # "imagenet" | "file" | "random"
    name: str  # IMAGENET1K_V1, the file path, or "random(seed=N)"
    sha256: str | None  # of the state dict file, where there is one
    pretrained: bool  # torchvision's published weights, their sha256 checked against the file name's prefix
    label: str  # what is known, in words: "torchvision IMAGENET1K_V1", "user weights", "random weights"


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


def random_weights(seed: int) -> WeightsInfo:
    """The identity of ``load_tap(..., "random", seed)``'s weights, without building the model."""
    return WeightsInfo("random", f"random(seed={seed})", None, False, "random weights")


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


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def imagenet_weights(arch: str):
    """torchvision's ImageNet weights enum member for ``arch``: IMAGENET1K_V1 where present."""
    import torchvision.models as tvm

    enum = tvm.get_model_weights(arch)
    return enum.IMAGENET1K_V1 if hasattr(enum, "IMAGENET1K_V1") else enum.DEFAULT


def imagenet_source(arch: str) -> tuple[str, str]:
    """(name, URL) of torchvision's ImageNet weights file for ``arch``; for the VGG twins from
    nets.TWIN_WEIGHTS, without importing torchvision."""
    if arch in TWIN_WEIGHTS:
        return TWIN_WEIGHTS[arch]
    w = imagenet_weights(arch)
    return str(w), w.url


def load_weights(model: nn.Module, arch: str, weights: str, allow_download: bool = True,
                 option: str = "--weights", model_option: str = "--model") -> WeightsInfo:
    """Put ``weights`` ("imagenet": torchvision's, via the torch cache; or a state-dict PATH,
    loaded with weights_only=True) into ``model`` (built by ``arch``'s builder) and say where
    they came from. One-line ModelError for a model without ImageNet weights, a missing or
    foreign file, or a state dict that does not fit, naming ``option`` and ``model_option``
    (the judge's: --judge and --judge-model)."""
    if weights == "imagenet":
        if arch in OWN_MODELS:
            raise ModelError(f"{arch} has no ImageNet weights; train it with `patchcollide world build` and pass "
                             "--weights PATH (the world's weights/ folder), or --weights random")
        if arch in _SHAPE_ONLY:
            raise ModelError(f"{arch} has no torchvision weights (only its shapes are built); use --weights random")
        state, where, sha = load_imagenet_state(arch, allow_download)
        fit_state(model, state, arch, "imagenet", option, model_option)
        name = imagenet_weights(arch).name
        return WeightsInfo("imagenet", name, sha, True, f"torchvision {name}")
    state = load_state_file(weights, option)
    fit_state(model, state, arch, weights, option, model_option)
    # nothing says what a user's file was trained on: its path and sha256 are what is known
    return WeightsInfo("file", os.path.abspath(weights), file_sha256(weights), False, "user weights")


HASH_PREFIX = re.compile(r"-([a-f0-9]{6,})\.")  # torchvision's file names end in -<sha256 prefix>.pth


def check_cached_hash(path: str, arch: str) -> str:
    """The sha256 of a cached torchvision weights file, checked against the prefix its name
    carries (as torch.hub's ``check_hash`` does on download); a file taken on its name alone
    could hold anything. One-line ModelError on a mismatch."""
    sha = file_sha256(path)
    want = HASH_PREFIX.search(os.path.basename(path))
    if want and not sha.startswith(want.group(1)):
        raise ModelError(f"{path}: its sha256 ({sha[:12]}...) does not start with {want.group(1)}, as torchvision's "
                         f"file name says, so it is not torchvision's {arch} weights; delete it to download them "
                         "again, or pass your own file with --weights PATH")
    return sha


class WeightsUnavailable(ModelError):
    """torchvision's weights are neither in the torch cache nor downloadable (``--weights auto``
    then takes random weights); a file that is there but wrong is a plain ModelError."""


_checked: dict = {}  # (path, size, mtime) -> sha256: a file is hashed once per process


def imagenet_file(arch: str, allow_download: bool = True) -> tuple[str, str]:
    """The path and sha256 of torchvision's IMAGENET1K_V1 file for ``arch`` in the torch hub
    cache, downloaded there (hash checked by torch.hub, 20 s socket timeout) when missing.
    WeightsUnavailable, naming the cache path and every way out, when neither works."""
    w, url = imagenet_source(arch)
    cache = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
    if not os.path.exists(cache) and allow_download:
        import socket

        want = HASH_PREFIX.search(os.path.basename(cache))
        old = socket.getdefaulttimeout()
        socket.setdefaulttimeout(20)  # a closed network fails fast instead of hanging
        try:
            os.makedirs(os.path.dirname(cache), exist_ok=True)
            torch.hub.download_url_to_file(url, cache, hash_prefix=want.group(1) if want else None, progress=False)
        except Exception:  # noqa: BLE001 - no network, proxy, hash mismatch: all mean the same to the user
            pass
        finally:
            socket.setdefaulttimeout(old)
    if not os.path.exists(cache):
        raise WeightsUnavailable(
            f"{arch} weights {w} are not in the torch cache ({cache}) and could not be downloaded; fetch {url} on "
            "a machine with internet and pass --weights PATH or copy it to that cache path, or use --weights "
            "random for a smoke run")
    st = os.stat(cache)
    key = (cache, st.st_size, st.st_mtime_ns)
    if key not in _checked:
        _checked[key] = check_cached_hash(cache, arch)
    return cache, _checked[key]


def resolve_weights(weights: str, arch: str, allow_download: bool = True) -> str:
    """``weights`` with ``auto`` made concrete (see WEIGHTS_RULE): "imagenet" when torchvision's
    file for ``arch`` is in the torch cache or downloads, else "random" with one warning line.
    Any other value is returned as it is. A cached file that fails its sha256 check is an error,
    not a reason to fall back."""
    if weights != "auto":
        return weights
    if arch in OWN_MODELS or arch in _SHAPE_ONLY:
        why = f"{arch} has no torchvision ImageNet weights"
    else:
        try:
            imagenet_file(arch, allow_download)
            return "imagenet"
        except WeightsUnavailable as e:
            why = str(e).split(";")[0]
    log.warning("--weights auto: %s; using RANDOM weights (seeded): the run tests only the mechanics (pass "
                "--weights PATH for a real run)", why)
    return "random"


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


def load_imagenet_state(arch: str, allow_download: bool = True) -> tuple[dict, str, str]:
    """torchvision's IMAGENET1K_V1 state dict from the torch hub cache (its sha256 checked
    against its name), downloaded there first when missing. Returns (state, path, sha256).

    Raises WeightsUnavailable, saying where to put the file, when neither works.
    """
    cache, sha = imagenet_file(arch, allow_download)
    try:
        return torch.load(cache, map_location="cpu", weights_only=True), cache, sha
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file in the cache
        raise ModelError(f"{cache}: cached {arch} weights do not load ({type(e).__name__}); delete the file "
                         "to download it again, or pass --weights PATH") from None


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


def load_state_file(path: str, option: str = "--weights") -> dict:
    """The state dict (a dict of tensors) in the file ``path``, loaded with ``weights_only=True``
    (no arbitrary pickled objects); ModelError with a one-line reason otherwise. A checkpoint
    dict holding the tensors under "state_dict" is unwrapped. ``option``: the option the
    messages name (--weights, or the judge's --judge)."""
    if not os.path.isfile(path):
        raise ModelError(f"{option} {path!r}: no such file; give a state dict file" +
                         (", or auto, imagenet or random" if option == "--weights" else ""))
    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of files that it then refuses anyway
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        glob = re.search(r"GLOBAL (\S+)", text)
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        if glob:
            reason = (f"it pickles the Python object {glob.group(1)}, not only tensors: refused, as weights load "
                      "with weights_only=True")
        elif kind := file_kind(path):
            reason = f"it is {kind}"
        elif "Weights only load failed" in text and detail and "GLOBAL" not in text:
            reason = "not a file of tensors written by torch.save"
        else:
            reason = first_line(e, 100)
        raise ModelError(f"{option} {path}: not a torch state dict ({reason}); save one with "
                         "torch.save(model.state_dict(), PATH)") from None
    except Exception as e:  # noqa: BLE001 - zip errors, EOF, random bytes
        kind = file_kind(path)
        what = f"it is {kind}" if kind else f"not a file written by torch.save: {first_line(e, 100)}"
        raise ModelError(f"{option} {path}: not a torch state dict ({what}); save one with "
                         "torch.save(model.state_dict(), PATH)") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{option} {path}: not a state dict (a dict of tensors); save one with "
                         "torch.save(model.state_dict(), PATH)")
    return state


def fit_state(model: nn.Module, state: dict, arch: str, source: str, option: str = "--weights",
              model_option: str = "--model") -> None:
    """Load ``state`` into ``model``; a mismatch is a one-line ModelError naming ``source`` and
    the options that give the file and the architecture (the judge's: --judge, --judge-model)."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ModelError(f"{option} {source} does not fit {arch} ({_fit_detail(e)}); pass a state dict saved "
                         f"from {arch}, or the {model_option} it was saved from") from None


def _fit_detail(e: RuntimeError) -> str:
    """The first concrete reason of a load_state_dict error, shortened."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    detail = lines[1] if len(lines) > 1 else (lines[0] if lines else "mismatch")
    return detail if len(detail) <= 120 else detail[:117] + "..."


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
