"""The polytope's extent: vertices that differ where a person sees it, not in pixel noise."""
import numpy as np

from patchcollide.engine.polytope import block_view, extent


def test_block_view_is_the_block_means():
    x = np.random.default_rng(0).integers(0, 256, (2, 112, 112, 3)).astype(np.uint8)
    means = x.reshape(2, 7, 16, 7, 16, 3).astype(np.float64).mean((2, 4)).reshape(2, -1)
    assert np.allclose(block_view(x), means)
    assert block_view(np.zeros((1, 30, 45, 3))).shape == (1, 7 * 7 * 3)  # uneven sides: near-equal blocks


def test_noise_has_no_extent_but_a_moved_region_has():
    rng = np.random.default_rng(1)
    source = np.zeros((112, 112, 3), np.uint8)
    target = source.copy()
    target[16:96, 48:64] = 255  # a stroke
    base = source.astype(np.int16) + 40
    noisy = np.stack([np.clip(base + rng.integers(-40, 41, base.shape), 0, 255) for _ in range(3)]).astype(np.uint8)
    e = extent(noisy, source, target)
    assert e["extent"] < 0.05  # per-pixel noise cancels in the block means (the target is 0.1)
    assert np.linalg.norm(noisy[0].astype(float) - noisy[1].astype(float)) > 2000  # though the pixels differ a lot
    regions = np.stack([base] * 3).astype(np.uint8)
    regions[1, :32, :32] = 255  # vertex 1 changes the top left, vertex 2 the bottom right
    regions[2, -32:, -32:] = 255
    e = extent(regions, source, target)
    assert e["extent"] > 0.3 and len(e["pairs_block_l2"]) == 3
    assert extent(regions[:1], source, target)["extent"] == 0.0  # one vertex: a point


def test_the_distinct_terms_view_is_the_extents_view():
    import torch

    from patchcollide.engine.terms import block_means

    x = np.random.default_rng(2).integers(0, 256, (3, 100, 128, 3)).astype(np.uint8)  # uneven blocks on both axes
    t = torch.from_numpy(x).permute(0, 3, 1, 2).double() / 255
    assert np.allclose(block_means(t).numpy(), block_view(x))


def test_the_smoothed_block_view_is_the_block_view_of_the_gaussian_blurred_images():
    """``block_means(x, sigma=s)`` folds the blur into its averaging matrices: the same as a
    separable Gaussian convolution (zero beyond the border) followed by the plain view."""
    import torch

    from patchcollide.engine.terms import block_means

    x = torch.from_numpy(np.random.default_rng(3).random((2, 1, 100, 128)))
    sigma = 4.0
    r = int(np.ceil(3 * sigma))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=x.dtype) / sigma) ** 2)
    k = k / k.sum()
    blurred = torch.nn.functional.conv2d(x, k.view(1, 1, 1, -1), padding=(0, r))
    blurred = torch.nn.functional.conv2d(blurred, k.view(1, 1, -1, 1), padding=(r, 0))
    assert torch.allclose(block_means(x, sigma=sigma), block_means(blurred), atol=1e-10)
    assert not torch.allclose(block_means(x, sigma=sigma), block_means(x), atol=1e-3)  # the blur does something
