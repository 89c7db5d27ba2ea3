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


def test_imagenet_crop_matches_torchvision_eval_transform():
    from torchvision import transforms

    from conftest import sample
    from patchcollide.core.images import imagenet_crop

    img = sample("rocket")
    theirs = np.asarray(transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224)])(Image.fromarray(img)))
    assert np.array_equal(imagenet_crop(img, 224), theirs)
