"""images.py: conversion of every supported mode, guards, and grid geometry."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from patchcollide.core.images import BadImage, Preprocess, cut_patches, grid_positions, load_rgb, resize_crop


def test_resize_crop_matches_torchvision(tmp_path):
    from torchvision import transforms

    from conftest import sample

    img = Image.fromarray(sample("coffee"))
    ours = np.asarray(resize_crop(img, 224))
    theirs = np.asarray(transforms.Compose([transforms.Resize(224), transforms.CenterCrop(224)])(img))
    assert ours.shape == (224, 224, 3)
    # torchvision's Resize on PIL is PIL's bilinear resize (antialiased): identical bytes
    assert np.array_equal(ours, theirs)


def test_grid_covers_image_and_gives_625_on_224():
    yx = grid_positions((224, 224), 8, cover=True)
    assert len(yx) == 625
    assert yx[:, 0].max() == 224 - 32 and yx[:, 1].max() == 224 - 32
    # covering adds the last row/column when the stride misses it
    yx = grid_positions((100, 70), 16, cover=True)
    assert yx[:, 0].max() == 68 and yx[:, 1].max() == 38
    assert grid_positions((100, 70), 16, cover=False)[:, 0].max() == 64


def test_cut_patches_are_the_pixels_at_their_corners():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (80, 90, 3), dtype=np.uint8)
    yx = grid_positions(img.shape[:2], 7)
    p = cut_patches(img, yx)
    for (y, x), patch in zip(yx, p):
        assert np.array_equal(patch, img[y : y + 32, x : x + 32])


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    a = np.array([[0, 32768, 65535] * 20] * 40, dtype=np.uint16)
    p = tmp_path / "g16.png"
    Image.fromarray(a).save(p)
    rgb, native = load_rgb(p, Preprocess(resize=None))
    assert native == (40, 60) and rgb.dtype == np.uint8 and rgb.shape == (40, 60, 3)
    assert rgb[0, :3, 0].tolist() == [0, 128, 255]


def test_rgba_drops_alpha_like_torchvision(tmp_path):
    a = np.zeros((40, 40, 4), np.uint8)
    a[..., 0], a[..., 3] = 200, 0  # fully transparent red
    p = tmp_path / "rgba.png"
    Image.fromarray(a, "RGBA").save(p)
    rgb, _ = load_rgb(p, Preprocess(resize=None))
    assert rgb[0, 0].tolist() == [200, 0, 0]


def test_bomb_guard_checks_declared_size_before_decoding(tmp_path):
    p = tmp_path / "big.png"
    Image.new("L", (3000, 3000)).save(p)
    with pytest.raises(BadImage, match="decompression-bomb"):
        load_rgb(p, Preprocess(max_pixels=1_000_000))


@pytest.mark.parametrize("content,reason", [(b"", "empty file"), (b"hello, not an image", "not an image")])
def test_unreadable_bytes(tmp_path, content, reason):
    p = tmp_path / "x.jpg"
    p.write_bytes(content)
    with pytest.raises(BadImage, match=reason):
        load_rgb(p)


@pytest.mark.parametrize("size", [224, 128, 112])
@pytest.mark.parametrize("name", ["rocket", "chelsea", "coffee"])
def test_imagenet_crop_matches_torchvision_eval_transform(name, size):
    """Also at 128 (the demo's size), where a centre crop to 146 and then one to 128 rounded one
    pixel off torchvision's single crop on chelsea (451 x 300) and coffee (600 x 400)."""
    from torchvision import transforms

    from conftest import sample
    from patchcollide.core.images import imagenet_crop

    img = sample(name)
    tv = transforms.Compose([transforms.Resize(int(size * 256 / 224)), transforms.CenterCrop(size)])
    assert np.array_equal(imagenet_crop(img, size), np.asarray(tv(Image.fromarray(img))))


def test_transparency_and_a_wide_image_are_said_and_handled_as_the_options_ask(tmp_path):
    """RGBA becomes black no more: it is composited on --background; a wide image is cut to its
    centre only with a warning, and --fit pad keeps all of it. Through a real collide run."""
    from click.testing import CliRunner

    from patchcollide.cli import cli
    from patchcollide.core.images import fit_square, transparency

    rgba = np.zeros((64, 64, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:, 32:, 3] = 255  # left half fully transparent (its colour channels say red)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "logo.png")
    wide = np.zeros((40, 160, 3), dtype=np.uint8)
    wide[:, :40] = (0, 0, 255)  # a blue left quarter: cut away by the crop, kept by pad
    Image.fromarray(wide).save(tmp_path / "wide.png")
    alpha = transparency(tmp_path / "logo.png")
    assert alpha is not None and alpha[:, :32].max() == 0 and alpha[:, 32:].min() == 1
    assert transparency(tmp_path / "wide.png") is None
    out, said, how = fit_square(rgba[..., :3], 64, "as given", (255, 255, 255), alpha)
    assert (out[:, :20] == 255).all() and len(said) == 1 and "50% of its pixels are transparent" in said[0]
    assert how == "as given (64x64); transparent pixels composited on R G B 255 255 255"
    cropped, said, _ = fit_square(wide, 64, "imagenet")
    assert not (cropped[..., 2] > 128).any() and "only the centre 22% of its width is kept (fit imagenet)" in said[0]
    cropped, said, _ = fit_square(wide, 64, "crop")  # no zoom: a quarter of the width, not 22%
    assert not (cropped[..., 2] > 128).any() and "only the centre 25% of its width is kept (fit crop)" in said[0]
    padded, said, _ = fit_square(wide, 64, "pad", (0, 255, 0))
    assert (padded[..., 2] > 128).any() and (padded[0, 32] == (0, 255, 0)).all() and "padded to 160x160" in said[0]
    # the CLI: one warning line per change, naming the input, and the run's source is what it said
    args = ["collide", "--target", str(tmp_path / "wide.png"), "--mode", "pixel", "--weights", "random",
            "--size", "64", "--steps", "1", "--min-steps", "0", "--vertices", "1", "--device", "cpu"]
    r = CliRunner().invoke(cli, [*args, "--source", str(tmp_path / "logo.png"), "--out", str(tmp_path / "a"),
                                 "--background", "0", "0", "255"])
    assert r.exit_code == 0, r.output
    warned = [ln for ln in r.stderr.splitlines() if ln.startswith("warning: --")]
    assert warned[0].startswith(f"warning: --source {tmp_path / 'logo.png'}: 50% of its pixels are transparent")
    assert warned[1].startswith(f"warning: --target {tmp_path / 'wide.png'}: 160x40 is not square"), warned
    src = np.asarray(Image.open(tmp_path / "a" / "source.png").convert("RGB"))
    assert (src[:, :20] == (0, 0, 255)).all()  # composited on the --background, not black
    r = CliRunner().invoke(cli, [*args, "--source", str(tmp_path / "wide.png"), "--out", str(tmp_path / "b"),
                                 "--fit", "pad"])
    assert r.exit_code == 0, r.output
    assert np.asarray(Image.open(tmp_path / "b" / "source.png").convert("RGB"))[..., 2].max() > 128
    assert "only the centre" not in r.stderr


def _digit(i: int, side: int) -> np.ndarray:
    """scikit-learn's bundled 8 x 8 digit ``i`` as (side, side, 3) uint8 grey, each pixel a
    side/8 square (side a multiple of 8)."""
    from sklearn.datasets import load_digits

    g = np.rint(load_digits().images[i] * 255 / 16).astype(np.uint8)
    g = np.kron(g, np.ones((side // 8, side // 8), dtype=np.uint8))
    return np.repeat(g[..., None], 3, axis=2)


def _torchvision(path, resize: int, crop: int) -> np.ndarray:
    from torchvision import transforms

    with Image.open(path) as im:
        return np.array(transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(crop)])(im.convert("RGB")))


def test_a_png_at_the_size_reaches_the_net_as_given_and_a_users_weights_get_no_zoom(tmp_path, monkeypatch):
    """Issue 26, inputs as given: a 112 x 112 digit reaches the digits world's net bit for bit (the
    run's source.png and the tensor the tap receives, the file / 255), where it used to be zoomed
    to 128 and cut; a 150 x 120 target with a user's --weights PATH is brought to size with no zoom
    (torchvision's Resize(112) + CenterCrop(112)); report.json says what each got."""
    import json

    import torch
    from click.testing import CliRunner

    import patchcollide.runs.run as run_mod
    from patchcollide.cli import cli
    from patchcollide.models.digits import DigitVGG

    Image.fromarray(_digit(0, 112)).save(tmp_path / "source.png")
    wide = np.zeros((120, 150, 3), dtype=np.uint8)
    wide[:, 15:135] = _digit(7, 120)
    wide[:, :15] = 90  # grey bands the zoom would cut and the crop keeps a part of
    Image.fromarray(wide).save(tmp_path / "target.png")
    torch.manual_seed(0)
    torch.save(DigitVGG().state_dict(), tmp_path / "w.pt")  # a user's weights: nothing says how they were trained
    seen = []
    real = run_mod.load_tap

    def recording(*a, **kw):  # every image the net is given, before its normalisation
        tap = real(*a, **kw)
        normalise = tap.normalise
        tap.normalise = lambda x: (seen.append(x.detach().clone()), normalise(x))[1]
        return tap

    monkeypatch.setattr(run_mod, "load_tap", recording)
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, ["collide", "--source", str(tmp_path / "source.png"), "--target",
                                 str(tmp_path / "target.png"), "--out", str(out), "--model", "digits_vgg",
                                 "--weights", str(tmp_path / "w.pt"), "--size", "112", "--mode", "pixel",
                                 "--steps", "1", "--min-steps", "0", "--vertices", "1", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    given = np.array(Image.open(tmp_path / "source.png").convert("RGB"))
    assert np.array_equal(np.asarray(Image.open(out / "source.png").convert("RGB")), given)
    as_tensor = torch.from_numpy(given).permute(2, 0, 1)[None].float() / 255
    assert any(x.shape[-2:] == (112, 112) and torch.equal(x[0], as_tensor[0]) for x in seen)
    no_zoom = _torchvision(tmp_path / "target.png", 112, 112)
    assert not np.array_equal(no_zoom, _torchvision(tmp_path / "target.png", 128, 112))
    assert np.array_equal(np.asarray(Image.open(out / "target.png").convert("RGB")), no_zoom)
    assert torch.equal(seen[0][0], torch.from_numpy(no_zoom).permute(2, 0, 1).float() / 255)  # the target's read
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["fit"] == "auto" and report["resolved"]["fit"] == "crop"
    assert report["inputs"]["transform"] == {
        "source": {"fit": "as given", "from": "112x112", "how": "as given (112x112)"},
        "target": {"fit": "crop", "from": "150x120",
                   "how": "crop: 150x120 resized to 140x112 (shorter side to 112, bilinear), centre 112x112"}}


def test_auto_gives_torchvisions_imagenet_transform_to_imagenet_weights_alone(tmp_path):
    """fit auto on a non-square photo: torchvision's Resize(int(S * 256 / 224)) + CenterCrop(S),
    pixel for pixel, for torchvision's ImageNet weights (and the random weights and --weights auto
    of a torchvision classifier, which stand for them); the centre square with no zoom for a
    user's weights and the digits world's nets. An explicit fit does as it says whatever the
    weights; crop and pad leave an S x S image as it is, imagenet zooms it as torchvision does."""
    from conftest import sample
    from patchcollide.engine.config import CollideConfig
    from patchcollide.models.build import input_fit
    from patchcollide.runs.inputs import fit_input

    photo = tmp_path / "chelsea.png"
    Image.fromarray(sample("chelsea")).save(photo)  # 451 x 300
    for arch, weights in [("vgg16", "imagenet"), ("vgg16", "auto"), ("vgg16", "random"), ("alexnet", "imagenet")]:
        assert input_fit(arch, weights) == "imagenet", (arch, weights)
    for arch, weights in [("vgg16", str(tmp_path / "mine.pt")), ("digits_vgg", "random"),
                          ("digits_vgg", str(tmp_path / "mine.pt")), ("digits_lenet5", "random")]:
        assert input_fit(arch, weights) == "crop", (arch, weights)
    for size in (128, 224):
        config = CollideConfig(size=size)
        imagenet = _torchvision(photo, int(size * 256 / 224), size)
        got, how = fit_input(str(photo), config, "--target", input_fit("vgg16", "imagenet"))
        assert np.array_equal(got, imagenet) and how["fit"] == "imagenet", how
        got, how = fit_input(str(photo), config, "--target", input_fit("vgg16", str(tmp_path / "mine.pt")))
        assert np.array_equal(got, _torchvision(photo, size, size)) and not np.array_equal(got, imagenet)
        assert how == {"fit": "crop", "from": "451x300",
                       "how": f"crop: 451x300 resized to {int(size * 451 / 300)}x{size} (shorter side to {size}, "
                              f"bilinear), centre {size}x{size}"}
        got, how = fit_input(str(photo), CollideConfig(size=size, fit="imagenet"), "--target", "crop")
        assert np.array_equal(got, imagenet) and how["fit"] == "imagenet"
    square = tmp_path / "square.png"
    Image.fromarray(sample("chelsea")[:128, :128]).save(square)
    given = np.asarray(Image.open(square))
    for fit in ("auto", "crop", "pad"):
        got, how = fit_input(str(square), CollideConfig(size=128, fit=fit), "--source", "imagenet")
        assert np.array_equal(got, given) and how["from"] == "128x128", (fit, how)
    got, how = fit_input(str(square), CollideConfig(size=128, fit="imagenet"), "--source", "crop")
    assert np.array_equal(got, _torchvision(square, 146, 128)) and not np.array_equal(got, given)
