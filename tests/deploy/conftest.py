"""Fixtures of the deployment tests: the throw-away PostgreSQL server of the storage tests (one per session)."""

from tests.storage.conftest import pg_url, postgres_server  # noqa: F401 - fixtures shared with tests/storage
