"""The model loader: the committed embedded pipeline offline, sensible errors for everything else."""

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from alignment.families.loader import EMBEDDED_PATH, ModelLoadError, load_pipeline, pick_dtype


def test_committed_pipeline_loads_offline_with_plain_diffusers():
    # Weights are stored in fp16; on a CPU ask for fp32 as for any SD checkpoint.
    pipe = StableDiffusionPipeline.from_pretrained(EMBEDDED_PATH, local_files_only=True, torch_dtype=torch.float32)
    out = pipe("a red circle", num_inference_steps=4, height=32, width=32, output_type="np",
               generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (1, 32, 32, 3)


def test_embedded_model_is_stochastic_ddim_with_recorded_defaults(embedded):
    sched = embedded.pipe.scheduler
    assert isinstance(sched, DDIMScheduler) and not sched.config.set_alpha_to_one
    assert float(sched.final_alpha_cumprod) < 1.0  # the last reverse step keeps a non-zero variance
    assert embedded.model_id == "embedded" and embedded.dtype == torch.float32
    assert {"steps", "guidance_scale", "eta"} <= set(embedded.sampler_defaults)
    assert embedded.sampler_defaults["eta"] > 0


def test_weights_are_fp16_and_small():
    files = list(EMBEDDED_PATH.rglob("*.safetensors"))
    assert files and sum(f.stat().st_size for f in EMBEDDED_PATH.rglob("*") if f.is_file()) < 20 * 2**20


@pytest.mark.parametrize("model, words", [
    ("/nonexistent/model", "not a diffusers pipeline folder"),
    ("just-a-word", "neither a local diffusers folder nor a hub id"),
])
def test_bad_model_names_get_clear_errors(model, words):
    with pytest.raises(ModelLoadError, match=words):
        load_pipeline(model)


def test_unreachable_hub_model_names_the_offline_alternative(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="embedded"):
        load_pipeline("some-org/some-model-that-is-not-cached")


def test_device_and_dtype_choice():
    assert pick_dtype(torch.device("cpu")) == torch.float32
    assert pick_dtype(torch.device("cpu"), "bf16") == torch.bfloat16
    with pytest.raises(ModelLoadError):
        pick_dtype(torch.device("cpu"), "int3")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="no CUDA"):
            load_pipeline("embedded", device="cuda")
