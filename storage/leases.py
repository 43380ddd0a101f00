"""Leases in the database: at most one holder of a named job (e.g. "trainer") at a time, across processes and
machines, with an expiry so that a holder that died (SIGKILL, power loss) blocks the others only until then.

``LeaseMixin`` is part of ``Repository`` (it uses the repository's write sessions). A lease is one row of
``worker_lease``; releasing it marks it expired instead of deleting it. Every time is the database's clock, read
inside the same transaction, so machines with skewed clocks still agree on a server database (SQLite, being a
file on one machine, uses that machine's clock).

Race safety without table locks: acquiring is one ``UPDATE ... WHERE name = ? AND (holder = ? OR expires_at <= now)``
(the row lock makes a second concurrent UPDATE re-check its WHERE against the winner's row and match nothing), and
only when no row exists yet an ``INSERT`` whose primary key turns a lost race into an ``IntegrityError``, answered
as "not acquired". On SQLite write transactions begin with ``BEGIN IMMEDIATE``, so they are serialised anyway.

Fencing: every hand-over of a lease (taken while free or expired) increments its ``generation``. A holder reads
its ``Fence`` (name, holder, generation) once it has the lease; a write that must only happen while the claim is
still good (registering or promoting an adapter) passes the fence, and ``check_fence`` verifies it inside that
write's own transaction, locking the lease row, so a takeover cannot slip in between the check and the commit.
This module knows the lease table; it knows nothing of what the job is.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

from sqlalchemy import and_, case, literal, or_, select, type_coerce, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .errors import InvalidLeaseError, LeaseLostError
from .models import MAX_LEASE_HOLDER_CHARS, MAX_LEASE_NAME_CHARS, WorkerLease
from .sqltypes import UTCDateTime, as_utc, utcnow

MAX_LEASE_TTL_S = 7 * 24 * 3600.0  # a longer lease is a mistake: a dead holder would block for over a week


def _check_text(value: object, what: str, limit: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidLeaseError(f"lease {what} must be a non-empty string, got {value!r:.80}")
    if len(value) > limit:
        raise InvalidLeaseError(f"lease {what} has {len(value)} characters; the limit is {limit}")
    return value


def _check_ttl(ttl_s: object) -> dt.timedelta:
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float)) or not math.isfinite(ttl_s):
        raise InvalidLeaseError(f"lease ttl_s must be a finite number of seconds, got {ttl_s!r:.80}")
    if not 0 < ttl_s <= MAX_LEASE_TTL_S:
        raise InvalidLeaseError(f"lease ttl_s must be in (0, {MAX_LEASE_TTL_S:g}] seconds, got {ttl_s}")
    return dt.timedelta(seconds=float(ttl_s))


def _db_now(s: Session) -> dt.datetime:
    """The database's current UTC time, as an aware datetime."""
    return as_utc(s.scalar(select(type_coerce(utcnow(), UTCDateTime()))))


@dataclass(frozen=True)
class Fence:
    """A holder's claim on a lease at one generation (the fencing token)."""

    name: str
    holder: str
    generation: int


def check_fence(s: Session, fence: Fence) -> None:
    """Inside a write transaction: LeaseLostError unless ``fence`` still names the unexpired lease's holder and
    generation. The lease row is locked (``FOR UPDATE`` where the database has it) until the transaction ends."""
    table = WorkerLease.__table__
    now = _db_now(s)
    row = s.execute(
        select(table.c.holder, table.c.generation, table.c.expires_at).where(table.c.name == fence.name)
        .with_for_update()
    ).one_or_none()
    if row is None or row.holder != fence.holder or row.generation != fence.generation:
        raise LeaseLostError(f"lease {fence.name!r} is no longer held by {fence.holder!r} at generation "
                             f"{fence.generation}: another worker took it over; nothing was written")
    if as_utc(row.expires_at) <= now:
        raise LeaseLostError(f"lease {fence.name!r} of {fence.holder!r} expired; nothing was written")


class LeaseMixin:
    """Lease methods of ``Repository``."""

    def acquire_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Take lease ``name`` for ``holder`` until ``ttl_s`` seconds from now; True if taken.

        Succeeds when the lease is free, has expired, or is already held by ``holder`` (then it is extended and
        keeps its ``acquired_at``). False while another holder's lease is unexpired, or when another process won a
        simultaneous attempt.
        """
        _check_text(name, "name", MAX_LEASE_NAME_CHARS)
        _check_text(holder, "holder", MAX_LEASE_HOLDER_CHARS)
        ttl = _check_ttl(ttl_s)
        table = WorkerLease.__table__
        try:
            with self._write.begin() as s:
                now = _db_now(s)
                still_ours = and_(table.c.holder == holder, table.c.expires_at > now)
                taken = s.execute(
                    update(table)
                    .where(table.c.name == name, or_(table.c.holder == holder, table.c.expires_at <= now))
                    .values(
                        holder=holder,
                        expires_at=now + ttl,
                        heartbeat=now,
                        acquired_at=case((still_ours, table.c.acquired_at), else_=literal(now, UTCDateTime())),
                        generation=case((still_ours, table.c.generation), else_=table.c.generation + 1),
                    )
                )
                if taken.rowcount == 1:
                    return True
                if s.scalar(select(table.c.name).where(table.c.name == name)) is not None:
                    return False  # held by someone else, unexpired
                s.add(WorkerLease(name=name, holder=holder, expires_at=now + ttl, acquired_at=now, heartbeat=now,
                                  generation=1))
                s.flush()
                return True
        except IntegrityError:
            return False  # another process inserted the first row of this lease at the same moment

    def renew_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Extend ``holder``'s unexpired lease to ``ttl_s`` seconds from now (a heartbeat); False if it is not
        held by ``holder`` any more (expired or taken over): the caller has lost it and should stop or re-acquire."""
        _check_text(name, "name", MAX_LEASE_NAME_CHARS)
        _check_text(holder, "holder", MAX_LEASE_HOLDER_CHARS)
        ttl = _check_ttl(ttl_s)
        table = WorkerLease.__table__
        with self._write.begin() as s:
            now = _db_now(s)
            renewed = s.execute(
                update(table)
                .where(table.c.name == name, table.c.holder == holder, table.c.expires_at > now)
                .values(expires_at=now + ttl, heartbeat=now)
            )
            return renewed.rowcount == 1

    def release_lease(self, name: str, holder: str) -> None:
        """Give the lease up now if ``holder`` holds it; otherwise (expired, someone else's, never taken) nothing."""
        _check_text(name, "name", MAX_LEASE_NAME_CHARS)
        _check_text(holder, "holder", MAX_LEASE_HOLDER_CHARS)
        table = WorkerLease.__table__
        with self._write.begin() as s:
            now = _db_now(s)
            s.execute(
                update(table)
                .where(table.c.name == name, table.c.holder == holder, table.c.expires_at > now)
                .values(expires_at=now)
            )

    def lease_holder(self, name: str) -> tuple[str, dt.datetime] | None:
        """``(holder, expires_at)`` of the unexpired lease ``name`` (UTC, database clock), or None if it is free."""
        _check_text(name, "name", MAX_LEASE_NAME_CHARS)
        table = WorkerLease.__table__
        with self._read.begin() as s:
            now = _db_now(s)
            row = s.execute(
                select(table.c.holder, table.c.expires_at).where(table.c.name == name, table.c.expires_at > now)
            ).one_or_none()
        return None if row is None else (row.holder, as_utc(row.expires_at))

    def fence(self, name: str, holder: str) -> Fence | None:
        """``holder``'s fencing token for lease ``name`` while it holds it unexpired, else None."""
        _check_text(name, "name", MAX_LEASE_NAME_CHARS)
        _check_text(holder, "holder", MAX_LEASE_HOLDER_CHARS)
        table = WorkerLease.__table__
        with self._read.begin() as s:
            now = _db_now(s)
            generation = s.scalar(select(table.c.generation).where(
                table.c.name == name, table.c.holder == holder, table.c.expires_at > now))
        return None if generation is None else Fence(name, holder, int(generation))

    def take_over_lease(self, name: str, dead_holder: str, holder: str, ttl_s: float) -> bool:
        """Give lease ``name`` to ``holder`` if ``dead_holder`` still holds it (expired or not): for a caller that
        knows the holder is dead (e.g. its process is gone from this machine). The hand-over increments the
        generation, so the dead holder's fence is void. False if someone else holds it by now."""
        _check_text(name, "name", MAX_LEASE_NAME_CHARS)
        for who in (dead_holder, holder):
            _check_text(who, "holder", MAX_LEASE_HOLDER_CHARS)
        ttl = _check_ttl(ttl_s)
        table = WorkerLease.__table__
        with self._write.begin() as s:
            now = _db_now(s)
            taken = s.execute(
                update(table)
                .where(table.c.name == name, table.c.holder == dead_holder)
                .values(holder=holder, expires_at=now + ttl, heartbeat=now, acquired_at=now,
                        generation=table.c.generation + 1)
            )
            return taken.rowcount == 1
