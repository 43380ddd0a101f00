"""Engines, sessions and migrations.

``make_engine(url)`` builds an engine for any SQLAlchemy URL; nothing here runs at import time. For SQLite every
new connection gets WAL journaling, ``busy_timeout=30000``, ``foreign_keys=ON`` and ``synchronous=FULL`` (a
committed vote survives an OS crash or power loss, not only a killed process; ``benchmarks.durability`` measures
what that costs per vote against ``NORMAL``), and
SQLAlchemy (not the sqlite3 module) emits ``BEGIN``, so transactions, savepoints and DDL behave as documented.
Write transactions start with ``BEGIN IMMEDIATE``: a writer takes the write lock up front and waits its turn
under ``busy_timeout``, instead of failing with "database is locked" when it upgrades a read snapshot that another
writer has made stale. In-memory SQLite (``sqlite://``) uses one shared connection (``StaticPool``): fine for
single-threaded tests, not for concurrent use.

Any other URL (PostgreSQL through ``postgresql+psycopg://``) gets a pool that checks connections before use
(``pool_pre_ping``: a restarted server costs one reconnect, not a failed request) and, on PostgreSQL, a 10 s
connect timeout unless the URL sets one. A URL that cannot be parsed or whose driver is missing raises
``InvalidDatabaseUrlError``; a database that cannot be reached raises ``DatabaseUnavailableError`` on the first
connection (``connect(engine)``, used by ``upgrade_to_head``). Both messages show the URL with its password masked.

``upgrade_to_head(engine)`` applies the Alembic revisions shipped in ``storage/migrations`` inside one
transaction; concurrent starters queue (on one SQLite file on the write lock, on PostgreSQL on an advisory lock)
and the later ones find nothing to do.
This module knows connections and migrations, not the tables' meaning.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.engine.url import URL
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from .errors import DatabaseUnavailableError, InvalidDatabaseUrlError

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000
# FULL: WAL commits are fsynced before a vote is acknowledged. NORMAL would lose the last commits on power loss.
SQLITE_SYNCHRONOUS = "FULL"
POSTGRES_CONNECT_TIMEOUT_S = 10
POSTGRES_MIGRATION_LOCK = 0x5354_5544_494F  # advisory lock key held while migrating ("STUDIO")

# Execution option read by the SQLite "begin" hook: how to open a transaction on that connection.
_BEGIN_OPTION = "storage_sqlite_begin"
_BEGIN_STATEMENTS = {"deferred": "BEGIN", "immediate": "BEGIN IMMEDIATE"}


def masked_url(url: str | URL) -> str:
    """``url`` as text with its password replaced by ``***`` (safe for messages and logs)."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable database URL>"  # it may hold a password in a shape we cannot find


def parse_url(url: str | URL) -> URL:
    """``url`` as a SQLAlchemy ``URL``; ``InvalidDatabaseUrlError`` if it is not one."""
    if isinstance(url, URL):
        return url
    if not isinstance(url, str) or not url.strip():
        raise InvalidDatabaseUrlError(f"database URL must be a non-empty string, got {type(url).__name__}")
    try:
        return make_url(url)
    except ArgumentError:
        raise InvalidDatabaseUrlError(
            "not a database URL (expected e.g. sqlite:///path/studio.db or "
            "postgresql+psycopg://user:password@host:5432/dbname)"
        ) from None


def is_memory_sqlite(url: str | URL) -> bool:
    """True for the URLs that name a private in-memory SQLite database."""
    url = parse_url(url)
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def make_engine(url: str | URL, *, echo: bool = False) -> Engine:
    """An engine for ``url``; SQLite connections are configured for safe concurrent writing. Connects lazily."""
    url = parse_url(url)
    try:
        if url.get_backend_name() != "sqlite":
            kwargs: dict = {"pool_pre_ping": True}
            if url.get_backend_name() == "postgresql" and "connect_timeout" not in url.query:
                kwargs["connect_args"] = {"connect_timeout": POSTGRES_CONNECT_TIMEOUT_S}
            return create_engine(url, echo=echo, **kwargs)
        kwargs = {"connect_args": {"check_same_thread": False}}
        if is_memory_sqlite(url):
            kwargs["poolclass"] = StaticPool  # one connection, or every checkout would see a new empty database
        engine = create_engine(url, echo=echo, **kwargs)
    except (NoSuchModuleError, ImportError) as e:
        raise InvalidDatabaseUrlError(
            f"database URL {masked_url(url)} needs a dialect or driver that is not installed ({e}); "
            "for PostgreSQL install psycopg[binary] and use postgresql+psycopg://"
        ) from None
    event.listen(engine, "connect", _configure_sqlite_connection)
    event.listen(engine, "begin", _begin_sqlite_transaction)
    return engine


def connect(engine: Engine) -> Connection:
    """A connection from ``engine``; ``DatabaseUnavailableError`` (URL masked) if the database cannot be reached."""
    try:
        return engine.connect()
    except DBAPIError as e:
        raise DatabaseUnavailableError(
            f"cannot connect to the database at {masked_url(engine.url)}: {_driver_reason(e, engine.url)}"
        ) from None


def _driver_reason(error: DBAPIError, url: URL) -> str:
    """The driver's own first line of explanation, never showing the password."""
    lines = str(error.orig if error.orig is not None else error).strip().splitlines()
    reason = lines[0] if lines else type(error).__name__
    if url.password:
        reason = reason.replace(str(url.password), "***")
    return reason


def _configure_sqlite_connection(dbapi_connection, connection_record) -> None:
    dbapi_connection.isolation_level = None  # sqlite3 must not BEGIN on its own; _begin_sqlite_transaction does
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")  # first: switching to WAL may have to wait
        _switch_to_wal(cursor)
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA synchronous={SQLITE_SYNCHRONOUS}")
    finally:
        cursor.close()


def _switch_to_wal(cursor) -> None:
    """``PRAGMA journal_mode=WAL`` (an in-memory database answers "memory"; that is fine). On a new file that other
    processes open at the same moment, SQLite can answer "database is locked" at once, without waiting out the
    busy timeout; so this retries for as long as that timeout."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


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
    with connect(writer_engine(engine)) as connection:
        with connection.begin():
            if connection.dialect.name == "sqlite":
                # Batch migrations copy and drop tables; check foreign keys at commit, not mid-copy.
                connection.exec_driver_sql("PRAGMA defer_foreign_keys=ON")
            elif connection.dialect.name == "postgresql":
                # Starters queue here until the first one commits, then find the schema at head (as on SQLite,
                # where BEGIN IMMEDIATE does this); without it they race on CREATE TABLE.
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({POSTGRES_MIGRATION_LOCK})")
            command.upgrade(alembic_config(connection), "head")


def current_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at, or None for an empty database."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str:
    """The newest Alembic revision shipped in this package (what ``upgrade_to_head`` brings a database to)."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()
