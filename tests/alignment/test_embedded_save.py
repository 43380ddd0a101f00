"""The embedded model's save step: fp16 weights that plain diffusers loads without a dtype, as fp32 on a CPU."""

import torch
from diffusers import StableDiffusionPipeline
from safetensors import safe_open

from alignment.embedded.train import save_half_precision
from tests.support.families import tiny_family


def test_a_saved_half_precision_folder_loads_and_runs_without_a_dtype(tmp_path):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_family("sd1"), torch_dtype=torch.float32)
    out = save_half_precision(pipe, tmp_path / "m")
    with safe_open(out / "text_encoder" / "model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}  # stored small
    plain = StableDiffusionPipeline.from_pretrained(out, local_files_only=True)
    assert {plain.text_encoder.dtype, plain.unet.dtype, plain.vae.dtype} == {torch.float32}
    images = plain("a red circle", num_inference_steps=2, height=64, width=64, output_type="np",
                   generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 64, 64, 3)
