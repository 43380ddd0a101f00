"""Which prompts and seeds each purpose may use, so that no reported figure re-reads what selected it.

Four disjoint sets (tests/alignment/test_guard_seeds.py asserts it on the code that draws them):

| purpose | prompts | seeds |
|---|---|---|
| training pairs (simulation, benchmarks) | grammar prompts outside the 16 held-out combinations | `run seed * 10^5 + i` |
| the fidelity guard's selection | the 8 held-out combinations at even places (`guard_prompts`) | `WorkerConfig.fidelity_seeds`, from 1.5e9 |
| the guard's confirmation | the same 8 | `WorkerConfig.fidelity_confirm_seeds`, from 1.6e9 |
| evaluation (win rate, fidelity) | the 8 held-out combinations at odd places (`eval_cases`) | `eval_seeds`: 10^6 + 1000 * run seed + j |

The guard's prompts and the evaluation's differ in their (colour, shape, background) combination, and both differ
from every training prompt's; a figure reported as fidelity or win rate is measured on the evaluation set only.
"""

from __future__ import annotations

from alignment.embedded.data import caption_for, held_out_combinations
from alignment.embedded.evaluate import PromptCase

EVAL_SEED_BASE = 1_000_000
EVAL_SEEDS_PER_RUN = 1000  # a run seed's evaluation seeds are EVAL_SEED_BASE + 1000 * seed + j, j < 1000
TRAINING_SEED_STRIDE = 100_000  # a run seed's training pairs use seeds from seed * 100000 up
TRANSFER_SEED_BASE = 1_400_000_000  # benchmarks.transfer's training-prompt seeds: above the training and evaluation
# seeds of every run seed below 14000, below the guard's (from 1.5e9)


def _split(parity: int, sizes=(None,)) -> list[PromptCase]:
    combos = sorted(held_out_combinations())[parity::2]
    return [PromptCase(caption_for(c, s, size, b), c, s, b, size) for c, s, b in combos for size in sizes]


def guard_prompts() -> list[str]:
    """The embedded model's prompts of the fidelity guard (selection and confirmation)."""
    return [c.prompt for c in _split(0)]


def eval_cases(sizes=(None,)) -> list[PromptCase]:
    """The embedded model's evaluation prompts, with what each asks for; never seen by the guard or training."""
    return _split(1, sizes)


def eval_seeds(run_seed: int, n: int) -> list[int]:
    """The evaluation seeds of one run seed (n at most 1000)."""
    if not 1 <= n <= EVAL_SEEDS_PER_RUN:
        raise ValueError(f"evaluation seeds per run must be 1..{EVAL_SEEDS_PER_RUN}, got {n}")
    return [EVAL_SEED_BASE + EVAL_SEEDS_PER_RUN * run_seed + j for j in range(n)]


def transfer_seeds(n: int) -> list[int]:
    """The seeds at which `benchmarks.transfer` renders a run's own training prompts, which no pair was made at."""
    return list(range(TRANSFER_SEED_BASE, TRANSFER_SEED_BASE + n))


def training_seed0(run_seed: int) -> int:
    """The first seed of a run seed's training pairs."""
    return run_seed * TRAINING_SEED_STRIDE
