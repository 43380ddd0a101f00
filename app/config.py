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
from app.guard import GuardPolicy
from settings import (PUBLIC_ADDRESS_FACTOR, PUBLIC_MODELS, PUBLIC_PAIRS_PER_MINUTE, PUBLIC_VOTES_PER_MINUTE,
                      ModelConfig, ServerConfig, SharingConfig, StoreConfig, TrainerConfig, WorkerConfig)
from storage.export import ImportLimits

PUBLIC_IDENTITIES_PER_MINUTE = 10  # new anonymous identities per client address on a public studio
PUBLIC_PENDING_PER_ADDRESS = 8  # events one client address may have waiting in the queue on a public studio
MB = 1 << 20

PARTS = (ModelConfig, StoreConfig, ServerConfig, SharingConfig, TrainerConfig, WorkerConfig)


@dataclass
class StudioConfig(ModelConfig, StoreConfig, ServerConfig, SharingConfig, TrainerConfig, WorkerConfig):
    """How and where the studio runs, who may use it, and how its worker trains (the fields of `PARTS`)."""

    # Never a flag or a STUDIO_ variable: Spaces OAuth is real only on a Space, so only the Space may say so
    # (`app.__main__.on_a_space`: SPACE_ID and SYSTEM=spaces, as Gradio itself decides).
    on_spaces: bool = field(default=False, metadata={"help": "running on a Hugging Face Space"})
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

    def effective_train_voters(self) -> str:
        """Whose votes train: `train_voters`, or by default signed-in annotators' on a public studio where people
        can sign in (a Space, or password logins), else everyone's."""
        if self.train_voters is not None:
            return self.train_voters
        return "signed-in" if self.public and (self.on_spaces or self.logins) else "everyone"

    @property
    def public(self) -> bool:
        """Reachable by others: bound to a non-loopback address, or on a Space."""
        return self.access_policy().public

    def access_policy(self) -> AccessPolicy:
        return AccessPolicy.for_host(self.host, admins=self.admins, admin_token=self.admin_token,
                                     on_spaces=self.on_spaces, local_admin=self.local_admin,
                                     forwarded_hops=self.forwarded_hops)

    def rate_limits(self) -> RateLimits:
        """Per annotator and per client address; unset limits are on for a public studio, off on localhost."""
        public = self.public

        def chosen(value, public_default):
            return value if value is not None else (public_default if public else 0)

        pairs = chosen(self.pairs_per_minute, PUBLIC_PAIRS_PER_MINUTE)
        votes = chosen(self.votes_per_minute, PUBLIC_VOTES_PER_MINUTE)
        return RateLimits.per_minute(
            pairs, votes,
            address_pairs=chosen(self.address_pairs_per_minute, PUBLIC_ADDRESS_FACTOR * pairs),
            address_votes=chosen(self.address_votes_per_minute, PUBLIC_ADDRESS_FACTOR * votes),
            identities=chosen(self.identities_per_minute, PUBLIC_IDENTITIES_PER_MINUTE),
            token_failures=self.token_failures_per_minute)

    def guard_policy(self) -> GuardPolicy:
        """What `app.guard.StudioGuard` enforces in front of Gradio's routes."""
        policy = self.access_policy()
        return GuardPolicy(allowed_origins=self.allowed_origins, forwarded_hops=policy.forwarded_hops,
                           pending_per_address=(self.pending_per_address if self.pending_per_address is not None
                                                else PUBLIC_PENDING_PER_ADDRESS if self.public else 0),
                           max_upload_bytes=int(self.max_upload_mb * MB), uploads_per_minute=self.uploads_per_minute,
                           upload_cache_bytes=int(self.upload_cache_mb * MB), lax_cookies=not self.on_spaces)

    def import_limits(self) -> ImportLimits:
        return ImportLimits(max_file_bytes=int(self.max_upload_mb * MB), max_rows=self.max_import_rows,
                            max_value_bytes=int(self.max_import_value_mb * MB))

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
        policy = self.access_policy()  # ValueError: a short token, an anonymous admin name, local_admin in public
        allowed = self.allowed_models()
        if allowed is not None and self.model not in allowed:
            where = "a Space" if policy.on_spaces else f"{self.host}, a public address"
            raise ValueError(f"model {self.model!r} is not allowed: this studio is bound to {where}, where only "
                             f"{', '.join(allowed)} may be loaded; add it with --allow-models (STUDIO_ALLOW_MODELS)")


def _part(cls, config: StudioConfig):
    """The `cls` part of `config`: its fields' values, checked again by `cls` itself."""
    return cls(**{f.name: getattr(config, f.name) for f in fields(cls) if f.init})
