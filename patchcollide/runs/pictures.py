"""Pictures a person looks at, as PNG files: the neighbour mosaic of an index search, a run's
vertex images (8-bit, as saved and read back), the indicator boxes, the contact sheet and the
loss plot. The HTML pages that show them are report.py's."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw

from ..core import files
from ..core.images import PATCH


def neighbour_mosaic(query_image: np.ndarray, query_yx: np.ndarray, neighbours: np.ndarray, distances: np.ndarray,
                     rows: int = 12, cols: int = 8, scale: int = 2) -> Image.Image:
    """Left: the query image with the chosen locations boxed. Right: one row per chosen
    location: the query patch, a gap, then its ``cols`` nearest stored patches, nearest first,
    with the L2 distance under each.

    query_image (H, W, 3) uint8; query_yx (L, 2); neighbours (L, k, 32, 32, 3) uint8;
    distances (L, k). Rows are spread evenly over the L locations.
    """
    L, k = neighbours.shape[:2]
    rows, cols = min(rows, L), min(cols, k)
    pick = np.unique(np.linspace(0, L - 1, rows).round().astype(int))
    cell, label_h, gap = PATCH * scale, 12, 6
    row_h = cell + label_h
    right_w = cell + gap * 2 + cols * (cell + 2)
    h_img, w_img = query_image.shape[:2]
    left_scale = max(1, (len(pick) * row_h) // max(h_img, 1))
    left = Image.fromarray(query_image).resize((w_img * left_scale, h_img * left_scale), Image.NEAREST)
    H = max(len(pick) * row_h, left.height) + 8
    canvas = Image.new("RGB", (left.width + 12 + right_w, H), (255, 255, 255))
    canvas.paste(left, (4, 4))
    draw = ImageDraw.Draw(canvas)
    for r, li in enumerate(pick):
        y, x = (int(v) * left_scale for v in query_yx[li])
        draw.rectangle([4 + x, 4 + y, 4 + x + PATCH * left_scale - 1, 4 + y + PATCH * left_scale - 1],
                       outline=(200, 0, 200))
        draw.text((6 + x, 5 + y), str(r), fill=(200, 0, 200))
    x0 = left.width + 12
    for r, li in enumerate(pick):
        y = 4 + r * row_h
        qy, qx = query_yx[li]
        q = query_image[qy : qy + PATCH, qx : qx + PATCH]
        canvas.paste(Image.fromarray(q).resize((cell, cell), Image.NEAREST), (x0, y))
        draw.text((x0, y + cell), f"query {r}", fill=(200, 0, 200))
        for c in range(cols):
            xc = x0 + cell + gap * 2 + c * (cell + 2)
            canvas.paste(Image.fromarray(neighbours[li, c]).resize((cell, cell), Image.NEAREST), (xc, y))
            draw.text((xc, y + cell), f"{distances[li, c]:.0f}", fill=(0, 0, 0))
    return canvas


def save_png(img: Image.Image, path: str) -> str:
    """Write atomically (temporary name, then rename); returns the path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with files.atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path


def to_uint8(x) -> np.ndarray:
    """(N, 3, H, W) float in [0, 1] (tensor or array) -> (N, H, W, 3) uint8, rounded as PNG stores it."""
    a = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    return np.clip(np.rint(a.transpose(0, 2, 3, 1) * 255.0), 0, 255).astype(np.uint8)


def read_png(path: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a PNG written by save_png."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def indicator_image(base: np.ndarray, boxes: list[tuple[int, int]], box: int = PATCH, scale: int = 2) -> Image.Image:
    """``base`` (H, W, 3) uint8 enlarged ``scale`` times with purple boxes at ``boxes`` (y, x)."""
    h, w = base.shape[:2]
    im = Image.fromarray(base).resize((w * scale, h * scale), Image.NEAREST)
    d = ImageDraw.Draw(im)
    for y, x in boxes:
        d.rectangle([x * scale, y * scale, (x + box) * scale - 1, (y + box) * scale - 1], outline=(160, 32, 240),
                    width=max(2, scale))
    return im


BANNER_HEIGHT = 20
BANNER_FILL, BANNER_INK = (253, 230, 138), (69, 26, 3)  # the HTML report's banner colours


def contact_sheet(images: list[tuple[str, np.ndarray]], scale: int = 1, banner: str | None = None) -> Image.Image:
    """One row of labelled (H, W, 3) uint8 images (source, target, vertices, indicator); a
    ``banner`` (the random-weights notice) is drawn once, as a strip across the top, so that
    the sheet says it on its own and no image's label has to."""
    h = max(a.shape[0] for _, a in images) * scale
    ws = [a.shape[1] * scale * h // (a.shape[0] * scale) for _, a in images]
    top = BANNER_HEIGHT if banner else 0
    sheet = Image.new("RGB", (sum(ws) + 6 * (len(images) + 1), top + h + 22), (255, 255, 255))
    d = ImageDraw.Draw(sheet)
    if banner:
        d.rectangle((0, 0, sheet.width - 1, top - 1), fill=BANNER_FILL)
        d.text((6, 4), banner, fill=BANNER_INK)
    x = 6
    for (label, a), w in zip(images, ws):
        sheet.paste(Image.fromarray(a).resize((w, h), Image.NEAREST), (x, top + 4))
        d.text((x, top + h + 7), label, fill=(0, 0, 0))
        x += w + 6
    return sheet


def loss_plot(history: dict, path: str, title: str = "") -> str:
    """Loss terms and the worst vertex's relative error per step (log scale) as a PNG. Drawn on
    a bare Figure: the caller's pyplot state and backend stay as they were."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.6))
    axes = fig.subplots(1, 2)
    steps = np.arange(1, len(history["pos"]) + 1)
    ax = axes[0]
    ax.semilogy(steps, np.maximum(history["pos"], 1e-12), label="L+ (mean over vertices)")
    neg = np.asarray(history["neg"])
    ax.plot(steps, np.abs(neg), label="|L-^i| (mean)")
    if any(history.get("tv", [])):
        ax.plot(steps, history["tv"], label="TV (mean)")
    ax.set_xlabel("step")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.semilogy(steps, history["worst_rel_error"], label="worst vertex")
    ax.semilogy(steps, history["mean_rel_error"], label="mean")
    ax.set_xlabel("step")
    ax.set_ylabel("relative fc6 error")
    ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    return path


# --- Static HTML report of a run directory or a batch directory (``patchcollide report``) ---------
