"""`StudioConfig`: everything `python -m app` needs to start, validated in one place.

The entry point (`app.__main__`) fills it from command-line flags and `STUDIO_*` environment variables; tests build
it directly. Objective settings are kept as plain fields here and turned into the alignment core's `TrainerConfig`
by `Studio`, so that a bad value is refused at start-up with the same message the Train tab shows. The sharing
fields (logins, admins, rate limits, the model allow-list) are checked here too, and turned into the `AccessPolicy`
and `RateLimits` that `Studio` enforces; "public" means bound to a non-loopback address or on a Space.
This module knows no Gradio, no model and no database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from app.access import AccessPolicy, RateLimits, parse_auth_entry
from settings import OBJECTIVES

# Guards of a public studio (bound to another address than loopback, or on a Space); off on localhost.
PUBLIC_PAIRS_PER_MINUTE = 30  # generated pairs per annotator (compare and blind A/B renders count too)
PUBLIC_VOTES_PER_MINUTE = 120  # votes per annotator (blind A/B choices count too)
PUBLIC_MODELS = ("embedded",)  # the models a public studio may load unless --allow-models says otherwise


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
    # Sharing and security (see README "Sharing and security").
    on_spaces: bool = field(default=False, metadata={"help": "running on a Hugging Face Space (SPACE_ID is set)"})
    auth: tuple[tuple[str, str], ...] = field(default=(), metadata={"help": "(user, password) logins"})
    admins: tuple[str, ...] = field(default=(), metadata={"help": "signed-in names allowed to use admin controls"})
    admin_token: str | None = field(default=None, metadata={"help": "a secret that unlocks admin controls"})
    pairs_per_minute: int | None = field(default=None, metadata={
        "help": f"per annotator; None = {PUBLIC_PAIRS_PER_MINUTE} when public, no limit locally; 0 = no limit"})
    votes_per_minute: int | None = field(default=None, metadata={
        "help": f"per annotator; None = {PUBLIC_VOTES_PER_MINUTE} when public, no limit locally; 0 = no limit"})
    allow_models: tuple[str, ...] | None = field(default=None, metadata={
        "help": "models a public studio may load; None = only 'embedded' when public, any locally"})
    train_annotators: tuple[str, ...] | None = field(default=None, metadata={
        "help": "train only on these annotators' votes (None = everyone's)"})

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
        self._check_sharing()

    @property
    def public(self) -> bool:
        """Reachable by others: bound to a non-loopback address, or on a Space."""
        return self.access_policy().public

    def access_policy(self) -> AccessPolicy:
        return AccessPolicy.for_host(self.host, admins=self.admins, admin_token=self.admin_token,
                                     on_spaces=self.on_spaces)

    def rate_limits(self) -> RateLimits:
        public = self.public
        pairs = self.pairs_per_minute if self.pairs_per_minute is not None else (
            PUBLIC_PAIRS_PER_MINUTE if public else 0)
        votes = self.votes_per_minute if self.votes_per_minute is not None else (
            PUBLIC_VOTES_PER_MINUTE if public else 0)
        return RateLimits.per_minute(pairs, votes)

    def allowed_models(self) -> tuple[str, ...] | None:
        """The models this studio may load (None = any)."""
        if self.allow_models is not None:
            return self.allow_models
        return PUBLIC_MODELS if self.public else None

    def _check_sharing(self) -> None:
        self.auth = tuple(parse_auth_entry(f"{user}:{password}") for user, password in self.auth)
        users = [user for user, _ in self.auth]
        if len(set(users)) != len(users):
            raise ValueError(f"auth: user {sorted(u for u in users if users.count(u) > 1)[0]!r} is given twice")
        self.admins = _names(self.admins, "admins")
        self.allow_models = None if self.allow_models is None else _names(self.allow_models, "allow_models")
        self.train_annotators = (None if self.train_annotators is None
                                 else _names(self.train_annotators, "train_annotators") or None)
        if self.admin_token is not None and not self.admin_token.strip():
            self.admin_token = None
        if self.admins and not self.auth and not self.on_spaces:
            raise ValueError("admins are signed-in names, but nobody can sign in here: add --auth user:password "
                             "(or --auth-file), or run on a Space, or use --admin-token instead")
        for name, value in (("pairs_per_minute", self.pairs_per_minute), ("votes_per_minute", self.votes_per_minute)):
            if value is not None and (isinstance(value, bool) or int(value) != value or value < 0):
                raise ValueError(f"{name} must be a whole number >= 0 (0 = no limit), got {value}")
        policy = self.access_policy()  # raises ValueError for a short token or an anonymous admin name
        allowed = self.allowed_models()
        if allowed is not None and self.model not in allowed:
            where = "a Space" if policy.on_spaces else f"{self.host}, a public address"
            raise ValueError(f"model {self.model!r} is not allowed: this studio is bound to {where}, where only "
                             f"{', '.join(allowed)} may be loaded; add it with --allow-models (STUDIO_ALLOW_MODELS)")

    def objective_settings(self) -> dict:
        """The objective fields that were set, under the alignment core's names (`TrainerConfig`)."""
        given = {"objective": self.objective, "gamma": self.gamma, "beta": self.beta, "lr": self.lr,
                 "train_steps": self.train_steps}
        return {k: v for k, v in given.items() if v is not None}


def _names(values, what: str) -> tuple[str, ...]:
    """A tuple of distinct, stripped, non-empty names from a sequence or a comma-separated string."""
    items = values.split(",") if isinstance(values, str) else list(values)
    names = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"{what}: expected names, got {item!r:.40}")
        if item.strip() and item.strip() not in names:
            names.append(item.strip())
    return tuple(names)
