"""No reported figure re-reads what selected it: the prompts and seeds that training, the guard's selection, its
confirmation and the evaluation use are disjoint, read from the code that draws them."""

import random
from types import SimpleNamespace

from alignment.embedded.data import held_out_combinations, parse_caption
from alignment.eval.simulate import collect_round, eval_prompts, training_prompts
from alignment.eval.splits import eval_cases, eval_seeds, guard_prompts
from alignment.training.fidelity import FidelityGuard, guard_plan
from benchmarks.alignment import sample_pool
from settings import WorkerConfig

RUN_SEEDS = range(100)


class Recorder:
    """A sampler stand-in that records the seeds of every pair and hands back dummy images and trajectories."""

    def __init__(self):
        self.seeds = set()

    def generate_pair(self, prompt, seeds):
        self.seeds.update(seeds)
        traj = SimpleNamespace(to_bytes=lambda: b"", model_id="m", adapter_version=None, settings={})
        return [SimpleNamespace(image=None, trajectory=traj, seed=s) for s in seeds]


class Repo:
    def create_pair(self, *a, **k):
        return SimpleNamespace(id=1)

    def record_vote(self, *a):
        pass


def combo(prompt):
    asked = parse_caption(prompt)
    return asked["colour"], asked["shape"], asked.get("background")


def test_training_guard_and_evaluation_seeds_are_disjoint(monkeypatch):
    import alignment.eval.simulate as simulate

    monkeypatch.setattr(simulate, "png", lambda image: b"")  # the recorder's images need no encoding
    benchmark, studio_loop = Recorder(), Recorder()
    every_eval = {s for r in RUN_SEEDS for s in eval_seeds(r, 1000)}
    for run_seed in (0, 1, 9, 10, 11, 99):
        benchmark.seeds.clear(), studio_loop.seeds.clear()
        sample_pool(benchmark, run_seed, 512)  # the benchmarks' pool of a run seed
        for labels in (0, 256):  # two on-policy rounds of the simulation
            collect_round(studio_loop, Repo(), lambda a, b, p: 0, ["a red circle"] * 256,
                          simulate.training_seed0(run_seed) + 2 * labels, "sim")
        training = benchmark.seeds | studio_loop.seeds
        assert len(benchmark.seeds) == 1024 and len(studio_loop.seeds) == 1024
        assert not training & set(eval_seeds(run_seed, 1000)), run_seed
        cfg = WorkerConfig()
        selection, confirmation = set(cfg.fidelity_seeds), set(cfg.confirm_seeds)
        assert len(selection) == len(confirmation) == 64 and not selection & confirmation
        for guard_set in (selection, confirmation):
            assert not guard_set & every_eval and not guard_set & training


def test_training_guard_and_evaluation_prompts_are_disjoint():
    guard = set(FidelityGuard(embedded=True).prompts)
    assert guard == set(guard_prompts()) and len(guard) == 8
    evaluation = set(eval_prompts(100)) | {c.prompt for c in eval_cases(sizes=(None, "small", "large"))}
    training = set(training_prompts(random.Random(0), 5000))
    assert not guard & evaluation and not guard & training and not evaluation & training
    # not only the texts: the (colour, shape, background) combinations differ too
    guard_combos, eval_combos = {combo(p) for p in guard}, {combo(p) for p in evaluation}
    assert not guard_combos & eval_combos and guard_combos | eval_combos == set(held_out_combinations())
    assert not {combo(p) for p in training} & (guard_combos | eval_combos)


def test_the_guard_renders_only_its_own_prompts_and_seeds():
    guard = FidelityGuard(embedded=True)
    rendered = guard_plan(guard.prompts, guard.seeds, guard.per_seed)
    assert len({s for _, s in rendered}) == 64 and {p for p, _ in rendered} == set(guard_prompts())
