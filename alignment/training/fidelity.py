"""The fidelity guard: a candidate adapter goes live only if its images are still what the base model would draw.

Preference learning is easy to game (a "larger shape" labeler is satisfied by smearing shapes into blobs, and an
adapter that turns every image into noise has drifted as far as one can). Every candidate is rendered next to the
base at equal prompts and seeds, and two checks decide (the scorers are `alignment.training.scorers`):

- **drift**, for every model and without any download: the candidate's images may move from the base's at most
  `max_drift` (default `MAX_DRIFT` = 0.5) of the distance between two different base images;
- **prompt fidelity**, when a scorer is given (the embedded model's image analysis, a CLIP score, or a
  `module:function`): a paired test against the base. Each seed is one unit: the scorer scores the seed's few
  images for base and candidate, and the one-sided `1 - alpha` lower confidence bound of the mean per-seed
  difference (candidate - base, Student's t) must stay at or above `-max_drop` (default 5 points).

Why seeds: on the embedded model a seed whose shape shrinks away fails colour, background and shape at once, in
base and candidate alike, so images at one seed are not independent; two sets of 128 images at different seeds
disagreed by up to 13 points on one adapter. Many seeds with one image each measure the same effect for the same
render time with an honest interval. With a single seed the images are the units (a weak guard; the defaults use
64 seeds).

`decide` applies the rule to a run's checkpoints, latest first (early stopping on held-out fidelity), and then
**confirms** the chosen one on a second, disjoint seed set: the selection picks the latest checkpoint whose bound
happened to pass, which favours a lucky draw, so the figure it was chosen on is biased; the confirmation is a
fresh test of one adapter. Only a checkpoint that passes both goes live. The statistics live here, once, for every
model family; the scorer is the only per-model part.

The guard fails closed. A report is `passed` only when every check measured and passed; a check that measured
and failed rejects the candidate (`scored` and not `passed`); when something could not be measured (no prompts, a
scorer that answered None or NaN or raised, fewer than two units, no check at all) the report is not `scored`:
the candidate is never promoted automatically, and the reason says what was missing. The guard renders with the
trainer's own pipeline (the LoRA toggled on and off), never the live sampler. The base's images are rendered
once per guard and, with a `cache` (`alignment.training.guard_cache`; the worker keeps one in its data
directory), once per model and settings: a restarted worker reads them back.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from alignment.eval.splits import guard_prompts
from alignment.serving.sampler import Sampler
from alignment.training.guard_cache import BaseImageCache, cache_key, matches
from alignment.training.scorers import Scorer, drift, embedded_fidelity, scorer_name
from settings import MAX_DRIFT, WorkerConfig, confirmation_seeds, default

if TYPE_CHECKING:
    from alignment.training.trainer import Trainer

log = logging.getLogger(__name__)
# Prompts for models other than the embedded one.
GENERAL_PROMPTS = ("a photo of a red apple on a wooden table", "a watercolor painting of a lighthouse at dusk",
                   "a portrait of an old man with a grey beard", "a bowl of ramen, studio lighting")


# ---- the statistics (pure) -----------------------------------------------------------------------------------------
def t_quantile(p: float, df: int) -> float:
    """The `p` quantile of Student's t with `df` degrees of freedom: exact for 1 and 2, else the Cornish-Fisher
    expansion around the normal quantile (Abramowitz & Stegun 26.7.5), within 0.2 % for df >= 3 at p <= 0.975."""
    if not 0 < p < 1 or df < 1:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df >= 1, got p={p}, df={df}")
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    if df == 2:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    z = statistics.NormalDist().inv_cdf(p)
    g = ((z ** 3 + z) / 4, (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96,
         (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384,
         (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z) / 92160)
    return z + sum(gi / df ** (i + 1) for i, gi in enumerate(g))


@dataclass(frozen=True)
class PairedBound:
    """Mean of the per-unit differences, its one-sided `1 - alpha` lower confidence bound, and the unit count."""

    mean: float
    lower: float
    units: int


def paired_lower_bound(candidate: Sequence[float], base: Sequence[float], alpha: float) -> PairedBound:
    """The one-sided lower confidence bound of mean(candidate - base), paired by unit (Student's t)."""
    if len(candidate) != len(base):
        raise ValueError(f"a paired bound needs equal units, got {len(candidate)} and {len(base)}")
    if len(base) < 2:
        raise ValueError("a paired bound needs at least two units")
    d = [c - b for c, b in zip(candidate, base)]
    mean, sd = statistics.fmean(d), statistics.stdev(d)
    return PairedBound(mean, mean - t_quantile(1 - alpha, len(d) - 1) * sd / math.sqrt(len(d)), len(d))


def guard_plan(prompts: Sequence[str], seeds: Sequence[int], per_seed: int | None) -> list[tuple[str, int]]:
    """(prompt, seed) of every image: `per_seed` prompts at each seed (None = all), taken in turn from `prompts`
    so that every prompt is used about equally often."""
    if not prompts:
        return []
    k = len(prompts) if per_seed is None else min(per_seed, len(prompts))
    return [(prompts[(i * k + j) % len(prompts)], s) for i, s in enumerate(seeds) for j in range(k)]


# ---- reports ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FidelityReport:
    """One candidate's verdict on one seed set. `passed`: go live; `scored` and not `passed`: rejected; not
    `scored`: could not be measured, stays a candidate. `reason` says why whenever it did not pass. `base` and
    `candidate` are mean per-unit fidelities, `lower_bound` the bound of their difference over `units` units."""

    base: float | None
    candidate: float | None
    drift: float
    passed: bool
    reason: str | None
    scored: bool = True
    drift_ratio: float | None = None
    scorer: str = "drift"
    lower_bound: float | None = None
    units: int = 0
    seed_set: str = "selection"

    def as_metrics(self, prefix: str = "") -> dict:
        return {f"{prefix}fidelity_base": _finite(self.base), f"{prefix}fidelity_candidate": _finite(self.candidate),
                f"{prefix}fidelity_lower_bound": _rounded(self.lower_bound), f"{prefix}fidelity_units": self.units,
                f"{prefix}drift": _rounded(self.drift), f"{prefix}drift_ratio": _rounded(self.drift_ratio),
                f"{prefix}fidelity_passed": self.passed, f"{prefix}fidelity_scored": self.scored,
                f"{prefix}fidelity_scorer": self.scorer}


@dataclass(frozen=True)
class GuardDecision:
    """What `decide` found: the chosen step (None: no checkpoint passed the selection), the selection reports
    (latest first), the confirmation report of the registered weights, and `verdict`, the report that decides."""

    step: int | None
    selection: list[FidelityReport]
    confirmation: FidelityReport
    verdict: FidelityReport = field(repr=False)

    def as_metrics(self) -> dict:
        """The worker's metrics: `fidelity_*` are the confirmation set's (seeds the adapter was not selected on),
        `guard_selection_*` the guard's own figures on the seeds it selected on, labelled as such; `fidelity_passed`
        and `fidelity_scored` are the verdict's."""
        chosen = self.selection[-1] if self.step is not None else self.selection[0]
        out = {**chosen.as_metrics("guard_selection_"), **self.confirmation.as_metrics()}
        for k in ("guard_selection_fidelity_scorer", "guard_selection_drift"):
            out.pop(k)
        out.update(fidelity_passed=self.verdict.passed, fidelity_scored=self.verdict.scored)
        return out


# ---- the guard -------------------------------------------------------------------------------------------------------
class FidelityGuard:
    """Renders base and candidate at `seeds` (`per_seed` held-out prompts each) and applies the checks.

    `embedded=True` takes the embedded model's guard prompts (`alignment.eval.splits.guard_prompts`, disjoint from
    the evaluation's) and, unless `scorer` is given, its image analysis; otherwise `prompts` (default
    `GENERAL_PROMPTS`) and `scorer` (None: drift alone decides). `confirm_seeds` (default: as many seeds from the
    confirmation range) is the second set of `decide`; `max_drift=None` switches the drift check off."""

    def __init__(self, embedded: bool = False, seeds: Sequence[int] = default(WorkerConfig, "fidelity_seeds"),
                 max_drop: float = default(WorkerConfig, "fidelity_max_drop"), scorer: Scorer | None = None,
                 prompts: Sequence[str] | None = None, per_seed: int | None = default(WorkerConfig, "fidelity_prompts"),
                 max_drift: float | None = MAX_DRIFT, confirm_seeds: Sequence[int] | None = None,
                 alpha: float = default(WorkerConfig, "fidelity_alpha"), cache: BaseImageCache | None = None):
        if not 0 <= max_drop < 1:
            raise ValueError(f"max_drop must be in [0, 1), got {max_drop}")
        if max_drift is not None and not max_drift > 0:
            raise ValueError(f"max_drift must be positive (or None to switch the drift check off), got {max_drift}")
        if not 0 < alpha <= 0.5:
            raise ValueError(f"alpha must be in (0, 0.5], got {alpha}")
        self.seeds, self.confirm_seeds = list(seeds), list(confirmation_seeds(seeds, confirm_seeds))
        self.max_drop, self.max_drift, self.alpha, self.per_seed = max_drop, max_drift, alpha, per_seed
        self.scorer = embedded_fidelity if embedded and scorer is None else scorer
        if prompts is None:
            prompts = guard_prompts() if embedded else GENERAL_PROMPTS
        self.prompts = list(prompts)
        self._base_cache: dict[str, tuple] = {}
        self._partial: dict[tuple[str, str | None], dict] = {}  # (seed set, cache key) -> base images rendered so far
        self.cache = cache

    @classmethod
    def for_model(cls, cfg: WorkerConfig, model, cache: BaseImageCache | None = None) -> FidelityGuard:
        """The guard a worker with settings `cfg` runs on a loaded `model`: the scorer the settings name for it
        (`ScorerError` when it cannot be built), then `from_config`."""
        from alignment.training.scorers import resolve_scorer

        scorer = resolve_scorer(cfg.fidelity_scorer, embedded=model.is_embedded, clip_model=cfg.clip_model,
                                device=str(model.device))
        return cls.from_config(cfg, embedded=model.is_embedded, scorer=scorer, cache=cache)

    @classmethod
    def from_config(cls, cfg: WorkerConfig, *, embedded: bool, scorer: Scorer | None,
                    cache: BaseImageCache | None = None) -> FidelityGuard:
        """The guard a worker with settings `cfg` runs (the benchmarks build theirs the same way)."""
        return cls(embedded=embedded, seeds=cfg.fidelity_seeds, scorer=scorer, max_drop=cfg.fidelity_max_drop,
                   per_seed=cfg.fidelity_prompts, max_drift=cfg.fidelity_max_drift,
                   confirm_seeds=cfg.confirm_seeds, alpha=cfg.fidelity_alpha, cache=cache)

    @property
    def images_per_check(self) -> int:
        return len(guard_plan(self.prompts, self.seeds, self.per_seed))

    def _render(self, sampler: Sampler, plan: list[tuple[str, int]], done: dict | None = None) -> list:
        """Images in plan order, one sampler batch per prompt. `done` (plan index -> image) holds images rendered
        before, which are not rendered again; each batch's images go into it as the batch ends, so a render that
        stops midway (it gave way to a run) keeps what it finished."""
        done = {} if done is None else done
        by_prompt = defaultdict(list)
        for i, (p, s) in enumerate(plan):
            if i not in done:
                by_prompt[p].append((i, s))
        for p, items in by_prompt.items():
            images = [g.image for g in sampler.generate(p, [s for _, s in items])]
            done.update((i, image) for (i, _), image in zip(items, images))
        return [done[i] for i in range(len(plan))]

    def _score_units(self, images: list, plan: list[tuple[str, int]]) -> tuple[list[float] | None, str | None]:
        """Per-unit fidelity (a unit = one seed's images; the images themselves with a single seed), or None and
        why it could not measure (a scorer's failure never passes)."""
        if self.scorer is None or not images:
            return None, None
        seeds = [s for _, s in plan]
        keys = seeds if len(set(seeds)) > 1 else list(range(len(plan)))
        units = defaultdict(list)
        for key, image, (p, _) in zip(keys, images, plan):
            units[key].append((image, p))
        values = []
        for unit in units.values():
            try:
                value = self.scorer([im for im, _ in unit], [p for _, p in unit])
            except Exception as e:  # noqa: BLE001 - a plugged-in scorer's failure means "not measured", never "passed"
                log.warning("the fidelity scorer %s failed: %s: %s", scorer_name(self.scorer), type(e).__name__, e)
                return None, f"the {scorer_name(self.scorer)} scorer failed ({type(e).__name__}: {e})"
            value = None if value is None else float(value)
            if value is None or not math.isfinite(value):
                return None, f"the {scorer_name(self.scorer)} scorer returned {value}"
            values.append(value)
        return values, None

    def _plan(self, seed_set: str) -> list[tuple[str, int]]:
        return guard_plan(self.prompts, self.seeds if seed_set == "selection" else self.confirm_seeds, self.per_seed)

    def _base(self, sampler: Sampler, set_adapter_enabled: Callable[[bool], None], seed_set: str) -> tuple:
        """The base's images at the `seed_set` seeds and their per-unit scores, rendered once (adapter off)."""
        if seed_set not in self._base_cache:
            plan = self._plan(seed_set)
            set_adapter_enabled(False)
            key = cache_key(sampler, plan) if self.cache is not None else None
            base_images = self._stored_base(sampler, plan, key)
            if base_images is None:
                partial = self._partial.setdefault((seed_set, key), {})  # what a render that gave way finished
                base_images = self._render(sampler, plan, partial)
                del self._partial[(seed_set, key)]
                if key is not None and base_images:
                    self.cache.save(key, plan, base_images)
            self._base_cache[seed_set] = (base_images, self._score_units(base_images, plan))
        return self._base_cache[seed_set]

    def _stored_base(self, sampler: Sampler, plan: list[tuple[str, int]], key: str | None) -> list | None:
        """The base's images of `plan` from the cache entry `key`, when its first image renders the same again
        now."""
        if key is None or not plan:
            return None
        stored = self.cache.load(key, plan)
        if stored is None:
            return None
        if not matches(self._render(sampler, plan[:1])[0], stored[0]):
            log.warning("the guard's stored base images no longer match a fresh render (other weights?): "
                        "rendering them again")
            return None
        return stored

    @property
    def base_ready(self) -> bool:
        return {"selection", "confirmation"} <= set(self._base_cache)

    def render_base(self, sampler: Sampler, set_adapter_enabled: Callable[[bool], None] = lambda on: None) -> None:
        """Render and score the base's images of both seed sets now, which the first `measure` of each set would
        otherwise do (the worker does it while it waits for votes, so a run's guard renders only candidates).
        `set_adapter_enabled` defaults to nothing, for a pipeline that has no adapter yet."""
        for seed_set in ("selection", "confirmation"):
            self._base(sampler, set_adapter_enabled, seed_set)

    def measure(self, sampler: Sampler, set_adapter_enabled: Callable[[bool], None], seed_set: str) -> FidelityReport:
        """Render base (adapter off, once per seed set) and candidate (adapter on) at the `seed_set` seeds
        ("selection" or "confirmation") and compare."""
        plan = self._plan(seed_set)
        base_images, (base_units, base_missing) = self._base(sampler, set_adapter_enabled, seed_set)
        set_adapter_enabled(True)
        images = self._render(sampler, plan)
        cand_units, cand_missing = self._score_units(images, plan)
        moved = drift(images, base_images)
        report = dict(base=_mean(base_units), candidate=_mean(cand_units), drift=moved.mean_abs,
                      drift_ratio=moved.ratio, scorer=scorer_name(self.scorer), seed_set=seed_set)

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
            if base_units is None or cand_units is None:
                missing.append(base_missing or cand_missing)
            elif len(base_units) < 2:
                missing.append("the paired test needs at least two seeds or images")
            else:
                bound = paired_lower_bound(cand_units, base_units, self.alpha)
                report.update(lower_bound=bound.lower, units=bound.units)
                if bound.lower < -self.max_drop:
                    failed.append(f"prompt fidelity fell from {report['base']:.3f} to {report['candidate']:.3f} on "
                                  f"the {seed_set} seeds: the {1 - self.alpha:.0%} lower bound of the per-seed "
                                  f"difference is {bound.lower:+.3f}, below -{self.max_drop:.2f}")
        if self.scorer is None and self.max_drift is None:
            missing.append("no fidelity check is configured (no scorer, drift off)")
        if failed:
            return FidelityReport(**report, passed=False, reason="; ".join(failed))
        if missing:
            return FidelityReport(**report, passed=False, scored=False,
                                  reason="not promoted automatically: could not measure fidelity: "
                                         + "; ".join(missing) + ". An admin can make it live")
        return FidelityReport(**report, passed=True, reason=None)

    def check(self, sampler: Sampler, set_adapter_enabled: Callable[[bool], None]) -> FidelityReport:
        """The selection test of the adapter state `sampler` renders with."""
        return self.measure(sampler, set_adapter_enabled, "selection")

    def confirm(self, sampler: Sampler, set_adapter_enabled: Callable[[bool], None]) -> FidelityReport:
        """The same test on the confirmation seeds, disjoint from the selection's."""
        return self.measure(sampler, set_adapter_enabled, "confirmation")

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

    def decide(self, sampler: Sampler, trainer: Trainer, checkpoints: Sequence[tuple[int, dict]],
               before_each: Callable[[], None] | None = None) -> GuardDecision:
        """`select`, then the confirmation of the weights to register: the chosen checkpoint, or the final weights
        when none passed (measured for the record; they are not promoted). The trainer is left holding them."""
        step, reports = self.select(sampler, trainer, checkpoints, before_each)
        if step is None:
            trainer.restore(checkpoints[-1][1])
        if before_each is not None:
            before_each()
        confirmation = self.confirm(sampler, trainer.set_adapter_enabled)
        if step is None:
            verdict = reports[0]
        elif confirmation.passed:
            verdict = confirmation
        else:
            verdict = replace(confirmation, reason=f"step {step} passed the selection seeds but not the "
                                                   f"confirmation: {confirmation.reason}")
        return GuardDecision(step, reports, confirmation, verdict)


def _mean(values: list[float] | None) -> float | None:
    return statistics.fmean(values) if values else None


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _rounded(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, 4)
