#!/usr/bin/env python
"""Can a collision at the MLP's fc1 keep the look of its start digit at all?

The digit reproduction (``reproduce_digits.py``) finds vertices started from a 3 that collide
with a 7 at fc1 but look like the 7. This script measures the floor under any optimiser: for
the same seeded net, target 7 and start 3, the *closest* input to the 3 whose active fc1
units equal the 7's. fc1 is affine, so without the [0, 1] box and the inactive units that
closest point is the projection x0 - pinv(W_A) (W_A x0 + b_A - z_A). Then the same with the box
and the inactive units <= 0, by projected gradient descent from the 3 (no push). Reported: the
L2 distances (0..1 pixels, 28 x 28) to the start and to the target, Pearson correlations with
each, the relative post-activation error, and the start-to-target distance for scale.
Writes benchmarks/results/digits-min-change-mlp-fc1.json.

    python scripts/digits_min_change.py       # about a minute on 2 cores
"""
from __future__ import annotations

import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / (a.norm() * b.norm()))


def describe(x: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor, W, b, zt, active) -> dict:
    z = W @ x + b
    return {"l2_to_start": float((x - x0).norm()), "l2_to_target": float((x - xt).norm()),
            "corr_start": corr(x, x0), "corr_target": corr(x, xt),
            "rel_error": float((z.clamp_min(0) - zt.clamp_min(0)).norm() / zt.clamp_min(0).norm()),
            "inactive_positive": int((z[~active] > 0).sum()), "pixel_range": [float(x.min()), float(x.max())]}


def main() -> None:
    from patchcollide.papers.digits import TrainConfig, load_digit_data, make_model, train
    from patchcollide.core.files import machine, versions, write_json
    from patchcollide.papers.reproduce import DigitProtocolConfig, first_correct

    t0 = time.time()
    cfg = DigitProtocolConfig()  # the reproduction's seed, classes and training
    data = load_digit_data(seed=cfg.seed)
    model = make_model("mlp", seed=cfg.seed)
    acc = train(model, data, TrainConfig(seed=cfg.seed))["test_accuracy"]
    ti, si = first_correct(model, data, cfg.target_class), first_correct(model, data, cfg.other_class)
    W, b = model.fc1.weight.detach().double(), model.fc1.bias.detach().double()
    xt, x0 = data.test_x[ti].flatten().double(), data.test_x[si].flatten().double()
    zt = W @ xt + b
    active = zt > 0
    # the closest collision to the start, ignoring the box and the inactive units
    proj = x0 - torch.linalg.pinv(W[active]) @ (W[active] @ x0 + b[active] - zt[active])
    # with the box [0, 1] and the inactive units <= 0: projected gradient descent from the start
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.SGD([x], lr=0.05, momentum=0.9)
    steps = 20_000
    for _ in range(steps):
        z = W @ x + b
        loss = 0.5 * ((z[active] - zt[active]) ** 2).sum() + torch.relu(z[~active]).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            x.clamp_(0, 1)
    out = {
        "benchmark": "digits_min_change", "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(),
        "versions": versions(), "net": "mlp", "layer": "fc1", "test_accuracy": acc,
        "target": {"test_index": ti, "class": cfg.target_class}, "start": {"test_index": si, "class": cfg.other_class},
        "active_units": int(active.sum()), "pixels": int(x0.numel()), "l2_start_to_target": float((x0 - xt).norm()),
        "closest_collision_unboxed": describe(proj, x0, xt, W, b, zt, active),
        "projected_gradient_boxed": {**describe(x.detach(), x0, xt, W, b, zt, active), "steps": steps, "lr": 0.05},
        "seconds": round(time.time() - t0, 1),
        "units": "L2 over [0, 1] pixels of 28 x 28 images; Pearson correlation over the 784 pixels",
    }
    path = os.path.join(ROOT, "benchmarks", "results", "digits-min-change-mlp-fc1.json")
    write_json(path, out, indent=1)
    for k in ("closest_collision_unboxed", "projected_gradient_boxed"):
        print(k, {kk: round(v, 3) if isinstance(v, float) else v for kk, v in out[k].items()})
    print(f"start -> target {out['l2_start_to_target']:.2f}; wrote {path}")


if __name__ == "__main__":
    main()
