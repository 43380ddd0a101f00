"""The content-addressed blob store: layout, idempotence, atomic writes, hash validation."""

from __future__ import annotations

import hashlib
import os

import pytest

from storage.blobs import BlobStore, check_hash
from storage.errors import BlobIntegrityError, BlobNotFoundError


@pytest.fixture
def store(tmp_path):
    return BlobStore(tmp_path / "blobs")


def test_put_stores_bytes_under_sharded_sha256_name(store):
    data = b"\x89PNG fake image bytes"
    digest = hashlib.sha256(data).hexdigest()
    assert store.put(data) == digest
    path = store.root / digest[:2] / digest
    assert path.read_bytes() == data
    assert store.get(digest) == data
    assert list(store.hashes()) == [digest]


def test_put_is_idempotent_and_leaves_no_temp_files(store):
    first = store.put(b"same")
    mtime = store.path(first).stat().st_mtime_ns
    assert store.put(b"same") == first
    assert store.path(first).stat().st_mtime_ns == mtime  # not rewritten
    assert [p.name for p in store.root.rglob("*") if p.is_file()] == [first]


@pytest.mark.parametrize(
    "bad",
    [
        "../../etc/passwd",
        "AB" * 32,  # uppercase
        "ab" * 31,  # too short
        "ab" * 33,  # too long
        "g" * 64,
        "ab" * 31 + "/x",
        None,
        123,
    ],
)
def test_malformed_hashes_are_refused_before_any_path_is_built(store, bad):
    with pytest.raises(BlobIntegrityError):
        check_hash(bad)
    with pytest.raises(BlobIntegrityError):
        store.get(bad)
    with pytest.raises(BlobIntegrityError):
        store.path(bad)


def test_missing_blob_raises_not_found(store):
    with pytest.raises(BlobNotFoundError):
        store.get("0" * 64)


def test_damaged_blob_is_detected_on_read(store):
    digest = store.put(b"original content")
    store.path(digest).write_bytes(b"original c0ntent")  # same size, flipped byte
    with pytest.raises(BlobIntegrityError, match="damaged"):
        store.get(digest)


def test_truncated_blob_is_rewritten_by_the_next_put(store):
    digest = store.put(b"0123456789")
    store.path(digest).write_bytes(b"01234")
    assert store.put(b"0123456789") == digest
    assert store.get(digest) == b"0123456789"


def test_a_damaged_blob_of_the_same_size_is_rewritten_by_the_next_put(store):
    digest = store.put(b"original content")
    store.path(digest).write_bytes(b"original c0ntent")  # same size: a size check alone would keep it
    assert store.put(b"original content") == digest
    assert store.get(digest) == b"original content"


def test_opening_a_repository_removes_stale_temp_files(tmp_path):
    from storage import Repository

    with Repository(tmp_path) as repo:
        digest = repo.blobs.put(b"x")
    stale = repo.blobs.path(digest).parent / ".tmp-dead-writer"
    stale.write_bytes(b"partial")
    os.utime(stale, (0, 0))
    with Repository(tmp_path):
        assert not stale.exists()


def test_failed_write_leaves_neither_blob_nor_temp_file(store, monkeypatch):
    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        store.put(b"never stored")
    monkeypatch.undo()
    assert [p for p in store.root.rglob("*") if p.is_file()] == []


def test_put_refuses_non_bytes(store):
    with pytest.raises(TypeError):
        store.put("a string")  # type: ignore[arg-type]


def test_stale_temp_files_are_removed_but_young_ones_kept(store):
    digest = store.put(b"x")
    shard = store.path(digest).parent
    old = shard / ".tmp-old"
    young = shard / ".tmp-young"
    old.write_bytes(b"partial")
    young.write_bytes(b"partial")
    os.utime(old, (0, 0))
    assert store.remove_stale_temp_files(older_than_s=3600) == 1
    assert not old.exists() and young.exists() and store.exists(digest)
