"""The training script runs from scratch on a tiny subset and saves a pipeline that loads and samples."""

import json

from alignment.embedded.train import TrainConfig, train
from alignment.families.loader import load_pipeline
from alignment.serving.sampler import Sampler


def test_training_script_smoke_run_saves_a_loadable_pipeline(tmp_path):
    out = train(TrainConfig(out=str(tmp_path / "m"), n_images=128, vae_steps=2, vae_batch=16, unet_steps=3,
                            unet_batch=16, warmup=1))
    meta = json.loads((out / "studio.json").read_text())
    assert meta["sampler"]["eta"] > 0 and (out / "tokenizer" / "vocab.json").is_file()
    model = load_pipeline(str(out))
    a, b = Sampler(model).generate_pair("a red circle", (0, 1))
    assert a.image.size == (32, 32) and a.trajectory.latents.shape[0] == meta["sampler"]["steps"] + 1
