"""Alembic migrations of the storage schema (env.py, versions/); a package so that it ships with ``storage``."""
