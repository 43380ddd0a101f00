"""Programmatic labelers: stand-ins for a person, so that alignment can be measured without one.

A labeler is any plain function `(image_a, image_b, prompt) -> 0 | 1 | None`: 0 when the first image is preferred,
1 when the second is, None for a tie. The simulation and the benchmarks load one from a `module:function` string,
so any importable function with that signature works. The ones here read tiny-shapes images through
`embedded.analysis`; `noisy(labeler, accuracy)` turns any labeler into a Bradley-Terry-style "human" that agrees
with it only with the given probability.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from alignment.core.plugins import load_callable
from alignment.embedded.analysis import analyze
from alignment.embedded.data import parse_caption

Labeler = Callable[[object, object, str], "int | None"]


class LabelerError(ValueError):
    """A labeler could not be loaded, raised, or returned something other than 0, 1 or None."""


def _prefer(score_a: float, score_b: float, tol: float) -> int | None:
    if abs(score_a - score_b) <= tol:
        return None
    return 0 if score_a > score_b else 1


def larger(image_a, image_b, prompt: str) -> int | None:
    """Prefers the larger shape (more foreground pixels)."""
    return _prefer(analyze(image_a).area, analyze(image_b).area, tol=0.005)


def smaller(image_a, image_b, prompt: str) -> int | None:
    """Prefers the smaller shape."""
    return _prefer(-analyze(image_a).area, -analyze(image_b).area, tol=0.005)


def moderate(image_a, image_b, prompt: str) -> int | None:
    """Prefers the shape whose area is nearer a medium size, 15 % of the frame (written after the guard's defaults
    were fixed, so that the guard study has a labeler nothing was tuned on)."""
    return _prefer(-abs(analyze(image_a).area - 0.15), -abs(analyze(image_b).area - 0.15), tol=0.005)


def centered(image_a, image_b, prompt: str) -> int | None:
    """Prefers the shape nearer the centre of the frame."""
    def off(img):
        r = analyze(img)
        return -((r.cx - 0.5) ** 2 + (r.cy - 0.5) ** 2) ** 0.5
    return _prefer(off(image_a), off(image_b), tol=0.01)


def lower(image_a, image_b, prompt: str) -> int | None:
    """Prefers the shape lower in the frame (a positional preference)."""
    return _prefer(analyze(image_a).cy, analyze(image_b).cy, tol=0.01)


def saturated(image_a, image_b, prompt: str) -> int | None:
    """Prefers the more saturated (vivid) shape colour."""
    return _prefer(analyze(image_a).saturation, analyze(image_b).saturation, tol=0.01)


def faithful(labeler: Labeler) -> Labeler:
    """A person who first wants what they asked for: prefers the image that matches more of the prompt's colour,
    shape and background (read by `embedded.analysis`), and only between equally faithful images asks `labeler`.

    A bare "larger" labeler is satisfied by a smeared blob of the right area; this one is not, like a person."""
    def careful(image_a, image_b, prompt):
        wanted = parse_caption(prompt)

        def matches(image) -> int:
            r = analyze(image)
            return sum(getattr(r, k) == wanted[k] for k in ("colour", "shape", "background") if k in wanted)

        ma, mb = matches(image_a), matches(image_b)
        return labeler(image_a, image_b, prompt) if ma == mb else (0 if ma > mb else 1)

    careful.__name__ = f"faithful_{getattr(labeler, '__name__', 'labeler')}"
    return careful


faithful_larger = faithful(larger)
faithful_larger.__doc__ = "Prefers the image that shows the prompt (colour, shape, background); then the larger shape."
faithful_centered = faithful(centered)
faithful_centered.__doc__ = "Prefers the image that shows the prompt; then the shape nearer the centre."


def noisy(labeler: Labeler, accuracy: float, seed: int = 0) -> Labeler:
    """A noisy "human": agrees with `labeler` with probability `accuracy`, otherwise flips its answer."""
    if not 0.5 <= accuracy <= 1.0:
        raise ValueError(f"accuracy must be in [0.5, 1], got {accuracy}")
    rng = random.Random(seed)

    def human(image_a, image_b, prompt):
        choice = labeler(image_a, image_b, prompt)
        if choice is None or rng.random() < accuracy:
            return choice
        return 1 - choice

    human.__name__ = f"noisy_{getattr(labeler, '__name__', 'labeler')}_{accuracy:g}"
    return human


def load_labeler(spec: str) -> Labeler:
    """Import `module:function` (e.g. `alignment.eval.labelers:larger`); a bare name means one of this module's."""
    return load_callable(spec, "labeler", LabelerError, default_module=__name__)


def judge(labeler: Labeler, image_a, image_b, prompt: str) -> int | None:
    """Call a labeler and check its answer; any failure becomes a LabelerError naming the labeler."""
    name = getattr(labeler, "__name__", repr(labeler))
    try:
        choice = labeler(image_a, image_b, prompt)
    except Exception as e:  # a plug-in may raise anything; report it as the labeler's fault
        raise LabelerError(f"labeler {name} raised {type(e).__name__}: {e}") from e
    if choice is not None and (isinstance(choice, bool) or choice not in (0, 1)):
        raise LabelerError(f"labeler {name} returned {choice!r}; expected 0, 1 or None")
    return choice
