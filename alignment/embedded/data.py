"""Procedural captioned shapes: the training data of the embedded tiny-shapes model.

One shape per image, drawn with Pillow at 4x resolution and downsampled (anti-aliased edges), with jittered size
and position. Captions follow a small grammar:

    a[n] [small|large] <colour> <shape> [on a[n] <colour> background]

Both articles are used for every noun phrase (mostly the grammatical one), so the model understands either. When a
caption leaves the size or the background out, that attribute is drawn at random, so the unconditional model
covers everything. Everything is a pure function of a seed: the same seed gives the same images and captions.

This module knows nothing about models or tensors beyond numpy arrays.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 32
SUPERSAMPLE = 4

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 220, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
# Half-extent of the shape in pixels of the 32x32 image, per size word.
SIZE_RANGES = {"small": (3.5, 6.0), "large": (9.0, 13.0)}
VOCABULARY = ("a", "an", "on", "background", *SIZES, *COLOURS, *SHAPES)


@dataclass(frozen=True)
class ShapeSpec:
    """What one image shows; `size` is the size word, `radius` the drawn half-extent in pixels."""

    colour: str
    shape: str
    background: str
    size: str
    radius: float
    cx: float
    cy: float

    def caption(self, rng: random.Random, p_size: float = 0.6, p_background: float = 0.75,
                p_wrong_article: float = 0.2) -> str:
        """A caption for this image; size and background are named with the given probabilities."""
        words = []
        if rng.random() < p_size:
            words.append(self.size)
        words += [self.colour, self.shape]
        phrase = f"{article(words[0], rng, p_wrong_article)} {' '.join(words)}"
        if rng.random() < p_background:
            phrase += f" on {article(self.background, rng, p_wrong_article)} {self.background} background"
        return phrase


def article(word: str, rng: random.Random | None = None, p_wrong: float = 0.0) -> str:
    right = "an" if word[0] in "aeiou" else "a"
    if rng is not None and rng.random() < p_wrong:
        return "a" if right == "an" else "an"
    return right


def caption_for(colour: str, shape: str, size: str | None = None, background: str | None = None) -> str:
    """The canonical caption (grammatical articles) for a combination of attributes."""
    words = ([size] if size else []) + [colour, shape]
    text = f"{article(words[0])} {' '.join(words)}"
    if background:
        text += f" on {article(background)} {background} background"
    return text


def parse_caption(text: str) -> dict[str, str]:
    """The attributes a grammar caption asks for ({"colour", "shape", "size", "background"}, those present).

    Reads any word order the grammar produces ("a large red circle on a blue background", with or without size
    and background); words outside the grammar are ignored, so free text yields whatever attributes it names."""
    words = text.lower().replace(",", " ").split()
    out: dict[str, str] = {}
    for i, w in enumerate(words):
        if w in SHAPES and "shape" not in out:
            out["shape"] = w
            colours = [x for x in words[:i] if x in COLOURS]
            if colours:
                out["colour"] = colours[-1]
        elif w in SIZES and "size" not in out:
            out["size"] = w
        elif w == "background" and i > 0 and words[i - 1] in COLOURS:
            out["background"] = words[i - 1]
    return out


def sample_spec(rng: random.Random, colour: str | None = None, shape: str | None = None,
                background: str | None = None, size: str | None = None) -> ShapeSpec:
    """Draw the free attributes of an image; fixed ones are kept. Background never equals the shape colour."""
    colour = colour or rng.choice(list(COLOURS))
    shape = shape or rng.choice(SHAPES)
    if background is None:
        background = rng.choice([c for c in COLOURS if c != colour])
    if background == colour:
        raise ValueError(f"shape and background are both {colour}: nothing would be visible")
    size = size or rng.choice(SIZES)
    lo, hi = SIZE_RANGES[size]
    radius = rng.uniform(lo, hi)
    margin = radius + 1.0
    cx = rng.uniform(margin, IMAGE_SIZE - margin)
    cy = rng.uniform(margin, IMAGE_SIZE - margin)
    return ShapeSpec(colour, shape, background, size, radius, cx, cy)


def draw(spec: ShapeSpec) -> Image.Image:
    """Render a spec as a 32x32 RGB image (drawn 4x larger, then downsampled for smooth edges)."""
    s = SUPERSAMPLE
    big = Image.new("RGB", (IMAGE_SIZE * s, IMAGE_SIZE * s), COLOURS[spec.background])
    d = ImageDraw.Draw(big)
    cx, cy, r = spec.cx * s, spec.cy * s, spec.radius * s
    fill = COLOURS[spec.colour]
    if spec.shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif spec.shape == "square":
        h = r * 0.9  # a square of the same half-extent looks bigger than the circle; keep areas comparable
        d.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
    elif spec.shape == "triangle":
        d.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    else:
        raise ValueError(f"unknown shape {spec.shape!r}; expected one of {SHAPES}")
    return big.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)


def make_dataset(n: int, seed: int, exclude: set[tuple[str, str, str]] | frozenset = frozenset()
                 ) -> tuple[np.ndarray, list[ShapeSpec]]:
    """`n` images as uint8 (n, 32, 32, 3) with their specs; (colour, shape, background) in `exclude` never occur.

    Captions are drawn from the specs at training time (`ShapeSpec.caption`), so one image is seen under several.
    """
    rng = random.Random(seed)
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    specs: list[ShapeSpec] = []
    while len(specs) < n:
        spec = sample_spec(rng)
        if (spec.colour, spec.shape, spec.background) in exclude:
            continue
        images[len(specs)] = np.asarray(draw(spec))
        specs.append(spec)
    return images, specs


def held_out_combinations(seed: int = 1234, n: int = 16) -> frozenset[tuple[str, str, str]]:
    """(colour, shape, background) triples kept out of training and used only for evaluation."""
    rng = random.Random(seed)
    triples = [(c, s, b) for c in COLOURS for s in SHAPES for b in COLOURS if b != c]
    return frozenset(rng.sample(triples, n))


def grammar_prompts(seed: int = 0, n: int = 24) -> list[str]:
    """Example prompts from the grammar, for prompt suggestions in the UI."""
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        spec = sample_spec(rng)
        text = caption_for(spec.colour, spec.shape, spec.size if rng.random() < 0.5 else None,
                           spec.background if rng.random() < 0.8 else None)
        if text not in out:
            out.append(text)
    return out
