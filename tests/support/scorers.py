"""Stand-in fidelity scorers named as `module:function` in worker tests (`WorkerConfig.fidelity_scorer`), and a
tiny random CLIP model saved offline, for the plumbing of the CLIP scorer (its numbers mean nothing)."""

from __future__ import annotations

from pathlib import Path


def nan_scorer(images, prompts) -> float:
    """A scorer that cannot measure: NaN for any images."""
    return float("nan")


def failing_scorer(images, prompts) -> float:
    raise RuntimeError("the scoring service is down")


def constant_scorer(images, prompts) -> float:
    """Every image equally faithful: the guard then decides by drift alone."""
    return 0.8


def tiny_clip(directory: Path) -> Path:
    """A random-weight `CLIPModel` with its processor (the embedded model's locally built tokenizer and a 32 px
    image processor) saved in `directory`, loadable with `from_pretrained` and no network."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from alignment.embedded.tokenizer import build_tokenizer

    directory = Path(directory)
    tokenizer = build_tokenizer(directory / "tokenizer-files")
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=tokenizer.model_max_length,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                  patch_size=8)
    torch.manual_seed(0)  # the same random CLIP every time
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(directory)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
    return directory
