"""Column types and SQL functions shared by the models and the migrations.

``utcnow()`` is the server-side "current time in UTC" for every ``created_at``-style column. On SQLite it renders
the time with milliseconds in exactly the text layout SQLAlchemy uses for bound ``DateTime`` parameters, so
server-made and client-made timestamps compare correctly as strings (plain ``CURRENT_TIMESTAMP`` has whole
seconds and a different layout). ``UTCDateTime`` makes every datetime read back timezone-aware in UTC, whatever
the dialect stores. This module knows SQLAlchemy types, not the tables; migrations import it, so keep it stable.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import DateTime
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeDecorator


class utcnow(FunctionElement):  # noqa: N801 - reads like func.now()
    """The database's current time in UTC, as a server default or in an UPDATE."""

    type = DateTime(timezone=True)
    inherit_cache = True


@compiles(utcnow)
def _utcnow_default(element, compiler, **kw) -> str:
    return "CURRENT_TIMESTAMP"


@compiles(utcnow, "sqlite")
def _utcnow_sqlite(element, compiler, **kw) -> str:
    # %f is "SS.SSS"; three more zeros give SQLAlchemy's "YYYY-MM-DD HH:MM:SS.ffffff" storage format.
    return "(strftime('%Y-%m-%d %H:%M:%f000', 'now'))"


@compiles(utcnow, "postgresql")
def _utcnow_postgresql(element, compiler, **kw) -> str:
    return "now()"


class UTCDateTime(TypeDecorator):
    """A ``DateTime(timezone=True)`` that stores UTC and always returns aware UTC datetimes.

    Naive datetimes passed in are taken to be UTC already.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if not isinstance(value, dt.datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        if value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)  # SQLite keeps text; the text is UTC by convention
        return value.replace(tzinfo=dt.timezone.utc)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc)


def as_utc(value: dt.datetime) -> dt.datetime:
    """``value`` as an aware UTC datetime (naive means UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc)
