"""Image decoding, colour conversion, resize/crop and the guards against bad files.

Every image that enters patchcollide, for the store or as a query, goes through
:func:`load_rgb`, so a stored patch can be reproduced bit-exactly from its source file
and the recorded :class:`Preprocess`. Imports only ``errors.py`` of ours.
"""
from __future__ import annotations

import dataclasses
import os
import re
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import PatchcollideError, first_line

PATCH = 32  # patch side in pixels; fixed by the method (Li et al. 2019 use 32 x 32)
GRID_STRIDE = 8  # step of the query grid in pixels (25 x 25 locations at 224): collide's --grid-stride, index search's
NEIGHBOURS = 16  # stored patches per query location: collide's -k, index search's


class BadImage(PatchcollideError):
    """A file that cannot be used as an image; ``str(e)`` is the one-line reason and
    ``e.path`` the file (set by :func:`load_rgb`), so a caller can name it."""

    def __init__(self, reason: str, path: str | None = None, fix: str = "pass a readable image file (PNG, JPEG, ...)"):
        super().__init__(reason)
        self.path = path
        self.fix = fix  # what the user should do, for the one-line message


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """How a file becomes the (H, W, 3) uint8 RGB array that patches are cut from.

    resize: side length S: the shorter side is resized to S (bilinear, PIL) and the centre
        S x S is cropped, the model's input geometry; None keeps the native size.
    max_pixels: decompression-bomb guard on the *declared* size, checked before decoding
        (PIL's own default limit, about 89 megapixels).
    min_side: images whose native shorter side is below this are skipped: upscaling them
        would fabricate patches that exist in no real photo.
    """

    resize: int | None = 224
    max_pixels: int = 89_478_485
    min_side: int = PATCH

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _to_rgb(img: Image.Image) -> np.ndarray:
    """Convert any supported PIL mode to (H, W, 3) uint8 RGB.

    16-bit and 32-bit integer greyscale are scaled to 8 bits (x * 255 / 65535, rounded),
    not clipped as PIL's own convert would. Alpha is dropped, as torchvision's loader does.
    CMYK, palette, 1-bit, greyscale and LA go through PIL's conversion.
    """
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(img, dtype=np.float64)
        if a.min() < 0 or a.max() > 65535:
            raise BadImage(f"integer image with values outside 0..65535 (mode {mode})")
        g = np.rint(a * (255.0 / 65535.0)).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    if mode == "F":
        raise BadImage("floating-point image (mode F) has no defined 8-bit range; convert it to 8 or 16 bits")
    if mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8).copy()


def _shorter_side_to(w: int, h: int, side: int) -> tuple[int, int]:
    """(width, height) of a w x h image whose shorter side is resized to ``side``."""
    return (side, int(side * h / w)) if w <= h else (int(side * w / h), side)


def resize_crop(img: Image.Image, size: int, crop: int | None = None) -> Image.Image:
    """Shorter side to ``size`` (bilinear), then the centre ``crop`` x ``crop`` (default ``size``).

    The same arithmetic as torchvision's ``Resize(size)`` + ``CenterCrop(crop)`` on PIL.
    """
    crop = size if crop is None else crop
    w, h = img.size
    nw, nh = _shorter_side_to(w, h, size)
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BILINEAR)
    top = int(round((nh - crop) / 2.0))
    left = int(round((nw - crop) / 2.0))
    return img.crop((left, top, left + crop, top + crop))


def imagenet_crop(img: np.ndarray, size: int = 224) -> np.ndarray:
    """torchvision's ImageNet evaluation geometry on an (H, W, 3) uint8 image: shorter side to
    int(size * 256 / 224) (Resize(256) for 224), then the centre size x size (CenterCrop), in one
    crop: two centre crops round apart where (int(size * 256 / 224) - size) / 2 is odd (128: 146)."""
    im = resize_crop(Image.fromarray(img), int(size * 256 / 224), size)
    return np.asarray(im, dtype=np.uint8).copy()


def frame_count(path: str | os.PathLike) -> int:
    """How many frames an image file holds (an animated GIF, PNG or WebP: more than 1; the
    first is the one read)."""
    try:
        with Image.open(path) as img:
            return int(getattr(img, "n_frames", 1))
    except (OSError, ValueError, SyntaxError):
        return 1


def transparency(path: str | os.PathLike) -> np.ndarray | None:
    """The (H, W) alpha in [0, 1] of an image that has transparent pixels (RGBA, LA, palette with
    a transparent entry), in the orientation ``load_rgb`` gives; None when it is fully opaque."""
    with Image.open(path) as img:
        if img.mode not in ("RGBA", "LA", "PA", "La", "RGBa") and "transparency" not in img.info:
            return None
        a = np.asarray(img.convert("RGBA").getchannel("A"), dtype=np.float32) / 255.0
    return a if (a < 1).any() else None


def fit_square(img: np.ndarray, size: int, fit: str, background=(255, 255, 255),
               alpha: np.ndarray | None = None) -> tuple[np.ndarray, list[str], str]:
    """An (H, W, 3) uint8 image as (size, size, 3) uint8; what was changed in what it shows, in
    words (one warning line each); and how it was brought to size, in words (report.json).
    Transparent pixels (``alpha``, straight, (H, W) in [0, 1]) are composited on ``background``
    first. fit:

    "as given": an image already size x size, untouched (ValueError for any other);
    "imagenet": torchvision's ImageNet evaluation transform (``imagenet_crop``): shorter side to
        int(size * 256 / 224), then the centre size x size; it zooms a size x size image too;
    "crop": shorter side to size, then the centre size x size (``resize_crop``: torchvision's
        Resize(size) + CenterCrop(size)): no zoom, a size x size image is untouched;
    "pad": the whole image centred on a square of ``background``, resized to size."""
    if fit not in ("as given", "imagenet", "crop", "pad"):  # "auto" is one of these, picked by the caller
        raise ValueError(f"fit must be as given, imagenet, crop or pad, got {fit!r}")
    h, w = img.shape[:2]
    if fit == "as given" and (h, w) != (size, size):
        raise ValueError(f"fit 'as given' takes a {size}x{size} image, got {w}x{h}")
    said = []
    bg = np.asarray(background, dtype=np.float32)
    rgb = " ".join(str(int(c)) for c in background)
    composited = ""
    if alpha is not None:
        a = alpha[..., None]
        img = np.rint(img.astype(np.float32) * a + bg * (1 - a)).clip(0, 255).astype(np.uint8)
        clear, part = float((alpha == 0).mean()), float(((alpha > 0) & (alpha < 1)).mean())
        how = [f"{100 * v:.0f}% of its pixels are {w}" for v, w in ((clear, "transparent"),
                                                                    (part, "semi-transparent")) if v > 0]
        said.append(f"{' and '.join(how)}: composited on R G B {rgb} (--background)")
        composited = f"; transparent pixels composited on R G B {rgb}"
    if fit == "as given":
        return img, said, f"as given ({w}x{h}){composited}"
    if fit == "pad":
        side = max(h, w)
        sq = np.empty((side, side, 3), dtype=np.uint8)
        sq[:] = bg.astype(np.uint8)
        top, left = (side - h) // 2, (side - w) // 2
        sq[top:top + h, left:left + w] = img
        steps = []
        if h != w:
            said.append(f"{w}x{h} is not square: padded to {side}x{side} with --background")
            steps.append(f"{w}x{h} padded to {side}x{side} with R G B {rgb}")
        if side != size:
            sq = np.asarray(Image.fromarray(sq).resize((size, size), Image.BILINEAR), dtype=np.uint8).copy()
            steps.append(f"{side}x{side} resized to {size}x{size} (bilinear)")
        return sq, said, f"pad: {', '.join(steps) or f'unchanged ({w}x{h})'}{composited}"
    side = int(size * 256 / 224) if fit == "imagenet" else size
    kept = min(h, w) * size / side / max(h, w)  # the share of the longer side the centre square keeps
    if kept < 0.8:
        pct = f"{100 * kept:.0f}%" if kept >= 0.01 else f"{100 * kept:.2g}%"  # a 20000x40 strip keeps 0.2%
        said.append(f"{w}x{h} is not square: only the centre {pct} of its "
                    f"{'width' if w > h else 'height'} is kept (fit {fit}); --fit pad keeps the whole image")
    nw, nh = _shorter_side_to(w, h, side)
    if fit == "imagenet":
        how = f"imagenet: {w}x{h} resized to {nw}x{nh} (shorter side to {side}, bilinear), centre {size}x{size}"
        return imagenet_crop(img, size), said, how + composited
    if (nw, nh) == (w, h) == (size, size):
        how = f"crop: unchanged ({w}x{h})"
    elif (nw, nh) == (w, h):
        how = f"crop: centre {size}x{size} of {w}x{h}"
    else:
        how = f"crop: {w}x{h} resized to {nw}x{nh} (shorter side to {size}, bilinear), centre {size}x{size}"
    out = np.asarray(resize_crop(Image.fromarray(img), size), dtype=np.uint8).copy()
    return out, said, how + composited


def load_rgb(path: str | os.PathLike, pre: Preprocess = Preprocess()) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode ``path`` into ((H, W, 3) uint8 RGB after preprocessing, native (H, W)).

    Raises BadImage with a one-line reason for empty, truncated, non-image, too small,
    too large (decompression bomb) and unsupported files; its ``path`` is ``path``.
    """
    path = os.fspath(path)
    try:
        return _load_rgb(path, pre)
    except BadImage as e:
        if e.path is None:
            e.path = path
        raise


def file_problem(path: str) -> str | None:
    """Why ``path`` cannot be an image file, in the same words wherever an input is read (the
    CLI, a job file, a store's folders); None for a regular file with bytes in it."""
    import stat

    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "does not exist"
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if stat.S_ISDIR(st.st_mode):
        return "is a folder, not an image file"
    if not stat.S_ISREG(st.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "a device"
        return f"is not a regular file ({kind})"
    if st.st_size == 0:
        return "is an empty file (0 bytes)"
    return None


def _load_rgb(path: str, pre: Preprocess) -> tuple[np.ndarray, tuple[int, int]]:
    if (why := file_problem(path)) is not None:
        raise BadImage(why)
    with warnings.catch_warnings():
        # We apply our own pixel limit below; silence PIL's warning so it is not printed twice.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as img:
                w, h = img.size
                if w * h > pre.max_pixels:
                    raise BadImage(
                        f"declared size {w}x{h} exceeds the decompression-bomb guard of {pre.max_pixels} pixels"
                    )
                if min(w, h) < pre.min_side:
                    raise BadImage(f"image {w}x{h} is smaller than a {pre.min_side}-pixel patch",
                                   fix=f"give an image at least {pre.min_side} x {pre.min_side} pixels")
                img.load()  # decode now, so a truncated file fails here
                if pre.resize is not None:
                    # Convert first: resizing palette or 1-bit images is not meaningful.
                    rgb = Image.fromarray(_to_rgb(img))
                    rgb = resize_crop(rgb, pre.resize)
                    arr = np.asarray(rgb, dtype=np.uint8).copy()
                else:
                    arr = _to_rgb(img)
        except BadImage:
            raise
        except UnidentifiedImageError:
            raise BadImage("not an image (no decoder recognises it)") from None
        except Image.DecompressionBombError as e:  # PIL's own limit (2x MAX_IMAGE_PIXELS) comes before ours
            n = re.search(r"\((\d+) pixels\)", str(e))
            limit = min(pre.max_pixels, 2 * Image.MAX_IMAGE_PIXELS)
            raise BadImage(f"declared size of {n.group(1) if n else 'too many'} pixels exceeds the decompression-bomb "
                           f"guard of {limit} pixels") from None
        except (OSError, SyntaxError, ValueError) as e:
            raise BadImage(f"cannot decode ({first_line(e)})") from None
    return arr, (h, w)


def patch_positions(size: int, stride: int, patch: int = PATCH) -> np.ndarray:
    """Top-left coordinates along one axis: every ``stride`` pixels from 0, plus the last
    position ``size - patch`` if the stride misses it, so the patches cover the border.
    (1-D int array; empty when size < patch.)"""
    if size < patch:
        return np.zeros(0, dtype=np.int64)
    pos = list(range(0, size - patch + 1, stride))
    if pos[-1] != size - patch:
        pos.append(size - patch)
    return np.asarray(pos, dtype=np.int64)


def grid_positions(shape: tuple[int, int], stride: int, patch: int = PATCH, cover: bool = False) -> np.ndarray:
    """All (y, x) top-left corners of a grid on an (H, W) image, row-major, (L, 2) int64.

    cover=False: plain sliding window (the store's extraction grid).
    cover=True: add the last row/column so the patches tile the whole image (query grid);
    on 224 x 224 at stride 8 both give 25 x 25 = 625 locations.
    """
    h, w = shape
    if cover:
        ys, xs = patch_positions(h, stride, patch), patch_positions(w, stride, patch)
    else:
        ys = np.arange(0, h - patch + 1, stride, dtype=np.int64) if h >= patch else np.zeros(0, np.int64)
        xs = np.arange(0, w - patch + 1, stride, dtype=np.int64) if w >= patch else np.zeros(0, np.int64)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([yy.ravel(), xx.ravel()], axis=1)


def cut_patches(img: np.ndarray, yx: np.ndarray, patch: int = PATCH) -> np.ndarray:
    """Cut patches at top-left corners ``yx`` (L, 2) from an (H, W, 3) image: (L, patch, patch, 3), same dtype."""
    win = np.lib.stride_tricks.sliding_window_view(img, (patch, patch), axis=(0, 1))  # (H', W', 3, p, p)
    out = win[yx[:, 0], yx[:, 1]]  # (L, 3, p, p)
    return np.ascontiguousarray(out.transpose(0, 2, 3, 1))


def sample_photo(name: str) -> np.ndarray:
    """A scikit-image sample photo by name, as stored in the package (uint8, grey, RGB or RGBA)."""
    from skimage import data

    img = getattr(data, name)()
    return img[0] if isinstance(img, tuple) else img
