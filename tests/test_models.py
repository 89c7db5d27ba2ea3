"""models/build.py and models/weights.py: the pre-activation tap (and the in-place ReLU pitfall), architectures, weights."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest
import torch

from patchcollide.models.build import load_tap
from patchcollide.models.weights import ModelError, load_imagenet_state


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
    assert not tap.weights.pretrained and tap.weights.label == "user weights"  # nothing says what it was trained on
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
    with pytest.raises(ModelError, match="not a torch state dict"):
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


def test_one_weights_rule_in_every_command_and_auto_falls_back_once(tmp_path, monkeypatch, caplog):
    """--weights has one default (auto) and one rule, stated in every command's --help; offline,
    auto falls back to random weights with one warning, and imagenet is an error naming
    --weights random."""
    import logging

    from click.testing import CliRunner

    from patchcollide.cli import cli
    from patchcollide.models.names import WEIGHTS_RULE
    from patchcollide.models.weights import resolve_weights

    for cmd in (["collide"], ["batch"], ["demo"], ["nullspace"], ["nullity"]):
        out = CliRunner().invoke(cli, [*cmd, "--help"], terminal_width=400)
        assert out.exit_code == 0, out.output
        text = " ".join(out.output.split())
        assert "[default: auto]" in text and " ".join(WEIGHTS_RULE.split())[1:] in text, cmd
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty torch cache, no download
    with caplog.at_level(logging.WARNING, logger="patchcollide.models.weights"):
        assert resolve_weights("auto", "vgg16", allow_download=False) == "random"
        assert resolve_weights("random", "vgg16", allow_download=False) == "random"
        assert resolve_weights("auto", "digits_vgg", allow_download=False) == "random"
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 2 and all(m.startswith("--weights auto: ") and "RANDOM weights" in m for m in warned)
    with pytest.raises(ModelError, match="--weights random"):
        load_tap("vgg16", "fc6", "imagenet", allow_download=False)


def test_cached_weights_are_taken_only_when_their_sha256_matches_their_name(tmp_path, monkeypatch, vgg):
    from types import SimpleNamespace

    from patchcollide.models import weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    planted = cache / "vgg16-397923af.pth"  # torchvision's own name, random weights inside
    torch.save(vgg.model.state_dict(), planted)
    sha = hashlib.sha256(planted.read_bytes()).hexdigest()
    with pytest.raises(ModelError) as e:
        load_tap("vgg16", "fc6", "imagenet", allow_download=False)
    assert str(e.value) == (f"{planted}: its sha256 ({sha[:12]}...) does not start with 397923af, as torchvision's "
                            "file name says, so it is not torchvision's vgg16 weights; delete it to download them "
                            "again, or pass your own file with --weights PATH")
    # a file whose name carries its own prefix is taken, and recorded as torchvision's
    named = cache / f"vgg16-{sha[:8]}.pth"
    planted.rename(named)
    monkeypatch.setattr(weights, "imagenet_weights",
                        lambda arch: SimpleNamespace(url=f"https://x/{named.name}", name="IMAGENET1K_V1"))
    monkeypatch.setitem(weights.TWIN_WEIGHTS, "vgg16", ("VGG16_Weights.IMAGENET1K_V1", f"https://x/{named.name}"))
    tap = load_tap("vgg16", "fc6", "imagenet", allow_download=False)
    assert tap.weights.pretrained and tap.weights.sha256 == sha and tap.weights.label == "torchvision IMAGENET1K_V1"


def test_tap_on_never_moves_the_callers_model():
    from patchcollide.models.build import load_tap, tap_on

    tap = load_tap("vgg16", "fc6", "random", seed=0)
    assert tap_on(tap, torch.device("cpu")) is tap  # already there: no copy
    moved = tap_on(tap, torch.device("meta"))  # any other device: a copy goes there
    assert moved is not tap and next(moved.parameters()).device.type == "meta"
    assert all(p.device.type == "cpu" for p in tap.parameters()) and tap.mean.device.type == "cpu"


def test_the_identity_a_batch_predicts_is_the_one_the_model_reports():
    """A batch decides whether finished jobs are current by comparing identities it computes
    without building the model; models/build.py builds both, so they cannot drift apart."""
    from patchcollide.models.build import model_identity
    from patchcollide.models.weights import random_weights

    for seed in (0, 3):
        assert model_identity("alexnet", "fc6", random_weights(seed)) == \
            load_tap("alexnet", "fc6", "random", seed=seed).identity()
    assert random_weights(0) != random_weights(3)


def test_pretrained_runs_name_the_class_and_warn_once_at_another_size(tmp_path, monkeypatch, caplog, query_image):
    """torchvision's weights (here a planted file whose name carries its own sha256 prefix, as
    torchvision's do) give class names in report.json and one warning at a size other than 224."""
    import logging
    from types import SimpleNamespace

    from patchcollide.engine.config import CollideConfig
    from patchcollide.models import weights
    from patchcollide.runs import run as runs

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    planted = cache / "alexnet.pth"
    torch.save(load_tap("alexnet", "fc6", "random").model.state_dict(), planted)
    sha = hashlib.sha256(planted.read_bytes()).hexdigest()
    named = cache / f"alexnet-{sha[:8]}.pth"
    planted.rename(named)
    names = [f"class-{i}" for i in range(1000)]
    fake = lambda arch: SimpleNamespace(url=f"https://x/{named.name}", name="IMAGENET1K_V1",  # noqa: E731
                                        meta={"categories": names})
    monkeypatch.setattr(weights, "imagenet_weights", fake)
    monkeypatch.setattr(runs, "imagenet_weights", fake)  # the run's own name for it
    monkeypatch.setattr(runs, "_size_warned", set())
    cfg = CollideConfig(mode="pixel", vertices=1, steps=2, min_steps=0, size=64, device="cpu")
    with caplog.at_level(logging.WARNING, logger="patchcollide.runs.run"):
        for out in ("a", "b"):
            runs.run_collide(query_image, query_image, str(tmp_path / out), cfg, arch="alexnet", weights="imagenet")
    warned = [r.getMessage() for r in caplog.records if "trained at 224 x 224" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("--size 64: alexnet's ImageNet weights"), warned
    rep = runs.run_sample(str(tmp_path / "a"), samples=4, device="cpu")
    poly = rep["polytope"]
    assert poly["target_class_name"] == names[poly["target_class"]]
    runs.run_collide(query_image, query_image, str(tmp_path / "c"), cfg, arch="alexnet", weights="random")
    assert runs.run_sample(str(tmp_path / "c"), samples=4, device="cpu")["polytope"]["target_class_name"] is None


@pytest.mark.parametrize("arch", ["vgg16", "vgg19"])
def test_the_vgg_twin_is_torchvisions_vgg_bit_for_bit(arch):
    """The VGG built without torchvision has torchvision's modules, names and, for a seed,
    exactly its random weights (so a run's random(seed) weights did not change); its file
    table names torchvision's own ImageNet file."""
    import torchvision.models as tvm

    from patchcollide.models.weights import imagenet_source, imagenet_weights
    from patchcollide.models.vgg import TWINS

    for seed in (0, 7):
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            ours = TWINS[arch]()
            after_ours = torch.rand(3)  # the generator ends where torchvision's leaves it too
            torch.default_generator.manual_seed(seed)
            theirs = tvm.get_model_builder(arch)(weights=None)
            after_theirs = torch.rand(3)
        a, b = ours.state_dict(), theirs.state_dict()
        assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a), seed
        assert torch.equal(after_ours, after_theirs)
        assert [type(m).__name__ for m in ours.modules()][1:] == [type(m).__name__ for m in theirs.modules()][1:]
    x = torch.rand(1, 3, 64, 64)
    ours.eval(), theirs.eval()
    assert torch.equal(ours(x), theirs(x))
    w = imagenet_weights(arch)
    assert imagenet_source(arch) == (str(w), w.url)


def test_a_random_vgg16_run_starts_without_importing_torchvision(tmp_path):
    code = ("import sys; from patchcollide.models.build import load_tap; t = load_tap('vgg16', 'fc6', 'random'); "
            "print(sorted(m for m in ('torchvision', 'torch._dynamo') if m in sys.modules), type(t.model).__name__)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={**os.environ, "TORCH_HOME": str(tmp_path)})
    assert r.stdout.split() == ["[]", "ImageNetVGG"], r.stdout + r.stderr
