"""Training: the trainer, distributed ranks, the fidelity guard and the worker that runs them."""
