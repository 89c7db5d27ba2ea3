"""optimisers.py: Adam and SGD agree with torch.optim bit for bit, step by step, through a
prune-like swap of the parameter and a resume from torch.optim's own state_dict."""
from __future__ import annotations

import pytest
import torch

from patchcollide.engine.optimisers import SGD, Adam


def loss_of(p: torch.Tensor, step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(step)
    w = torch.randn(p.shape, generator=g)
    return ((p - w) ** 2 * (1 + step % 3)).sum() + p.abs().sum() * 0.1


def run(make, steps: int, swap_at: int | None = None, resume_from: dict | None = None):
    """``steps`` steps on a (5, 64, 8) parameter; at ``swap_at`` the parameter is cut to its
    4 heaviest slots with the state carried over (what collide.prune does)."""
    p = torch.nn.Parameter(torch.randn(5, 64, 8, generator=torch.Generator().manual_seed(0)))
    opt = make([p])
    if resume_from is not None:
        opt.load_state_dict(resume_from)
    for step in range(1, steps + 1):
        if step == swap_at:
            top = p.detach().abs().topk(4, dim=2).indices
            old, p = p, torch.nn.Parameter(p.detach().gather(2, top))
            state = opt.state.pop(old, {})
            opt.param_groups[0]["params"] = [p]
            opt.state[p] = {k: v.gather(2, top) if torch.is_tensor(v) and v.shape == old.shape else v
                            for k, v in state.items()}
        opt.zero_grad(set_to_none=True)
        loss_of(p, step).backward()
        opt.step()
    return p.detach(), opt


CASES = {
    "adam": (lambda ps: torch.optim.Adam(ps, lr=0.4, betas=(0.8, 0.9)), lambda ps: Adam(ps, lr=0.4, betas=(0.8, 0.9))),
    "sgd": (lambda ps: torch.optim.SGD(ps, lr=5e-3, momentum=0.9), lambda ps: SGD(ps, lr=5e-3, momentum=0.9)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_same_parameters_as_torch_optim_bit_for_bit(name):
    theirs, ours = CASES[name]
    a, _ = run(theirs, 30, swap_at=12)
    b, _ = run(ours, 30, swap_at=12)
    assert torch.equal(a, b)
    c, _ = run(lambda ps: Adam(ps, lr=0.4, betas=(0.8, 0.91)) if name == "adam" else SGD(ps, lr=5e-3, momentum=0.8), 30,
               swap_at=12)
    assert not torch.equal(a, c)  # the comparison sees a different setting


@pytest.mark.parametrize("name", list(CASES))
def test_state_dicts_cross_between_torch_optim_and_ours(name):
    theirs, ours = CASES[name]
    whole, _ = run(theirs, 20)
    _, half = run(theirs, 10)  # torch.optim's state after 10 steps (an old checkpoint)
    p, opt = run(ours, 0, resume_from=half.state_dict())
    # go on from torch's state with the parameter torch reached: the same 10 more steps
    first, _ = run(theirs, 10)
    with torch.no_grad():
        p = torch.nn.Parameter(first.clone())
    opt.param_groups[0]["params"] = [p]
    opt.state = {p: next(iter(opt.state.values()))}
    for step in range(11, 21):
        opt.zero_grad()
        loss_of(p, step).backward()
        opt.step()
    assert torch.equal(p.detach(), whole)
    saved = opt.state_dict()
    assert list(saved["state"]) == [0] and saved["param_groups"][0]["params"] == [0]
    back = theirs([torch.nn.Parameter(p.detach().clone())])
    back.load_state_dict(saved)  # and ours loads into torch's
    assert set(back.state_dict()["state"][0]) == set(saved["state"][0])


def test_a_collide_run_never_imports_torch_dynamo():
    """torch.optim would import torch._dynamo at the first step (1.4 s); the loop's own
    optimisers do not. A 2-step pixel run with the digits world's VGG, in a fresh process."""
    import subprocess
    import sys

    code = ("import sys, numpy as np; from patchcollide.engine.collide import CollideConfig, collide; "
            "from patchcollide.models.build import Tap; from patchcollide.models.weights import random_weights; from patchcollide.models.digits import DigitVGG; "
            "tap = Tap(DigitVGG(), 'digits_vgg', 'fc6', random_weights(0)); "
            "a, b = (np.random.default_rng(s).integers(0, 256, (32, 32, 3), dtype=np.uint8) for s in (0, 1)); "
            "r = collide(tap, a, b, CollideConfig(mode='pixel', size=32, steps=2, min_steps=0, vertices=2, device='cpu')); "
            "print(r.steps, 'torch._dynamo' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.split() == ["2", "False"], r.stdout + r.stderr[-2000:]
