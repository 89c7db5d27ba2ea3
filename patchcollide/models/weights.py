"""Weights: where a network's weights come from, and their record in every report.

``resolve_weights`` makes ``auto`` concrete (``names.WEIGHTS_RULE``): torchvision's ImageNet
weights when the torch hub cache holds them (their sha256 checked against the prefix their file
name carries, hashed once per process) or they download, else seeded random weights with one
warning. ``load_weights`` puts torchvision's weights or a user's state-dict file (loaded with
``weights_only=True``) into a built model; ``WeightsInfo`` says where they came from. Every
failure is a one-line ``ModelError`` naming the option that gave the weights.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import re
import warnings

import torch
import torch.nn as nn

from ..core.errors import PatchcollideError, first_line
from ..core.files import file_sha256
from .digits import BUILDERS as OWN_MODELS
from .names import SHAPE_ONLY, file_kind
from .vgg import TWIN_WEIGHTS

log = logging.getLogger(__name__)


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


def random_weights(seed: int) -> WeightsInfo:
    """The identity of ``load_tap(..., "random", seed)``'s weights, without building the model."""
    return WeightsInfo("random", f"random(seed={seed})", None, False, "random weights")


def imagenet_weights(arch: str):
    """torchvision's ImageNet weights enum member for ``arch``: IMAGENET1K_V1 where present."""
    import torchvision.models as tvm

    enum = tvm.get_model_weights(arch)
    return enum.IMAGENET1K_V1 if hasattr(enum, "IMAGENET1K_V1") else enum.DEFAULT


def imagenet_source(arch: str) -> tuple[str, str]:
    """(name, URL) of torchvision's ImageNet weights file for ``arch``; for the VGG twins from
    vgg.TWIN_WEIGHTS, without importing torchvision."""
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
        if arch in SHAPE_ONLY:
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
    if arch in OWN_MODELS or arch in SHAPE_ONLY:
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
