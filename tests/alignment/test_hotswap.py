"""LoRA hot-swap in the live sampler: exact, reversible, and safe while other threads generate."""

import threading

import pytest
import torch

from alignment.families.loader import load_pipeline
from alignment.core.lora_files import AdapterLoadError, read_lora
from alignment.serving.sampler import Sampler
from tests.support.lora import latents, random_lora


@pytest.fixture(scope="module")
def loras():
    return random_lora(1), random_lora(2)


def test_swap_matches_a_fresh_pipeline_that_loaded_the_adapter(fresh_sampler, loras, tmp_path):
    fresh_sampler.set_adapter(1, loras[0])
    fresh_sampler.set_adapter(2, loras[1])  # hot-swap in place
    swapped = latents(fresh_sampler)
    (tmp_path / "pytorch_lora_weights.safetensors").write_bytes(loras[1])
    other = load_pipeline("embedded")
    other.pipe.load_lora_weights(str(tmp_path))  # plain diffusers, as any program would
    reference = Sampler(other, fuse=False)
    diff = (swapped.float() - latents(reference).float()).abs()
    assert diff.max() < 0.02 and diff.mean() < 1e-3, (diff.max(), diff.mean())  # fp16 storage, fused vs unfused
    assert fresh_sampler.adapter_version == 2 and not torch.equal(swapped, latents(Sampler(load_pipeline())))


def test_adapters_of_other_ranks_and_targets_match_a_fresh_pipeline(fresh_sampler, loras, tmp_path):
    """A smaller rank is hot-swapped into the padded adapter; other targets (ResNet convolutions too) replace it."""
    base = latents(fresh_sampler)
    fresh_sampler.set_adapter(1, loras[0])
    for version, lora in ((2, random_lora(3, rank=2)),
                          (3, random_lora(4, scale=0.05, targets=("to_q", "to_v", "conv1", "conv2"))),
                          (4, random_lora(5, rank=8))):
        fresh_sampler.set_adapter(version, lora)
        (tmp_path / "pytorch_lora_weights.safetensors").write_bytes(lora)
        other = load_pipeline("embedded")
        other.pipe.load_lora_weights(str(tmp_path))
        diff = (latents(fresh_sampler).float() - latents(Sampler(other, fuse=False)).float()).abs()
        # fused vs unfused differ by float rounding only (a missing or doubled delta moves the mean by far more)
        assert diff.max() < 0.05 and diff.mean() < 1e-3, (version, diff.max(), diff.mean())
        assert not torch.equal(latents(fresh_sampler), base)
    fresh_sampler.set_adapter(None)
    assert torch.equal(latents(fresh_sampler), base)


def test_swap_back_to_base_and_to_earlier_versions_is_exact(fresh_sampler, loras):
    base = latents(fresh_sampler)
    fresh_sampler.set_adapter(1, loras[0])
    v1 = latents(fresh_sampler)
    for _ in range(3):
        fresh_sampler.set_adapter(2, loras[1])
        fresh_sampler.set_adapter(None)
        assert torch.equal(latents(fresh_sampler), base)
        fresh_sampler.set_adapter(1, loras[0])
        assert torch.equal(latents(fresh_sampler), v1)


def test_swap_is_much_cheaper_than_a_reload(fresh_sampler, loras):
    fresh_sampler.set_adapter(1, loras[0])
    seconds = fresh_sampler.set_adapter(2, loras[1])
    assert seconds < 1.0
    assert fresh_sampler.pipe is not None


def test_generation_threads_during_repeated_swaps_never_fail_or_mix(fresh_sampler, loras):
    expected = {}
    for version, lora in ((None, None), (1, loras[0]), (2, loras[1])):
        fresh_sampler.set_adapter(version, lora)
        expected[version] = latents(fresh_sampler)
    errors, results = [], []

    def generate():
        try:
            for _ in range(4):
                with fresh_sampler.lock:  # read the version and generate atomically
                    version = fresh_sampler.adapter_version
                    results.append((version, latents(fresh_sampler)))
        except Exception as e:  # collected and asserted on below
            errors.append(e)

    threads = [threading.Thread(target=generate) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(9):
        version, lora = (None, 1, 2)[i % 3], (None, loras[0], loras[1])[i % 3]
        if version is not None and i >= 3:
            fresh_sampler.prepare(version, lora)  # A, B and the spare weights change while the threads generate
        fresh_sampler.set_adapter(version, lora)
    for t in threads:
        t.join()
    assert not errors and len(results) == 12
    for version, lat in results:
        assert torch.equal(lat, expected[version])


def test_bad_adapter_files_are_refused_and_the_previous_stays(fresh_sampler, loras):
    fresh_sampler.set_adapter(1, loras[0])
    before = latents(fresh_sampler)
    with pytest.raises(AdapterLoadError):
        fresh_sampler.set_adapter(5, {"down_blocks.0.weight": torch.zeros(2, 2)})  # no 'unet.' prefix
    with pytest.raises(AdapterLoadError):
        fresh_sampler.set_adapter(6, b"not a safetensors file")
    assert fresh_sampler.adapter_version == 1
    assert torch.equal(latents(fresh_sampler), before)



def test_a_hot_swap_failing_half_way_keeps_the_previous_version_and_later_swaps_work(fresh_sampler, loras,
                                                                                     monkeypatch):
    """diffusers deletes the adapter when a hot-swap fails inside peft; the sampler loads the live one back."""
    import peft.utils.hotswap

    base = latents(fresh_sampler)
    fresh_sampler.set_adapter(1, loras[0])
    v1 = latents(fresh_sampler)
    real = peft.utils.hotswap.hotswap_adapter_from_state_dict

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(peft.utils.hotswap, "hotswap_adapter_from_state_dict", broken)
    with pytest.raises(AdapterLoadError, match="out of memory"):
        fresh_sampler.set_adapter(2, loras[1])
    assert fresh_sampler.adapter_version == 1
    assert torch.equal(latents(fresh_sampler), v1)  # the weights are what the version says
    monkeypatch.setattr(peft.utils.hotswap, "hotswap_adapter_from_state_dict", real)
    fresh_sampler.set_adapter(2, loras[1])  # not stuck: the next swap works
    assert fresh_sampler.adapter_version == 2 and not torch.equal(latents(fresh_sampler), v1)
    fresh_sampler.set_adapter(1, loras[0])
    assert torch.equal(latents(fresh_sampler), v1)
    fresh_sampler.set_adapter(None)
    assert torch.equal(latents(fresh_sampler), base)


def test_when_the_live_version_cannot_come_back_the_base_is_served_and_named(fresh_sampler, loras, monkeypatch):
    import peft.utils.hotswap

    base = latents(fresh_sampler)
    fresh_sampler.set_adapter(1, loras[0])
    monkeypatch.setattr(peft.utils.hotswap, "hotswap_adapter_from_state_dict",
                        lambda *a, **k: (_ for _ in ()).throw(RuntimeError("simulated")))
    fresh_sampler._live_lora = b"lost"  # e.g. the live adapter's file vanished meanwhile
    with pytest.raises(AdapterLoadError):
        fresh_sampler.set_adapter(2, loras[1])
    assert fresh_sampler.adapter_version is None  # never a version label on weights that do not hold it
    assert torch.equal(latents(fresh_sampler), base)


def test_a_pipeline_that_already_holds_adapters_is_refused_clearly(loras, tmp_path):
    (tmp_path / "pytorch_lora_weights.safetensors").write_bytes(loras[0])
    loaded = load_pipeline("embedded")
    loaded.pipe.load_lora_weights(str(tmp_path), adapter_name="someone_elses")
    sampler = Sampler(loaded)
    before = latents(sampler)
    with pytest.raises(AdapterLoadError, match="someone_elses"):
        sampler.set_adapter(1, loras[1])
    assert sampler.adapter_version is None
    assert torch.equal(latents(sampler), before)  # nothing changed


# ---- prepare: the heavy part of a swap beside generation, then a commit under the lock ---------------------------

def test_a_prepared_swap_gives_the_same_weights_as_a_plain_swap(fresh_sampler, loras, tmp_path):
    plain = Sampler(load_pipeline("embedded"))
    for s in (plain, fresh_sampler):
        s.set_adapter(1, loras[0])
    plain.set_adapter(2, loras[1])
    (tmp_path / "pytorch_lora_weights.safetensors").write_bytes(loras[1])
    for lora in (loras[1], tmp_path, read_lora(loras[1])):  # bytes, a folder, a state dict
        fresh_sampler.set_adapter(1, loras[0])
        assert fresh_sampler.prepare(2, lora) is True
        assert fresh_sampler.adapter_version == 1  # prepared, not live yet
        fresh_sampler.set_adapter(2, lora)
        assert fresh_sampler.adapter_version == 2 and fresh_sampler._prepared is None
        assert torch.equal(latents(fresh_sampler), latents(plain))


def test_prepare_runs_while_another_thread_holds_the_lock_and_generation_still_sees_the_live_version(
        fresh_sampler, loras):
    base = latents(fresh_sampler)
    fresh_sampler.set_adapter(1, loras[0])
    v1 = latents(fresh_sampler)
    held, release, done = threading.Event(), threading.Event(), []

    def hold_the_lock():
        with fresh_sampler.lock:  # as a long generation would
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    held.wait(30)
    preparer = threading.Thread(target=lambda: done.append(fresh_sampler.prepare(2, loras[1])))
    preparer.start()
    preparer.join(60)
    finished_while_held = not preparer.is_alive()
    release.set()
    holder.join()
    assert finished_while_held and done == [True]
    assert fresh_sampler.adapter_version == 1 and torch.equal(latents(fresh_sampler), v1)  # the live weights held
    fresh_sampler.set_adapter(2, loras[1])
    v2 = latents(fresh_sampler)
    assert not torch.equal(v2, v1)
    fresh_sampler.set_adapter(None)  # the base is still bit-exact after the weight tensors were swapped around
    assert torch.equal(latents(fresh_sampler), base)
    assert fresh_sampler.prepare(1, loras[0])  # from the base too
    assert torch.equal(latents(fresh_sampler), base)
    fresh_sampler.set_adapter(1, loras[0])
    assert torch.equal(latents(fresh_sampler), v1)


def test_a_stale_preparation_is_never_committed(fresh_sampler, loras):
    fresh_sampler.set_adapter(1, loras[0])
    v1 = latents(fresh_sampler)
    lora3 = random_lora(3)
    fresh_sampler.prepare(2, loras[1])
    fresh_sampler.set_adapter(2, lora3)  # same version number, other weights: a full swap, not the prepared one
    v2_lora3 = latents(fresh_sampler)
    fresh_sampler.prepare(3, loras[1])
    fresh_sampler.set_adapter(1, loras[0])  # another swap in between replaces A and B
    assert torch.equal(latents(fresh_sampler), v1)
    fresh_sampler.set_adapter(3, loras[1])
    fresh_sampler.set_adapter(4, lora3)
    assert torch.equal(latents(fresh_sampler), v2_lora3)


def test_prepare_declines_what_it_cannot_do_beside_generation(loras):
    unfused = Sampler(load_pipeline("embedded"), fuse=False)
    unfused.set_adapter(1, loras[0])
    assert unfused.prepare(2, loras[1]) is False  # peft's LoRA path is live: A and B change only under the lock
    fused = Sampler(load_pipeline("embedded"))
    assert fused.prepare(1, loras[0]) is False  # nothing loaded yet
    fused.set_adapter(1, loras[0])
    assert fused.prepare(2, random_lora(4, targets=("to_q", "to_v"))) is False  # other layers
    assert fused.prepare(2, random_lora(5, rank=80)) is False  # above max_lora_rank's padding
    assert fused.adapter_version == 1 and fused._prepared is None
    with pytest.raises(ValueError):
        fused.prepare(None, loras[0])


@pytest.mark.parametrize("where", ["hotswap", "fuse"])
def test_a_failing_preparation_leaves_the_live_version_serving(fresh_sampler, loras, monkeypatch, where):
    import peft.utils.hotswap

    import alignment.serving.sampler

    fresh_sampler.set_adapter(1, loras[0])
    v1 = latents(fresh_sampler)
    target = (peft.utils.hotswap, "hotswap_adapter_from_state_dict") if where == "hotswap" else \
        (alignment.serving.sampler, "fuse_into")
    real = getattr(*target)

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(*target, broken)
    with pytest.raises(AdapterLoadError, match="out of memory"):
        fresh_sampler.prepare(2, loras[1])
    monkeypatch.setattr(*target, real)
    assert fresh_sampler.adapter_version == 1 and fresh_sampler._prepared is None
    assert torch.equal(latents(fresh_sampler), v1)
    fresh_sampler.set_adapter(2, loras[1])  # not stuck, and not the half-prepared weights under label 1
    v2 = latents(fresh_sampler)
    assert fresh_sampler.adapter_version == 2 and not torch.equal(v2, v1)
    fresh_sampler.set_adapter(1, loras[0])
    assert torch.equal(latents(fresh_sampler), v1)


def test_a_swap_failing_after_the_unet_part_loaded_puts_the_live_weights_back(fresh_sampler, loras, monkeypatch):
    """The adapter is still there (nothing deleted it) but its A and B hold the new weights: they are reloaded."""
    fresh_sampler.set_adapter(1, loras[0])
    v1 = latents(fresh_sampler)

    real, calls = fresh_sampler.pipe.load_lora_into_text_encoder, []

    def broken_once(*args, **kwargs):  # the new adapter's load fails; loading the live one back works
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("text encoder part failed (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(fresh_sampler.pipe, "load_lora_into_text_encoder", broken_once)
    with pytest.raises(AdapterLoadError, match="simulated"):
        fresh_sampler.set_adapter(2, loras[1])
    assert fresh_sampler.adapter_version == 1 and torch.equal(latents(fresh_sampler), v1)
