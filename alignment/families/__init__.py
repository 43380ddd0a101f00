"""Model families: reading a diffusers folder, loading the matching pipeline, and each family's conditioning.

`loader.load_pipeline` picks the family from `model_index.json`'s `_class_name` (`sd`: StableDiffusionPipeline,
SD 1.x/2.x; `sdxl`: StableDiffusionXLPipeline); `schedules` turns the checkpoint's scheduler into the stochastic
DDIM chain the objective scores, refusing what it cannot; `base` holds the per-sample `Conditioning`, the guided
prediction every DDIM family shares and the `Family` interface that `sd` and `sdxl` implement; `replay` rebuilds
(and caches) what a stored trajectory was conditioned on for re-scoring it; `images` fits imported images to a
model's size and gives SDXL their original size and crop.
"""
