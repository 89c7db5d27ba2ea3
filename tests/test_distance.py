"""The one relative-error formula (engine/distance.py) against the formula written out."""
import torch

from patchcollide.engine.distance import reference_norm, relative_distance, relative_error
from patchcollide.engine.target import Target


def test_relative_error_is_bit_identical_to_the_formula_written_out():
    g = torch.Generator().manual_seed(0)
    z_t = torch.randn(64, generator=g)
    z = torch.randn(5, 64, generator=g)
    target = Target(z_t, torch.tensor([0]), 0, 1.0)
    written_out = (torch.relu(z) - target.post).norm(dim=1) / target.post.norm().clamp_min(1e-12)
    assert torch.equal(relative_error(z, target), written_out)
    assert torch.equal(relative_distance(torch.relu(z), target.post), written_out)


def test_an_all_zero_target_gives_large_errors_not_nan():
    zero = torch.zeros(4)
    assert reference_norm(zero) == torch.tensor(1e-12)
    r = relative_distance(torch.ones(2, 4), zero)
    assert torch.isfinite(r).all() and float(r.min()) > 1e11
    assert float(relative_distance(torch.zeros(1, 4), zero)) == 0.0


def test_target_round_trips_and_moves():
    t = Target(torch.tensor([1.0, -2.0]), torch.tensor([1]), 3, 0.5)
    back = Target.from_dict(t.as_dict())
    assert torch.equal(back.z, t.z) and torch.equal(back.units, t.units) and (back.label, back.prob) == (3, 0.5)
    moved = t.to("cpu")
    assert moved is not t and moved.z.device.type == "cpu" and moved.label == 3
    try:
        Target.from_dict({"z": [1.0], "units": [0], "label": 0, "prob": 1.0})
    except TypeError as e:
        assert "not tensors" in str(e)
    else:
        raise AssertionError("a target of lists was accepted")
