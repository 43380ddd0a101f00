"""Evaluation: programmatic labelers, the headless simulation and its statistics."""
