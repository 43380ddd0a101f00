"""Engines, sessions and migrations.

``make_engine(url)`` builds an engine for any SQLAlchemy URL; nothing here runs at import time. For SQLite every
new connection gets WAL journaling, ``busy_timeout=30000``, ``foreign_keys=ON`` and ``synchronous=NORMAL``, and
SQLAlchemy (not the sqlite3 module) emits ``BEGIN``, so transactions, savepoints and DDL behave as documented.
Write transactions start with ``BEGIN IMMEDIATE``: a writer takes the write lock up front and waits its turn
under ``busy_timeout``, instead of failing with "database is locked" when it upgrades a read snapshot that another
writer has made stale. In-memory SQLite (``sqlite://``) uses one shared connection (``StaticPool``): fine for
single-threaded tests, not for concurrent use.

``upgrade_to_head(engine)`` applies the Alembic revisions shipped in ``storage/migrations`` inside one
transaction; concurrent starters on one SQLite file queue on the write lock and the second finds nothing to do.
This module knows connections and migrations, not the tables' meaning.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.engine.url import URL
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000

# Execution option read by the SQLite "begin" hook: how to open a transaction on that connection.
_BEGIN_OPTION = "storage_sqlite_begin"
_BEGIN_STATEMENTS = {"deferred": "BEGIN", "immediate": "BEGIN IMMEDIATE"}


def is_memory_sqlite(url: str | URL) -> bool:
    """True for the URLs that name a private in-memory SQLite database."""
    url = make_url(url)
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def make_engine(url: str | URL, *, echo: bool = False) -> Engine:
    """An engine for ``url``; SQLite connections are configured for safe concurrent writing."""
    url = make_url(url)
    if url.get_backend_name() != "sqlite":
        return create_engine(url, echo=echo, pool_pre_ping=True)
    kwargs: dict = {"connect_args": {"check_same_thread": False}}
    if is_memory_sqlite(url):
        kwargs["poolclass"] = StaticPool  # one connection, or every checkout would see a new empty database
    engine = create_engine(url, echo=echo, **kwargs)
    event.listen(engine, "connect", _configure_sqlite_connection)
    event.listen(engine, "begin", _begin_sqlite_transaction)
    return engine


def _configure_sqlite_connection(dbapi_connection, connection_record) -> None:
    dbapi_connection.isolation_level = None  # sqlite3 must not BEGIN on its own; _begin_sqlite_transaction does
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")  # first: switching to WAL may have to wait
        cursor.execute("PRAGMA journal_mode=WAL")  # an in-memory database answers "memory"; that is fine
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _begin_sqlite_transaction(connection: Connection) -> None:
    mode = connection.get_execution_options().get(_BEGIN_OPTION, "deferred")
    connection.exec_driver_sql(_BEGIN_STATEMENTS[mode])


def writer_engine(engine: Engine) -> Engine:
    """The same engine (same pool) whose transactions take the SQLite write lock at BEGIN."""
    return engine.execution_options(**{_BEGIN_OPTION: "immediate"})


def make_sessionmakers(engine: Engine) -> tuple[sessionmaker[Session], sessionmaker[Session]]:
    """``(read, write)`` session factories; use ``write`` for any transaction that changes rows."""
    read = sessionmaker(engine, expire_on_commit=False)
    write = sessionmaker(writer_engine(engine), expire_on_commit=False)
    return read, write


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config for the migrations shipped in this package, independent of the working directory.

    With ``connection`` the migrations run on it (required for in-memory SQLite); the caller owns its transaction.
    """
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def upgrade_to_head(engine: Engine) -> None:
    """Apply every pending migration in one transaction (one write-lock holder at a time on SQLite)."""
    with writer_engine(engine).connect() as connection:
        with connection.begin():
            if connection.dialect.name == "sqlite":
                # Batch migrations copy and drop tables; check foreign keys at commit, not mid-copy.
                connection.exec_driver_sql("PRAGMA defer_foreign_keys=ON")
            command.upgrade(alembic_config(connection), "head")


def current_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at, or None for an empty database."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
