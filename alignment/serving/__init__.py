"""Serving: the sampler (generation with trajectory capture), the fused-LoRA swap and the live-model owner."""
