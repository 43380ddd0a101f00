"""Fuzzing the Parquet import: truncated, bit-flipped and re-typed Pick-a-Pic files are refused with
ImportFormatError and write no row and no blob; a file that is accepted imports all its rows."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage import ImportFormatError, Repository, StorageError
from storage.export import import_parquet
from tests.support.fuzz import FUZZ_EXAMPLES, footprint, hostile_values
from tests.support.storage import png_bytes

FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _valid_bytes(tmp_path, n: int = 3) -> bytes:
    path = tmp_path / "valid.parquet"
    pq.write_table(pa.table({"caption": [f"a small red circle {i}" for i in range(n)],
                             "jpg_0": [png_bytes((i, 0, 0)) for i in range(n)],
                             "jpg_1": [png_bytes((0, i, 0)) for i in range(n)],
                             "label_0": [1.0, 0.0, 0.5][:n], "label_1": [0.0, 1.0, 0.5][:n]}), path)
    return path.read_bytes()


def _import(repo, tmp_path, data: bytes) -> int | None:
    """Rows imported, or None when refused (then nothing may have been written)."""
    before = footprint(repo)
    path = tmp_path / "fuzzed.parquet"
    path.write_bytes(data)
    try:
        added = import_parquet(repo, path)
    except ImportFormatError as e:
        assert str(e), "a refusal says why"
        assert footprint(repo) == before
        return None
    after = footprint(repo)
    assert after["pair"] - before["pair"] == added and after["vote"] - before["vote"] == added
    return added


@FUZZ
@given(data=st.data())
def test_a_damaged_file_is_refused_whole_or_imported_whole(tmp_path, data):
    valid = _valid_bytes(tmp_path)
    mutation = data.draw(st.sampled_from(["truncate", "flip", "splice", "garbage"]))
    if mutation == "truncate":
        damaged = valid[:data.draw(st.integers(0, len(valid) - 1))]
    elif mutation == "flip":
        i = data.draw(st.integers(0, len(valid) - 1))
        damaged = valid[:i] + bytes([valid[i] ^ data.draw(st.integers(1, 255))]) + valid[i + 1:]
    elif mutation == "splice":
        i = data.draw(st.integers(0, len(valid)))
        damaged = valid[:i] + data.draw(st.binary(max_size=64)) + valid[i:]
    else:
        damaged = data.draw(st.binary(max_size=2048))
    with Repository.in_memory(tmp_path / "repo") as repo:
        added = _import(repo, tmp_path, damaged)
        assert added in (None, 3)  # never a part of the rows


@FUZZ
@given(column=st.sampled_from(["caption", "jpg_0", "jpg_1", "label_0", "label_1"]), value=hostile_values())
def test_a_hostile_cell_is_refused_with_nothing_written(tmp_path, column, value):
    columns = {"caption": ["a small red circle"], "jpg_0": [png_bytes((1, 0, 0))], "jpg_1": [png_bytes((0, 1, 0))],
               "label_0": [1.0], "label_1": [0.0]}
    columns[column] = [value]
    path = tmp_path / "hostile.parquet"
    try:
        pq.write_table(pa.table(columns), path)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        return  # pyarrow cannot even write such a column: no file reaches the studio
    with Repository.in_memory(tmp_path / "repo") as repo:
        before = footprint(repo)
        try:
            import_parquet(repo, path)
        except StorageError as e:  # ImportFormatError, or the repository's own check of a prompt
            assert str(e) and footprint(repo) == before
