"""Exceptions raised by the storage layer.

Every error a caller can act on has its own class, so the app can show a clear message and the worker can tell a
bad request from a broken store. Each one also derives from the builtin a caller would naturally catch
(``KeyError`` for an unknown id, ``ValueError`` for bad input). This module knows nothing about SQL or files.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base class of every error raised on purpose by ``storage``."""

    def __str__(self) -> str:
        # KeyError subclasses would otherwise print the repr of the message, quotes included.
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class UnknownPairError(StorageError, KeyError):
    """No pair with the given id exists."""


class PairNotServedError(StorageError, PermissionError):
    """A vote on a pair that was shown to someone else (or to nobody); nothing was written."""


class UnknownAdapterError(StorageError, KeyError):
    """No adapter with the given version exists."""


class UnknownTrainingRunError(StorageError, KeyError):
    """No training run with the given id exists."""


class InvalidChoiceError(StorageError, ValueError):
    """A vote, A/B choice or A/B side is not one of the allowed values."""


class InvalidPromptError(StorageError, ValueError):
    """A prompt is not a string, is empty or whitespace only, has a NUL character, or is longer than
    ``MAX_PROMPT_CHARS`` (500, see ``storage.models``)."""


class InvalidAnnotatorError(StorageError, ValueError):
    """An annotator name is not a non-empty string of at most ``MAX_ANNOTATOR_CHARS`` characters."""


class InvalidGenerationError(StorageError, ValueError):
    """A ``NewGeneration`` has a bad seed, model id, image, trajectory or sampler settings."""


class InvalidStatusError(StorageError, ValueError):
    """An adapter or training-run status is not one of the allowed values."""


class InvalidMetadataError(StorageError, ValueError):
    """A dict meant for a JSON column (hyper-parameters, metrics, config) is not plain, finite JSON."""


class ImportFormatError(StorageError, ValueError):
    """A file given to the Parquet import is not in the expected layout; nothing was written."""


class BlobIntegrityError(StorageError):
    """A blob hash string is malformed, or a stored blob's bytes do not match its hash."""


class BlobNotFoundError(StorageError, KeyError):
    """A well-formed blob hash names no stored file."""


class InvalidLeaseError(StorageError, ValueError):
    """A lease name or holder is not a non-empty string within its length limit, or a ttl is not a positive,
    finite number of seconds (at most ``MAX_LEASE_TTL_S``)."""


class LeaseLostError(StorageError):
    """The fencing check failed: the lease was taken over or expired, so the caller's claim is stale."""


class InvalidDatabaseUrlError(StorageError, ValueError):
    """A database URL cannot be parsed, or names a dialect or driver that is not installed."""


class DatabaseUnavailableError(StorageError):
    """The database named by a URL cannot be reached (server down, wrong host or port, bad credentials, a SQLite
    file in a missing folder); the message names the URL with its password masked."""
