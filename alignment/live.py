"""Keeping the live sampler on the adapter that the database says is live.

The worker (a thread here, or a process on another machine) only writes adapters and statuses to storage; whoever
owns a sampler calls `sync_live_adapter` before generating, and the swap happens under the sampler's lock between two
generations. The adapter bytes come from the content-addressed blob store, which checks their SHA-256 against the
hash recorded in the database before they are loaded.
"""

from __future__ import annotations

from alignment.sampler import Sampler


def sync_live_adapter(sampler: Sampler, repo) -> bool:
    """Hot-swap `sampler` to the live adapter (or the base when none is live); True when it swapped."""
    live = repo.live_adapter()
    version = live.version if live is not None else None
    if version == sampler.adapter_version:
        return False
    load_version(sampler, repo, version)
    return True


def load_version(sampler: Sampler, repo, version: int | None) -> float:
    """Swap `sampler` to any stored adapter version (None = base); returns the swap's seconds."""
    if version is None:
        return sampler.set_adapter(None)
    record = repo.get_adapter(version)
    return sampler.set_adapter(record.version, repo.read_blob(record.file_hash))
