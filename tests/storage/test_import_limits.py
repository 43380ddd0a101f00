"""`ImportLimits`: a file too large, with too many rows, or with one huge value is refused before its values are
decoded, with nothing written; a file within the limits imports whole."""

from __future__ import annotations

import tracemalloc

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage import ImportFormatError, Repository
from storage.export import ImportLimits, import_parquet
from tests.support.fuzz import footprint
from tests.support.storage import png_bytes

MB = 1 << 20


def write(path, captions, jpg_0, row_group_size=None):
    n = len(captions)
    table = pa.table({"caption": captions, "jpg_0": jpg_0, "jpg_1": [png_bytes((0, i, 0)) for i in range(n)],
                      "label_0": [1.0] * n, "label_1": [0.0] * n})
    pq.write_table(table, path, row_group_size=row_group_size, compression="zstd")
    return path


@pytest.fixture
def repo(tmp_path):
    r = Repository(tmp_path / "data")
    yield r
    r.close()


def test_a_file_with_one_100_mb_cell_is_refused_from_its_footer(repo, tmp_path):
    # 100 MB of zeros compress to almost nothing: small on disk, huge once decoded.
    path = write(tmp_path / "bomb.parquet", ["a red circle"], [bytes(100 * MB)])
    assert path.stat().st_size < 2 * MB
    before = footprint(repo)
    tracemalloc.start()
    with pytest.raises(ImportFormatError, match=r"decodes to 10\d\.\d MB for 1 rows: a value may be at most 16\.8 MB"):
        import_parquet(repo, path, limits=ImportLimits(max_value_bytes=16 * MB))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 20 * MB  # the cell was never decoded
    assert footprint(repo) == before


def test_a_huge_value_among_small_ones_is_refused_by_its_row(repo, tmp_path):
    # In one row group with many small values the chunk's declared size allows it; the decoded value does not.
    captions = ["a red circle"] * 8
    images = [png_bytes((i, 0, 0)) for i in range(7)] + [bytes(3 * MB)]
    path = write(tmp_path / "mixed.parquet", captions, images)
    before = footprint(repo)
    with pytest.raises(ImportFormatError, match=r"row 7: jpg_0 is 3\.1 MB, more than the 1\.0 MB a value may be"):
        import_parquet(repo, path, limits=ImportLimits(max_value_bytes=1_000_000))
    assert footprint(repo) == before


def test_too_many_rows_and_too_large_a_file_are_refused(repo, tmp_path):
    path = write(tmp_path / "rows.parquet", ["a red circle"] * 5, [png_bytes((i, 0, 0)) for i in range(5)])
    before = footprint(repo)
    with pytest.raises(ImportFormatError, match="5 rows, more than the 4 an import may have"):
        import_parquet(repo, path, limits=ImportLimits(max_rows=4))
    with pytest.raises(ImportFormatError, match="more than the 0.0 MB an import may be"):
        import_parquet(repo, path, limits=ImportLimits(max_file_bytes=100))
    assert footprint(repo) == before
    assert import_parquet(repo, path, limits=ImportLimits(max_rows=5, max_value_bytes=MB)) == 5
