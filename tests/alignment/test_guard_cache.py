"""The guard's base images on disk: a restarted guard reads them back (rendering one image per seed set to check
them), renders again when the weights or settings changed or an entry is damaged, and never leaves half an entry."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from alignment.families.loader import EMBEDDED_PATH, load_pipeline
from alignment.serving.sampler import Sampler
from alignment.training.fidelity import FidelityGuard
from alignment.training.guard_cache import SHIPPED_DIR, BaseImageCache, cache_key
from alignment.training.scorers import embedded_fidelity
from alignment.training.worker import Worker
from settings import SamplerConfig, WorkerConfig
from storage import Repository

SEEDS, CONFIRM = (1000, 1001, 1002), (2000, 2001, 2002)


class CountingSampler:
    """A sampler that records how many images each `generate` asked for."""

    def __init__(self, sampler):
        self._sampler, self.images = sampler, []

    def generate(self, prompt, seeds, *args, **kwargs):
        self.images.append(len(seeds))
        return self._sampler.generate(prompt, seeds, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._sampler, name)


def guard(cache_root, shipped=None) -> FidelityGuard:
    return FidelityGuard(embedded=True, seeds=SEEDS, confirm_seeds=CONFIRM, per_seed=1,
                         cache=BaseImageCache(cache_root, shipped=shipped))


def pixels(images):
    return np.stack([np.asarray(im) for im in images])


def test_a_restarted_guard_reads_the_base_back_and_renders_one_image_per_seed_set(embedded, tmp_path):
    first = CountingSampler(Sampler(embedded))
    guard(tmp_path).render_base(first)
    assert sum(first.images) == 6
    again, restarted = CountingSampler(Sampler(embedded)), guard(tmp_path)
    restarted.render_base(again)
    assert again.images == [1, 1]  # the first image of each set, rendered again to check the entry
    cold = guard(tmp_path / "elsewhere")
    cold.render_base(Sampler(embedded))
    for seed_set in ("selection", "confirmation"):
        read, rendered = pixels(restarted._base_cache[seed_set][0]), pixels(cold._base_cache[seed_set][0])
        assert np.abs(read.astype(int) - rendered).max() <= 16  # a batch of another size: float rounding at most
        assert restarted._base_cache[seed_set][1] == cold._base_cache[seed_set][1]  # the same scores


class GivesWay(CountingSampler):
    """A sampler that stops rendering (raises, as the worker's rendering ahead does) after `batches` batches."""

    def __init__(self, sampler, batches: int):
        super().__init__(sampler)
        self.batches = batches

    def generate(self, prompt, seeds, *args, **kwargs):
        if len(self.images) >= self.batches:
            raise InterruptedError("a run became due")
        return super().generate(prompt, seeds, *args, **kwargs)


@pytest.mark.parametrize("cached", [True, False])
def test_a_base_render_that_gave_way_keeps_what_it_finished_and_the_next_renders_only_the_rest(embedded, tmp_path,
                                                                                                cached):
    g = guard(tmp_path) if cached else FidelityGuard(embedded=True, seeds=SEEDS, confirm_seeds=CONFIRM, per_seed=1)
    plan = g._plan("selection")
    assert len({p for p, _ in plan}) == 3  # one batch per image: the render can stop between any two
    stopped = GivesWay(Sampler(embedded), batches=2)
    with pytest.raises(InterruptedError):
        g.render_base(stopped)
    assert stopped.images == [1, 1] and not g.base_ready
    rest = CountingSampler(Sampler(embedded))
    g.render_base(rest)
    assert rest.images == [1, 1, 1, 1]  # the selection set's last image, then the confirmation set whole
    whole = FidelityGuard(embedded=True, seeds=SEEDS, confirm_seeds=CONFIRM, per_seed=1)
    whole.render_base(Sampler(embedded))
    for seed_set in ("selection", "confirmation"):  # the same images and scores as a render that never stopped
        assert np.array_equal(pixels(g._base_cache[seed_set][0]), pixels(whole._base_cache[seed_set][0]))
        assert g._base_cache[seed_set][1] == whole._base_cache[seed_set][1]
    assert g._partial == {}
    if cached:  # the entry written holds the whole set
        stored = BaseImageCache(tmp_path).load(cache_key(Sampler(embedded), plan), plan)
        assert np.array_equal(pixels(stored), pixels(whole._base_cache["selection"][0]))


def test_other_weights_or_settings_render_the_base_again(tmp_path):
    from alignment.families.loader import load_pipeline

    model = load_pipeline("embedded")
    guard(tmp_path).render_base(Sampler(model))
    fewer_steps = CountingSampler(Sampler(model, replace(Sampler(model).config, steps=8)))
    guard(tmp_path).render_base(fewer_steps)
    assert sum(fewer_steps.images) == 6  # another key: nothing read back
    with torch.no_grad():  # the same id and settings over other weights: the check render tells
        for p in model.pipe.unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    changed = CountingSampler(Sampler(model))
    changed_guard = guard(tmp_path)
    changed_guard.render_base(changed)
    assert sum(changed.images) == 8  # per seed set: checked, refused, rendered whole
    plan = changed_guard._plan("selection")
    stored = BaseImageCache(tmp_path).load(cache_key(Sampler(model), plan), plan)
    assert np.array_equal(pixels(stored), pixels(changed_guard._base_cache["selection"][0]))  # the entry now holds the new ones


@pytest.mark.parametrize("damage", ["truncated image", "missing image", "garbage plan", "other plan"])
def test_a_damaged_entry_is_rendered_again(embedded, tmp_path, damage):
    sampler = Sampler(embedded)
    first = guard(tmp_path)
    first.render_base(sampler)
    plan = first._plan("selection")
    folder = tmp_path / cache_key(sampler, plan)
    if damage == "truncated image":
        (folder / "1.png").write_bytes((folder / "1.png").read_bytes()[:20])
    elif damage == "missing image":
        (folder / "2.png").unlink()
    elif damage == "garbage plan":
        (folder / "plan.json").write_text("{not json")
    else:
        (folder / "plan.json").write_text('[["a red circle", 1]]')
    assert BaseImageCache(tmp_path).load(cache_key(sampler, plan), plan) is None
    counting = CountingSampler(sampler)
    guard(tmp_path).render_base(counting)
    assert sum(counting.images) == 4  # the selection set rendered whole, the confirmation's entry checked
    assert BaseImageCache(tmp_path).load(cache_key(sampler, plan), plan) is not None  # and written again


def test_a_failed_write_leaves_no_entry_and_no_temporary_folder(tmp_path, monkeypatch):
    cache = BaseImageCache(tmp_path)
    plan = [("a red circle", 1), ("a blue square", 2)]
    images = [Image.new("RGB", (4, 4), c) for c in ("red", "blue")]
    real, saved = Image.Image.save, []

    def failing_save(self, fp, *args, **kwargs):
        if saved:
            raise OSError("disk full")
        saved.append(fp)
        return real(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", failing_save)
    cache.save("k" * 64, plan, images)  # logged, not raised: the cache only saves time
    monkeypatch.undo()
    assert cache.load("k" * 64, plan) is None and list(tmp_path.iterdir()) == []
    cache.save("k" * 64, plan, images)
    assert np.array_equal(pixels(cache.load("k" * 64, plan)), pixels(images))
    with pytest.raises(ValueError, match="2 plan items but 1 images"):
        cache.save("k" * 64, plan, images[:1])


def test_only_the_newest_entries_are_kept(tmp_path):
    cache = BaseImageCache(tmp_path, keep=2)
    plan, images = [("a red circle", 1)], [Image.new("RGB", (4, 4), "red")]
    for key in ("a" * 64, "b" * 64, "c" * 64):
        cache.save(key, plan, images)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b" * 64, "c" * 64]
    with pytest.raises(ValueError, match="keep"):
        BaseImageCache(tmp_path, keep=0)


def test_a_worker_keeps_its_guard_base_in_its_data_directory_and_reads_the_models(tmp_path):
    repo = Repository(tmp_path / "data")
    try:
        worker = Worker(repo, "embedded")
        cache = worker.guard(worker.trainer()).cache
        assert cache.root == tmp_path / "data" / "cache" / "guard-base"
        assert cache.shipped == EMBEDDED_PATH / SHIPPED_DIR
        own = Worker(repo, "embedded", config=WorkerConfig(shipped_guard_base=False))
        assert own.guard(own.trainer()).cache.shipped is None
    finally:
        repo.close()


def test_a_shipped_entry_serves_a_new_data_directory_and_is_never_written(embedded, tmp_path):
    shipped = tmp_path / "model" / SHIPPED_DIR
    guard(shipped).render_base(Sampler(embedded))  # the entries as `ship` writes them
    files = sorted(p.relative_to(shipped) for p in shipped.rglob("*"))
    counting, fresh = CountingSampler(Sampler(embedded)), guard(tmp_path / "data", shipped=shipped)
    fresh.render_base(counting)
    assert counting.images == [1, 1]  # only the check of each set
    assert not (tmp_path / "data").exists()  # nothing was rendered, so nothing to keep
    assert sorted(p.relative_to(shipped) for p in shipped.rglob("*")) == files


def test_the_data_directory_wins_and_a_shipped_entry_that_does_not_match_is_rendered_into_it(embedded, tmp_path):
    shipped = tmp_path / "model" / SHIPPED_DIR
    guard(shipped).render_base(Sampler(embedded))
    for png in shipped.rglob("*.png"):  # other weights' images under the same keys
        Image.new("RGB", (32, 32), (0, 0, 0)).save(png)
    counting = CountingSampler(Sampler(embedded))
    guard(tmp_path / "data", shipped=shipped).render_base(counting)
    assert sum(counting.images) == 2 + 6  # the checks failed: all six rendered
    assert len([p for p in (tmp_path / "data").iterdir() if p.is_dir()]) == 2  # and kept in the data directory
    again = CountingSampler(Sampler(embedded))
    restarted = guard(tmp_path / "data", shipped=shipped)
    restarted.render_base(again)
    assert again.images == [1, 1]  # the data directory's entries, not the black shipped ones
    assert pixels(restarted._base_cache["selection"][0]).max() > 0


@pytest.mark.parametrize("model", ["embedded", "embedded-flow"])
def test_the_embedded_models_ship_the_default_guards_base_images(model, tmp_path):
    """The shipped entries belong to the default settings (a change of the guard's seeds or the sampler's
    defaults needs `python -m alignment.training.guard_cache ship embedded embedded-flow`), and they render the
    same on this machine."""
    loaded = load_pipeline(model)
    cache = BaseImageCache(tmp_path / "data", shipped=loaded.folder / SHIPPED_DIR)
    fresh = FidelityGuard.from_config(WorkerConfig(), embedded=True, scorer=embedded_fidelity, cache=cache)
    counting = CountingSampler(Sampler(loaded, SamplerConfig.from_defaults(loaded.sampler_defaults), fuse=False))
    fresh.render_base(counting)
    assert counting.images == [1, 1] and fresh.base_ready
    assert not (tmp_path / "data").exists()
