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
    import logging

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
    out, said = fit_square(rgba[..., :3], 64, "crop", (255, 255, 255), alpha)
    assert (out[:, :20] == 255).all() and len(said) == 1 and "50% of its pixels are transparent" in said[0]
    cropped, said = fit_square(wide, 64, "crop")
    assert not (cropped[..., 2] > 128).any() and "only the centre 22% of its width is kept" in said[0]
    padded, said = fit_square(wide, 64, "pad", (0, 255, 0))
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
