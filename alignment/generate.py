"""Try the model from the command line.

    python -m alignment.generate "a large red circle on a blue background" --seed 0 --out out.png
    python -m alignment.generate "a blue square" --n 4 --steps 30 --guidance 7 --scale 8 --out grid.png
    python -m alignment.generate "a blue square" --adapter studio-data/adapter.safetensors --out aligned.png

Images are sampled exactly as the studio samples them (stochastic DDIM, the model's default settings unless given);
`--n` images use seeds seed, seed+1, ... and are saved side by side. Bad input gets a one-line error and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

from alignment.families.loader import ModelLoadError, load_pipeline
from alignment.core.lora_files import AdapterLoadError
from alignment.core.limits import PromptError, validate_prompt, validate_seeds
from alignment.serving.sampler import Sampler
from settings import SamplerConfig


def side_by_side(images: list[Image.Image], scale: int) -> Image.Image:
    w, h = images[0].size
    out = Image.new("RGB", (w * scale * len(images), h * scale))
    for i, im in enumerate(images):
        out.paste(im.resize((w * scale, h * scale), Image.Resampling.NEAREST), (i * w * scale, 0))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=1, help="number of images (seeds seed .. seed+n-1)")
    p.add_argument("--out", type=Path, default=Path("out.png"))
    p.add_argument("--model", default="embedded", help="'embedded', a hub id or a local diffusers folder")
    p.add_argument("--steps", type=int)
    p.add_argument("--guidance", type=float)
    p.add_argument("--eta", type=float)
    p.add_argument("--device", default=None)
    p.add_argument("--adapter", default=None, help="a LoRA folder or .safetensors file to apply")
    p.add_argument("--scale", type=int, default=1, help="enlarge the saved image by this factor (nearest)")
    a = p.parse_args(argv)
    try:
        if not 1 <= a.n <= 64:
            raise ValueError(f"--n must be between 1 and 64, got {a.n}")
        if not 1 <= a.scale <= 32:
            raise ValueError(f"--scale must be between 1 and 32, got {a.scale}")
        validate_prompt(a.prompt)  # fail before loading any weights
        validate_seeds([a.seed, a.seed + a.n - 1])
        SamplerConfig(**{k: v for k, v in (("steps", a.steps), ("guidance_scale", a.guidance), ("eta", a.eta))
                         if v is not None})
        model = load_pipeline(a.model, device=a.device)
        cfg = SamplerConfig.from_defaults(model.sampler_defaults, steps=a.steps, guidance_scale=a.guidance, eta=a.eta)
        sampler = Sampler(model, cfg)
        if a.adapter:
            sampler.set_adapter(1, a.adapter)
        gens = sampler.generate(a.prompt, list(range(a.seed, a.seed + a.n)))
    except (ModelLoadError, PromptError, AdapterLoadError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    a.out.parent.mkdir(parents=True, exist_ok=True)
    side_by_side([g.image for g in gens], a.scale).save(a.out)
    print(f"wrote {a.out} ({a.n} image(s), {cfg.steps} steps, guidance {cfg.guidance_scale}, eta {cfg.eta})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
