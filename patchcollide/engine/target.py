"""What a collision aims at: the target's pre-activation at the tapped layer and one inactive
unit per vertex (``collide.target_of`` computes it from an image)."""
from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass
class Target:
    """What a collision aims at. z: fc6 pre-activation (D,); units: (V,) inactive unit per vertex."""

    z: torch.Tensor
    units: torch.Tensor
    label: int  # the target's top-1 class
    prob: float  # its top-1 probability

    @property
    def active(self) -> torch.Tensor:
        return self.z > 0

    @property
    def post(self) -> torch.Tensor:
        return torch.relu(self.z)

    def to(self, device: str | torch.device) -> "Target":
        """The same target with z and units on ``device``."""
        return Target(self.z.to(device), self.units.to(device), self.label, self.prob)

    def as_dict(self) -> dict:
        """{"z", "units", "label", "prob"}, the tensors on the CPU: what a checkpoint stores (tensors
        and plain values only, so that it loads with weights_only=True); ``from_dict`` reads it back."""
        return {"z": self.z.cpu(), "units": self.units.cpu(), "label": self.label, "prob": self.prob}

    @classmethod
    def from_dict(cls, d: dict) -> "Target":
        """The target ``as_dict`` wrote (z and units tensors); TypeError when they are not tensors."""
        target = cls(d["z"], d["units"], d["label"], d["prob"])
        if not (torch.is_tensor(target.z) and torch.is_tensor(target.units)):
            raise TypeError("its target is not tensors")
        return target
