"""Get-or-create of ``prompt`` rows, shared by the pair, import and A/B code paths.

Prompt texts are stored once (UNIQUE); this helper runs inside the caller's write transaction. It knows the
prompt table and nothing else.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .models import Prompt


def prompt_row_id(s: Session, text: str) -> int:
    """The id of the prompt row with this text, inserting it if new."""
    found = s.scalar(select(Prompt.id).where(Prompt.text == text))
    if found is not None:
        return found
    try:
        with s.begin_nested():  # a savepoint, so losing an insert race does not abort the caller's transaction
            row = Prompt(text=text)
            s.add(row)
        return row.id
    except IntegrityError:
        # Another transaction inserted the same text first (only on servers that do not serialise writers).
        return s.scalar(select(Prompt.id).where(Prompt.text == text))
