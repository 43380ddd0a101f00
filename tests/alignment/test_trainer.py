"""The LoRA trainer: only LoRA weights move, the loss falls, saved adapters reproduce the trained UNet, bad input."""

import collections
import copy
import dataclasses
import math
import random

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from alignment.families.loader import load_pipeline
from alignment.serving.sampler import Sampler
from alignment.training.trainer import (
    ADAPTER,
    PairError,
    Trainer,
    TrainingDivergedError,
    TrainingPair,
    pair_draws,
)
from settings import TrainerConfig


def base_state(unet):
    """Every non-LoRA weight, by its name without peft's `.base_layer` wrapper."""
    return {k.replace(".base_layer", ""): v.detach().clone() for k, v in unet.state_dict().items() if "lora_" not in k}


def test_only_lora_weights_change_and_loss_starts_at_log2(labeled_pairs):
    tr = Trainer(load_pipeline(), TrainerConfig(train_steps=3, batch_pairs=4))
    before = base_state(tr.unet)
    result = tr.train(labeled_pairs)
    assert result.history[0]["loss"] == pytest.approx(0.693147, abs=1e-5)  # policy == reference at step 0
    after = base_state(tr.unet)
    assert before.keys() == after.keys()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    lora_b = [p for n, p in tr.unet.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # lora_B starts at zero and has moved


@pytest.mark.parametrize("objective", ["discounted", "diffusion-dpo"])
def test_loss_falls_on_a_fixed_batch(labeled_pairs, objective):
    pairs = labeled_pairs[:4]
    cfg = TrainerConfig(objective=objective, train_steps=8, batch_pairs=len(pairs), steps_per_pair=2, lr=3e-3,
                        log_ratio_clip=0.1)
    tr = Trainer(load_pipeline(), cfg)

    def full_loss():
        with torch.no_grad():
            return tr.batch_loss(pairs, torch.Generator().manual_seed(0))[0].loss.item()

    tr.fresh_adapter()
    first = full_loss()
    if objective == "discounted":  # a fresh adapter: policy == reference (diffusion-dpo weights by gamma^k)
        assert first == pytest.approx(math.log(2), abs=1e-5)
    tr.train(pairs)
    assert full_loss() < first - 1e-3
    tr.fresh_adapter()  # the trained adapter is replaced by a new one at the start again
    assert full_loss() == pytest.approx(first, abs=1e-6)


def test_gradient_checkpointing_trains_the_same_adapter(labeled_pairs, monkeypatch):
    """Recomputing activations in the backward pass changes memory, not the result; it is switched off after."""
    import torch.utils.checkpoint as ckpt_module

    calls = []
    real_checkpoint = ckpt_module.checkpoint
    monkeypatch.setattr(ckpt_module, "checkpoint", lambda *a, **k: calls.append(1) or real_checkpoint(*a, **k))
    runs = {}
    for ckpt in (False, True):
        calls.clear()
        tr = Trainer(load_pipeline(), TrainerConfig(train_steps=3, batch_pairs=4, gradient_checkpointing=ckpt))
        result = tr.train(labeled_pairs)
        runs[ckpt] = result.history, {n: p.detach().clone() for n, p in tr.unet.named_parameters() if "lora_" in n}
        assert not tr.unet.is_gradient_checkpointing
        assert bool(calls) == ckpt  # the UNet's blocks really were checkpointed, and only when asked
    (hist_plain, lora_plain), (hist_ckpt, lora_ckpt) = runs[False], runs[True]
    assert [h["loss"] for h in hist_ckpt] == pytest.approx([h["loss"] for h in hist_plain], abs=1e-6)
    assert lora_plain.keys() == lora_ckpt.keys()
    assert all(torch.allclose(lora_plain[n], lora_ckpt[n], atol=1e-6) for n in lora_plain)
    assert any(lora_plain[n].abs().sum() > 0 for n in lora_plain if "lora_B" in n)


@pytest.mark.parametrize("micro_batch", [1, 5])
def test_micro_batches_give_the_whole_batch_gradient(labeled_pairs, micro_batch, monkeypatch):
    """The chunked gradient (dL/dlogp from a gradient-free pass, then one chunk at a time) is the full gradient,
    and the UNet never sees more than one chunk at once."""
    cfg = TrainerConfig(batch_pairs=4, steps_per_pair=3, log_ratio_clip=0.05)
    tr = Trainer(load_pipeline(), cfg)
    tr.fresh_adapter()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # move off the start (lora_B = 0) so that every LoRA weight has a gradient
        for p in tr.lora_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    sizes = []
    real = tr.guided_eps
    monkeypatch.setattr(tr, "guided_eps", lambda x, *a: sizes.append(len(x)) or real(x, *a))

    def gradient(mb):
        tr.config = dataclasses.replace(cfg, micro_batch=mb)
        sizes.clear()
        for p in tr.lora_parameters():
            p.grad = None
        out, parts = tr.batch_loss(labeled_pairs[:4], torch.Generator().manual_seed(1))
        for part in parts:
            part.backward()
        return out.loss.item(), torch.cat([p.grad.flatten() for p in tr.lora_parameters()]), max(sizes)

    loss, grad, widest = gradient(0)
    loss_mb, grad_mb, widest_mb = gradient(micro_batch)
    assert (widest, widest_mb) == (4 * 2 * 3, micro_batch)  # 4 pairs x (w, l) x M = 3 at once, or one chunk
    assert loss_mb == pytest.approx(loss, abs=1e-6) and grad.norm() > 0
    rel = ((grad_mb - grad).norm() / grad.norm()).item()  # float rounding differs with the batch size only
    assert rel < 1e-5, rel


def test_training_with_micro_batches_follows_the_same_losses(labeled_pairs):
    runs = [Trainer(load_pipeline(), TrainerConfig(train_steps=3, batch_pairs=4, micro_batch=mb, lr=3e-3))
            .train(labeled_pairs).history for mb in (0, 4)]
    assert [h["loss"] for h in runs[1]] == pytest.approx([h["loss"] for h in runs[0]], abs=1e-4)


def test_checkpoints_keep_earlier_states_that_restore_brings_back(labeled_pairs):
    tr = Trainer(load_pipeline(), TrainerConfig(train_steps=5, batch_pairs=4, checkpoint_every=2, lr=3e-3))
    result = tr.train(labeled_pairs)
    assert [step for step, _ in result.checkpoints] == [2, 4, 5]  # every 2 steps, and always the final state
    final = tr.lora_state()
    assert final.keys() == result.checkpoints[-1][1].keys()
    assert all(torch.equal(final[n], w) for n, w in result.checkpoints[-1][1].items())
    early = result.checkpoints[0][1]
    assert any(not torch.equal(early[n], final[n]) for n in final)  # training moved on after step 2
    probe = labeled_pairs[0].w.latents[:1].float()
    emb = torch.zeros(1, 24, tr.unet.config.cross_attention_dim)  # the output must follow the restored weights
    tr.restore(early)
    with torch.no_grad():
        out_early = tr.unet(probe, 500, emb).sample
    assert all(torch.equal(early[n], w) for n, w in tr.lora_state().items())
    tr.restore(final)
    with torch.no_grad():
        assert not torch.allclose(out_early, tr.unet(probe, 500, emb).sample)
    with pytest.raises(ValueError, match="does not belong"):
        tr.restore({"unet.not_a_lora_weight": torch.zeros(1)})
    assert all(torch.equal(final[n], w) for n, w in tr.lora_state().items())  # a refused restore changes nothing


def test_saved_adapter_reproduces_the_trained_unet(labeled_pairs, tmp_path):
    tr = Trainer(load_pipeline(), TrainerConfig(train_steps=4, batch_pairs=4, lr=3e-3))
    result = tr.train(labeled_pairs)
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([500, 200])
    cond = torch.cat([tr.replay.conditioning(p, guided=False, size=(32, 32)).embeds
                      for p in ("a red circle", "a blue square")])
    with torch.no_grad():
        trained = tr.unet(x, t, cond).sample
    (tmp_path / "pytorch_lora_weights.safetensors").write_bytes(result.lora)
    other = load_pipeline()
    other.pipe.load_lora_weights(str(tmp_path))  # plain diffusers
    with torch.no_grad():
        reloaded = other.pipe.unet(x, t, cond).sample
        base = load_pipeline().pipe.unet(x, t, cond).sample
    assert torch.allclose(trained, reloaded, atol=1e-5)
    assert not torch.allclose(trained, base, atol=1e-5)


def test_trajectory_objective_uses_uniform_weights():
    assert TrainerConfig(objective="trajectory", gamma=0.5).effective_gamma == 1.0
    assert TrainerConfig(objective="discounted", gamma=0.5).effective_gamma == 0.5


@pytest.mark.parametrize("kwargs", [dict(objective="ppo"), dict(gamma=0.0), dict(gamma=1.5), dict(beta=-1.0),
                                    dict(log_ratio_clip=0), dict(train_steps=0), dict(lr=2.0),
                                    dict(tie_policy="maybe"), dict(checkpoint_every=-1),
                                    dict(micro_batch=-2), dict(pair_order="sorted")])
def test_invalid_configs_are_refused(kwargs):
    with pytest.raises(ValueError):
        TrainerConfig(**kwargs)


def test_inconsistent_pairs_are_refused(labeled_pairs):
    tr = Trainer(load_pipeline(), TrainerConfig(train_steps=1))
    a, b = labeled_pairs[0], labeled_pairs[1]
    mixed = TrainingPair(a.prompt, a.w, b.l)  # two different prompts
    with pytest.raises(PairError, match="prompts"):
        tr.train([mixed])
    short = copy.copy(a.l)
    short.latents, short.timesteps = a.l.latents[:5], a.l.timesteps[:4]
    with pytest.raises(PairError, match="shapes"):
        tr.train([TrainingPair(a.prompt, a.w, short)])
    with pytest.raises(PairError, match="trajectories"):
        tr.train([TrainingPair(a.prompt, None, None, 1.0, Sampler, Sampler)])
    with pytest.raises(PairError):
        tr.train([TrainingPair(a.prompt, a.w, a.l, target=0.5)])  # the only pair is a dropped tie


def test_a_diverging_run_produces_no_adapter(labeled_pairs, monkeypatch):
    tr = Trainer(load_pipeline(), TrainerConfig(train_steps=3, batch_pairs=2))
    real = tr.guided_eps
    monkeypatch.setattr(tr, "guided_eps", lambda *a: real(*a) * float("nan"))
    with pytest.raises(TrainingDivergedError):
        tr.train(labeled_pairs)


def test_a_run_on_few_pairs_takes_pair_epochs_worth_of_steps(labeled_pairs):
    pairs = labeled_pairs[:2]
    seen = []
    tr = Trainer(load_pipeline(), TrainerConfig(train_steps=50, batch_pairs=4, steps_per_pair=1, pair_epochs=6,
                                                checkpoint_every=2))
    result = tr.train(pairs, progress=lambda step, total: seen.append((step, total)))
    assert len(result.history) == 3 and seen[-1] == (3, 3)  # ceil(6 x 2 / 4), not 50
    assert [s for s, _ in result.checkpoints] == [2, 3] and result.metrics["steps"] == 3
    assert TrainerConfig(pair_epochs=None, train_steps=50).steps_for(2) == 50
    assert TrainerConfig(train_steps=120, batch_pairs=8).steps_for(8) == 24  # the defaults: 24 steps on 8 votes
    assert TrainerConfig(train_steps=120, batch_pairs=8).steps_for(1000) == 120
    for bad in (0, -1, float("inf"), True):
        with pytest.raises(ValueError, match="pair_epochs"):
            TrainerConfig(pair_epochs=bad)


@given(n=st.integers(1, 40), batch=st.integers(1, 16), steps=st.integers(1, 30), seed=st.integers(0, 2**31))
def test_epoch_order_draws_every_pair_once_per_pass(n, batch, steps, seed):
    draws = pair_draws(n, batch, "epochs", random.Random(seed))
    drawn = [i for _ in range(steps) for i in next(draws)]
    counts = collections.Counter(drawn)
    assert len(drawn) == batch * steps and set(counts) <= set(range(n))
    full, rest = divmod(len(drawn), n)
    assert all(counts[i] in (full, full + 1) for i in range(n))  # no pair drawn twice more than another
    assert sum(counts[i] == full + 1 for i in range(n)) == rest
    if full:
        assert sorted(drawn[:n]) == list(range(n))  # the first pass is a permutation


def test_uniform_order_draws_independently_as_a_seeded_rng_does():
    rng = random.Random(7)
    expected = [[rng.randrange(5) for _ in range(3)] for _ in range(4)]
    draws = pair_draws(5, 3, "uniform", random.Random(7))
    assert [next(draws) for _ in range(4)] == expected


def test_a_run_in_epoch_order_trains_on_every_pair(labeled_pairs, monkeypatch):
    tr = Trainer(load_pipeline(), TrainerConfig(train_steps=3, batch_pairs=2, steps_per_pair=1, pair_order="epochs",
                                                pair_epochs=None, checkpoint_every=0))
    seen = []
    real = tr.batch_loss
    monkeypatch.setattr(tr, "batch_loss", lambda batch, *a: (seen.extend(p.prompt for p in batch), real(batch, *a))[1])
    pairs = tr.prepare_pairs(labeled_pairs[:3])
    tr.train(pairs)
    assert len(seen) == 6 and collections.Counter(seen) == collections.Counter(2 * [p.prompt for p in pairs])


def test_the_mean_of_adapters_changes_each_weight_by_the_members_mean_change(labeled_pairs):
    cfg = TrainerConfig(train_steps=2, batch_pairs=2, steps_per_pair=1, checkpoint_every=0, lr=1e-2)
    tr = Trainer(load_pipeline(), cfg)
    states = []
    for seed in (1, 2):
        tr.config = dataclasses.replace(cfg, seed=seed)
        tr.train(labeled_pairs[:2])
        states.append(tr.lora_state())

    def deltas() -> dict:
        return {name: m.get_delta_weight(ADAPTER).detach().clone() for name, m in tr.unet.named_modules()
                if hasattr(m, "get_delta_weight") and ADAPTER in getattr(m, "lora_A", {})}

    member = []
    for state in states:
        tr.fresh_adapter()
        tr.restore(state)
        member.append(deltas())
    tr.load_mean(states)
    mean = deltas()
    assert set(mean) == set(member[0]) and len(mean) > 0
    for name, d in mean.items():
        torch.testing.assert_close(d, (member[0][name] + member[1][name]) / 2, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(member[0][name], member[1][name])  # two different runs were averaged
    assert tr.unet.peft_config[ADAPTER].r == 2 * cfg.lora_rank
    with pytest.raises(ValueError, match="same modules"):
        tr.load_mean([states[0], {k: v for k, v in list(states[1].items())[1:]}])
    with pytest.raises(ValueError, match="same modules"):
        tr.load_mean([])
