"""Content-addressed blob store: images (PNG), trajectories and adapters (safetensors), by SHA-256.

A blob lives at ``<root>/<first two hex digits>/<64 hex digits>``. Paths are built only from a validated lowercase
hex digest, never from a caller's name, so no input can reach outside ``root``. Writes go to a temp file in the
target directory, are fsynced, atomically renamed into place, and the directory is fsynced: after a crash a blob
is either complete under its real name or absent (a stray ``.tmp-*`` file at worst, which
``remove_stale_temp_files`` deletes when a repository opens). Writing bytes that are already stored is a no-op
once the stored file's own hash is checked (a damaged copy, even of the same size, is rewritten), so blobs may
be written before the database transaction that references them.

This module knows files and hashes; it knows nothing of the database or of what the bytes mean.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import BlobIntegrityError, BlobNotFoundError

_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
_TEMP_PREFIX = ".tmp-"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_hash(blob_hash: object) -> str:
    """``blob_hash`` if it is a lowercase SHA-256 hex digest; BlobIntegrityError otherwise."""
    if not isinstance(blob_hash, str) or _HEX_DIGEST.fullmatch(blob_hash) is None:
        raise BlobIntegrityError(f"not a SHA-256 hex digest (64 lowercase hex digits): {blob_hash!r:.80}")
    return blob_hash


def _fsync_dir(path: Path) -> None:
    # Makes a rename durable; not every platform can open a directory (Windows), which then relies on the FS.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobStore:
    """Immutable files named by the SHA-256 of their content."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, blob_hash: str) -> Path:
        """Where the blob with this hash lives (whether or not it exists)."""
        h = check_hash(blob_hash)
        return self.root / h[:2] / h

    def exists(self, blob_hash: str) -> bool:
        return self.path(blob_hash).is_file()

    def put(self, data: bytes) -> str:
        """Store ``data`` durably and return its hash; storing bytes already present changes nothing."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"blob data must be bytes, got {type(data).__name__}")
        data = bytes(data)
        blob_hash = sha256_hex(data)
        final = self.path(blob_hash)
        try:
            if sha256_hex(final.read_bytes()) == blob_hash:
                return blob_hash
        except FileNotFoundError:
            pass
        # Absent, or present with other bytes (damaged, even at the same size): write it (again), atomically.
        final.parent.mkdir(exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=final.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp_name, final)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        _fsync_dir(final.parent)
        return blob_hash

    def get(self, blob_hash: str) -> bytes:
        """The blob's bytes, checked against its hash (BlobNotFoundError, BlobIntegrityError)."""
        path = self.path(blob_hash)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BlobNotFoundError(f"no blob {blob_hash} in {self.root}") from None
        if sha256_hex(data) != blob_hash:
            raise BlobIntegrityError(f"blob {blob_hash} is damaged: its content hashes to {sha256_hex(data)}")
        return data

    def hashes(self) -> Iterator[str]:
        """Every stored blob's hash (temp files excluded), in no particular order."""
        for shard in self.root.iterdir():
            if not shard.is_dir() or len(shard.name) != 2:
                continue
            for entry in shard.iterdir():
                if _HEX_DIGEST.fullmatch(entry.name) and entry.name.startswith(shard.name):
                    yield entry.name

    def remove_stale_temp_files(self, older_than_s: float = 3600.0) -> int:
        """Delete temp files left by writers that died; young ones may belong to a live writer. Returns a count."""
        cutoff = time.time() - older_than_s
        removed = 0
        for shard in self.root.iterdir():
            if not shard.is_dir():
                continue
            for entry in shard.glob(_TEMP_PREFIX + "*"):
                try:
                    if entry.stat().st_mtime < cutoff:
                        entry.unlink()
                        removed += 1
                except FileNotFoundError:
                    continue  # another process removed or renamed it meanwhile
        return removed
