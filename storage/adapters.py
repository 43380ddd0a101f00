"""Adapter versions, training runs and blind A/B trials: the bookkeeping of the worker and the compare view.

``AdapterMixin`` is part of ``Repository`` (it uses the repository's session factories and blob store); it is split
out only to keep each file readable. Adapter versions count 1, 2, ... in registration order; at most one adapter is
``live`` (a partial unique index where the dialect has one, and the code below everywhere): making one live
retires the previous one in the same transaction. A roll back marks the live version ``rolled_back`` and makes the
newest earlier ``retired`` version live (or the base), so a later roll back never returns to a rolled-back one.
Writes that only a current lease holder may make (register, promote) take a ``Fence`` and check it in their own
transaction. A/B trials are stored apart from votes so they never become
training data. This module knows these three tables; it knows nothing of LoRA files beyond their bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .errors import InvalidMetadataError, InvalidStatusError, UnknownAdapterError, UnknownTrainingRunError
from .models import AB_CHOICES, AB_SIDES, ADAPTER_STATUSES, TRAINING_RUN_STATUSES, ABTrial, Adapter, TrainingRun
from .leases import Fence, check_fence
from .prompts import prompt_row_id
from .records import (
    SEED_MAX,
    AdapterRecord,
    TrainingRunRecord,
    check_annotator,
    check_choice,
    check_int,
    check_json_dict,
    check_prompt,
    json_copy,
)
from .sqltypes import as_utc, utcnow

T = TypeVar("T")
_WRITE_ATTEMPTS = 3  # retries only matter on servers where two writers can race on the same new version


def _adapter_record(row: Adapter) -> AdapterRecord:
    return AdapterRecord(
        version=row.version,
        parent_version=row.parent_version,
        file_hash=row.file_hash,
        objective=row.objective,
        hyperparams=json_copy(row.hyperparams),
        votes_used=row.votes_used,
        metrics=json_copy(row.metrics),
        created_at=as_utc(row.created_at),
        status=row.status,
        status_reason=row.status_reason,
    )


def _run_record(row: TrainingRun) -> TrainingRunRecord:
    return TrainingRunRecord(
        id=row.id,
        started_at=as_utc(row.started_at),
        finished_at=None if row.finished_at is None else as_utc(row.finished_at),
        status=row.status,
        error=row.error,
        metrics=json_copy(row.metrics),
        adapter_version=row.adapter_version,
        config=json_copy(row.config),
    )


def _rollback_target(s: Session, expected_live: int | None = None) -> int | None:
    live = s.scalar(select(Adapter.version).where(Adapter.status == "live").with_for_update())
    if live is None:
        raise InvalidStatusError("nothing to roll back: the base model is live")
    if expected_live is not None and live != expected_live:
        raise InvalidStatusError(f"the live adapter is v{live}, not v{expected_live}; nothing was rolled back")
    return s.scalar(select(func.max(Adapter.version)).where(Adapter.status == "retired", Adapter.version < live))


def _get_adapter(s: Session, version: object) -> Adapter:
    # outside a 64-bit integer no row can match, and the driver would raise instead of finding nothing
    known = not isinstance(version, bool) and isinstance(version, int) and 0 < version <= SEED_MAX
    row = s.get(Adapter, version) if known else None
    if row is None:
        raise UnknownAdapterError(f"no adapter version {version!r:.80}")
    return row


class AdapterMixin:
    """Adapter, training-run and A/B methods of ``Repository``."""

    def _write_retrying(self, work: Callable[[Session], T]) -> T:
        for attempt in range(_WRITE_ATTEMPTS):
            try:
                with self._write.begin() as s:
                    return work(s)
            except IntegrityError:
                if attempt == _WRITE_ATTEMPTS - 1:
                    raise
        raise RuntimeError("unreachable")

    # ----- adapters --------------------------------------------------------------------------------------

    def register_adapter(
        self,
        file_bytes: bytes,
        *,
        parent_version: int | None,
        objective: str,
        hyperparams: dict,
        votes_used: int,
        metrics: dict,
        fence: Fence | None = None,
    ) -> AdapterRecord:
        """Store the adapter file as a blob and a new ``candidate`` row with the next version number.

        With ``fence`` the row is written only if that lease claim still holds (``LeaseLostError`` otherwise; the
        blob may stay behind, unreferenced, which is harmless)."""
        if not isinstance(file_bytes, bytes) or not file_bytes:
            raise InvalidMetadataError("adapter file_bytes must be non-empty bytes")
        if not isinstance(objective, str) or not objective.strip() or len(objective) > 64:
            raise InvalidMetadataError("objective must be a non-empty string of <= 64 characters")
        if check_int(votes_used, "votes_used", InvalidMetadataError) < 0:
            raise InvalidMetadataError("votes_used must be >= 0")
        hyperparams = check_json_dict(hyperparams, "hyperparams")
        metrics = check_json_dict(metrics, "metrics")
        file_hash = self.blobs.put(file_bytes)

        def work(s: Session) -> AdapterRecord:
            if fence is not None:
                check_fence(s, fence)
            if parent_version is not None:
                _get_adapter(s, parent_version)
            version = (s.scalar(select(func.max(Adapter.version))) or 0) + 1
            row = Adapter(
                version=version,
                parent_version=parent_version,
                file_hash=file_hash,
                objective=objective,
                hyperparams=hyperparams,
                votes_used=votes_used,
                metrics=metrics,
                status="candidate",
            )
            s.add(row)
            s.flush()
            return _adapter_record(row)

        return self._write_retrying(work)

    def set_adapter_status(self, version: int, status: str, reason: str | None = None,
                           fence: Fence | None = None) -> AdapterRecord:
        """Move an adapter to ``status``; making one ``live`` retires the previous live one in the same transaction.

        Any transition is allowed (an admin may make any version live again). With ``fence`` nothing changes unless
        that lease claim still holds (``LeaseLostError``).
        """
        if status not in ADAPTER_STATUSES:
            raise InvalidStatusError(f"adapter status must be one of {', '.join(ADAPTER_STATUSES)}; got {status!r:.80}")
        if reason is not None and not isinstance(reason, str):
            raise InvalidStatusError("reason must be a string or None")

        def work(s: Session) -> AdapterRecord:
            if fence is not None:
                check_fence(s, fence)
            row = _get_adapter(s, version)
            if status == "live" and row.status != "live":
                for previous in s.scalars(select(Adapter).where(Adapter.status == "live")):
                    previous.status = "retired"
                    previous.status_reason = f"replaced by version {version}"
                    previous.status_changed_at = utcnow()
                s.flush()  # retire first: the partial unique index allows one live row at any instant
            row.status = status
            row.status_reason = reason
            row.status_changed_at = utcnow()
            s.flush()
            return _adapter_record(row)

        return self._write_retrying(work)

    def rollback_target(self) -> int | None:
        """The version a roll back would make live: the newest ``retired`` version older than the live one (None =
        the base). InvalidStatusError when nothing is live."""
        with self._read.begin() as s:
            return _rollback_target(s)

    def roll_back(self, expected_live: int, target: int | None, reason: str) -> AdapterRecord | None:
        """Mark ``expected_live`` ``rolled_back`` and make ``target`` live (None = the base), in one transaction;
        InvalidStatusError (nothing changed) if the live version or the target changed since they were read."""
        def work(s: Session) -> AdapterRecord | None:
            if _rollback_target(s, expected_live) != target:
                raise InvalidStatusError("the live adapter changed meanwhile; nothing was rolled back: try again")
            live = _get_adapter(s, expected_live)
            live.status, live.status_reason, live.status_changed_at = "rolled_back", reason, utcnow()
            s.flush()
            if target is None:
                return None
            row = _get_adapter(s, target)
            row.status, row.status_reason, row.status_changed_at = "live", reason, utcnow()
            s.flush()
            return _adapter_record(row)

        return self._write_retrying(work)

    def live_adapter(self) -> AdapterRecord | None:
        with self._read.begin() as s:
            row = s.scalar(select(Adapter).where(Adapter.status == "live"))
            return None if row is None else _adapter_record(row)

    def get_adapter(self, version: int) -> AdapterRecord:
        with self._read.begin() as s:
            return _adapter_record(_get_adapter(s, version))

    def list_adapters(self) -> list[AdapterRecord]:
        """All adapters, oldest version first."""
        with self._read.begin() as s:
            return [_adapter_record(row) for row in s.scalars(select(Adapter).order_by(Adapter.version))]

    # ----- training runs ---------------------------------------------------------------------------------

    def start_training_run(self, config: dict) -> int:
        """A new run in status ``running``; returns its id."""
        config = check_json_dict(config, "config")
        with self._write.begin() as s:
            row = TrainingRun(config=config, status="running")
            s.add(row)
            s.flush()
            return row.id

    def finish_training_run(
        self,
        run_id: int,
        status: str,
        error: str | None = None,
        metrics: dict | None = None,
        adapter_version: int | None = None,
    ) -> TrainingRunRecord:
        """Close a running run with a final status (``succeeded``, ``failed``, ``rejected``, ``interrupted``)."""
        final = tuple(s for s in TRAINING_RUN_STATUSES if s != "running")
        if status not in final:
            raise InvalidStatusError(f"final run status must be one of {', '.join(final)}; got {status!r:.80}")
        if error is not None and not isinstance(error, str):
            raise InvalidMetadataError("error must be a string or None")
        if metrics is not None:
            metrics = check_json_dict(metrics, "metrics")
        with self._write.begin() as s:
            row = None if isinstance(run_id, bool) or not isinstance(run_id, int) else s.get(TrainingRun, run_id)
            if row is None:
                raise UnknownTrainingRunError(f"no training run {run_id!r:.80}")
            if row.status != "running":
                raise InvalidStatusError(f"training run {run_id} already finished as {row.status!r}")
            if adapter_version is not None:
                _get_adapter(s, adapter_version)
            row.status = status
            row.error = error
            row.metrics = metrics
            row.adapter_version = adapter_version
            row.finished_at = utcnow()
            s.flush()
            return _run_record(row)

    def interrupt_running_runs(self, reason: str) -> int:
        """Close every run still ``running`` as ``interrupted`` with ``reason``; returns how many.

        For the holder of the training lease only: while it holds the lease nobody else trains, so such a run was
        left behind by a worker that died (e.g. SIGKILL) and would otherwise show as running forever."""
        if not isinstance(reason, str) or not reason.strip():
            raise InvalidMetadataError("reason must be a non-empty string")
        stmt = (update(TrainingRun).where(TrainingRun.status == "running")
                .values(status="interrupted", error=reason[:1000], finished_at=utcnow()))
        with self._write.begin() as s:
            return s.execute(stmt).rowcount

    def list_training_runs(self, limit: int = 50) -> list[TrainingRunRecord]:
        """The most recent runs, newest first."""
        stmt = select(TrainingRun).order_by(TrainingRun.id.desc()).limit(max(0, int(limit)))
        with self._read.begin() as s:
            return [_run_record(row) for row in s.scalars(stmt)]

    # ----- blind A/B -------------------------------------------------------------------------------------

    def record_ab_trial(
        self, *, prompt: str, seed: int, adapter_version: int, adapter_side: str, annotator: str, choice: str
    ) -> int:
        """Store one blind comparison of ``adapter_version`` against the base model; returns its id."""
        check_prompt(prompt)
        check_int(seed, "seed", InvalidMetadataError)
        check_choice(adapter_side, AB_SIDES, "adapter_side")
        check_annotator(annotator)
        check_choice(choice, AB_CHOICES)
        with self._write.begin() as s:
            _get_adapter(s, adapter_version)
            row = ABTrial(
                prompt_id=prompt_row_id(s, prompt),
                seed=seed,
                adapter_version=adapter_version,
                adapter_side=adapter_side,
                annotator=annotator,
                choice=choice,
            )
            s.add(row)
            s.flush()
            return row.id

    def ab_results(self, adapter_version: int | None = None, annotator: str | None = None) -> dict:
        """``{"adapter": n, "base": n, "tie": n}`` over the matching trials."""
        stmt = select(ABTrial.choice, func.count()).group_by(ABTrial.choice)
        if adapter_version is not None:
            stmt = stmt.where(ABTrial.adapter_version == adapter_version)
        if annotator is not None:
            stmt = stmt.where(ABTrial.annotator == annotator)
        with self._read.begin() as s:
            found = dict(s.execute(stmt).all())
        return {c: found.get(c, 0) for c in AB_CHOICES}
