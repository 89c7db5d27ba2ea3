"""The Null-space search (Ozbulak et al. 2022) for one input, and a run directory written from it.

:func:`run_nullspace` is the whole run by model name: build the model, load the image, search,
write the directory (the ``patchcollide nullspace`` command calls it and prints).
:func:`nullspace_search` is the search on a model and an input tensor:

* Linear and non-overlapping conv first layers (patch embeddings): a collider x + beta * P
  from kernel vectors (:mod:`.kernel`), verified in float32 and in float64, first layer's
  output and logits, beside beta and the size of P (:mod:`.verify`);
* overlapping convolutions: the kernel of the whole-image map (:mod:`.spectra`); no collider
  is built and none is called exact; the paper's tiling of a per-patch kernel vector is
  measured and shown to change the layer's output.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn as nn

from ..core.errors import first_line
from ..core.files import atomic_open, machine, staged_dir, versions, write_json
from ..core.images import Preprocess, imagenet_crop, load_rgb, sample_photo
from ..models.build import IMAGENET_MEAN, IMAGENET_STD, build_model
from ..runs.pictures import save_png
from .config import RUN_KIND, SIZE, NullspaceConfig, check_nullspace, check_out
from .kernel import linear_perturbation, patch_perturbation
from .spectra import conv_map_analysis, naive_tiling
from .table import EXACT_RANDOM_NOTICE, NullspaceError
from .verify import layer_residual, model_output, perturbation_size, pgd, verify



# --------------------------------------------------------------------------------------------
# The first trainable layer
# --------------------------------------------------------------------------------------------

class _Stop(Exception):
    pass


@dataclasses.dataclass
class FirstLayer:
    name: str
    module: nn.Module
    kind: str  # "linear" | "patch-conv" | "overlapping-conv" | "unsupported"
    input_shape: tuple[int, ...]  # the layer's input for one sample
    output_shape: tuple[int, ...]
    reads_model_input: bool  # its input is the model's input (up to a reshape)

    def describe(self) -> dict:
        m = self.module
        d = {"name": self.name, "type": type(m).__name__, "kind": self.kind, "weight_shape": list(m.weight.shape),
             "matrix_shape": [m.weight.shape[0], int(m.weight[0].numel())], "input_shape": list(self.input_shape),
             "output_shape": list(self.output_shape)}
        if isinstance(m, nn.Conv2d):
            d.update(stride=list(m.stride), padding=m.padding if isinstance(m.padding, str) else list(m.padding),
                     dilation=list(m.dilation), groups=m.groups)
        return d


def _is_patch_conv(m: nn.Conv2d) -> bool:
    pad = (0, 0) if m.padding == "valid" else m.padding
    return (not isinstance(pad, str) and tuple(pad) == (0, 0) and tuple(m.dilation) == (1, 1) and m.groups == 1
            and m.stride[0] >= m.kernel_size[0] and m.stride[1] >= m.kernel_size[1])


def find_first_layer(model: nn.Module, x: torch.Tensor) -> FirstLayer:
    """The first module with a weight matrix that the forward pass of ``x`` (1, ...) calls
    (registration order is not forward order in general)."""
    box: list = []

    def hook(name):
        def fn(mod, args, out):
            box.append((name, mod, args[0].detach(), out.detach()))
            raise _Stop

        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
               if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.ndim >= 2
               and "weight" in dict(m.named_parameters(recurse=False))]
    try:
        with torch.no_grad():
            model(x)
    except _Stop:
        pass
    except (AssertionError, RuntimeError, ValueError) as e:
        msg = first_line(e)
        raise NullspaceError(f"the model does not accept input {tuple(x.shape[1:])} ({msg}); use the input size "
                             "it was built for (ViT: --size 224)") from None
    finally:
        for h in handles:
            h.remove()
    if not box:
        raise NullspaceError("no Conv or Linear layer was called in the forward pass")
    name, mod, inp, out = box[0]
    reads = inp.numel() == x.numel() and torch.equal(inp.reshape(-1), x.detach().reshape(-1).to(inp.dtype))
    if isinstance(mod, nn.Linear):
        kind = "linear"
    elif isinstance(mod, nn.Conv2d):
        kind = "patch-conv" if _is_patch_conv(mod) else "overlapping-conv"
    else:
        kind = "unsupported"
    return FirstLayer(name, mod, kind, tuple(inp.shape[1:]), tuple(out.shape[1:]), reads)


# --------------------------------------------------------------------------------------------
# The search
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class NullspaceResult:
    first_layer: dict
    kind: str
    start: torch.Tensor  # (1, ...) float32: the input the collider is compared with (x, or its PGD example)
    collider: torch.Tensor | None  # (1, ...) float32 = start + P rounded to float32, or None
    perturbation: torch.Tensor | None  # (...) float64 P
    beta: float | None
    construction: dict | None
    verification: dict | None
    size: dict | None
    analysis: dict | None  # overlapping convs: conv_map_analysis
    naive_tiling: dict | None
    pgd: dict | None
    exact: bool  # True only for a collider built from an exact kernel (linear / non-overlapping conv)
    summary: str
    seconds: float


def nullspace_search(model: nn.Module, x: torch.Tensor, config: NullspaceConfig = NullspaceConfig(),
                     pixel_scale: torch.Tensor | None = None, bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
                     progress: Callable[[str], None] | None = None) -> NullspaceResult:
    """Null-space search on ``model`` (eval mode) for one input ``x`` (1, ...) float32 in the
    model's input space. ``pixel_scale`` (C,): model-input units -> 0..255 pixel levels
    (std * 255 for ImageNet-normalised input); ``bounds``: the valid input range (for PGD).

    Linear and non-overlapping conv first layers: a collider x + beta * P, verified. Overlapping
    convs: no collider; the whole-image kernel analysis and the paper's naive tiling, measured.
    """
    t0 = time.perf_counter()
    say = progress or (lambda s: None)
    if x.ndim < 2 or x.shape[0] != 1:
        raise NullspaceError(f"expected one input of shape (1, ...), got {tuple(x.shape)}")
    model.eval()
    x = x.detach().float()
    fl = find_first_layer(model, x)
    desc = fl.describe()
    if not fl.reads_model_input:
        raise NullspaceError(f"the first trainable layer {fl.name} does not read the model's input directly (the "
                             "input is transformed first); the null-space search needs the input to reach it unchanged")
    gen = torch.Generator().manual_seed(config.seed)
    model64 = copy.deepcopy(model).double()
    pgd_info = None
    start = x
    if config.pgd_steps:
        say(f"PGD: {config.pgd_steps} steps, eps {config.pgd_eps}")
        lo, hi = bounds if bounds is not None else (None, None)
        start, pgd_info = pgd(model, x, config.pgd_steps, config.pgd_eps, pixel_scale, lo, hi)
    res = dict(first_layer=desc, kind=fl.kind, start=start, collider=None, perturbation=None, beta=None,
               construction=None, verification=None, size=None, analysis=None, naive_tiling=None, pgd=pgd_info,
               exact=False)
    if fl.kind in ("linear", "patch-conv"):
        say(f"kernel of {fl.name} ({desc['matrix_shape'][0]} x {desc['matrix_shape'][1]})")
        if fl.kind == "linear":
            P1, cons = linear_perturbation(fl.module, tuple(x.shape[1:]), config, gen)
        else:
            P1, cons = patch_perturbation(fl.module, tuple(x.shape[1:]), config, gen)
        beta = config.beta if config.beta is not None else 1.0 / float(P1.abs().max())
        P = beta * P1
        cons["beta_rule"] = "given" if config.beta is not None else "auto: max |P| = 1 in model-input units"
        cons["layer_residual_float64"] = layer_residual(fl.module, P)
        say("verifying in float32 and float64")
        ver = verify(model, fl.name, start, P, model64)
        if pgd_info:
            ver["clean_top1"] = pgd_info["label"]
        collider = (start + P.float().reshape(start.shape)).detach()
        res.update(collider=collider, perturbation=P, beta=beta, construction=cons, verification=ver,
                   size=perturbation_size(P, start, pixel_scale), exact=True)
        v32, v64 = ver["float32"], ver["float64"]
        summary = (f"{fl.kind} first layer {fl.name}: kernel dimension {cons['kernel']['nullity']} "
                   f"(of {cons['kernel']['inp']}{' per patch' if fl.kind == 'patch-conv' else ''}); collider with "
                   f"beta {beta:.4g}: max rel. change of the first layer {v32['first_layer_rel']:.1e} (float32), "
                   f"{v64['first_layer_rel']:.1e} (float64); logits {v32['logits_rel']:.1e} / {v64['logits_rel']:.1e}")
    elif fl.kind == "overlapping-conv":
        conv = fl.module
        ana = conv_map_analysis(conv, tuple(x.shape[1:]), config, say, name=fl.name)
        naive = naive_tiling(conv, tuple(x.shape[1:]), gen, config.rtol)
        nt = None
        if naive is not None:
            P = naive / float(naive.abs().max())  # max |P| = 1, as the default beta of a collider
            v = verify(model, fl.name, start, P, model64)
            nt = {"beta": 1.0 / float(naive.abs().max()), "size": perturbation_size(P, start, pixel_scale),
                  "verification": v, "layer_residual_float64": layer_residual(conv, P),
                  "note": "one kernel vector of the unfolded weight tiled in non-overlapping kernel-sized tiles "
                          "(the paper's P = beta [phi ... phi]); it is not in the kernel of the whole-image map"}
        res.update(analysis=ana, naive_tiling=nt)
        summary = ana["verdict"] + (f". Per-patch (unfolded weight {ana['per_patch_kernel']['out']} x "
                                    f"{ana['per_patch_kernel']['inp']}) nullity {ana['per_patch_kernel']['nullity']}")
        if nt:
            summary += (f"; the paper's tiling of one such vector changes the first layer's output by "
                        f"{nt['verification']['float64']['first_layer_rel']:.2g} (relative, float64)")
    else:
        summary = (f"first trainable layer {fl.name} is a {desc['type']}: not supported by the null-space search "
                   "(Linear and Conv2d are)")
    return NullspaceResult(**res, summary=summary, seconds=round(time.perf_counter() - t0, 2))


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------

def imagenet_input(img: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float32 ImageNet-normalised model input."""
    x = torch.from_numpy(img).permute(2, 0, 1).float().unsqueeze(0) / 255.0
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def imagenet_pixels(x: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) model input (any float) -> (H, W, 3) float64 pixel values in 0..255 units (unclipped)."""
    x = x.detach().double()
    p = (x * torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)
         + torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1)) * 255.0
    return p[0].permute(1, 2, 0).numpy()


PIXEL_SCALE = torch.tensor(IMAGENET_STD) * 255.0  # model-input units -> 0..255 pixel levels, per channel


def imagenet_bounds() -> tuple[torch.Tensor, torch.Tensor]:
    """The model-input values of pixels 0 and 255, each (1, 3, 1, 1) float32."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (0 - mean) / std, (1 - mean) / std


def result_json(res: NullspaceResult) -> dict:
    return {"first_layer": res.first_layer, "kind": res.kind, "exact": res.exact, "summary": res.summary,
            "beta": res.beta, "construction": res.construction, "perturbation": res.size,
            "verification": res.verification, "analysis": res.analysis, "naive_tiling": res.naive_tiling,
            "pgd": res.pgd, "seconds": res.seconds}


def run_nullspace(model: str, out: str, size: int = SIZE, config: NullspaceConfig = NullspaceConfig(),
                  image: str | None = None, weights: str = "random", overwrite: bool = False,
                  progress: Callable[[str], None] | None = None) -> dict:
    """The Null-space search on the torchvision classifier named ``model`` (vit_b_32, resnet50,
    ...) for one image, written as the run directory ``out`` (see :func:`write_nullspace_run`).
    Returns the report (what report.json holds).

    size: input side in pixels, 32..1024 (ViT with random weights is built for it; pretrained
    ViT needs 224). config: the search; its seed also draws the random weights. image: an image
    file, brought to size x size with torchvision's ImageNet geometry (shorter side to
    size * 256 / 224, centre crop) [default: scikit-image's astronaut]. weights: "random"
    (structure only), "imagenet" or a state-dict PATH (:func:`patchcollide.models.build.build_model`).
    overwrite: replace an existing nullspace run at ``out`` (nothing else). progress: called with
    one line per stage. Bad inputs raise a one-line NullspaceError, ModelError or BadImage
    before anything is written.
    """
    check_nullspace(model, out, size, image, overwrite)
    if image is None:
        img = imagenet_crop(sample_photo("astronaut"), size)
    else:
        img = imagenet_crop(load_rgb(image, Preprocess(resize=None))[0], size)
    if progress:
        progress(f"building {model} with {weights} weights")
    net, info = build_model(model, weights, config.seed, image_size=size)
    res = nullspace_search(net, imagenet_input(img), config, pixel_scale=PIXEL_SCALE, bounds=imagenet_bounds(),
                           progress=progress)
    meta = {"notice": EXACT_RANDOM_NOTICE if info.kind == "random" else None, "config": dataclasses.asdict(config),
            "model": {"arch": model, **dataclasses.asdict(info)},
            "inputs": {"image": os.path.abspath(image) if image else "skimage.data.astronaut()", "size": size,
                       "space": "ImageNet-normalised model input ((x / 255 - mean) / std)"}}
    return write_nullspace_run(out, res, img, net, meta, overwrite=overwrite)


def write_nullspace_run(out: str, res: NullspaceResult, image: np.ndarray, model: nn.Module, meta: dict,
                        overwrite: bool = False) -> dict:
    """Write the run directory ``out`` (into ``out.tmp-*``, renamed when complete).

    original.png   the input image (size x size) as the model saw it
    adversarial.png  with --pgd-steps: the PGD start, clipped to 0..255 for viewing
    collider.npy   (1, 3, H, W) float32 collider in the model's input space: exact (what was verified)
    collider.png   the collider in 0..255 pixels, rounded and clipped: for viewing, NOT exact
    perturbation.png  P scaled to 0..255 for viewing (128 = no change)
    report.json    config, versions, weights, first layer, kernel analysis, verification
    """
    from PIL import Image

    check_out(out, overwrite)
    report = {"kind": RUN_KIND, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **meta,
              "versions": versions(), "machine": machine(), "result": result_json(res)}
    with staged_dir(out) as tmp:
        save_png(Image.fromarray(image), os.path.join(tmp, "original.png"))
        if res.pgd:
            save_png(Image.fromarray(np.clip(np.rint(imagenet_pixels(res.start)), 0, 255).astype(np.uint8)),
                     os.path.join(tmp, "adversarial.png"))
        if res.collider is not None:
            with atomic_open(os.path.join(tmp, "collider.npy"), "wb") as fh:
                np.save(fh, res.collider.numpy().astype(np.float32))
            pix = imagenet_pixels(res.collider)
            clipped = (pix < -0.5) | (pix > 255.5)
            png = np.clip(np.rint(pix), 0, 255).astype(np.uint8)
            save_png(Image.fromarray(png), os.path.join(tmp, "collider.png"))
            Pp = res.perturbation.reshape(3, *res.perturbation.shape[-2:]) * PIXEL_SCALE.double().view(3, 1, 1)
            Pp = Pp.permute(1, 2, 0).numpy()
            view = np.clip(np.rint(127.5 + 127.5 * Pp / max(float(np.abs(Pp).max()), 1e-12)), 0, 255).astype(np.uint8)
            save_png(Image.fromarray(view), os.path.join(tmp, "perturbation.png"))
            back = imagenet_input(png)
            with torch.no_grad():
                l0 = model_output(model(res.start))
                l1 = model_output(model(back))
            report["png"] = {
                "clipped_values": int(clipped.sum()), "clipped_pixels": int(clipped.any(axis=2).sum()),
                "values": int(clipped.size),
                "logits_rel_change_png": float((l1 - l0).abs().max() / max(float(l0.abs().max()), 1e-300)),
                "top1_png": int(l1.argmax()), "top1_start": int(l0.argmax()),
                "note": "collider.png is rounded to integers and clipped to 0..255: it is for viewing and does not "
                        "collide exactly; collider.npy holds the exact float32 collider in the model's input space"}
        write_json(os.path.join(tmp, "report.json"), report)
        check_out(out, overwrite)
    return report


