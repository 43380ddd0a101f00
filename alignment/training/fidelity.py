"""The fidelity guard: a candidate adapter goes live only if its images are still what the base model would draw.

Preference learning is easy to game (a "larger shape" labeler is satisfied by smearing shapes into blobs, and an
adapter that turns every image into noise has drifted as far as one can). Every candidate is rendered next to the
base at equal prompts and seeds, and two checks decide (`alignment.training.scorers`):

- **drift**, for every model and without any download: the candidate's images may move from the base's at most
  `max_drift` (default `MAX_DRIFT` = 0.5) of the distance between two different base images;
- **prompt fidelity**, when a scorer is given (the embedded model's image analysis, a CLIP score, or a
  `module:function`): the candidate's may fall at most `max_drop` (default 0.05 = 5 points) below the base's.

The guard fails closed. A report is `passed` only when every check measured and passed; a check that measured
and failed rejects the candidate (`scored` and not `passed`); when something could not be measured (no prompts, a
scorer that answered None or NaN or raised, one image only, no check at all) the report is not `scored`: the
candidate is never promoted automatically, and the reason says what was missing.

`select` applies that rule to a run's checkpoints, latest first, and keeps the first that passes: training drifts
gradually, so when the final weights go too far an earlier state of the same run is often still faithful (early
stopping on held-out fidelity; the guard's seeds are not the benchmark's evaluation seeds). The guard renders with
the trainer's own pipeline (the LoRA toggled on and off), never the live sampler.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from alignment.embedded.evaluate import held_out_cases
from alignment.serving.sampler import Sampler
from alignment.training.scorers import Scorer, drift, embedded_fidelity, scorer_name
from settings import MAX_DRIFT, WorkerConfig, default

if TYPE_CHECKING:
    from alignment.training.trainer import Trainer

log = logging.getLogger(__name__)
# Prompts for models other than the embedded one.
GENERAL_PROMPTS = ("a photo of a red apple on a wooden table", "a watercolor painting of a lighthouse at dusk",
                   "a portrait of an old man with a grey beard", "a bowl of ramen, studio lighting")


@dataclass(frozen=True)
class FidelityReport:
    """One candidate's verdict. `passed`: go live; `scored` and not `passed`: rejected; not `scored`: could not be
    measured, stays a candidate. `reason` says why whenever it did not pass."""

    base: float | None
    candidate: float | None
    drift: float
    passed: bool
    reason: str | None
    scored: bool = True
    drift_ratio: float | None = None
    scorer: str = "drift"

    def as_metrics(self) -> dict:
        return {"fidelity_base": _finite(self.base), "fidelity_candidate": _finite(self.candidate),
                "drift": _rounded(self.drift), "drift_ratio": _rounded(self.drift_ratio),
                "fidelity_passed": self.passed, "fidelity_scored": self.scored, "fidelity_scorer": self.scorer}


class FidelityGuard:
    """Renders base and candidate at `seeds` on held-out prompts and applies the drift and fidelity checks.

    `embedded=True` takes the embedded model's held-out prompts and, unless `scorer` is given, its image analysis;
    otherwise `prompts` (default `GENERAL_PROMPTS`) and `scorer` (None: drift alone decides). `limit` keeps the
    first prompts only; `max_drift=None` switches the drift check off (then a scorer must decide)."""

    def __init__(self, embedded: bool = False, seeds: Sequence[int] = default(WorkerConfig, "fidelity_seeds"),
                 max_drop: float = default(WorkerConfig, "fidelity_max_drop"), scorer: Scorer | None = None,
                 prompts: Sequence[str] | None = None, limit: int | None = None, max_drift: float | None = MAX_DRIFT):
        if not 0 <= max_drop < 1:
            raise ValueError(f"max_drop must be in [0, 1), got {max_drop}")
        if max_drift is not None and not max_drift > 0:
            raise ValueError(f"max_drift must be positive (or None to switch the drift check off), got {max_drift}")
        self.seeds = list(seeds)
        self.max_drop = max_drop
        self.max_drift = max_drift
        self.scorer = embedded_fidelity if embedded and scorer is None else scorer
        if prompts is None:
            prompts = [c.prompt for c in held_out_cases(sizes=(None,))] if embedded else GENERAL_PROMPTS
        self.prompts = list(prompts)[:limit]
        self._base_cache: tuple[list, float | None] | None = None

    def _render(self, sampler: Sampler) -> list:
        return [g.image for p in self.prompts for g in sampler.generate(p, self.seeds)] if self.seeds else []

    def _score(self, images: list) -> tuple[float | None, str | None]:
        """The scorer's figure, or None and why it could not measure (a scorer's failure never passes)."""
        if self.scorer is None or not images:
            return None, None
        try:
            value = self.scorer(images, [p for p in self.prompts for _ in self.seeds])
        except Exception as e:  # noqa: BLE001 - a plugged-in scorer's failure means "not measured", never "passed"
            log.warning("the fidelity scorer %s failed: %s: %s", scorer_name(self.scorer), type(e).__name__, e)
            return None, f"the {scorer_name(self.scorer)} scorer failed ({type(e).__name__}: {e})"
        value = None if value is None else float(value)
        if value is None or not math.isfinite(value):
            return None, f"the {scorer_name(self.scorer)} scorer returned {value}"
        return value, None

    def check(self, sampler: Sampler, set_adapter_enabled: Callable[[bool], None]) -> FidelityReport:
        """Render base (adapter off) and candidate (adapter on) through `sampler` and compare."""
        if self._base_cache is None:
            set_adapter_enabled(False)
            base_images = self._render(sampler)
            self._base_cache = (base_images, self._score(base_images))
        base_images, (base, base_missing) = self._base_cache
        set_adapter_enabled(True)
        images = self._render(sampler)
        cand, cand_missing = self._score(images)
        moved = drift(images, base_images)
        report = dict(base=base, candidate=cand, drift=moved.mean_abs, drift_ratio=moved.ratio,
                      scorer=scorer_name(self.scorer))

        failed, missing = [], []
        if not images:
            missing.append("the guard has no prompts or seeds to render")
        if self.max_drift is not None and images:
            if math.isnan(moved.ratio):
                missing.append("drift needs at least two images (more prompts or seeds)")
            elif moved.ratio > self.max_drift:
                failed.append(f"the images drifted {moved.ratio:.2f} of the distance between two base images "
                              f"from the base's at the same seeds (at most {self.max_drift:.2f})")
        if self.scorer is not None and images:
            if base is None or cand is None:
                missing.append(base_missing or cand_missing)
            elif cand < base - self.max_drop:
                failed.append(f"prompt fidelity fell from {base:.3f} to {cand:.3f} "
                              f"(more than {self.max_drop:.2f} below the base)")
        if self.scorer is None and self.max_drift is None:
            missing.append("no fidelity check is configured (no scorer, drift off)")
        if failed:
            return FidelityReport(**report, passed=False, reason="; ".join(failed))
        if missing:
            return FidelityReport(**report, passed=False, scored=False,
                                  reason="not promoted automatically: could not measure fidelity: "
                                         + "; ".join(missing) + ". An admin can make it live")
        return FidelityReport(**report, passed=True, reason=None)

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


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _rounded(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, 4)
