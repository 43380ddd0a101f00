"""Parquet export/import in the Pick-a-Pic layout: round trip, readers, malformed files."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage import ImportFormatError, InvalidPromptError, Repository
from storage.export import EXPORT_SCHEMA, export_parquet, import_parquet, main

from tests.support.storage import generation, png_bytes

REPO_ROOT = Path(__file__).resolve().parents[2]


def _fill(repo) -> Repository:
    """Five pairs voted left, right, tie, skip and both_bad by alice; bob also votes on the first."""
    pairs = []
    for i, choice in enumerate(["left", "right", "tie", "skip", "both_bad"]):
        pair = repo.create_pair(
            f"prompt {i}", generation(seed=10 * i, color=(i, 1, 2)), generation(seed=10 * i + 1, color=(i, 3, 4))
        )
        repo.record_vote(pair.id, "alice", choice)
        pairs.append(pair)
    repo.record_vote(pairs[0].id, "bob", "right")
    return repo


@pytest.fixture
def voted_repo(repo):
    return _fill(repo)


def _target(tmp_path) -> Repository:
    return Repository.in_memory(tmp_path / "imported")


def _write(path, columns: dict, schema: pa.Schema | None = None):
    pq.write_table(pa.table(columns, schema=schema), path)
    return path


def _valid_columns(n: int = 2) -> dict:
    return {
        "caption": [f"caption {i}" for i in range(n)],
        "jpg_0": [png_bytes((i, 0, 0)) for i in range(n)],
        "jpg_1": [png_bytes((0, i, 0)) for i in range(n)],
        "label_0": [1.0] * n,
        "label_1": [0.0] * n,
    }


def test_export_writes_one_row_per_preference_vote(voted_repo, tmp_path):
    out = tmp_path / "out" / "votes.parquet"
    assert export_parquet(voted_repo, out) == 4  # skip and both_bad are not preferences; pair 0 has two votes
    table = pq.read_table(out)
    assert table.schema.equals(EXPORT_SCHEMA)
    rows = table.to_pylist()
    by_vote = {(r["caption"], r["annotator"]): (r["label_0"], r["label_1"]) for r in rows}
    assert by_vote == {
        ("prompt 0", "alice"): (1.0, 0.0),
        ("prompt 1", "alice"): (0.0, 1.0),
        ("prompt 2", "alice"): (0.5, 0.5),
        ("prompt 0", "bob"): (0.0, 1.0),
    }
    first = rows[0]
    assert first["jpg_0"] == png_bytes((0, 1, 2)) and first["jpg_1"] == png_bytes((0, 3, 4))
    assert (first["seed_0"], first["seed_1"], first["model_0"]) == (0, 1, "tiny-shapes")
    assert first["adapter_version_0"] is None
    assert first["created_at"].tzinfo is not None
    assert not list(out.parent.glob(".*tmp*"))  # no temp file left next to the export


def test_datasets_reads_the_export_with_the_exact_row_count(voted_repo, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    out = tmp_path / "votes.parquet"
    n = export_parquet(voted_repo, out)
    ds = datasets.load_dataset("parquet", data_files=str(out), split="train", cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == n == pq.ParquetFile(out).metadata.num_rows
    assert {"caption", "jpg_0", "jpg_1", "label_0", "label_1"} <= set(ds.column_names)


def test_round_trip_preserves_captions_images_labels(voted_repo, tmp_path):
    out = tmp_path / "votes.parquet"
    export_parquet(voted_repo, out)
    target = _target(tmp_path)
    assert import_parquet(target, out) == 4

    original = voted_repo.labeled_pairs()
    imported = target.labeled_pairs()
    assert [(p.prompt, p.choice, p.annotator, p.voted_at) for p in imported] == [
        (p.prompt, p.choice, p.annotator, p.voted_at) for p in original
    ]
    for src, dst in zip(original, imported):
        assert target.read_blob(dst.left.image_hash) == voted_repo.read_blob(src.left.image_hash)
        assert target.read_blob(dst.right.image_hash) == voted_repo.read_blob(src.right.image_hash)
        assert (dst.left.seed, dst.right.seed, dst.left.model_id) == (src.left.seed, src.right.seed, "tiny-shapes")
        assert dst.left.trajectory_hash is None and dst.left.adapter_version is None
        assert dst.left.sampler_settings == {"imported": True}

    again = tmp_path / "again.parquet"
    export_parquet(target, again)
    columns = ["caption", "jpg_0", "jpg_1", "label_0", "label_1", "annotator", "created_at"]
    assert pq.read_table(again).select(columns).equals(pq.read_table(out).select(columns))
    target.close()


def test_minimal_pick_a_pic_file_imports_with_defaults(tmp_path):
    columns = _valid_columns(3)
    columns["label_0"] = [1, 0, 0.5]  # integer-looking labels are fine too
    columns["label_1"] = [0, 1, 0.5]
    columns["user_id"] = [17, 17, 4]
    path = _write(tmp_path / "pickapic.parquet", columns)
    target = _target(tmp_path)
    assert import_parquet(target, path) == 3
    labeled = target.labeled_pairs()
    assert [(p.choice, p.annotator) for p in labeled] == [("left", "17"), ("right", "17"), ("tie", "4")]
    assert labeled[0].left.model_id == "imported" and labeled[0].left.seed is None
    target.close()


def test_hugging_face_image_struct_columns_are_accepted(tmp_path):
    columns = _valid_columns(1)
    for side in ("jpg_0", "jpg_1"):
        columns[side] = [{"bytes": columns[side][0], "path": None}]
    path = _write(tmp_path / "hf.parquet", columns)
    target = _target(tmp_path)
    assert import_parquet(target, path) == 1
    assert target.read_blob(target.labeled_pairs()[0].left.image_hash) == png_bytes((0, 0, 0))
    target.close()


def _malformed_cases(tmp_path):
    good = png_bytes((1, 2, 3))
    truncated = good[: len(good) // 2]
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"PAR1 this is not parquet")
    yield "not parquet", junk, "not a readable Parquet"
    cols = _valid_columns()
    del cols["label_1"]
    yield "missing column", _write(tmp_path / "missing.parquet", cols), "missing column"
    cols = _valid_columns()
    cols["label_0"] = ["1", "0"]
    yield "label as text", _write(tmp_path / "types.parquet", cols), "label_0 must be a number"
    cols = _valid_columns()
    cols["jpg_0"] = ["a", "b"]
    yield "image as text", _write(tmp_path / "imgtext.parquet", cols), "jpg_0 must be binary"
    cols = _valid_columns()
    cols["label_0"] = [1.0, 0.7]
    cols["label_1"] = [0.0, 0.3]
    yield "label values", _write(tmp_path / "labels.parquet", cols), "row 1: labels"
    cols = _valid_columns()
    cols["label_1"] = [1.0, 0.0]
    yield "labels sum to 2", _write(tmp_path / "sum.parquet", cols), "row 0: labels"
    cols = _valid_columns()
    cols["jpg_1"] = [good, truncated]
    yield "truncated image", _write(tmp_path / "trunc.parquet", cols), "row 1: jpg_1 is not a decodable image"
    cols = _valid_columns()
    cols["jpg_0"] = [b"not an image", good]
    yield "garbage image", _write(tmp_path / "garbage.parquet", cols), "row 0: jpg_0 is not a decodable image"
    cols = _valid_columns()
    cols["caption"] = ["fine", "x" * 501]
    yield "long caption", _write(tmp_path / "long.parquet", cols), "row 1: prompt has 501 characters"
    cols = _valid_columns()
    cols["caption"] = ["fine", None]
    yield "null caption", _write(tmp_path / "null.parquet", cols), "row 1: caption is null"
    cols = _valid_columns()
    cols["created_at"] = ["yesterday", "today"]
    yield "created_at text", _write(tmp_path / "when.parquet", cols), "created_at must be a timestamp"


def test_malformed_files_raise_import_format_error_and_write_nothing(tmp_path):
    target = _target(tmp_path)
    for name, path, message in _malformed_cases(tmp_path):
        with pytest.raises(ImportFormatError, match=message) as info:
            import_parquet(target, path)
        assert isinstance(info.value, ValueError), name
        assert target.counts()["pairs"] == 0 and target.counts()["votes"] == 0, name
        assert list(target.blobs.hashes()) == [], name  # checked before any image is stored
    target.close()


def test_import_of_a_good_file_after_a_bad_one_starts_clean(tmp_path):
    target = _target(tmp_path)
    cols = _valid_columns(3)
    cols["label_0"] = [1.0, 1.0, 2.0]
    with pytest.raises(ImportFormatError):
        import_parquet(target, _write(tmp_path / "bad.parquet", cols))
    assert import_parquet(target, _write(tmp_path / "good.parquet", _valid_columns(3))) == 3
    assert target.counts()["votes"] == 3
    target.close()


def test_invalid_rows_passed_to_the_repository_write_nothing(file_repo):
    from storage.records import ImportedPair

    h0, h1 = file_repo.blobs.put(png_bytes((1, 1, 1))), file_repo.blobs.put(png_bytes((2, 2, 2)))
    good = ImportedPair("ok", h0, h1, "left", "a", "m", "m")
    bad = ImportedPair(" ", h0, h1, "left", "a", "m", "m")
    with pytest.raises(InvalidPromptError):
        file_repo.import_pairs([good, bad])
    assert file_repo.counts()["pairs"] == 0


def test_command_line_export_then_import(file_repo, tmp_path, capsys):
    _fill(file_repo).close()
    out = tmp_path / "cli.parquet"
    done = subprocess.run(
        [sys.executable, "-m", "storage.export", "--data-dir", str(file_repo.data_dir), "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "exported 4" in done.stdout
    assert main(["--data-dir", str(tmp_path / "fresh"), "--import", str(out)]) == 0
    assert main(["--data-dir", str(tmp_path / "fresh"), "--import", str(tmp_path / "absent.parquet")]) == 1
    (tmp_path / "junk.parquet").write_bytes(b"junk")
    assert main(["--data-dir", str(tmp_path / "fresh"), "--import", str(tmp_path / "junk.parquet")]) == 1
    assert "error:" in capsys.readouterr().err
    with Repository(tmp_path / "fresh") as fresh:
        assert fresh.counts()["votes"] == 4


def test_created_at_of_a_naive_timestamp_is_taken_as_utc(tmp_path):
    cols = _valid_columns(1)
    cols["created_at"] = [dt.datetime(2024, 5, 1, 12, 30)]
    target = _target(tmp_path)
    import_parquet(target, _write(tmp_path / "naive.parquet", cols))
    assert target.labeled_pairs()[0].voted_at == dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.timezone.utc)
    target.close()
