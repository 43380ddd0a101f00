"""The fused-LoRA swap slot: exact, reversible swaps, prepared beside generation, recovery from failures inside
diffusers, other versions shown without touching the live weights, and peft's methods out of reach."""

import threading

import pytest
import torch

from alignment.families.loader import load_pipeline
from alignment.core.lora_files import AdapterLoadError, read_lora
from alignment.serving.sampler import Sampler
from alignment.serving.swap import LivePipelineError, SwapSlot
from tests.support.lora import latents, random_lora


@pytest.fixture(scope="module")
def loras():
    return random_lora(1), random_lora(2)


@pytest.fixture
def slot(fresh_sampler):
    """The swap slot of `fresh_sampler`'s pipeline: what it loads, `latents(fresh_sampler)` samples."""
    return SwapSlot(fresh_sampler.pipe)


def fresh_slot(**options) -> tuple[Sampler, SwapSlot]:
    model = load_pipeline("embedded")
    return Sampler(model), SwapSlot(model.pipe, **options)


def test_swap_matches_a_fresh_pipeline_that_loaded_the_adapter(fresh_sampler, slot, loras, tmp_path):
    slot.load(1, loras[0])
    slot.load(2, loras[1])  # hot-swap in place
    swapped = latents(fresh_sampler)
    (tmp_path / "pytorch_lora_weights.safetensors").write_bytes(loras[1])
    other = load_pipeline("embedded")
    other.pipe.load_lora_weights(str(tmp_path))  # plain diffusers, as any program would
    reference = Sampler(other)
    diff = (swapped.float() - latents(reference).float()).abs()
    assert diff.max() < 0.02 and diff.mean() < 1e-3, (diff.max(), diff.mean())  # fp16 storage, fused vs unfused
    assert slot.version == 2 and not torch.equal(swapped, latents(Sampler(load_pipeline())))


def test_adapters_of_other_ranks_and_targets_match_a_fresh_pipeline(fresh_sampler, slot, loras, tmp_path):
    """A smaller rank is hot-swapped into the padded adapter; other targets (ResNet convolutions too) replace it."""
    base = latents(fresh_sampler)
    slot.load(1, loras[0])
    for version, lora in ((2, random_lora(3, rank=2)),
                          (3, random_lora(4, scale=0.05, targets=("to_q", "to_v", "conv1", "conv2"))),
                          (4, random_lora(5, rank=8))):
        slot.load(version, lora)
        (tmp_path / "pytorch_lora_weights.safetensors").write_bytes(lora)
        other = load_pipeline("embedded")
        other.pipe.load_lora_weights(str(tmp_path))
        diff = (latents(fresh_sampler).float() - latents(Sampler(other)).float()).abs()
        # fused vs unfused differ by float rounding only (a missing or doubled delta moves the mean by far more)
        assert diff.max() < 0.05 and diff.mean() < 1e-3, (version, diff.max(), diff.mean())
        assert not torch.equal(latents(fresh_sampler), base)
    slot.load(None)
    assert torch.equal(latents(fresh_sampler), base)


def test_swap_back_to_base_and_to_earlier_versions_is_exact(fresh_sampler, slot, loras):
    base = latents(fresh_sampler)
    slot.load(1, loras[0])
    v1 = latents(fresh_sampler)
    for _ in range(3):
        slot.load(2, loras[1])
        slot.load(None)
        assert torch.equal(latents(fresh_sampler), base)
        slot.load(1, loras[0])
        assert torch.equal(latents(fresh_sampler), v1)


def test_a_swap_rewrites_the_adapter_in_place_rather_than_reloading(fresh_sampler, slot, loras):
    """What makes a swap cheap (benchmarks/speed.py measures how much): the second version's A and B are copied
    into the first one's tensors and fused over the saved base; no module, adapter or base copy is made anew."""
    slot.load(1, loras[0])
    unet = fresh_sampler.pipe.unet
    lora_params = {n: p for n, p in unet.named_parameters() if "lora_" in n}
    storage = {n: p.data_ptr() for n, p in lora_params.items()}
    values = {n: p.detach().clone() for n, p in lora_params.items()}
    modules = {n: id(m) for n, m in unet.named_modules()}
    bases = [id(base) for _, base in slot._base_weights]
    assert lora_params and slot.wrapped_layers > 0
    seconds = slot.load(2, loras[1])
    assert seconds > 0 and slot.version == 2
    after = {n: p for n, p in unet.named_parameters() if "lora_" in n}
    assert after.keys() == lora_params.keys()
    assert all(after[n] is lora_params[n] and after[n].data_ptr() == storage[n] for n in after)
    assert {n: id(m) for n, m in unet.named_modules()} == modules
    assert [id(base) for _, base in slot._base_weights] == bases
    assert list(unet.peft_config) == [next(iter(unet.peft_config))]  # one adapter, not a second one beside it
    assert not all(torch.equal(after[n], values[n]) for n in after)  # the tensors now hold version 2


def test_generation_beside_repeated_preparations_sees_only_the_live_weights(fresh_sampler, slot, loras):
    """prepare writes A, B and the spares only: a generation running meanwhile (no lock here) is untouched."""
    slot.load(1, loras[0])
    v1 = latents(fresh_sampler)
    stop, results, errors = threading.Event(), [], []

    def generate():
        try:
            while not stop.is_set():
                results.append(latents(fresh_sampler))
        except Exception as e:  # collected and asserted on below
            errors.append(e)

    thread = threading.Thread(target=generate)
    thread.start()
    try:
        for i in range(6):
            assert slot.prepare(10 + i, loras[i % 2]) is True
    finally:
        stop.set()
        thread.join()
    assert not errors and results
    assert all(torch.equal(lat, v1) for lat in results)
    assert slot.version == 1 and slot.prepared_version == 15


def test_bad_adapter_files_are_refused_and_the_previous_stays(fresh_sampler, slot, loras):
    slot.load(1, loras[0])
    before = latents(fresh_sampler)
    with pytest.raises(AdapterLoadError):
        slot.load(5, {"down_blocks.0.weight": torch.zeros(2, 2)})  # no 'unet.' prefix
    with pytest.raises(AdapterLoadError):
        slot.load(6, b"not a safetensors file")
    assert slot.version == 1
    assert torch.equal(latents(fresh_sampler), before)



def test_a_hot_swap_failing_half_way_keeps_the_previous_version_and_later_swaps_work(fresh_sampler, slot, loras,
                                                                                     monkeypatch):
    """diffusers deletes the adapter when a hot-swap fails inside peft; the sampler loads the live one back."""
    import peft.utils.hotswap

    base = latents(fresh_sampler)
    slot.load(1, loras[0])
    v1 = latents(fresh_sampler)
    real = peft.utils.hotswap.hotswap_adapter_from_state_dict

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(peft.utils.hotswap, "hotswap_adapter_from_state_dict", broken)
    with pytest.raises(AdapterLoadError, match="out of memory"):
        slot.load(2, loras[1])
    assert slot.version == 1
    assert torch.equal(latents(fresh_sampler), v1)  # the weights are what the version says
    monkeypatch.setattr(peft.utils.hotswap, "hotswap_adapter_from_state_dict", real)
    slot.load(2, loras[1])  # not stuck: the next swap works
    assert slot.version == 2 and not torch.equal(latents(fresh_sampler), v1)
    slot.load(1, loras[0])
    assert torch.equal(latents(fresh_sampler), v1)
    slot.load(None)
    assert torch.equal(latents(fresh_sampler), base)


def test_when_the_live_version_cannot_come_back_the_base_is_served_and_named(fresh_sampler, slot, loras,
                                                                           monkeypatch, tmp_path):
    import peft.utils.hotswap

    base = latents(fresh_sampler)
    live_file = tmp_path / "v1.safetensors"
    live_file.write_bytes(loras[0])
    slot.load(1, live_file)
    live_file.unlink()  # e.g. the live adapter's file vanished meanwhile
    monkeypatch.setattr(peft.utils.hotswap, "hotswap_adapter_from_state_dict",
                        lambda *a, **k: (_ for _ in ()).throw(RuntimeError("simulated")))
    with pytest.raises(AdapterLoadError):
        slot.load(2, loras[1])
    assert slot.version is None  # never a version label on weights that do not hold it
    assert torch.equal(latents(fresh_sampler), base)


def test_a_pipeline_that_already_holds_adapters_is_refused_clearly(loras, tmp_path):
    (tmp_path / "pytorch_lora_weights.safetensors").write_bytes(loras[0])
    loaded = load_pipeline("embedded")
    loaded.pipe.load_lora_weights(str(tmp_path), adapter_name="someone_elses")
    sampler, slot = Sampler(loaded), SwapSlot(loaded.pipe)
    before = latents(sampler)
    with pytest.raises(AdapterLoadError, match="someone_elses"):
        slot.load(1, loras[1])
    assert slot.version is None
    assert torch.equal(latents(sampler), before)  # nothing changed


# ---- prepare: the heavy part of a swap beside generation, then a commit under the lock ---------------------------

def test_a_prepared_swap_gives_the_same_weights_as_a_plain_swap(fresh_sampler, slot, loras, tmp_path):
    plain, plain_slot = fresh_slot()
    for each in (plain_slot, slot):
        each.load(1, loras[0])
    plain_slot.load(2, loras[1])
    (tmp_path / "pytorch_lora_weights.safetensors").write_bytes(loras[1])
    for lora in (loras[1], tmp_path, read_lora(loras[1])):  # bytes, a folder, a state dict
        slot.load(1, loras[0])
        assert slot.prepare(2, lora) is True
        assert slot.version == 1  # prepared, not live yet
        slot.load(2, lora)
        assert slot.version == 2 and slot.prepared_version is None
        assert torch.equal(latents(fresh_sampler), latents(plain))


def test_prepared_swaps_keep_the_base_exact_and_work_from_the_base_too(fresh_sampler, slot, loras):
    base = latents(fresh_sampler)
    slot.load(1, loras[0])
    v1 = latents(fresh_sampler)
    assert slot.prepare(2, loras[1])
    assert slot.version == 1 and torch.equal(latents(fresh_sampler), v1)  # the live weights held
    assert slot.commit(2) and slot.version == 2 and slot.prepared_version is None
    v2 = latents(fresh_sampler)
    assert not torch.equal(v2, v1)
    slot.load(None)  # the base is still bit-exact after the weight tensors were swapped around
    assert torch.equal(latents(fresh_sampler), base)
    assert slot.prepare(1, loras[0])  # from the base too
    assert torch.equal(latents(fresh_sampler), base)
    assert not slot.commit(2)  # only the prepared version commits
    slot.load(1, loras[0])
    assert torch.equal(latents(fresh_sampler), v1)


def test_a_stale_preparation_is_never_committed(fresh_sampler, slot, loras):
    slot.load(1, loras[0])
    v1 = latents(fresh_sampler)
    lora3 = random_lora(3)
    slot.prepare(2, loras[1])
    slot.load(2, lora3)  # same version number, other weights: a full swap, not the prepared one
    v2_lora3 = latents(fresh_sampler)
    slot.prepare(3, loras[1])
    slot.load(1, loras[0])  # another swap in between replaces A and B
    assert torch.equal(latents(fresh_sampler), v1)
    slot.load(3, loras[1])
    slot.load(4, lora3)
    assert torch.equal(latents(fresh_sampler), v2_lora3)


def test_prepare_declines_what_it_cannot_do_beside_generation(loras):
    _, unfused = fresh_slot(fuse=False)
    unfused.load(1, loras[0])
    assert unfused.prepare(2, loras[1]) is False  # peft's LoRA path is live: A and B change only in a load
    _, fused = fresh_slot()
    assert fused.prepare(1, loras[0]) is False  # nothing loaded yet
    fused.load(1, loras[0])
    assert fused.prepare(2, random_lora(4, targets=("to_q", "to_v"))) is False  # other layers
    assert fused.prepare(2, random_lora(5, rank=80)) is False  # above max_lora_rank's padding
    assert fused.version == 1 and fused.prepared_version is None
    with pytest.raises(ValueError):
        fused.prepare(None, loras[0])


@pytest.mark.parametrize("where", ["hotswap", "fuse"])
def test_a_failing_preparation_leaves_the_live_version_serving(fresh_sampler, slot, loras, monkeypatch, where):
    import peft.utils.hotswap

    import alignment.serving.swap

    slot.load(1, loras[0])
    v1 = latents(fresh_sampler)
    target = (peft.utils.hotswap, "hotswap_adapter_from_state_dict") if where == "hotswap" else \
        (alignment.serving.swap, "fuse_into")
    real = getattr(*target)

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(*target, broken)
    with pytest.raises(AdapterLoadError, match="out of memory"):
        slot.prepare(2, loras[1])
    monkeypatch.setattr(*target, real)
    assert slot.version == 1 and slot.prepared_version is None
    assert torch.equal(latents(fresh_sampler), v1)
    slot.load(2, loras[1])  # not stuck, and not the half-prepared weights under label 1
    v2 = latents(fresh_sampler)
    assert slot.version == 2 and not torch.equal(v2, v1)
    slot.load(1, loras[0])
    assert torch.equal(latents(fresh_sampler), v1)


def test_a_swap_failing_after_the_unet_part_loaded_puts_the_live_weights_back(fresh_sampler, slot, loras, monkeypatch):
    """The adapter is still there (nothing deleted it) but its A and B hold the new weights: they are reloaded."""
    slot.load(1, loras[0])
    v1 = latents(fresh_sampler)

    real, calls = fresh_sampler.pipe.load_lora_into_text_encoder, []

    def broken_once(*args, **kwargs):  # the new adapter's load fails; loading the live one back works
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("text encoder part failed (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(fresh_sampler.pipe, "load_lora_into_text_encoder", broken_once)
    with pytest.raises(AdapterLoadError, match="simulated"):
        slot.load(2, loras[1])
    assert slot.version == 1 and torch.equal(latents(fresh_sampler), v1)


# ---- temporarily: another version for one block, the live weights and a prepared swap left alone -----------------

def test_showing_the_base_or_another_version_keeps_the_live_weights_and_the_prepared_swap(fresh_sampler, slot,
                                                                                         loras, monkeypatch):
    base = latents(fresh_sampler)
    slot.load(2, loras[1])
    v2 = latents(fresh_sampler)
    slot.load(1, loras[0])
    v1 = latents(fresh_sampler)
    assert slot.prepare(2, loras[1])
    with slot.temporarily(None):
        assert torch.equal(latents(fresh_sampler), base)  # the saved base weights, bit-exact
    lora3 = random_lora(3)
    with slot.temporarily(3, lora3):
        v3 = latents(fresh_sampler)
    assert not torch.equal(v3, v1) and not torch.equal(v3, v2) and not torch.equal(v3, base)
    assert slot.version == 1 and torch.equal(latents(fresh_sampler), v1)
    assert slot.prepared_version == 2
    loads, real = [], fresh_sampler.pipe.load_lora_weights
    monkeypatch.setattr(fresh_sampler.pipe, "load_lora_weights", lambda *a, **k: loads.append(a) or real(*a, **k))
    assert slot.commit(2) and loads == []  # still a pointer swap: nothing is loaded again
    assert torch.equal(latents(fresh_sampler), v2)
    slot.load(3, lora3)
    assert torch.equal(latents(fresh_sampler), v3)  # what was shown is what serving that version gives


def test_showing_what_cannot_go_beside_swaps_there_and_back(fresh_sampler, slot, loras):
    slot.load(1, loras[0])
    v1 = latents(fresh_sampler)
    other_targets = random_lora(4, targets=("to_q", "to_v", "conv1", "conv2"), scale=0.05)
    with slot.temporarily(4, other_targets):
        shown = latents(fresh_sampler)
    assert not torch.equal(shown, v1)
    assert slot.version == 1 and torch.equal(latents(fresh_sampler), v1)
    unfused_sampler, unfused = fresh_slot(fuse=False)
    base = latents(unfused_sampler)
    unfused.load(1, loras[0])
    with unfused.temporarily(None):
        assert torch.equal(latents(unfused_sampler), base)
    assert unfused.version == 1 and not torch.equal(latents(unfused_sampler), base)


def test_showing_a_bad_adapter_fails_clearly_and_the_live_version_stays(fresh_sampler, slot, loras):
    slot.load(1, loras[0])
    v1 = latents(fresh_sampler)
    assert slot.prepare(2, loras[1])
    with pytest.raises(AdapterLoadError):
        with slot.temporarily(5, b"not a safetensors file"):
            pass
    assert slot.version == 1 and torch.equal(latents(fresh_sampler), v1) and slot.prepared_version == 2


# ---- peft's state: its adapter-switching methods are out of reach on a pipeline the slot owns -------------------

def test_peft_and_diffusers_adapter_methods_on_the_live_pipeline_are_refused_and_change_nothing(
        fresh_sampler, slot, loras, tmp_path):
    """While fused, peft believes the adapter is disabled and unmerged; the slot makes sure nobody acts on that."""
    slot.load(1, loras[0])
    v1 = latents(fresh_sampler)
    (tmp_path / "pytorch_lora_weights.safetensors").write_bytes(loras[1])
    pipe, unet = fresh_sampler.pipe, fresh_sampler.pipe.unet
    layer = next(m for m in unet.modules() if hasattr(m, "lora_A") and "live" in m.lora_A)
    calls = {
        "pipe.fuse_lora": lambda: pipe.fuse_lora(), "pipe.unfuse_lora": lambda: pipe.unfuse_lora(),
        "pipe.unload_lora_weights": lambda: pipe.unload_lora_weights(),
        "pipe.set_adapters": lambda: pipe.set_adapters("live"), "pipe.enable_lora": lambda: pipe.enable_lora(),
        "pipe.disable_lora": lambda: pipe.disable_lora(), "pipe.delete_adapters": lambda: pipe.delete_adapters("live"),
        "pipe.load_lora_weights": lambda: pipe.load_lora_weights(str(tmp_path), adapter_name="other"),
        "unet.enable_adapters": lambda: unet.enable_adapters(), "unet.set_adapters": lambda: unet.set_adapters("live"),
        "unet.fuse_lora": lambda: unet.fuse_lora(), "unet.unload_lora": lambda: unet.unload_lora(),
        "unet.enable_lora": lambda: unet.enable_lora(), "unet.delete_adapters": lambda: unet.delete_adapters("live"),
        "layer.merge": lambda: layer.merge(), "layer.unmerge": lambda: layer.unmerge(),
        "layer.enable_adapters": lambda: layer.enable_adapters(True),
        "layer.set_adapter": lambda: layer.set_adapter("live"),
    }
    for name, call in calls.items():
        with pytest.raises(LivePipelineError, match="live pipeline"):
            call()
        assert torch.equal(latents(fresh_sampler), v1), name
    slot.load(2, loras[1])  # the slot itself still works through the same methods
    assert slot.version == 2 and not torch.equal(latents(fresh_sampler), v1)
    slot.load(1, loras[0])
    assert torch.equal(latents(fresh_sampler), v1)
    plain = load_pipeline("embedded")  # a pipeline no slot owns is left as diffusers made it
    plain.pipe.load_lora_weights(str(tmp_path))
    plain.pipe.fuse_lora()
