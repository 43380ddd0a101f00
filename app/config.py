"""`StudioConfig`: everything `python -m app` needs to start, validated in one place.

A `StudioConfig` has the fields of every settings part the studio takes (`PARTS`, defined in `settings`): the
model, the store, the server, the sharing settings, and the trainer's and the worker's settings, so the app and
`python -m alignment.worker` accept the same training settings under the same names. Each part checks its own
fields; this module adds the checks that need the app's access rules: password logins (from `auth` and
`auth_file`), admins that can sign in, the admin token, and the model allow-list of a public studio, and turns
them into the `AccessPolicy` and `RateLimits` that `Studio` enforces. "Public" means bound to a non-loopback
address or on a Space. `trainer_config()` and `worker_config()` give the parts the services are built from.
This module knows no Gradio, no model and no database.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from app.access import AccessPolicy, RateLimits, parse_auth_entry, read_auth_file
from settings import (PUBLIC_MODELS, PUBLIC_PAIRS_PER_MINUTE, PUBLIC_VOTES_PER_MINUTE, ModelConfig, ServerConfig,
                      SharingConfig, StoreConfig, TrainerConfig, WorkerConfig)

PARTS = (ModelConfig, StoreConfig, ServerConfig, SharingConfig, TrainerConfig, WorkerConfig)


@dataclass
class StudioConfig(ModelConfig, StoreConfig, ServerConfig, SharingConfig, TrainerConfig, WorkerConfig):
    """How and where the studio runs, who may use it, and how its worker trains (the fields of `PARTS`)."""

    # Never a flag or a STUDIO_ variable: Spaces OAuth is real only on a Space, so only SPACE_ID may say so.
    on_spaces: bool = field(default=False, metadata={"help": "running on a Hugging Face Space (SPACE_ID is set)"})
    # The password logins: `auth` entries ("user:password" or (user, password)), then `auth_file`'s lines.
    logins: tuple[tuple[str, str], ...] = field(default=(), init=False, repr=False)

    def __post_init__(self):
        for part in PARTS:
            part.__post_init__(self)
        self.logins = self._read_logins()
        self._check_sharing()

    def trainer_config(self) -> TrainerConfig:
        return _part(TrainerConfig, self)

    def worker_config(self) -> WorkerConfig:
        return _part(WorkerConfig, self)

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

    def _read_logins(self) -> tuple[tuple[str, str], ...]:
        entries = [parse_auth_entry(entry if isinstance(entry, str) else ":".join(entry)) for entry in self.auth]
        if self.auth_file is not None:
            entries += read_auth_file(self.auth_file)
        return tuple(entries)

    def _check_sharing(self) -> None:
        users = [user for user, _ in self.logins]
        if len(set(users)) != len(users):
            raise ValueError(f"auth: user {sorted(u for u in users if users.count(u) > 1)[0]!r} is given twice")
        if self.admins and not self.logins and not self.on_spaces:
            raise ValueError("admins are signed-in names, but nobody can sign in here: add --auth user:password "
                             "(or --auth-file), or run on a Space, or use --admin-token instead")
        policy = self.access_policy()  # raises ValueError for a short token or an anonymous admin name
        allowed = self.allowed_models()
        if allowed is not None and self.model not in allowed:
            where = "a Space" if policy.on_spaces else f"{self.host}, a public address"
            raise ValueError(f"model {self.model!r} is not allowed: this studio is bound to {where}, where only "
                             f"{', '.join(allowed)} may be loaded; add it with --allow-models (STUDIO_ALLOW_MODELS)")


def _part(cls, config: StudioConfig):
    """The `cls` part of `config`: its fields' values, checked again by `cls` itself."""
    return cls(**{f.name: getattr(config, f.name) for f in fields(cls) if f.init})
