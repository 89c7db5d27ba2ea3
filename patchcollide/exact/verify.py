"""How exact a collider is: the first layer's output and the logits of x + P against x, in
float32 (as saved) and in float64; the size of P; the layer applied to P alone; and the
untargeted PGD start of the paper's colliding adversarial examples.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from .table import NullspaceError


def model_output(out) -> torch.Tensor:
    """Logits from a model's output: a tensor, ``.logits`` (Inception, GoogLeNet) or ``["out"]``."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, dict) and "out" in out:
        return out["out"]
    raise NullspaceError(f"the model's output ({type(out).__name__}) is not a tensor of logits")


def _layer_and_logits(model: nn.Module, layer: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    box = []
    h = dict(model.named_modules())[layer].register_forward_hook(lambda m, a, o: box.append(o.detach().clone()))
    try:
        with torch.no_grad():
            logits = model_output(model(x))
    finally:
        h.remove()
    return box[0], logits.detach()


def verify(model: nn.Module, layer: str, x: torch.Tensor, P: torch.Tensor, model64: nn.Module | None = None) -> dict:
    """How much x + P changes the first layer's output and the logits, against x, in float32
    (x + P rounded to float32, as saved) and in float64 (a float64 copy of the model; x and P
    in float64). x (1, ...) the model's input, P (...) float64. Max absolute changes and the
    same divided by the reference's max |value|."""
    model64 = model64 or copy.deepcopy(model).double()
    out = {}
    for key, m, dt in (("float32", model, torch.float32), ("float64", model64, torch.float64)):
        xa = x.to(dt)
        xb = xa + P.to(dt).reshape(x.shape)
        f0, l0 = _layer_and_logits(m, layer, xa)
        f1, l1 = _layer_and_logits(m, layer, xb)
        fd, ld = float((f1 - f0).abs().max()), float((l1 - l0).abs().max())
        fr, lr = float(f0.abs().max()), float(l0.abs().max())
        out[key] = {"first_layer_max_abs": fd, "first_layer_ref_max_abs": fr, "first_layer_rel": fd / max(fr, 1e-300),
                    "logits_max_abs": ld, "logits_ref_max_abs": lr, "logits_rel": ld / max(lr, 1e-300),
                    "top1": int(l0.reshape(l0.shape[0], -1)[0].argmax()),
                    "top1_collider": int(l1.reshape(l1.shape[0], -1)[0].argmax())}
    return out


def perturbation_size(P: torch.Tensor, x: torch.Tensor, pixel_scale: torch.Tensor | None) -> dict:
    """L2 and L-inf of P in model-input units, relative to x, and in 0..255 pixel levels
    (P * std * 255 per channel) when ``pixel_scale`` (C,) is given."""
    d = {"l2": float(P.norm()), "linf": float(P.abs().max()), "l2_over_x_l2": float(P.norm() / x.double().norm())}
    if pixel_scale is not None and P.ndim >= 3:
        Pp = P.reshape(-1, *P.shape[-2:]) * pixel_scale.double().view(-1, 1, 1)
        d.update(l2_pixels=float(Pp.norm()), linf_pixels=float(Pp.abs().max()))
    return d


def layer_residual(module: nn.Module, P: torch.Tensor) -> dict:
    """The layer's linear part (no bias) applied to P alone, in float64: max |W P|, and that
    divided by the largest sum of |w| |p| terms of one output (the scale of rounding errors)."""
    W64 = module.weight.detach().to("cpu", torch.float64)
    if isinstance(module, nn.Linear):
        p = P.reshape(1, -1)
        y, scale = p @ W64.T, p.abs() @ W64.abs().T
    else:
        p = P.reshape(1, *P.shape[-3:])
        y, scale = module._conv_forward(p, W64, None), module._conv_forward(p.abs(), W64.abs(), None)
    ymax = float(y.abs().max())
    return {"max_abs": ymax, "relative_to_sum_abs_terms": ymax / max(float(scale.max()), 1e-300)}


# --------------------------------------------------------------------------------------------
# PGD start (the paper's colliding adversarial examples)
# --------------------------------------------------------------------------------------------

def pgd(model: nn.Module, x: torch.Tensor, steps: int, eps: float, pixel_scale: torch.Tensor | None,
        lo: torch.Tensor | None = None, hi: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Untargeted L-inf PGD from x (1, C, H, W) against the model's top-1 class. ``eps`` in
    0..255 pixel levels when ``pixel_scale`` (std * 255 per channel) is given, else in
    model-input units; steps of 2.5 * eps / steps; the result is kept inside [lo, hi]."""
    e = torch.full((x.shape[1],), float(eps)) if pixel_scale is None else eps / pixel_scale
    e = e.view(1, -1, *([1] * (x.ndim - 2))).to(x.dtype)
    alpha = 2.5 * e / steps
    with torch.no_grad():
        label = model_output(model(x)).reshape(1, -1).argmax(1)
    xa = x.clone()
    for _ in range(steps):
        xa.requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(model_output(model(xa)).reshape(1, -1), label)
            (g,) = torch.autograd.grad(loss, xa)
        with torch.no_grad():
            xa = torch.minimum(torch.maximum(xa + alpha * g.sign(), x - e), x + e)
            if lo is not None:
                xa = torch.minimum(torch.maximum(xa, lo), hi)
    with torch.no_grad():
        adv = int(model_output(model(xa)).reshape(1, -1).argmax(1))
    return xa.detach(), {"steps": steps, "eps": eps, "eps_units": "0..255 pixel levels" if pixel_scale is not None
                         else "model input", "label": int(label), "label_adversarial": adv, "success": adv != int(label)}

