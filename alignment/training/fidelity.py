"""The fidelity guard: a candidate adapter goes live only if the images still show what the prompts ask for.

Preference learning on a small model is easy to game (a "larger shape" labeler is satisfied by smearing shapes into
blobs). Every candidate is rendered next to the base at equal seeds on held-out prompts:

- prompt fidelity: for the embedded model, the image analysis of `embedded.evaluate` (colour, background, shape
  accuracy); for other models, a pluggable scorer `(images, prompts) -> float in [0, 1]` (e.g. a CLIP score);
- drift: mean absolute pixel difference (0..1) from the base image at the same seed, always reported.

A candidate whose fidelity falls more than `max_drop` (default 0.05 = 5 points) below the base's is rejected with a
reason. `select` applies that rule to a run's checkpoints, latest first, and keeps the first that passes: training
drifts gradually, so when the final weights go too far an earlier state of the same run is often still faithful
(early stopping on held-out fidelity; the guard's seeds are not the benchmark's evaluation seeds). The guard
renders with the trainer's own pipeline (the LoRA toggled on and off), never the live sampler.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from alignment.embedded.evaluate import PromptCase, held_out_cases, score
from alignment.serving.sampler import Sampler

if TYPE_CHECKING:
    from alignment.training.trainer import Trainer

Scorer = Callable[[list, list[str]], float]
# Prompts for models other than the embedded one (fidelity then needs a scorer; drift is measured anyway).
GENERAL_PROMPTS = ("a photo of a red apple on a wooden table", "a watercolor painting of a lighthouse at dusk",
                   "a portrait of an old man with a grey beard", "a bowl of ramen, studio lighting")


@dataclass(frozen=True)
class FidelityReport:
    base: float | None
    candidate: float | None
    drift: float
    passed: bool
    reason: str | None

    def as_metrics(self) -> dict:
        return {"fidelity_base": self.base, "fidelity_candidate": self.candidate, "drift": round(self.drift, 4),
                "fidelity_passed": self.passed}


class FidelityGuard:
    def __init__(self, embedded: bool, seeds: Sequence[int] = (1000, 1001, 1002, 1003), max_drop: float = 0.05,
                 scorer: Scorer | None = None, prompts: Sequence[str] | None = None, limit: int | None = None):
        if not 0 <= max_drop < 1:
            raise ValueError(f"max_drop must be in [0, 1), got {max_drop}")
        self.embedded = embedded
        self.seeds = list(seeds)
        self.max_drop = max_drop
        self.scorer = scorer
        self.cases: list[PromptCase] | None = held_out_cases(sizes=(None,)) if embedded else None
        if self.cases is not None and limit is not None:
            self.cases = self.cases[:limit]
        self.prompts = [c.prompt for c in self.cases] if self.cases else list(prompts or GENERAL_PROMPTS)[:limit]
        self._base_cache: tuple[list, float | None] | None = None

    def _render(self, sampler: Sampler) -> list:
        return [g.image for p in self.prompts for g in sampler.generate(p, self.seeds)]

    def _score(self, images: list) -> float | None:
        if self.cases is not None:
            return score(images, [c for c in self.cases for _ in self.seeds])["fidelity"]
        if self.scorer is not None:
            return float(self.scorer(images, [p for p in self.prompts for _ in self.seeds]))
        return None

    def check(self, sampler: Sampler, set_adapter_enabled: Callable[[bool], None]) -> FidelityReport:
        """Render base (adapter off) and candidate (adapter on) through `sampler` and compare."""
        if self._base_cache is None:
            set_adapter_enabled(False)
            base_images = self._render(sampler)
            self._base_cache = (base_images, self._score(base_images))
        base_images, base = self._base_cache
        set_adapter_enabled(True)
        images = self._render(sampler)
        cand = self._score(images)
        drift = float(np.mean([np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean() / 255.0
                               for a, b in zip(images, base_images)]))
        if base is not None and cand is not None and cand < base - self.max_drop:
            return FidelityReport(base, cand, drift, False,
                                  f"prompt fidelity fell from {base:.3f} to {cand:.3f} "
                                  f"(more than {self.max_drop:.2f} below the base)")
        return FidelityReport(base, cand, drift, True, None)

    def select(self, sampler: Sampler, trainer: Trainer, checkpoints: Sequence[tuple[int, dict]],
               before_each: Callable[[], None] | None = None) -> tuple[int | None, list[FidelityReport]]:
        """Check a run's `(step, LoRA weights)` checkpoints latest first, each restored into `trainer` and rendered
        through `sampler` (the trainer's pipeline). Returns the step of the first that passes (None if none does)
        and the reports of those checked; the trainer is left holding the chosen state, or the last one checked.
        `before_each` runs before every check (the worker renews its lease there)."""
        reports = []
        for step, state in reversed(checkpoints):
            if before_each is not None:
                before_each()
            trainer.restore(state)
            reports.append(self.check(sampler, trainer.set_adapter_enabled))
            if reports[-1].passed:
                return step, reports
        return None, reports
