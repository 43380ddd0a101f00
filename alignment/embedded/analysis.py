"""Reading a tiny-shapes image back: background and shape colour, foreground area, shape class, position.

A simple, deterministic image analysis (numpy only) that the quality evaluation, the programmatic labelers and the
fidelity guard share. The background colour is the palette colour nearest to the median of the border pixels; the
foreground is every pixel far from it; the shape is told apart by how much of its bounding box it fills
(square ~0.9-1.0, circle ~pi/4, triangle ~0.5) and by whether its top is narrower than its bottom.
It knows nothing about models.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from alignment.embedded.data import COLOURS

PALETTE_NAMES = list(COLOURS)
PALETTE = np.array([COLOURS[n] for n in PALETTE_NAMES], dtype=np.float32)  # (8, 3)
FOREGROUND_DISTANCE = 60.0  # RGB distance from the background colour that counts as foreground


@dataclass(frozen=True)
class ShapeReading:
    colour: str | None  # None when no foreground was found
    background: str
    shape: str | None
    area: float  # foreground fraction of the image, 0..1
    cx: float  # centroid, in 0..1 image coordinates
    cy: float
    saturation: float  # mean HSV saturation of the foreground, 0..1
    fill: float  # foreground fraction of its bounding box


def nearest_colour(rgb: np.ndarray) -> str:
    return PALETTE_NAMES[int(np.argmin(((PALETTE - rgb) ** 2).sum(-1)))]


def to_array(image) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    return np.asarray(image, dtype=np.float32)


def analyze(image) -> ShapeReading:
    """Read a shape image (PIL or HxWx3 uint8 array)."""
    a = to_array(image)
    h, w, _ = a.shape
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    bg_rgb = np.median(border, axis=0)
    background = nearest_colour(bg_rgb)
    dist = np.sqrt(((a - PALETTE[PALETTE_NAMES.index(background)]) ** 2).sum(-1))
    mask = dist > FOREGROUND_DISTANCE
    area = float(mask.mean())
    if mask.sum() < 3:
        return ShapeReading(None, background, None, area, 0.5, 0.5, 0.0, 0.0)
    fg = a[mask]
    colour = nearest_colour(np.median(fg, axis=0))
    ys, xs = np.nonzero(mask)
    box_h, box_w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    fill = float(mask.sum() / (box_h * box_w))
    shape = classify_shape(mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1], fill)
    mx, mn = fg.max(-1), fg.min(-1)
    saturation = float(np.mean(np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0)))
    return ShapeReading(colour, background, shape, area, float(xs.mean() + 0.5) / w, float(ys.mean() + 0.5) / h,
                        saturation, fill)


def classify_shape(box: np.ndarray, fill: float) -> str:
    """Shape class from the cropped foreground mask (rows top to bottom)."""
    rows = box.mean(axis=1)
    third = max(1, len(rows) // 3)
    top, bottom = rows[:third].mean(), rows[-third:].mean()
    if fill < 0.66 and top < 0.7 * bottom:
        return "triangle"
    if fill > 0.86:
        return "square"
    return "circle"
