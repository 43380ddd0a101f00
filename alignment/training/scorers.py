"""Scores for the fidelity guard: how faithful images are to their prompts, and how far a candidate drifted.

Two kinds of measure, both on decoded images:

- **prompt fidelity** `(images, prompts) -> float in [0, 1]`, higher = more faithful; None or NaN means "could not
  score". Three sources: the embedded model's image analysis (`embedded_fidelity`: colour, background and shape
  read back from the pixels), a CLIP score (`ClipScorer`, from a CLIP model the user names: a hub id or a local
  folder), or any function named as `module:function` (`load_scorer`).
- **drift** (`drift`), which needs no model at all: how far each candidate image moved from the base model's image
  at the same prompt and seed, as a fraction of how far the base's own images are from one another.

`resolve_scorer` turns the worker's setting (`auto`, `drift`, `embedded`, `clip`, `module:function`) into a prompt
fidelity scorer or None. This module knows images, prompts and transformers' CLIP classes; it knows nothing about
adapters, samplers or storage.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alignment.core.plugins import load_callable
from settings import FIDELITY_SCORERS

Scorer = Callable[[list, list[str]], float | None]
CLIP_SCORE_WEIGHT = 2.5  # CLIP-S = w * max(cos, 0) (Hessel et al. 2021), which spreads the usual cosines over [0, 1]


class ScorerError(ValueError):
    """A fidelity scorer cannot be built (unknown name, a CLIP model that does not load, a bad module:function)."""


@dataclass(frozen=True)
class Drift:
    """`mean_abs`: mean absolute pixel difference (0..1) of candidate and base images at equal prompts and seeds;
    `reference`: the same between two different base images, averaged over all pairs; `ratio`: their quotient,
    the drift that the guard's threshold applies to (NaN when there are fewer than two images)."""

    mean_abs: float
    reference: float
    ratio: float


def _pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.float32) / 255.0


def drift(candidate: Sequence, base: Sequence) -> Drift:
    """How far `candidate[i]` moved from `base[i]` (the same prompt and seed), relative to the base's spread.

    The reference distance makes the figure comparable across models and image sizes: a flat-coloured 32 px image
    and a 1024 px photo differ by very different raw amounts. Normalising by the distance between unrelated base
    images answers one question for any model: is the candidate's image still the base's image, changed, or has
    it become something else (noise, a blob, another picture)?"""
    if len(candidate) != len(base):
        raise ValueError(f"drift needs as many candidate images as base images, got {len(candidate)} and {len(base)}")
    if len(base) < 2:
        return Drift(math.nan, math.nan, math.nan)
    cand, ref = [_pixels(x) for x in candidate], [_pixels(x) for x in base]
    if any(c.shape != r.shape for c, r in zip(cand, ref)):
        raise ValueError("drift compares images of equal size: candidate and base were rendered differently")
    moved = float(np.mean([np.abs(c - r).mean() for c, r in zip(cand, ref)]))
    spread = float(np.mean([np.abs(a - b).mean() for a, b in itertools.combinations(ref, 2)
                            if a.shape == b.shape] or [math.nan]))
    if spread == 0.0:  # every base image is the same picture: only an unchanged candidate has no drift
        return Drift(moved, spread, 0.0 if moved == 0.0 else math.inf)
    return Drift(moved, spread, moved / spread)


def embedded_fidelity(images: list, prompts: list[str]) -> float | None:
    """The embedded model's prompt fidelity: the mean of colour, background and shape accuracy read back from the
    images (`alignment.embedded.evaluate.score`). None when a prompt does not name all three (the analysis reads
    the embedded model's caption grammar only)."""
    from alignment.embedded.data import parse_caption
    from alignment.embedded.evaluate import PromptCase, score

    cases = []
    for prompt in prompts:
        asked = parse_caption(prompt)
        if not {"colour", "shape", "background"} <= asked.keys():
            return None
        cases.append(PromptCase(prompt, asked["colour"], asked["shape"], asked["background"], asked.get("size")))
    return score(images, cases)["fidelity"] if cases else None


class ClipScorer:
    """Prompt fidelity as the CLIP score of each (image, prompt): `2.5 * max(cos(image, text), 0)`, capped at 1 and
    averaged. `model` is a hub id or a local folder that `CLIPModel` and `CLIPProcessor` load."""

    def __init__(self, model: str | Path, device: str | None = None):
        import torch
        from transformers import CLIPModel, CLIPProcessor

        try:
            self.model = CLIPModel.from_pretrained(str(model)).eval()
            self.processor = CLIPProcessor.from_pretrained(str(model))
        except (OSError, ValueError) as e:  # not found, not a CLIP folder, offline without a cached copy
            raise ScorerError(f"cannot load the CLIP model {str(model)!r} for the fidelity guard: {e}. Name a "
                              "CLIP hub id (e.g. openai/clip-vit-base-patch32) or a folder saved with "
                              "save_pretrained") from e
        self.device = torch.device(device or "cpu")
        self.model.to(self.device)
        self.name = f"clip:{model}"

    def similarities(self, images: list, prompts: list[str]):
        """(N,) cosine similarity of each image's CLIP embedding with its prompt's."""
        import torch

        if len(images) != len(prompts):
            raise ValueError(f"one prompt per image: {len(images)} images, {len(prompts)} prompts")
        inputs = self.processor(text=list(prompts), images=[im.convert("RGB") for im in images], return_tensors="pt",
                                padding=True, truncation=True)
        with torch.no_grad():
            img = self.model.get_image_features(pixel_values=inputs["pixel_values"].to(self.device))
            txt = self.model.get_text_features(input_ids=inputs["input_ids"].to(self.device),
                                               attention_mask=inputs["attention_mask"].to(self.device))
        img, txt = (getattr(x, "pooler_output", x) for x in (img, txt))  # a tensor, or an output in newer versions
        return torch.nn.functional.cosine_similarity(img.float(), txt.float(), dim=-1).cpu()

    def __call__(self, images: list, prompts: list[str]) -> float | None:
        if not images:
            return None
        cos = self.similarities(images, prompts)
        return float((CLIP_SCORE_WEIGHT * cos.clamp(min=0)).clamp(max=1).mean())


def load_scorer(spec: str) -> Scorer:
    """Import a `module:function` scorer `(images, prompts) -> float in [0, 1]`."""
    return load_callable(spec, "the fidelity scorer", ScorerError)


def resolve_scorer(spec: str, *, embedded: bool, clip_model: str | None = None,
                   device: str | None = None) -> Scorer | None:
    """The prompt-fidelity scorer a setting names; None = drift alone decides.

    `auto`: the image analysis for the embedded model, else CLIP when `clip_model` is named, else none;
    `drift`: none; `embedded`: the image analysis; `clip`: CLIP from `clip_model`; anything with a colon: a
    `module:function`."""
    if spec == "auto":
        spec = "embedded" if embedded else "clip" if clip_model else "drift"
    if spec == "drift":
        return None
    if spec == "embedded":
        return embedded_fidelity
    if spec == "clip":
        if not clip_model:
            raise ScorerError("the clip fidelity scorer needs a CLIP model: set clip_model to a hub id or a folder")
        return ClipScorer(clip_model, device)
    if ":" in spec:
        return load_scorer(spec)
    raise ScorerError(f"unknown fidelity scorer {spec!r}; choose one of {', '.join(FIDELITY_SCORERS)} or "
                      "module:function")


def scorer_name(scorer: Scorer | None) -> str:
    """How a report names the scorer (`embedded`, `clip:<model>`, `module:function`, or `drift`)."""
    if scorer is None:
        return "drift"
    if scorer is embedded_fidelity:
        return "embedded"
    return getattr(scorer, "name", None) or f"{getattr(scorer, '__module__', '?')}:" \
                                            f"{getattr(scorer, '__qualname__', type(scorer).__name__)}"
