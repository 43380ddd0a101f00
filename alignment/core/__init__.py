"""Pure math and formats: the objective, the trajectory format, LoRA files, input limits."""
