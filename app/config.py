"""`StudioConfig`: everything `python -m app` needs to start, validated in one place.

The entry point (`app.__main__`) fills it from command-line flags and `STUDIO_*` environment variables; tests build
it directly. Objective settings are kept as plain fields here and turned into the alignment core's `TrainerConfig`
by `Studio`, so that a bad value is refused at start-up with the same message the Train tab shows.
This module knows no Gradio, no model and no database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

OBJECTIVES = ("discounted", "trajectory", "diffusion-dpo")


@dataclass
class StudioConfig:
    """How and where the studio runs, and the objective its background worker trains with."""

    model: str = field(default="embedded", metadata={"help": "'embedded', a hub id or a local diffusers folder"})
    data_dir: Path = field(default=Path("studio-data"), metadata={"help": "database, images, adapters"})
    database_url: str | None = field(default=None, metadata={"help": "SQLAlchemy URL; default SQLite in data_dir"})
    host: str = "127.0.0.1"
    port: int = 7860
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:N or None = auto"})
    train_every: int = field(default=8, metadata={"help": "new votes that trigger a training run"})
    train_interval_s: float | None = field(default=None, metadata={"help": "also train on this timer (seconds)"})
    min_votes: int = field(default=4, metadata={"help": "preference votes needed before the first run"})
    worker: bool = field(default=True, metadata={"help": "run the training worker as a thread of the app"})
    # Objective settings (None = the alignment core's default for the chosen objective).
    objective: str = "discounted"
    gamma: float | None = None
    beta: float | None = None
    lr: float | None = None
    train_steps: int | None = None
    concurrency: int = field(default=8, metadata={"help": "events served at once (generation is always one)"})

    def __post_init__(self):
        self.data_dir = Path(self.data_dir)
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError("model must be 'embedded', a hub id like 'org/name' or a local folder")
        if not 1 <= int(self.port) <= 65535:
            raise ValueError(f"port must be between 1 and 65535, got {self.port}")
        if not isinstance(self.host, str) or not self.host.strip():
            raise ValueError("host must be an address to listen on, e.g. 127.0.0.1 or 0.0.0.0")
        if int(self.train_every) < 1:
            raise ValueError(f"train_every must be at least 1 vote, got {self.train_every}")
        if int(self.min_votes) < 1:
            raise ValueError(f"min_votes must be at least 1, got {self.min_votes}")
        if self.train_interval_s is not None and not self.train_interval_s > 0:
            raise ValueError(f"train_interval_s must be positive seconds or None, got {self.train_interval_s}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; choose one of {', '.join(OBJECTIVES)}")
        if int(self.concurrency) < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        self.port, self.train_every, self.min_votes = int(self.port), int(self.train_every), int(self.min_votes)

    def objective_settings(self) -> dict:
        """The objective fields that were set, under the alignment core's names (`TrainerConfig`)."""
        given = {"objective": self.objective, "gamma": self.gamma, "beta": self.beta, "lr": self.lr,
                 "train_steps": self.train_steps}
        return {k: v for k, v in given.items() if v is not None}
