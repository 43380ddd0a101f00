"""The studio's user-facing errors: each message says what to do instead, and nothing was written or changed.

A module of its own (no imports) so that the configuration and the access rules can use them without loading the
model stack.
"""

from __future__ import annotations


class StudioError(ValueError):
    """Bad input from a person or an API client; the message says what to do instead. Nothing was written."""


class AdminRequiredError(StudioError, PermissionError):
    """A non-admin asked for an admin action; it was refused and logged, and nothing was changed."""


class RateLimitedError(StudioError):
    """An annotator sent more requests of one kind than the limit allows; nothing was done."""
