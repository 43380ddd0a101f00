"""The SDXL-shaped builder: its full scale is SDXL's UNet, and at tiny scale (seconds) it writes an fp16 folder
that the studio's loader loads as SDXL; the reduced copy changes only the UNet's transformer layers."""

import json

import pytest
import torch
from accelerate import init_empty_weights
from safetensors import safe_open

from alignment.families.loader import load_pipeline
from benchmarks.sdxl_shaped import FULL, main, parameter_counts, reduced_copy, unet


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("sdxl") / "tiny"
    main(["--out", str(out), "--scale", "tiny", "--size", "64", "--steps", "4"])
    return out


def test_the_full_scale_is_sdxl_base_unet():
    with init_empty_weights():  # meta tensors: no memory
        u = unet(FULL)
    assert sum(p.numel() for p in u.parameters()) == 2_567_463_684  # SDXL 1.0 base's UNet
    assert u.config.addition_embed_type == "text_time" and u.config.cross_attention_dim == 2048
    assert u.add_embedding.linear_1.in_features == 2816


def test_the_tiny_folder_loads_as_sdxl_with_its_sampler_settings_and_fp16_weights(tiny):
    model = load_pipeline(str(tiny))
    assert model.family.name == "sdxl" and model.pipe.text_encoder_2 is not None
    assert model.sampler_defaults["height"] == 64 and model.sampler_defaults["steps"] == 4
    assert model.pipe.unet.config.transformer_layers_per_block == [1, 2, 2]
    assert model.pipe.tokenizer_2.pad_token == "!" and model.pipe.tokenizer.model_max_length == 77
    for part in ("unet", "text_encoder_2"):
        (weights,) = (tiny / part).glob("*.safetensors")
        with safe_open(weights, "pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}


def test_the_reduced_copy_has_fewer_transformer_layers_and_shares_the_rest(tiny, tmp_path):
    out = reduced_copy(tiny, (1, 1, 1), tmp_path / "reduced")
    assert (out / "text_encoder_2").is_symlink() and not (out / "unet").is_symlink()
    config = json.loads((out / "unet" / "config.json").read_text())
    assert config["transformer_layers_per_block"] == [1, 1, 1]
    counts, full = parameter_counts(out), parameter_counts(tiny)
    assert counts["unet"] < full["unet"] and counts["text_encoder_2"] == full["text_encoder_2"]
    model = load_pipeline(str(out))
    assert model.family.name == "sdxl" and model.pipe.unet.dtype == torch.float32
