"""Model families: reading a diffusers folder and loading the matching pipeline."""
