"""Imported images made ready for a UNet of a given size: resized, centre-cropped, and what SDXL is told about it.

Preference datasets (Pick-a-Pic and the studio's own exports) hold images of any size; Diffusion-DPO encodes them
with the VAE at the size the model samples at. `fit_image` scales an image so that it covers the target size,
crops the centre, and returns the numbers SDXL's micro-conditioning takes from it: the original (height, width)
and the crop's top-left corner in the scaled image, as diffusers' SDXL training scripts compute them. An image
already at the target size is used as it is. A missing or empty image raises `ConditioningError` (an import row
without a usable image size). This module knows PIL and tensors; nothing about UNets, VAEs or storage.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from alignment.families.base import ConditioningError


def image_size(image) -> tuple[int, int]:
    """(height, width) of a PIL image; ConditioningError when there is no image or it has no pixels."""
    if not isinstance(image, Image.Image):
        raise ConditioningError(f"an imported pair has no usable image size: {image!r:.60} is not an image")
    width, height = image.size
    if min(width, height) < 1:
        raise ConditioningError(f"an imported image has no usable size ({width}x{height} pixels): it needs at "
                                "least 1x1 to be trained on")
    return int(height), int(width)


def fit_image(image: Image.Image, size: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
    """`(pixels, original_size, crop_top_left)`: pixels (3, H, W) float32 in [-1, 1] for `size = (H, W)`;
    original_size the image's own (height, width); crop_top_left (top, left) of the centre crop after scaling the
    image to cover `size` (aspect ratio kept)."""
    original = image_size(image)
    target_h, target_w = size
    if target_h < 1 or target_w < 1:
        raise ConditioningError(f"the target size must be positive, got {size}")
    top = left = 0
    rgb = image.convert("RGB")
    if original != (target_h, target_w):
        scale = max(target_h / original[0], target_w / original[1])
        scaled_h = max(target_h, round(original[0] * scale))
        scaled_w = max(target_w, round(original[1] * scale))
        rgb = rgb.resize((scaled_w, scaled_h), Image.Resampling.BICUBIC)
        top, left = round((scaled_h - target_h) / 2), round((scaled_w - target_w) / 2)
        rgb = rgb.crop((left, top, left + target_w, top + target_h))
    pixels = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1).contiguous()
    return pixels, original, (top, left)
