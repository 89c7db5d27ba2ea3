"""models.py: the pre-activation tap (and the in-place ReLU pitfall), architectures, weights."""
from __future__ import annotations

import hashlib
import os

import pytest
import torch

from patchcollide.engine.models import ModelError, load_imagenet_state, load_tap


@pytest.fixture(scope="module")
def vgg():
    return load_tap("vgg16", "fc6", "random", seed=0)


def _x(n=2, s=64, seed=0):
    return torch.rand(n, 3, s, s, generator=torch.Generator().manual_seed(seed))


def test_inplace_relu_pitfall_is_avoided(vgg):
    """A forward hook on classifier[0] sees its output *after* the in-place ReLU ran: no
    negative values survive. The tap returns the true pre-activation, negatives included."""
    x = _x()
    seen = []
    h = vgg.model.classifier[0].register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        vgg.logits(x)
    h.remove()
    with torch.no_grad():
        z = vgg.pre(x)
        m = vgg.model
        manual = m.classifier[0](torch.flatten(m.avgpool(m.features(vgg.normalise(x))), 1))
    assert (seen[0] >= 0).all(), "the hooked tensor was overwritten by the in-place ReLU"
    assert (z < 0).float().mean() > 0.2
    assert torch.allclose(z, manual, atol=1e-5)
    assert not torch.allclose(z, seen[0])


def test_generic_module_tap_equals_explicit_head(vgg):
    generic = load_tap("vgg16", "classifier.0", "random", seed=0)  # same seed: same weights
    x = _x()
    with torch.no_grad():
        assert torch.allclose(generic.pre(x), vgg.pre(x), atol=1e-5)


@pytest.mark.parametrize("arch,layer", [("vgg16", "fc7"), ("vgg19", "fc6"), ("alexnet", "fc6"), ("alexnet", "fc7")])
def test_known_heads_and_one_pass_logits(arch, layer):
    tap = load_tap(arch, layer, "random", seed=1)
    x = _x(s=96 if arch == "alexnet" else 64)
    with torch.no_grad():
        z, logits = tap.pre_and_logits(x)
        assert z.shape == (2, 4096) and (z < 0).any()  # the head's in-place ReLU did not touch z
        assert torch.allclose(z, tap.pre(x), atol=1e-5)
        assert torch.allclose(logits, tap.logits(x), atol=1e-4)


def test_weights_file_is_loaded_and_identified(tmp_path, vgg):
    p = tmp_path / "w.pth"
    torch.save(vgg.model.state_dict(), p)
    tap = load_tap("vgg16", "fc6", str(p))
    assert tap.weights.kind == "file" and tap.weights.name == str(p.resolve())
    assert tap.weights.sha256 == hashlib.sha256(p.read_bytes()).hexdigest()  # the file's own digest
    other = tmp_path / "w2.pth"  # one value changed: another identity
    sd = vgg.model.state_dict()
    sd["classifier.0.bias"] = sd["classifier.0.bias"] + 1
    torch.save(sd, other)
    assert load_tap("vgg16", "fc6", str(other)).weights.sha256 != tap.weights.sha256
    x = _x()
    with torch.no_grad():
        assert torch.allclose(tap.pre(x), vgg.pre(x))


def test_bad_weights_are_refused(tmp_path):
    pickled = tmp_path / "obj.pth"
    import pickle

    with open(pickled, "wb") as fh:
        pickle.dump({"layer": os.getcwd}, fh)  # a function reference: refused by weights_only
    with pytest.raises(ModelError, match="not a loadable state dict"):
        load_tap("vgg16", "fc6", str(pickled))
    wrong = tmp_path / "alexnet.pth"
    torch.save(load_tap("alexnet", "fc6", "random").model.state_dict(), wrong)
    with pytest.raises(ModelError, match="does not fit vgg16"):
        load_tap("vgg16", "fc6", str(wrong))
    notdict = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], notdict)
    with pytest.raises(ModelError, match="not a state dict"):
        load_tap("vgg16", "fc6", str(notdict))
    with pytest.raises(ModelError, match="no such file"):
        load_tap("vgg16", "fc6", str(tmp_path / "missing.pth"))


def test_unknown_model_and_layer():
    with pytest.raises(ModelError, match="unknown model"):
        load_tap("vgg17", "fc6", "random")
    with pytest.raises(ModelError, match="unknown layer"):
        load_tap("vgg16", "fc9", "random")


def test_missing_imagenet_weights_say_how_to_supply_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ModelError) as e:
        load_imagenet_state("vgg16", allow_download=False)
    msg = str(e.value)
    assert "--weights PATH" in msg and str(tmp_path) in msg and "vgg16-397923af.pth" in msg


def test_tap_on_never_moves_the_callers_model():
    from patchcollide.engine.models import load_tap, tap_on

    tap = load_tap("vgg16", "fc6", "random", seed=0)
    assert tap_on(tap, torch.device("cpu")) is tap  # already there: no copy
    moved = tap_on(tap, torch.device("meta"))  # any other device: a copy goes there
    assert moved is not tap and next(moved.parameters()).device.type == "meta"
    assert all(p.device.type == "cpu" for p in tap.parameters()) and tap.mean.device.type == "cpu"


def test_the_identity_a_batch_predicts_is_the_one_the_model_reports():
    """A batch decides whether finished jobs are current by comparing identities it computes
    without building the model; models.py builds both, so they cannot drift apart."""
    from patchcollide.engine.models import model_identity, random_weights

    for seed in (0, 3):
        assert model_identity("alexnet", "fc6", random_weights(seed)) == \
            load_tap("alexnet", "fc6", "random", seed=seed).identity()
    assert random_weights(0) != random_weights(3)
