"""The fidelity guard's base images on disk, so that a restarted studio does not render them again.

The guard compares every candidate with the base model's images at its seeds. Those images depend only on the
model, the sampler settings and the guard's plan (prompt and seed of each image), so a worker that starts on a data
directory where they were rendered before reads them back instead of rendering them: on the embedded model that
is 128 of a run's 256 guard images, on SDXL minutes of a GPU at every start of a Space.

An entry lives at `<root>/<key>/`, `key` the SHA-256 of the model id, its recorded settings (family, schedule), the
sampler settings and the plan; it holds one PNG per image and `plan.json`. It is written into a temporary folder and
renamed into place, so a reader sees a whole entry or none. A key cannot see everything that shapes an image (a
local model folder whose weights were replaced keeps its id), so `FidelityGuard` renders the entry's first image
again before it trusts the rest (`matches`). The newest `keep` entries are kept; a malformed entry is ignored (and
rendered again).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

PLAN_FILE = "plan.json"
# A fresh render of an entry's first image must match the stored one this closely (mean and largest absolute
# difference of 8-bit values): a batch of another size changes an image only within float rounding, other weights
# or settings change it far more.
MATCH_MEAN, MATCH_MAX = 1.0, 16


def cache_key(sampler, plan: Sequence[tuple[str, int]]) -> str:
    """The entry name of `plan` rendered by `sampler` (its model and settings)."""
    model = sampler.model
    what = {"model": model.model_id, "model_settings": model.settings, "sampler": asdict(sampler.config),
            "plan": [[p, int(s)] for p, s in plan]}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def matches(fresh: Image.Image, stored: Image.Image) -> bool:
    """Whether a fresh render is the stored image, within the rounding a batch of another size brings."""
    a, b = (np.asarray(im.convert("RGB"), dtype=np.int16) for im in (fresh, stored))
    if a.shape != b.shape:
        return False
    diff = np.abs(a - b)
    return float(diff.mean()) <= MATCH_MEAN and int(diff.max()) <= MATCH_MAX


class BaseImageCache:
    """Entries of base images under `root` (created on the first save), the newest `keep` kept."""

    def __init__(self, root: str | Path, keep: int = 8):
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.root, self.keep = Path(root), keep

    def load(self, key: str, plan: Sequence[tuple[str, int]]) -> list[Image.Image] | None:
        """The entry's images in plan order, or None (no entry, or one that does not hold exactly `plan`)."""
        folder = self.root / key
        try:
            stored = json.loads((folder / PLAN_FILE).read_text())
            if stored != [[p, int(s)] for p, s in plan]:
                return None
            images = []
            for i in range(len(plan)):
                with Image.open(folder / f"{i}.png") as im:
                    images.append(im.convert("RGB"))
        except (OSError, ValueError):  # missing, truncated or not ours: render again
            return None
        try:
            os.utime(folder)  # used now: the newest are kept
        except OSError:
            pass
        return images

    def save(self, key: str, plan: Sequence[tuple[str, int]], images: Sequence[Image.Image]) -> None:
        """Write the entry whole or not at all; an existing entry of the same key is replaced. A failure to
        write (a read-only or full disk) is logged: the cache only saves time."""
        if len(images) != len(plan):
            raise ValueError(f"{len(plan)} plan items but {len(images)} images")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{key[:16]}-", dir=self.root))
            try:
                for i, im in enumerate(images):
                    im.save(tmp / f"{i}.png")
                (tmp / PLAN_FILE).write_text(json.dumps([[p, int(s)] for p, s in plan]))
                target = self.root / key
                if target.exists():
                    shutil.rmtree(target)
                os.replace(tmp, target)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
            self._prune()
        except OSError as e:
            log.warning("could not keep the guard's base images in %s: %s", self.root, e)

    def _prune(self) -> None:
        """Keep the newest `keep` entries; drop what a process that died while writing left (after an hour)."""
        folders = [p for p in self.root.iterdir() if p.is_dir()]
        entries = sorted((p for p in folders if not p.name.startswith(".")), key=lambda p: p.stat().st_mtime,
                         reverse=True)
        abandoned = [p for p in folders if p.name.startswith(".") and time.time() - p.stat().st_mtime > 3600]
        for old in entries[self.keep:] + abandoned:
            shutil.rmtree(old, ignore_errors=True)
