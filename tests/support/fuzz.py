"""Hypothesis strategies for hostile input, and a count of everything a repository holds.

`hostile_values()` draws what a client can put in a JSON field: wrong types, empty and huge strings, control
characters and other unicode, NaN and infinities, negative and huge numbers, nested lists and dicts. `footprint`
counts every row and blob, so a test can assert that a rejected input wrote nothing. The number of examples per
property is `STUDIO_FUZZ_EXAMPLES` (default: the short version kept in the suite).
"""

from __future__ import annotations

import os

from hypothesis import strategies as st
from sqlalchemy import text

FUZZ_EXAMPLES = int(os.environ.get("STUDIO_FUZZ_EXAMPLES", "50"))
TABLES = ("prompt", "generation", "pair", "vote", "adapter", "training_run", "ab_trial")

_scalars = (st.none() | st.booleans()
            | st.integers(min_value=-(2**70), max_value=2**70)
            | st.sampled_from([0, -1, 1, 2**31, 2**63 - 1, 2**63, 2**64, -(2**63) - 1])
            | st.floats(allow_nan=True, allow_infinity=True)
            | st.text(max_size=40)
            | st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=8).map(lambda s: s * 200)
            | st.sampled_from(["", " ", "\x00", "left", "right", "base", "v1", "v-1", "1e309", "NaN", "🎯" * 300,
                               "../../etc/passwd", "/etc/passwd", "<script>alert(1)</script>", "a" * 100_000]))


def hostile_values():
    return st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=8)


def footprint(repo) -> dict:
    """Rows per table and the number of blobs: what 'nothing was written' compares."""
    with repo.engine.connect() as conn:
        counts = {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in TABLES}
    counts["blobs"] = sum(1 for _ in repo.blobs.hashes())
    return counts
