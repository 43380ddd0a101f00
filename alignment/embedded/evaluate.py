"""Quality of the embedded model, measured: does the image show what the prompt asks for?

    python -m alignment.embedded.evaluate --seeds 4 --json runs/quality.json --grid docs/samples.png

Prompts are built from the (colour, shape, background) combinations that training never saw
(`data.held_out_combinations`), each once with "small" and once with "large", rendered at the studio's sampler
settings (stochastic DDIM, eta 1.0) and read back by `analysis.analyze`. Reported: foreground colour, background
colour and shape accuracy, and how often "large" has more foreground than "small" for the same seed. The same
`prompt_fidelity` score is what the fidelity guard compares between the base and a candidate adapter.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from alignment.embedded.analysis import analyze
from alignment.embedded.data import caption_for, held_out_combinations

ATTRIBUTES = ("colour", "background", "shape")


@dataclass(frozen=True)
class PromptCase:
    prompt: str
    colour: str
    shape: str
    background: str
    size: str | None


def held_out_cases(sizes=("small", "large")) -> list[PromptCase]:
    return [PromptCase(caption_for(c, s, size, b), c, s, b, size)
            for (c, s, b) in sorted(held_out_combinations()) for size in sizes]


def score(images, cases: list[PromptCase]) -> dict:
    """Per-attribute accuracy of images against the cases they were generated for."""
    hits = {a: 0 for a in ATTRIBUTES}
    for img, case in zip(images, cases, strict=True):
        r = analyze(img)
        hits["colour"] += r.colour == case.colour
        hits["background"] += r.background == case.background
        hits["shape"] += r.shape == case.shape
    n = max(1, len(cases))
    out = {a: hits[a] / n for a in ATTRIBUTES}
    out["fidelity"] = sum(out[a] for a in ATTRIBUTES) / len(ATTRIBUTES)
    return out


def render(sampler, cases: list[PromptCase], seeds: list[int]) -> list[list[Image.Image]]:
    """images[i][j]: case i, seed j."""
    return [[g.image for g in sampler.generate(case.prompt, seeds)] for case in cases]


def prompt_fidelity(sampler, seeds=(1000, 1001), cases: list[PromptCase] | None = None) -> float:
    """Mean of colour, background and shape accuracy on held-out prompts (0..1), at the sampler's settings."""
    cases = cases or held_out_cases(sizes=(None,))
    images = render(sampler, cases, list(seeds))
    flat_imgs = [im for row in images for im in row]
    flat_cases = [c for c in cases for _ in seeds]
    return score(flat_imgs, flat_cases)["fidelity"]


def evaluate(sampler, seeds: list[int]) -> tuple[dict, list[list[Image.Image]], list[PromptCase]]:
    cases = held_out_cases()
    images = render(sampler, cases, seeds)
    result = score([im for row in images for im in row], [c for c in cases for _ in seeds])
    by_key = {(c.colour, c.shape, c.background, c.size): row for c, row in zip(cases, images)}
    larger = total = 0
    for (c, s, b, size), row in by_key.items():
        if size != "small":
            continue
        for small_img, large_img in zip(row, by_key[(c, s, b, "large")]):
            larger += analyze(large_img).area > analyze(small_img).area
            total += 1
    result["large_bigger_than_small"] = larger / max(1, total)
    for size in ("small", "large"):  # large shapes hide more background and touch the frame: scored apart
        rows = [(row, c) for c, row in zip(cases, images) if c.size == size]
        result[f"fidelity_{size}"] = score([im for row, _ in rows for im in row],
                                           [c for _, c in rows for _ in seeds])["fidelity"]
    result["images"] = len(cases) * len(seeds)
    return result, images, cases


def grid(images: list[list[Image.Image]], scale: int = 3) -> Image.Image:
    h = len(images)
    w = max(len(r) for r in images)
    s = images[0][0].size[0] * scale
    out = Image.new("RGB", (w * s, h * s), (255, 255, 255))
    for i, row in enumerate(images):
        for j, im in enumerate(row):
            out.paste(im.resize((s, s), Image.Resampling.NEAREST), (j * s, i * s))
    return out


def main(argv: list[str] | None = None) -> None:
    from alignment.families.loader import load_pipeline
    from alignment.serving.sampler import Sampler
    from settings import SamplerConfig

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="embedded")
    p.add_argument("--seeds", type=int, default=4, help="seeds per prompt")
    p.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed .. first-seed+seeds-1")
    p.add_argument("--steps", type=int)
    p.add_argument("--guidance", type=float)
    p.add_argument("--eta", type=float)
    p.add_argument("--json", type=Path)
    p.add_argument("--grid", type=Path, help="write a PNG grid: rows = prompts, columns = seeds")
    args = p.parse_args(argv)
    model = load_pipeline(args.model)
    cfg = SamplerConfig.from_defaults(model.sampler_defaults, steps=args.steps, guidance_scale=args.guidance,
                                      eta=args.eta)
    result, images, cases = evaluate(Sampler(model, cfg), list(range(args.first_seed, args.first_seed + args.seeds)))
    result["sampler"] = {"steps": cfg.steps, "guidance_scale": cfg.guidance_scale, "eta": cfg.eta}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    if args.grid:
        args.grid.parent.mkdir(parents=True, exist_ok=True)
        grid(images[:16]).save(args.grid)
        print("grid rows:", "; ".join(c.prompt for c in cases[:16]))


if __name__ == "__main__":
    main()
