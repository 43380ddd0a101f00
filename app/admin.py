"""The Train and Data tabs' operations of `Studio`: training settings (whose votes included), Train now, the
adapter history, make live / roll back, export / import, and the per-annotator tables.

`AdminMixin` is part of `Studio` (it uses the studio's repository, worker, sampler and access policy); it is split
out only to keep each file readable. Every method that changes something takes the acting `Actor` and first asks
`AccessPolicy.require_admin`, so the UI and the API get the same answer; a refusal is logged and changes nothing.
Knows no Gradio, no SQL and no tensor math.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import secrets
from pathlib import Path

from alignment.serving.live import sync_live_adapter
from app.access import Actor
from app.inputs import SETTINGS, VOTE_CHOICES, StudioError, parse_setting
from storage import BlobIntegrityError, BlobNotFoundError
from storage.export import export_parquet, import_parquet

log = logging.getLogger(__name__)

# Adapter metrics worth a glance in the history table (all of them stay in the database).
SHOWN_METRICS = ("accuracy", "margin", "fidelity_base", "fidelity_candidate", "drift", "pairs", "steps",
                 "train_seconds")


class AdminMixin:
    """Train- and Data-tab methods of `Studio`."""

    # ---- Train tab --------------------------------------------------------------------------------------------
    def is_admin(self, actor: Actor | None) -> bool:
        return self.access.is_admin(actor)

    def settings(self) -> dict:
        """The settings the Train tab edits (beta None = the objective's default; train_annotators None = all)."""
        c = self.trainer_config
        every = self.worker.config.train_every if self.worker is not None else None
        chosen = self.worker.config.annotators if self.worker is not None else None
        return {"objective": c.objective, "gamma": c.gamma, "beta": c.beta, "lr": c.lr,
                "train_steps": c.train_steps, "train_every": every,
                "train_annotators": list(chosen) if chosen else None}

    def update_settings(self, *, actor: Actor, **changes) -> dict:
        """New settings for the next runs (names as in `settings()`; admins only); a bad value raises StudioError,
        changes nothing, and says why (the alignment core's `TrainerConfig` and `WorkerConfig` do the checking)."""
        self.access.require_admin(actor, "changing the training settings")
        unknown = set(changes) - set(SETTINGS)
        if unknown:
            raise StudioError(f"unknown setting(s): {', '.join(sorted(unknown))}; known: {', '.join(SETTINGS)}")
        clean = {name: parse_setting(name, value) for name, value in changes.items()}
        worker_changes = {}
        if clean.get("train_every") is not None:
            worker_changes["train_every"] = clean["train_every"]
        if "train_annotators" in clean:
            worker_changes["annotators"] = clean["train_annotators"]
        clean.pop("train_every", None)
        clean.pop("train_annotators", None)
        try:
            config = dataclasses.replace(self.trainer_config, **clean)
            worker_config = (None if self.worker is None or not worker_changes
                             else dataclasses.replace(self.worker.config, **worker_changes))
        except ValueError as e:
            raise StudioError(f"invalid settings: {e}") from e
        if worker_changes and self.worker is None:
            raise StudioError(f"{' and '.join(sorted(changes.keys() & {'train_every', 'train_annotators'}))} "
                              "need the training worker, and this studio runs without one")
        self.trainer_config = config
        if self.worker is not None:
            self.worker.set_trainer_config(config)
            if worker_config is not None:
                self.worker.config = worker_config  # read by the worker's loop on its next poll
        log.info("training settings changed by %r: %s", actor.name, changes)
        return self.settings()

    def train_now(self, *, actor: Actor) -> bool:
        """Ask the worker for a run now (admins only); False when one is already going."""
        self.access.require_admin(actor, "train now")
        if self.worker is None:
            raise StudioError("this studio runs without a training worker (started with --no-worker)")
        chosen = self.worker.config.annotators
        have, need = self._preference_votes(chosen), self.worker.config.min_votes
        if have < need:
            whose = f" from {', '.join(chosen)}" if chosen else ""
            raise StudioError(f"training needs at least {need} preference votes (left, right or tie){whose}; "
                              f"there are {have} so far")
        log.info("training requested by %r", actor.name)
        return self.worker.request_training()

    def _preference_votes(self, annotators) -> int:
        if not annotators:
            return self.repo.votes_since(0)
        rows = self.repo.annotator_stats()["annotators"]
        return sum(sum(r["per_choice"][c] for c in ("left", "right", "tie")) for r in rows
                   if r["annotator"] in annotators)

    def adapters(self) -> list[dict]:
        """The adapter history, newest first, as plain rows for the table."""
        rows = []
        for a in reversed(self.repo.list_adapters()):
            shown = [k for k in SHOWN_METRICS if a.metrics.get(k) is not None]
            rows.append({"version": a.version, "status": a.status, "objective": a.objective,
                         "votes used": a.votes_used, "loss": _short(a.metrics.get("loss", "")),
                         "metrics": ", ".join(f"{k} {_short(a.metrics[k])}" for k in shown),
                         "created": a.created_at.astimezone().strftime("%Y-%m-%d %H:%M:%S"),
                         "note": a.status_reason or ""})
        return rows

    def make_live(self, version: int | None, *, actor: Actor) -> int | None:
        """Make `version` (None = the base model) the live adapter and swap it into the sampler (admins only).

        The adapter's file must match the SHA-256 the database recorded for it; otherwise nothing changes."""
        self.access.require_admin(actor, "make live")
        return self._make_live(version, by=actor.name)

    def rollback(self, *, actor: Actor) -> int | None:
        """Retire the live adapter and make the newest earlier version that had been live (or the base) live."""
        self.access.require_admin(actor, "roll back")
        live = self.repo.live_adapter()
        if live is None:
            raise StudioError("nothing to roll back: the base model is live")
        earlier = [a.version for a in self.repo.list_adapters() if a.version < live.version and a.status == "retired"]
        target = max(earlier) if earlier else None
        if target is not None:
            self._check_adapter_file(target)  # before anything changes
        self.repo.set_adapter_status(live.version, "retired", reason=f"rolled back by {actor.name}")
        return self._make_live(target, by=actor.name)

    def _make_live(self, version: int | None, *, by: str) -> int | None:
        if version is None:
            live = self.repo.live_adapter()
            if live is not None:
                self.repo.set_adapter_status(live.version, "retired", reason=f"base model made live by {by}")
        else:
            self._check_adapter_file(version)
            self.repo.set_adapter_status(version, "live", reason=f"made live by {by}")
        with self.sampler.lock:
            sync_live_adapter(self.sampler, self.repo)
        log.info("%s made live by %r", "base" if version is None else f"v{version}", by)
        return version

    def _check_adapter_file(self, version: int) -> None:
        """StudioError (logged) unless adapter `version`'s stored file hashes to the SHA-256 in its database row."""
        record = self.repo.get_adapter(version)
        try:
            self.repo.read_blob(record.file_hash)  # the blob store checks the bytes against the hash
        except (BlobIntegrityError, BlobNotFoundError) as e:
            log.error("adapter v%d refused: %s", version, e)
            raise StudioError(f"adapter v{version} is refused: its file does not match the SHA-256 recorded in "
                              f"the database ({e}). Nothing was changed.") from e

    def loss_points(self) -> list[dict]:
        """Training loss per optimiser step of each adapter version, for the Train tab's plot."""
        points = []
        for a in self.repo.list_adapters():
            curve = a.metrics.get("loss_curve")
            if isinstance(curve, list):
                points += [{"step": i + 1, "loss": float(loss), "version": f"v{a.version}"}
                           for i, loss in enumerate(curve) if isinstance(loss, (int, float))]
        return points

    def win_rate_points(self) -> list[dict]:
        """Blind A/B win rate over the base per version (all annotators) with its 95 % interval."""
        points = []
        for version in self.versions():
            w = self.win_rate(version)
            if w["n"]:
                for series in ("rate", "lo", "hi"):
                    points.append({"version": f"v{version}", "win rate": w[series],
                                   "series": {"rate": "win rate", "lo": "95% low", "hi": "95% high"}[series]})
        return points

    # ---- Data tab ---------------------------------------------------------------------------------------------
    def export(self, *, actor: Actor) -> tuple[Path, int]:
        """All preference votes with their images as Pick-a-Pic Parquet (admins only); returns (file, rows)."""
        self.access.require_admin(actor, "export")
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = self.export_dir / f"studio-votes-{stamp}-{secrets.token_hex(3)}.parquet"
        rows = export_parquet(self.repo, path)
        log.info("%d votes exported by %r", rows, actor.name)
        return path, rows

    def import_file(self, path, *, actor: Actor) -> int:
        """Import a Pick-a-Pic Parquet file (admins only; all rows or none); returns the number of pairs added.

        `path` is a file the server chose (the UI and the API pass Gradio's upload of the person's file only)."""
        self.access.require_admin(actor, "import")
        if not path:
            raise StudioError("choose a .parquet file to import first")
        added = import_parquet(self.repo, Path(path))
        log.info("%d pairs imported by %r", added, actor.name)
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
