"""Before/after grids and version strips for the Compare tab, drawn from a bounded cache of rendered images.

A grid is one prompt at a few consecutive seeds (1 to `MAX_GRID_SEEDS`) for two versions (None = the base), one
row per version. A strip is one seed across the base and every registered version in order, the newest
`strip_cap` of them when there are more (the base always comes first). Images come from
`studio.live.at(version).generate(prompt, seeds)`, the path `Studio.compare` takes, after the same checks: the
prompt (`checked_prompt`), the seeds (0 .. 2^63-1) and the versions (`UnknownAdapterError` before anything is
counted or rendered).

Every rendered image is kept in an `ImageCache` keyed by (model, version, prompt, seed, sampler settings). A
registered adapter's file never changes, so a cached image of a version stays valid; a second look at the same
image renders nothing. Only the images the cache lacks are rendered, and they count against the annotator's rate
limits as pairs do: one count per two images (a pair, and a compare of two versions, count one), paid before they
render. When a limit refuses partway, the images already paid for are rendered and cached before the refusal is
raised, so every count buys its images and a later try does not pay for them again.

A grid whose B is the live version can follow it: `refresh_due` says whether the live version moved away from the
grid's B, from one read of storage shared by every caller for `live_max_age_s` (a page that polls it costs no
query of its own), and `follow` renders the grid again at the new live version. Knows the `Studio` and PIL, no
Gradio.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from PIL import Image

from app.errors import RateLimitedError, StudioError
from app.inputs import parse_seeds
from app.studio import Studio, checked_prompt, one_seed

MAX_GRID_SEEDS = 8
DEFAULT_GRID_SEEDS = 4
STRIP_VERSIONS = 12  # adapter versions a strip shows besides the base: the newest ones
CACHE_IMAGES = 256
IMAGES_PER_COUNT = 2  # one rate-limit count per two rendered images, as for a pair or a compare
LIVE_MAX_AGE_S = 1.0


@dataclass(frozen=True)
class GridRequest:
    """What a grid shows, checked: the normalised prompt, its seeds, and versions A and B (None = the base)."""

    prompt: str
    seeds: tuple[int, ...]
    version_a: int | None
    version_b: int | None


@dataclass(frozen=True)
class Grid:
    """A rendered grid: one image per seed for A and for B, and how many of them were rendered (not cached)."""

    request: GridRequest
    images_a: tuple[Image.Image, ...]
    images_b: tuple[Image.Image, ...]
    rendered: int


@dataclass(frozen=True)
class Strip:
    """One seed across the base and the newest versions, oldest first; `total` counts every registered version."""

    prompt: str
    seed: int
    versions: tuple[int | None, ...]  # None (the base) first
    images: tuple[Image.Image, ...]
    total: int
    rendered: int

    @property
    def capped(self) -> bool:
        """True when older versions were left out."""
        return self.total > len(self.versions) - 1


class ImageCache:
    """The `capacity` most recently used images by key; the least recently used goes first. Safe across threads."""

    def __init__(self, capacity: int = CACHE_IMAGES):
        if capacity < 1:
            raise ValueError(f"an image cache needs room for at least one image, got {capacity}")
        self.capacity = capacity
        self._images: collections.OrderedDict[Hashable, Image.Image] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Image.Image | None:
        with self._lock:
            image = self._images.get(key)
            if image is not None:
                self._images.move_to_end(key)
            return image

    def put(self, key: Hashable, image: Image.Image) -> None:
        with self._lock:
            self._images[key] = image
            self._images.move_to_end(key)
            while len(self._images) > self.capacity:
                self._images.popitem(last=False)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._images

    def __len__(self) -> int:
        with self._lock:
            return len(self._images)


class Gallery:
    """Grids and strips of one studio's versions, with their image cache and a shared read of the live version."""

    def __init__(self, studio: Studio, *, capacity: int = CACHE_IMAGES, strip_cap: int = STRIP_VERSIONS,
                 live_max_age_s: float = LIVE_MAX_AGE_S, clock: Callable[[], float] = time.monotonic):
        if strip_cap < 1:
            raise ValueError(f"a strip shows at least one version besides the base, got strip_cap={strip_cap}")
        self.studio = studio
        self.cache = ImageCache(capacity)
        self.strip_cap = strip_cap
        self.live_max_age_s = live_max_age_s
        self._clock = clock
        self._live: tuple[float, int | None] | None = None  # (when read, the live version)
        self._lock = threading.Lock()

    # ---- what a page asks for ------------------------------------------------------------------------------
    def request(self, prompt, seed, count, version_a: int | None, version_b: int | None) -> GridRequest:
        """A checked grid request: `count` seeds from `seed` on (None = a random first seed); StudioError for bad
        input. Whether the versions exist is checked when they render."""
        prompt = checked_prompt(prompt)
        first, n = one_seed(seed), grid_seed_count(count)
        seeds = parse_seeds([first + i for i in range(n)], n)  # the last one must stay in range too
        return GridRequest(prompt, tuple(seeds), checked_version(version_a), checked_version(version_b))

    def grid(self, prompt, seed, count, version_a: int | None, version_b: int | None, *, annotator: str,
             address: str | None = None) -> Grid:
        """Versions A and B of `prompt` at `count` seeds from `seed` on, side by side per seed."""
        return self.render(self.request(prompt, seed, count, version_a, version_b), annotator=annotator,
                           address=address)

    def render(self, request: GridRequest, *, annotator: str, address: str | None = None) -> Grid:
        wanted = [(version, seed) for version in (request.version_a, request.version_b) for seed in request.seeds]
        images, rendered = self._images(request.prompt, wanted, annotator, address)
        n = len(request.seeds)
        return Grid(request, tuple(images[:n]), tuple(images[n:]), rendered)

    def strip(self, prompt, seed, *, annotator: str, address: str | None = None) -> Strip:
        """`prompt` at one seed across the base and the newest `strip_cap` versions, oldest first."""
        prompt, seed = checked_prompt(prompt), one_seed(seed)
        every = self.studio.versions()
        versions = (None, *every[-self.strip_cap:])
        images, rendered = self._images(prompt, [(version, seed) for version in versions], annotator, address)
        return Strip(prompt, seed, versions, tuple(images), len(every), rendered)

    # ---- following the live version ------------------------------------------------------------------------
    def live_version(self, max_age_s: float | None = None) -> int | None:
        """The version storage says is live (None = the base), read at most `max_age_s` (default
        `live_max_age_s`; 0 = now) ago by any caller."""
        max_age_s = self.live_max_age_s if max_age_s is None else max_age_s
        with self._lock:
            seen = self._live
        if max_age_s > 0 and seen is not None and self._clock() - seen[0] <= max_age_s:
            return seen[1]
        record = self.studio.repo.live_adapter()
        version = None if record is None else record.version
        with self._lock:
            self._live = (self._clock(), version)
        return version

    def refresh_due(self, request: GridRequest) -> bool:
        """Whether the live version is no longer the grid's B (cheap: see `live_version`); renders nothing."""
        return self.live_version() != request.version_b

    def follow(self, request: GridRequest, *, annotator: str, address: str | None = None) -> Grid | None:
        """The grid again with B at the version live now; None, rendering nothing, when that is B already."""
        live = self.live_version(max_age_s=0)
        if live == request.version_b:
            return None
        return self.render(dataclasses.replace(request, version_b=live), annotator=annotator, address=address)

    # ---- rendering through the cache -----------------------------------------------------------------------
    def _key(self, version: int | None, prompt: str, seed: int) -> tuple:
        live = self.studio.live
        return live.model.model_id, version, prompt, seed, dataclasses.astuple(live.config)

    def _images(self, prompt: str, wanted: list[tuple[int | None, int]], annotator: str,
                address: str | None) -> tuple[list[Image.Image], int]:
        """The image of each (version, seed) in `wanted`, and how many were rendered: cached ones are reused, the
        others are paid for (`_pay`), rendered one batch per version, and cached."""
        keys = [self._key(version, prompt, seed) for version, seed in wanted]
        found = {key: image for key in keys if (image := self.cache.get(key)) is not None}
        missing = list(dict.fromkeys(item for item, key in zip(wanted, keys) if key not in found))
        views = {version: self.studio.live.at(version) for version in dict.fromkeys(v for v, _ in missing)}
        paid, refused = self._pay(len(missing), annotator, address)
        for version, seeds in by_version(missing[:paid]).items():
            for seed, generation in zip(seeds, views[version].generate(prompt, seeds)):
                key = self._key(version, prompt, seed)
                self.cache.put(key, generation.image)
                found[key] = generation.image
        if refused is not None:
            raise refused
        return [found[key] for key in keys], len(missing)

    def _pay(self, images: int, annotator: str, address: str | None) -> tuple[int, RateLimitedError | None]:
        """Count `images` against the rate limits, one count per `IMAGES_PER_COUNT`; returns how many images were
        paid for and the refusal that stopped the counting (None when all were)."""
        paid = 0
        while paid < images:
            try:
                self.studio.limits.check_pair(annotator, address)
            except RateLimitedError as refused:
                return paid, refused
            paid += IMAGES_PER_COUNT
        return images, None


def grid_seed_count(count) -> int:
    """How many seeds a grid shows, from a number field (None or empty = `DEFAULT_GRID_SEEDS`)."""
    if count is None or (isinstance(count, str) and not count.strip()):
        return DEFAULT_GRID_SEEDS
    value = count
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_GRID_SEEDS:
        raise StudioError(f"seeds: give a whole number from 1 to {MAX_GRID_SEEDS}; got {count!r:.40}")
    return value


def checked_version(version) -> int | None:
    """A version as the live model takes it: None (the base) or a whole number; StudioError otherwise."""
    if version is None or (isinstance(version, int) and not isinstance(version, bool)):
        return version
    raise StudioError(f"a version is the base or a whole number (v1, v2, …); got {version!r:.40}")


def by_version(items: list[tuple[int | None, int]]) -> dict[int | None, list[int]]:
    """The seeds of (version, seed) items per version, in the order they came."""
    grouped: dict[int | None, list[int]] = {}
    for version, seed in items:
        grouped.setdefault(version, []).append(seed)
    return grouped
