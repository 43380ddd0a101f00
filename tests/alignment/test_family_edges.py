"""The families' edges: Diffusion-DPO on imported SDXL pairs, refused inputs (an image without a usable size, a LoRA
for another family or UNet shape), the trainer on a half-precision base, and chains with an unscored step."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from alignment.core.lora_files import AdapterLoadError
from alignment.core.objective import sample_step_indices
from alignment.families.base import ConditioningError
from alignment.families.loader import load_pipeline
from alignment.families.schedules import check_sampling
from alignment.serving.live import LiveModel
from alignment.serving.sampler import Sampler
from alignment.training.trainer import PairError, Trainer, TrainingPair
from settings import SamplerConfig, TrainerConfig
from storage import Repository
from tests.support.families import edited_copy, tiny_family
from tests.support.lora import random_lora
from tests.support.studio import register_adapter

PROMPTS = ["a red circle", "a large blue square on a yellow background", "a green triangle", "a small white circle"]
# beta well below the default: on random weights the loss of one timestep swings with the noise drawn
IMPORTS = TrainerConfig(objective="diffusion-dpo", train_steps=10, batch_pairs=4, lr=2e-3, beta=200.0)


def noise_image(height: int, width: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def disc_image(height: int, width: int, seed: int, radius: float) -> Image.Image:
    """A disc of `radius` (a fraction of the shorter side) in one colour on another."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (width, height), tuple(int(c) for c in rng.integers(0, 256, 3)))
    r = radius * min(height, width)
    ImageDraw.Draw(image).ellipse([width / 2 - r, height / 2 - r, width / 2 + r, height / 2 + r],
                                  fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return image


def sampled_pairs(model, n: int = 4, **config) -> list[TrainingPair]:
    sampler = Sampler(model, SamplerConfig.from_defaults(model.sampler_defaults, **config))
    pairs = []
    for i, prompt in enumerate(PROMPTS[:n]):
        a, b = sampler.generate_pair(prompt, (2 * i, 2 * i + 1))
        pairs.append(TrainingPair(prompt, a.trajectory, b.trajectory))
    return pairs


# ------------------------------------------------------------------ Diffusion-DPO on imported SDXL pairs


@pytest.fixture(scope="module")
def sdxl_trainer():
    return Trainer(load_pipeline(str(tiny_family("sdxl"))), IMPORTS)


def test_an_imported_image_is_fitted_to_the_model_size_and_sdxl_is_told_its_size_and_crop(sdxl_trainer):
    tr = sdxl_trainer
    latent, cond = tr.clean_sample("a red circle", None, noise_image(96, 80, 0))
    assert latent.shape == (4, 8, 8)  # the 64 px the tiny SDXL samples at
    # scaled by 0.8 to cover 64 x 64 (77 x 64), then 6 rows cropped off the top
    assert cond.added["time_ids"].tolist() == [[96, 80, 6, 0, 64, 64]] and cond.negative_embeds is None
    _, cond = tr.clean_sample("a red circle", None, noise_image(64, 64, 1))
    assert cond.added["time_ids"].tolist() == [[64, 64, 0, 0, 64, 64]]


def test_diffusion_dpo_on_imported_sdxl_pairs_of_any_size_lowers_the_loss(sdxl_trainer):
    tr = sdxl_trainer
    sizes = [(96, 80), (64, 64), (48, 100), (128, 72)]  # preferred: a large disc; the other a small one, turned
    pairs = [TrainingPair(p, None, None, 1.0, disc_image(*size, 2 * i, 0.4), disc_image(*size[::-1], 2 * i + 1, 0.15))
             for i, (p, size) in enumerate(zip(PROMPTS, sizes))]

    def loss():  # averaged over eight draws of timesteps and noise
        with torch.no_grad():
            return np.mean([tr.batch_loss(pairs, torch.Generator().manual_seed(s))[0].loss.item() for s in range(8)])

    tr.fresh_adapter()
    first = loss()
    tr.train(pairs)
    assert loss() < first - 5e-3


def test_an_import_without_a_usable_image_size_is_refused_before_anything_is_trained(sdxl_trainer):
    tr = sdxl_trainer
    good = TrainingPair("a red circle", None, None, 1.0, noise_image(64, 64, 0), noise_image(64, 64, 1))
    tr.train([good])
    before = tr.lora_state()
    empty = Image.new("RGB", (0, 64))  # Pillow makes such an image; it has no pixels to encode
    for bad, error, words in ((TrainingPair("a red circle", None, None, 1.0, empty, good.l_image),
                               ConditioningError, r"no usable size \(0x64 pixels\)"),
                              (TrainingPair("a red circle", None, None, 1.0, good.w_image, "not an image"),
                               PairError, "neither trajectories nor images")):
        with pytest.raises(error, match=words):
            tr.train([good, bad])
    after = tr.lora_state()  # the refused runs did not even start a fresh adapter
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())


# ------------------------------------------------------------------ a LoRA for another model


@pytest.mark.parametrize("kind, other, words", [("sdxl", "sd1", "another model family"),
                                                ("sd2", "sd1", "another model family or size")])
def test_a_lora_for_another_family_or_unet_shape_is_refused_and_the_live_adapter_stays(tmp_path, kind, other,
                                                                                       words):
    model = load_pipeline(str(tiny_family(kind)))
    repo = Repository(tmp_path / "data")
    live = LiveModel(Sampler(model, SamplerConfig.from_defaults(model.sampler_defaults, steps=3)), repo)
    try:
        good = register_adapter(repo, random_lora(1, scale=0.3, unet=model.pipe.unet))
        assert live.sync() and live.adapter_version == good
        served = live.generate("a red circle", [5])[0].trajectory.latents
        foreign = random_lora(2, unet=load_pipeline(str(tiny_family(other))).pipe.unet)
        bad = register_adapter(repo, foreign)
        with pytest.raises(AdapterLoadError, match=words):
            live.sync()
        with pytest.raises(AdapterLoadError, match=words):  # the compare view's path
            live.at(bad).generate("a red circle", [5])
        repo.set_adapter_status(good, "live", reason="back")
        assert live.adapter_version == good
        assert torch.equal(live.generate("a red circle", [5])[0].trajectory.latents, served)
    finally:
        repo.close()


# ------------------------------------------------------------------ the trainer on a half-precision base


def test_a_half_precision_base_trains_a_float32_lora_with_float32_optimizer_state(monkeypatch):
    optimizers = []
    real = torch.optim.AdamW

    class Recorded(real):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            optimizers.append(self)

    monkeypatch.setattr(torch.optim, "AdamW", Recorded)
    folder = str(tiny_family("sd1"))
    pairs = sampled_pairs(load_pipeline(folder), steps=4)
    tr = Trainer(folder, TrainerConfig(train_steps=2, batch_pairs=4, steps_per_pair=2, lr=3e-3), dtype="bf16")
    result = tr.train(pairs)
    assert result.history[0]["loss"] == pytest.approx(np.log(2), abs=1e-5)  # LoRA off == LoRA at B = 0, exactly
    assert all(np.isfinite(h["loss"]) for h in result.history)
    lora = tr.lora_parameters()
    frozen = [p for n, p in tr.unet.named_parameters() if "lora_" not in n]
    assert lora and {p.dtype for p in lora} == {torch.float32} and {p.dtype for p in frozen} == {torch.bfloat16}
    assert tr.model.pipe.text_encoder.dtype == torch.bfloat16
    assert tr.vae.dtype == torch.float32  # this VAE asks to be upcast (force_upcast)
    (opt,) = optimizers
    states = [opt.state[p] for p in lora]
    assert states and {s["exp_avg"].dtype for s in states} == {torch.float32}
    assert tr.mixed_precision() == "no"  # on a CPU the config decides; on a GPU the base's dtype does


# ------------------------------------------------------------------ chains with a step that has no density


def test_a_linspace_chain_never_trains_on_its_final_identity_step(tmp_path):
    model = load_pipeline(str(edited_copy("sd1", tmp_path / "sd1-linspace", timestep_spacing="linspace")))
    mask = check_sampling(model.pipe.scheduler, 4, 1.0)
    assert mask.tolist() == [True, True, True, False]  # t = 0 lands on abar_0 again: std 0
    pairs = sampled_pairs(model, n=2, steps=4)
    cfg = TrainerConfig(objective="trajectory", train_steps=2, batch_pairs=2, steps_per_pair=16, lr=3e-3)
    tr = Trainer(model, cfg)
    assert tr.implied_noise(pairs[0].w).shape[0] == 3
    result = tr.train(pairs)  # 64 draws of uniform step indices: the last step would come up (and raise) unmasked
    assert all(np.isfinite(h["loss"]) for h in result.history)
    drawn = sample_step_indices(4, 1.0, 1000, torch.Generator().manual_seed(0), allowed=mask)
    assert set(drawn.tolist()) == {0, 1, 2}
    same = [sample_step_indices(4, 0.9, 50, torch.Generator().manual_seed(1), allowed=a) for a in (None, [True] * 4)]
    assert torch.equal(*same)
    with pytest.raises(ValueError, match="every step"):
        sample_step_indices(4, 0.9, 5, allowed=[False] * 4)
