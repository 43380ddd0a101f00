"""Try the model from the command line.

    python -m alignment.generate "a large red circle on a blue background" --seed 0 --out out.png
    python -m alignment.generate "a blue square" --n 4 --steps 30 --guidance-scale 7 --scale 8 --out grid.png
    python -m alignment.generate "a blue square" --adapter studio-data/adapter.safetensors --out aligned.png

Images are sampled exactly as the studio samples them (stochastic DDIM, the model's default settings unless given);
`--n` images use seeds seed, seed+1, ... and are saved side by side. Every option has a STUDIO_* variable too (see
--help). Bad input gets a one-line error and exit code 2; flags, variables and the prompt are checked before any
weights are loaded.
"""

from __future__ import annotations

import sys

from PIL import Image

from alignment.families.loader import ModelLoadError, load_pipeline
from alignment.core.lora_files import AdapterLoadError
from alignment.core.limits import PromptError, validate_prompt, validate_seeds
from alignment.serving.sampler import Sampler
from alignment.serving.swap import SwapSlot
from settings import GenerateConfig, ModelConfig, SamplerConfig
from settings_cli import CommandLine


def side_by_side(images: list[Image.Image], scale: int) -> Image.Image:
    w, h = images[0].size
    out = Image.new("RGB", (w * scale * len(images), h * scale))
    for i, im in enumerate(images):
        out.paste(im.resize((w * scale, h * scale), Image.Resampling.NEAREST), (i * w * scale, 0))
    return out


def main(argv: list[str] | None = None) -> int:
    cli = CommandLine(GenerateConfig, ModelConfig, SamplerConfig, prog="python -m alignment.generate",
                      description=__doc__, defaults_elsewhere={SamplerConfig: "the model's"})
    cli.add_argument("prompt", help="what the image should show")
    parsed = cli.parse(argv)
    gen, where = parsed.build(GenerateConfig), parsed.build(ModelConfig)
    sampling = parsed.given(SamplerConfig)
    parsed.build(SamplerConfig)  # checks the given sampler settings before any weights are loaded
    try:
        validate_prompt(parsed.extra.prompt)
        validate_seeds([gen.seed, gen.seed + gen.n - 1])
    except ValueError as e:
        parsed.error(str(e))
    try:
        model = load_pipeline(where.model, device=where.device, dtype=where.dtype)
        cfg = SamplerConfig.from_defaults(model.sampler_defaults, **sampling)
        sampler = Sampler(model, cfg)
        if gen.adapter:
            SwapSlot(model.pipe).load(1, gen.adapter)  # fused, as the studio serves it
        gens = sampler.generate(parsed.extra.prompt, list(range(gen.seed, gen.seed + gen.n)))
    except (ModelLoadError, PromptError, AdapterLoadError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    gen.out.parent.mkdir(parents=True, exist_ok=True)
    side_by_side([g.image for g in gens], gen.scale).save(gen.out)
    print(f"wrote {gen.out} ({gen.n} image(s), {cfg.steps} steps, guidance {cfg.guidance_scale}, eta {cfg.eta})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
