"""The work behind the Train and Data tabs' controls, as three small services with explicit dependencies.

- `TrainingControls(repo, worker, trainer_config)`: the training settings (whose votes are included), Train now,
  the adapter history and its loss curves.
- `Releases(repo, live)`: make live and roll back; an adapter whose stored file does not hash to the SHA-256 in
  its database row is refused before anything changes, and the live model then follows storage (`LiveModel.sync`).
- `DataExchange(repo, export_dir)`: export / import of Pick-a-Pic Parquet files, counts and per-annotator tables.

They check no permission: `app.studio.Studio` asks `AccessPolicy.require_admin` before it calls a changing method,
so the UI and the API get the same answer. The acting admin's name (`by`) goes into the log and the adapter's
status reason. Knows no Gradio, no SQL and no tensor math.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import secrets
from pathlib import Path

from alignment.serving.live import LiveModel
from app.inputs import SETTINGS, VOTE_CHOICES, StudioError, parse_setting
from settings import TrainerConfig, is_anonymous

WORKER_SETTINGS = {"train_every", "train_annotators", "train_voters"}
from storage import BlobIntegrityError, BlobNotFoundError, InvalidStatusError, Repository
from storage.export import ImportLimits, export_parquet, import_parquet

log = logging.getLogger(__name__)

# Adapter metrics worth a glance in the history table, with their labels (all of them stay in the database). The
# worker's fidelity figures are the confirmation seeds' (the adapter was not selected on them); the guard's own
# figure on the seeds it selected on is labelled as such.
SHOWN_METRICS = {"accuracy": "accuracy", "margin": "margin",
                 "fidelity_base": "fidelity base (confirmation seeds)",
                 "fidelity_candidate": "fidelity adapter (confirmation seeds)",
                 "fidelity_lower_bound": "90% bound of the difference",
                 "guard_selection_fidelity_candidate": "guard's own fidelity (selection seeds)",
                 "checkpoint_step": "checkpoint", "drift": "drift", "pairs": "pairs", "steps": "steps",
                 "train_seconds": "train s", "guard_seconds": "guard s"}


class TrainingControls:
    """Training settings for the next runs, Train now, and what past runs produced."""

    def __init__(self, repo: Repository, worker=None, trainer_config: TrainerConfig | None = None):
        self.repo = repo
        self.worker = worker
        self.trainer_config = trainer_config or (worker.trainer_config if worker is not None else TrainerConfig())

    def settings(self) -> dict:
        """The settings the Train tab edits (beta None = the objective's default; train_annotators None = all)."""
        c = self.trainer_config
        every = self.worker.config.train_every if self.worker is not None else None
        chosen = self.worker.config.train_annotators if self.worker is not None else None
        voters = (self.worker.config.train_voters or "everyone") if self.worker is not None else None
        return {"objective": c.objective, "gamma": c.gamma, "beta": c.beta, "lr": c.lr,
                "train_steps": c.train_steps, "train_every": every,
                "train_annotators": list(chosen) if chosen else None, "train_voters": voters}

    def update_settings(self, changes: dict, *, by: str) -> dict:
        """New settings for the next runs (names as in `settings()`); a bad value raises StudioError, changes
        nothing, and says why (the alignment core's `TrainerConfig` and `WorkerConfig` do the checking)."""
        unknown = set(changes) - set(SETTINGS)
        if unknown:
            raise StudioError(f"unknown setting(s): {', '.join(sorted(unknown))}; known: {', '.join(SETTINGS)}")
        clean = {name: parse_setting(name, value) for name, value in changes.items()}
        worker_changes = {}
        if clean.get("train_every") is not None:
            worker_changes["train_every"] = clean["train_every"]
        for name in ("train_annotators", "train_voters"):
            if name in clean:
                worker_changes[name] = clean.pop(name)
        clean.pop("train_every", None)
        try:
            config = dataclasses.replace(self.trainer_config, **clean)
            worker_config = (None if self.worker is None or not worker_changes
                             else dataclasses.replace(self.worker.config, **worker_changes))
        except ValueError as e:
            raise StudioError(f"invalid settings: {e}") from e
        if worker_changes and self.worker is None:
            raise StudioError(f"{' and '.join(sorted(changes.keys() & WORKER_SETTINGS))} "
                              "need the training worker, and this studio runs without one")
        self.trainer_config = config
        if self.worker is not None:
            self.worker.set_trainer_config(config)
            if worker_config is not None:
                self.worker.config = worker_config  # read by the worker's loop on its next poll
        log.info("training settings changed by %r: %s", by, changes)
        return self.settings()

    def train_now(self, *, by: str) -> bool:
        """Ask the worker for a run now; False when one is already going."""
        if self.worker is None:
            raise StudioError("this studio runs without a training worker (started with --no-worker)")
        chosen = self.worker.config.train_annotators
        signed_in = self.worker.config.train_voters == "signed-in"
        have, need = self._preference_votes(chosen, signed_in), self.worker.config.min_votes
        if have < need:
            whose = f" from {', '.join(chosen)}" if chosen else (" from signed-in annotators" if signed_in else "")
            raise StudioError(f"training needs at least {need} preference votes (left, right or tie){whose}; "
                              f"there are {have} so far")
        log.info("training requested by %r", by)
        return self.worker.request_training()

    def _preference_votes(self, annotators, signed_in_only: bool = False) -> int:
        if not annotators and not signed_in_only:
            return self.repo.votes_since(0)
        rows = self.repo.annotator_stats()["annotators"]
        return sum(sum(r["per_choice"][c] for c in ("left", "right", "tie")) for r in rows
                   if (not annotators or r["annotator"] in annotators)
                   and not (signed_in_only and is_anonymous(r["annotator"])))

    def adapters(self) -> list[dict]:
        """The adapter history, newest first, as plain rows for the table."""
        rows = []
        for a in reversed(self.repo.list_adapters()):
            shown = [k for k in SHOWN_METRICS if a.metrics.get(k) is not None]
            rows.append({"version": a.version, "status": a.status, "objective": a.objective,
                         "votes used": a.votes_used, "loss": _short(a.metrics.get("loss", "")),
                         "metrics": ", ".join(f"{SHOWN_METRICS[k]} {_short(a.metrics[k])}" for k in shown),
                         "created": a.created_at.astimezone().strftime("%Y-%m-%d %H:%M:%S"),
                         "note": a.status_reason or ""})
        return rows

    def loss_points(self) -> list[dict]:
        """Training loss per optimiser step of each adapter version, for the Train tab's plot."""
        points = []
        for a in self.repo.list_adapters():
            curve = a.metrics.get("loss_curve")
            if isinstance(curve, list):
                points += [{"step": i + 1, "loss": float(loss), "version": f"v{a.version}"}
                           for i, loss in enumerate(curve) if isinstance(loss, (int, float))]
        return points


class Releases:
    """Which adapter version is live: storage is told first, then the live model follows it."""

    def __init__(self, repo: Repository, live: LiveModel):
        self.repo = repo
        self.live = live

    def make_live(self, version: int | None, *, by: str) -> int | None:
        """Make `version` (None = the base model) the live adapter and swap it into the live model. The adapter's
        file must match the SHA-256 the database recorded for it; otherwise nothing changes."""
        if version is None:
            live = self.repo.live_adapter()
            if live is not None:
                self.repo.set_adapter_status(live.version, "retired", reason=f"base model made live by {by}")
        else:
            self._check_adapter_file(version)
            self.repo.set_adapter_status(version, "live", reason=f"made live by {by}")
        self.live.sync()
        log.info("%s made live by %r", "base" if version is None else f"v{version}", by)
        return version

    def rollback(self, *, by: str) -> int | None:
        """Mark the live adapter rolled back and make the newest earlier version that had been live (or the base)
        live, in one transaction; a rolled-back version is never a later roll back's target."""
        try:
            live = self.repo.live_adapter()
            if live is None:
                raise StudioError("nothing to roll back: the base model is live")
            target = self.repo.rollback_target()
            if target is not None:
                self._check_adapter_file(target)  # before anything changes
            self.repo.roll_back(live.version, target, reason=f"rolled back by {by}")
        except InvalidStatusError as e:  # e.g. the worker promoted a new version meanwhile
            raise StudioError(str(e)) from e
        self.live.sync()
        log.info("v%d rolled back by %r; %s is live", live.version, by, "base" if target is None else f"v{target}")
        return target

    def _check_adapter_file(self, version: int) -> None:
        """StudioError (logged) unless adapter `version`'s stored file hashes to the SHA-256 in its database row."""
        record = self.repo.get_adapter(version)
        try:
            self.repo.read_blob(record.file_hash)  # the blob store checks the bytes against the hash
        except (BlobIntegrityError, BlobNotFoundError) as e:
            log.error("adapter v%d refused: %s", version, e)
            raise StudioError(f"adapter v{version} is refused: its file does not match the SHA-256 recorded in "
                              f"the database ({e}). Nothing was changed.") from e


class DataExchange:
    """Votes in and out as Pick-a-Pic Parquet, and the Data tab's tables."""

    def __init__(self, repo: Repository, export_dir: Path, limits: ImportLimits | None = None):
        self.repo = repo
        self.export_dir = Path(export_dir)
        self.limits = limits or ImportLimits()

    def export(self, *, by: str) -> tuple[Path, int]:
        """All preference votes with their images as Pick-a-Pic Parquet; returns (file, rows)."""
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = self.export_dir / f"studio-votes-{stamp}-{secrets.token_hex(3)}.parquet"
        rows = export_parquet(self.repo, path)
        log.info("%d votes exported by %r", rows, by)
        return path, rows

    def import_file(self, path, *, by: str) -> int:
        """Import a Pick-a-Pic Parquet file (all rows or none); returns the number of pairs added. `path` is a file
        the server chose (the UI and the API pass Gradio's upload of the person's file only)."""
        if not path:
            raise StudioError("choose a .parquet file to import first")
        added = import_parquet(self.repo, Path(path), limits=self.limits)
        log.info("%d pairs imported by %r", added, by)
        return added

    def counts(self) -> dict:
        return self.repo.counts()

    def annotator_rows(self) -> tuple[list[dict], list[dict]]:
        """The Data tab's tables: votes per annotator and choice with agreement on shared pairs; and agreement
        per couple of annotators. Agreement is a fraction (None where nothing was shared)."""
        stats = self.repo.annotator_stats()
        rows = [{"annotator": r["annotator"], "votes": r["votes"],
                 **{c.replace("_", " "): r["per_choice"][c] for c in VOTE_CHOICES},
                 "agreement": _rate(r["agreements"], r["comparisons"]), "shared pairs": r["shared_pairs"]}
                for r in stats["annotators"]]
        couples = [{"annotator A": c["annotator_a"], "annotator B": c["annotator_b"],
                    "shared pairs": c["shared_pairs"], "agreement": _rate(c["agreements"], c["shared_pairs"])}
                   for c in stats["pairs"]]
        return rows, couples


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 3) if whole else None


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
