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

A model folder can ship its entries (`<model folder>/guard-base/`, written by `python -m
alignment.training.guard_cache ship embedded embedded-flow`): a worker whose data directory lacks an entry reads
the shipped one, so the first start on a new data directory does not render the base either. The same check
applies: on a machine whose arithmetic renders the first image differently beyond `matches`' tolerance, the
images are rendered there and kept in the data directory.
"""

from __future__ import annotations

import contextlib
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
SHIPPED_DIR = "guard-base"  # a model folder's entries, rendered where the model was built (`ship`)
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
    """Entries of base images under `root` (created on the first save), the newest `keep` kept; `shipped`, a
    folder of entries that came with the model (`SHIPPED_DIR` in its folder), is read when `root` lacks an entry
    and never written."""

    def __init__(self, root: str | Path, keep: int = 8, shipped: str | Path | None = None):
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.root, self.keep = Path(root), keep
        self.shipped = None if shipped is None else Path(shipped)

    def load(self, key: str, plan: Sequence[tuple[str, int]]) -> list[Image.Image] | None:
        """The entry's images in plan order, or None (no entry, or one that does not hold exactly `plan`): the
        entry under `root`, else the one the model ships (`shipped`)."""
        images = self._read(self.root / key, plan)
        if images is not None:
            with contextlib.suppress(OSError):
                os.utime(self.root / key)  # used now: the newest are kept
            return images
        return None if self.shipped is None else self._read(self.shipped / key, plan)

    @staticmethod
    def _read(folder: Path, plan: Sequence[tuple[str, int]]) -> list[Image.Image] | None:
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


def shipped_entries(model) -> Path | None:
    """Where a loaded model's shipped entries are (`SHIPPED_DIR` in its local folder); None for a hub model."""
    return None if model.folder is None else model.folder / SHIPPED_DIR


def ship(model: str) -> Path:
    """Render the default guard's base images of a local `model` (`embedded`, `embedded-flow` or a folder) into
    the model's own `SHIPPED_DIR`, replacing what is there, so that a studio's first start on it reads them (one
    image of each seed set rendered again) instead of rendering them."""
    from alignment.families.loader import load_pipeline
    from alignment.serving.sampler import Sampler
    from alignment.training.fidelity import FidelityGuard
    from settings import SamplerConfig, WorkerConfig

    loaded = load_pipeline(model)
    out = shipped_entries(loaded)
    if out is None:
        raise SystemExit(f"{model!r} is not a local folder: only a model folder can ship the guard's base images")
    shutil.rmtree(out, ignore_errors=True)
    guard = FidelityGuard.for_model(WorkerConfig(), loaded, cache=BaseImageCache(out, keep=2))
    guard.render_base(Sampler(loaded, SamplerConfig.from_defaults(loaded.sampler_defaults), fuse=False))
    return out


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="render the guard's base images into a model folder "
                                                 "(python -m alignment.training.guard_cache ship embedded)")
    parser.add_argument("command", choices=["ship"])
    parser.add_argument("models", nargs="+", help="embedded, embedded-flow or a local diffusers folder")
    for name in parser.parse_args().models:
        print(f"{name}: {ship(name)}")
