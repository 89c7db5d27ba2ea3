"""Pictures and files that a person looks at: the neighbour mosaic (more with the online stage)."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw

from .images import PATCH


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
    tmp = path + ".tmp.png"
    img.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path
