"""The loop's optimisers: Adam and SGD with momentum, written here so that a run's first step
does not import ``torch._dynamo`` (``torch.optim`` does, at an optimiser's first use, a large
part of a run's start-up: scripts/bench_startup.py measures it).

Each computes what ``torch.optim.Adam`` / ``torch.optim.SGD`` compute on the CPU (their
single-tensor path, no weight decay, no amsgrad, no nesterov) with the same tensor operations
in the same order, so the parameters agree bit for bit step by step (tests/test_optimisers.py);
``state_dict`` has torch's layout, so a checkpoint written with torch.optim still resumes.

The attributes the loop and ``collide.prune`` use are torch's too: ``param_groups[0]["params"]``
(the parameters, in order) and ``state`` (per parameter: Adam's ``step``, ``exp_avg``,
``exp_avg_sq``; SGD's ``momentum_buffer``).
"""
from __future__ import annotations

from collections.abc import Iterable

import torch


class Optimiser:
    """What Adam and SGD share: one group of parameters, per-parameter state, torch's
    ``zero_grad`` / ``state_dict`` / ``load_state_dict``."""

    def __init__(self, params: Iterable[torch.Tensor], **group):
        params = list(params)
        if not params:
            raise ValueError("the optimiser got no parameters")
        self.param_groups = [{"params": params, **group}]
        self.state: dict[torch.Tensor, dict] = {}

    @property
    def params(self) -> list[torch.Tensor]:
        return self.param_groups[0]["params"]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_().zero_()

    def state_dict(self) -> dict:
        """torch.optim's layout: state by parameter index, and the group with ``params`` as
        indices."""
        index = {id(p): i for i, p in enumerate(self.params)}
        group = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        return {"state": {index[id(p)]: dict(s) for p, s in self.state.items() if id(p) in index},
                "param_groups": [{**group, "params": list(range(len(self.params)))}]}

    def load_state_dict(self, saved: dict) -> None:
        """The state of ``saved`` (this class's or torch.optim's ``state_dict``) onto the
        parameters, by index; tensors move to their parameter's device (a step count stays
        where it was saved, as torch keeps it)."""
        n = len(saved["param_groups"][0]["params"])
        if n != len(self.params):
            raise ValueError(f"the saved optimiser state has {n} parameters, this one {len(self.params)}")
        self.state = {}
        for i, s in saved["state"].items():
            p = self.params[int(i)]
            self.state[p] = {k: (v.clone() if k == "step" else v.to(p.device).clone()) if torch.is_tensor(v) else v
                             for k, v in s.items()}


class Adam(Optimiser):
    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        super().__init__(params, lr=lr, betas=tuple(betas), eps=eps)

    @torch.no_grad()
    def step(self) -> None:
        g = self.param_groups[0]
        lr, (beta1, beta2), eps = g["lr"], g["betas"], g["eps"]
        for p in self.params:
            if p.grad is None:
                continue
            s = self.state.get(p)
            if not s:
                s = self.state[p] = {"step": torch.tensor(0.0, dtype=torch.float32),
                                     "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                                     "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
            grad = p.grad
            s["step"] += 1
            s["exp_avg"].lerp_(grad, 1 - beta1)
            s["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            step = s["step"].item()
            step_size = lr / (1 - beta1**step)
            denom = (s["exp_avg_sq"].sqrt() / (1 - beta2**step) ** 0.5).add_(eps)
            p.addcdiv_(s["exp_avg"], denom, value=-step_size)


class SGD(Optimiser):
    def __init__(self, params, lr: float, momentum: float = 0.0):
        super().__init__(params, lr=lr, momentum=momentum)

    @torch.no_grad()
    def step(self) -> None:
        g = self.param_groups[0]
        lr, momentum = g["lr"], g["momentum"]
        for p in self.params:
            if p.grad is None:
                continue
            grad = p.grad
            if momentum:
                s = self.state.setdefault(p, {})
                buf = s.get("momentum_buffer")
                if buf is None:
                    buf = s["momentum_buffer"] = grad.detach().clone()
                else:
                    buf.mul_(momentum).add_(grad, alpha=1)
                grad = buf
            p.add_(grad, alpha=-lr)
