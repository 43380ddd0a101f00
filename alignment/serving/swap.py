"""The fused-LoRA swap slot: which adapter version one pipeline's weights hold, and how that changes.

A `SwapSlot` owns the LoRA state of one pipeline. `load(version, lora)` makes a version the one the weights hold
(None = the base) in place, without reloading the pipeline: diffusers' hotswap copies the new A and B into the same
parameters, and fusing writes W = W_base + s * B A (only the adapter's own rank of the hotswap-padded A and B) into
each wrapped layer in one pass from a saved copy of the base weights, so that sampling with an adapter costs what
sampling the base costs. Going back to the base is a copy, exact to the bit.

The heavy part of a swap can run beside generation. While an adapter is fused, peft's LoRA path is off, so
generation reads only the wrapped layers' weights: `prepare(version, lora)` hot-swaps the new A and B in and writes
the new fused weights into spare buffers (one extra copy of the wrapped layers' weights); the `load` or `commit`
that follows only swaps each layer's weight tensor for its spare (a pointer swap per layer). `temporarily(version,
lora)` shows another version (or the base) for one block, in a side buffer (or by pointing each layer at its saved
base weights), and leaves the live weights and any prepared swap as they were.

When diffusers fails part-way through a load it may delete the adapter; `load` then loads the live version back
(or serves the base and says so), so `version` always names what the weights hold.

peft's state: while fused, peft believes the UNet's adapter is disabled and unmerged although the weights hold its
delta; any peft or diffusers call that switches adapters (fuse, unfuse, unload, set or enable adapters, merge ...)
would then work on wrong weights. So from its first load the slot replaces those methods, on the pipeline, its
UNet and each LoRA layer of the UNet, by guards that raise `LivePipelineError` unless the slot itself is working:
no caller can reach them. Text-encoder LoRA parts are not fused and stay under peft's own (true) bookkeeping.

Not thread-safe for generation: `load`, `commit` and `temporarily` change what generation reads, so the caller
makes sure no generation runs meanwhile (`alignment.serving.live.LiveModel` holds its generation lock); `prepare`
changes only what generation does not read. The slot's own lock orders its operations among themselves. It knows
nothing about storage, generation or the UI.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer

from alignment.core.lora_files import LORA_WEIGHT_NAME, AdapterLoadError, lora_rank, materialized
from alignment.families.base import check_lora_fits

ADAPTER_NAME = "live"
log = logging.getLogger(__name__)

# peft's and diffusers' adapter-switching methods, guarded once the slot owns a pipeline
PIPELINE_METHODS = ("load_lora_weights", "fuse_lora", "unfuse_lora", "unload_lora_weights", "set_adapters",
                    "enable_lora", "disable_lora", "delete_adapters", "enable_lora_hotswap")
UNET_METHODS = ("load_lora_adapter", "add_adapter", "set_adapter", "set_adapters", "enable_adapters",
                "disable_adapters", "fuse_lora", "unfuse_lora", "unload_lora", "enable_lora", "disable_lora",
                "delete_adapters", "enable_lora_hotswap")
LAYER_METHODS = ("merge", "unmerge", "enable_adapters", "set_adapter", "delete_adapter", "set_scale")


class LivePipelineError(RuntimeError):
    """A caller tried to switch adapters on a pipeline whose fused weights a SwapSlot owns."""


class SwapSlot:
    """The adapter version one pipeline's weights hold: load, prepare and commit, show another version, recover."""

    def __init__(self, pipe, *, fuse: bool = True, max_lora_rank: int = 64):
        if max_lora_rank < 1:
            raise ValueError(f"max_lora_rank must be at least 1, got {max_lora_rank}")
        self.pipe = pipe
        # The network the LoRA adapts: the UNet, or a flow pipeline's transformer; its name prefixes the file's keys.
        self.denoiser_name = "unet" if getattr(pipe, "unet", None) is not None else "transformer"
        self.denoiser = getattr(pipe, self.denoiser_name)
        self.prefix = self.denoiser_name + "."
        self.fuse = fuse
        self.max_lora_rank = max_lora_rank
        self._version: int | None = None
        self._live_lora: str | Path | bytes | dict | None = None  # what made `version` live
        self._rank = 0  # the live adapter's own rank (A and B are zero-padded beyond it for hotswap)
        self._loaded = False  # an adapter named ADAPTER_NAME exists in the UNet
        self._loaded_keys: frozenset[str] = frozenset()  # its UNet keys
        self._text_encoder_part = False  # it also has text-encoder LoRA layers (loaded anew, never hot-swapped)
        self._fused = False
        self._base_weights: list[tuple[torch.nn.Module, torch.Tensor]] = []  # LoRA-wrapped layers, pristine weights
        self._spares: list[torch.Tensor] = []  # one per wrapped layer: where `prepare` writes the next fused weights
        self._prepared: _Prepared | None = None
        self._lock = threading.Lock()  # orders the slot's own operations; never held while generation runs
        self._ab_version: int | None = None  # the version whose A and B are loaded (None: unknown or none)
        self._working: int | None = None  # the thread inside a slot operation: the guards let it through
        self._guarded: weakref.WeakSet = weakref.WeakSet()  # the objects whose methods are guarded

    # ---- what the weights hold ----------------------------------------------------------------------------------
    @property
    def version(self) -> int | None:
        """The adapter version the weights hold (None = the base)."""
        return self._version

    @property
    def prepared_version(self) -> int | None:
        """The version a `commit` would make live (None: nothing prepared)."""
        p = self._prepared
        return None if p is None else p.version

    @property
    def wrapped_layers(self) -> int:
        """How many UNet layers the adapter wraps (each has a saved base weight and a spare)."""
        return len(self._base_weights)

    @property
    def fused_weights_bytes(self) -> int:
        """The size of the wrapped layers' weights: what the saved base copy and the spares each take."""
        return sum(w.numel() * w.element_size() for _, w in self._base_weights)

    # ---- swaps --------------------------------------------------------------------------------------------------
    def load(self, version: int | None, lora: str | Path | bytes | dict | None = None) -> float:
        """Make `version` what the weights hold (None = the base); returns the seconds it took. After
        `prepare(version, lora)` this only commits. If the adapter cannot be loaded, AdapterLoadError is raised and
        the previous version stays (or, when it cannot come back, the base, and `version` says so)."""
        if version is not None and lora is None:
            raise ValueError("an adapter version needs its LoRA weights (a path, bytes or a state dict)")
        t0 = time.perf_counter()
        with self._lock, self._work():
            if version is not None and self._is_prepared(version, lora):
                self._commit()
                return time.perf_counter() - t0
            with materialized(None if version is None else lora) as (state, source):
                self._check_fits(state)  # another family's or UNet's LoRA: refused before anything changes
                self._load_whole(version, lora, state, source)
        return time.perf_counter() - t0

    def commit(self, version: int) -> bool:
        """Make a prepared `version` live by a pointer swap per layer; False (nothing changes) when `version` is
        not the prepared one."""
        with self._lock, self._work():
            if self.prepared_version != version:
                return False
            self._commit()
            return True

    def prepare(self, version: int, lora: str | Path | bytes | dict) -> bool:
        """Do the heavy part of a swap to `version` beside generation; True when the next `load(version, lora)` or
        `commit(version)` only commits. False when it cannot be prepared (no adapter fused yet, fusing off, other
        target layers, a rank above `max_lora_rank`, keys outside the UNet): then `load` does all of it. A failure
        raises AdapterLoadError and changes nothing that generation reads."""
        if version is None:
            raise ValueError("prepare makes an adapter version ready; the base needs no preparing")
        with materialized(lora) as (state, source), self._lock, self._work():
            self._check_fits(state)
            if self._is_prepared(version, lora):
                return True
            if not self._hot_swappable(state, fused=True):
                return False
            self._prepared = None
            rank = lora_rank(state)
            try:
                self._load(state, source, enable=False)  # only A and B: the live fused weights do not change
                spares = self._spares or [torch.empty_like(base) for _, base in self._base_weights]
                with torch.no_grad():
                    for (module, base), spare in zip(self._base_weights, spares):
                        fuse_into(module, base, rank, out=spare)
            except AdapterLoadError:
                raise
            except Exception as e:  # e.g. out of memory for the spare buffers
                raise AdapterLoadError(f"could not prepare adapter version {version}: {e}") from e
            self._spares, self._ab_version = spares, version
            self._prepared = _Prepared(version, lora, _stamp(lora), rank)
            return True

    @contextmanager
    def temporarily(self, version: int | None, lora: str | Path | bytes | dict | None = None):
        """Inside the block the weights hold `version` (None = the base); afterwards the live version's weights and
        any prepared swap are as they were. The base is shown by pointing each wrapped layer at its saved base
        weights, another version through a side buffer; when neither can be done (fusing off, other target layers,
        text-encoder parts) it is a whole `load` there and back."""
        if version is not None and lora is None:
            raise ValueError("an adapter version needs its LoRA weights (a path, bytes or a state dict)")
        if version == self._version:
            yield
            return
        with materialized(lora) as (state, source), self._lock, self._work():
            self._check_fits(state)
            shown = self._side_weights(version, state, source)
            live = [module.base_layer.weight.data for module, _ in self._base_weights] if shown else []
            for (module, _), weight in zip(self._base_weights, shown):
                module.base_layer.weight.data = weight
        if shown:
            try:
                yield
            finally:
                for (module, _), weight in zip(self._base_weights, live, strict=True):
                    module.base_layer.weight.data = weight
            return
        live_version, live_lora = self._version, self._live_lora
        self.load(version, lora)
        try:
            yield
        finally:
            self.load(live_version, live_lora)

    def fuse_again(self) -> None:
        """Write the live adapter's fused weights again from the saved base and A and B: the part of a whole swap
        that rewrites the weights, on its own (for benchmarks; the result is the same weights)."""
        with self._lock, self._work():
            if self._ab_version != self._version or self._version is None or not self._fused:
                raise RuntimeError("fuse_again needs a fused live adapter whose A and B are loaded "
                                   "(after a load or commit)")
            self._fuse()

    # ---- internals ----------------------------------------------------------------------------------------------
    def _check_fits(self, state: dict[str, torch.Tensor] | None) -> None:
        """AdapterLoadError for a LoRA whose layers or sizes are not this UNet's (another model family or shape);
        diffusers would skip unknown layers with a warning or fail half-way."""
        if state is not None:
            if not any(k.startswith(self.prefix) for k in state):
                raise AdapterLoadError(f"the LoRA has no '{self.prefix}' keys: it was made for another model family")
            check_lora_fits(self.denoiser, state, prefix=self.denoiser_name)

    def _load_whole(self, version, lora, state, source) -> None:
        """The whole swap: hot-swap (or load) A and B, then fuse; the base is a copy of the saved weights."""
        self._prepared = None  # whatever happens below rewrites A and B
        if self._loaded and not self._adapter_present():
            self._recover()  # an earlier failure inside diffusers deleted the adapter
        try:
            if state is None:
                self._unfuse()
                if self._loaded:
                    self.pipe.disable_lora()
                self._version = None
            else:  # while fused, peft's LoRA path is off: A and B are swapped in place, then fused anew
                try:
                    self._load(state, source)
                except Exception:
                    self._recover()
                    raise
                self._version, self._live_lora, self._rank = version, lora, lora_rank(state)
                self._ab_version = version
        finally:
            if self._version is not None:
                self._fuse()  # the new version, or the live one that _recover loaded back

    def _side_weights(self, version, state, source) -> list[torch.Tensor]:
        """The weights that show `version` without touching the live weights or the spares, or [] when that
        cannot be done here (the caller then swaps there and back)."""
        if not (self.fuse and self._base_weights and not self._text_encoder_part and self._adapter_present()
                and all(module.disable_adapters for module, _ in self._base_weights)):
            return []
        if state is None:
            return [base for _, base in self._base_weights]
        if not self._hot_swappable(state, fused=True):
            return []
        try:
            self._load(state, source, enable=False)  # A and B now hold `version`; the live weights stay
        except AdapterLoadError:
            self._ab_version = None
            if not self._adapter_present():  # diffusers deleted the adapter: the live one comes back
                self._recover()
                if self._version is not None:
                    self._fuse()
            raise
        self._ab_version = version
        side = [torch.empty_like(base) for _, base in self._base_weights]
        with torch.no_grad():
            for (module, base), out in zip(self._base_weights, side):
                fuse_into(module, base, lora_rank(state), out=out)
        return side

    def _is_prepared(self, version: int, lora) -> bool:
        p = self._prepared
        if p is None or p.version != version:
            return False
        if isinstance(lora, dict):  # the same dict object (edited in place, it is not told apart)
            return lora is p.lora
        if isinstance(lora, bytes):
            return isinstance(p.lora, bytes) and lora == p.lora
        try:
            return isinstance(p.lora, (str, Path)) and Path(lora) == Path(p.lora) and _stamp(lora) == p.stamp
        except OSError:  # the file went away: loading reports it properly
            return False

    def _hot_swappable(self, state: dict[str, torch.Tensor], fused: bool) -> bool:
        """A and B can be hot-swapped: the same UNet layers as the loaded adapter and nothing outside the UNet (a
        text-encoder LoRA is loaded anew), a rank that fits the padding. With `fused`, also invisible to generation:
        fusing on and peft's LoRA path off (also while the base is served), and no offloading hooks that loading
        would re-install."""
        unet_keys = frozenset(k for k in state if k.startswith(self.prefix))
        swappable = (self._loaded and not self._text_encoder_part and len(unet_keys) == len(state)
                     and unet_keys == self._loaded_keys and lora_rank(state) <= self.max_lora_rank)
        if not fused:
            return swappable
        return (swappable and self.fuse and bool(self._base_weights) and self._adapter_present()
                and all(module.disable_adapters for module, _ in self._base_weights)
                and getattr(self.denoiser, "_hf_hook", None) is None)

    def _commit(self) -> None:
        """The prepared fused weights become the live ones, the old ones the next spares."""
        p, old = self._prepared, []
        for (module, _), spare in zip(self._base_weights, self._spares, strict=True):
            weight = module.base_layer.weight
            old.append(weight.data)
            weight.data = spare
        self._spares = old
        self._fused = True
        self._version, self._live_lora, self._rank, self._prepared = p.version, p.lora, p.rank, None

    def _adapter_present(self) -> bool:
        return ADAPTER_NAME in (getattr(self.denoiser, "peft_config", None) or {})

    def _recover(self) -> None:
        """After a failed load, A and B may hold part of the new adapter, and diffusers deletes the adapter when
        loading fails half-way. Load the live version's weights back (hot-swapped, or anew when the adapter is
        gone; the caller fuses them), or fall back to the base, so that `version` names what the weights hold."""
        if not self._adapter_present():
            self._unfuse()
            self._base_weights, self._spares, self._prepared = [], [], None
            self._loaded, self._loaded_keys, self._text_encoder_part, self._rank = False, frozenset(), False, 0
        if self._version is None:
            return
        try:
            with materialized(self._live_lora) as (state, source):
                self._load(state, source)
                self._rank = lora_rank(state)
                self._ab_version = self._version
        except Exception as e:  # the live version cannot come back either: serve the base rather than mislabel
            log.warning("could not restore adapter version %s after a failed swap (%s); serving the base model",
                        self._version, e)
            self._unfuse()
            if self._adapter_present():
                self.denoiser.disable_lora()
            self._version = None

    def _load(self, state: dict[str, torch.Tensor], source, enable: bool = True) -> None:
        """Load or hot-swap the adapter's A and B (enable: switch peft's LoRA path on; `_fuse` switches it off)."""
        keys = frozenset(k for k in state if k.startswith(self.prefix))  # not empty: `_check_fits` checked
        can_hotswap = self._hot_swappable(state, fused=False)
        foreign = sorted(getattr(self.denoiser, "peft_config", None) or ()) if not self._loaded else []
        if foreign:  # diffusers' hotswap must be enabled before the first adapter: fail clearly, change nothing
            raise AdapterLoadError(f"the pipeline already holds LoRA adapter(s) {', '.join(foreign)} that this "
                                   "sampler did not load; give the sampler a pipeline of its own (load_pipeline)")
        self._ab_version = None  # until the load below has succeeded
        try:
            if not self._loaded:
                self._guard(self.pipe, PIPELINE_METHODS)
                self._guard(self.denoiser, UNET_METHODS)
                self.pipe.enable_lora_hotswap(target_rank=max(self.max_lora_rank, lora_rank(state)))
            elif not can_hotswap:  # different targets or a larger rank: replace the adapter, keep the pipeline
                self._unfuse()
                self._base_weights, self._spares = [], []  # the new adapter may wrap other layers
                self.pipe.delete_adapters(ADAPTER_NAME)
            self.pipe.load_lora_weights(str(source) if isinstance(source, Path) else source,
                                        adapter_name=ADAPTER_NAME, hotswap=can_hotswap)
        except (ValueError, RuntimeError, KeyError) as e:
            raise AdapterLoadError(f"could not load the adapter: {e}") from e
        finally:
            for module in self.denoiser.modules():
                if isinstance(module, BaseTunerLayer):
                    self._guard(module, LAYER_METHODS)
        if enable:
            self.pipe.enable_lora()
        self._loaded = True
        self._loaded_keys = keys
        self._text_encoder_part = len(keys) != len(state)

    def _fuse(self) -> None:
        """Write base + the live adapter's delta into the wrapped layers (also over an older fused delta)."""
        if not (self.fuse and self._loaded):
            return
        if not self._base_weights:
            self._base_weights = [(m, m.base_layer.weight.detach().clone()) for m in self.denoiser.modules()
                                  if isinstance(m, LoraLayer) and ADAPTER_NAME in m.lora_A]
        with torch.no_grad():
            for module, base in self._base_weights:
                fuse_into(module, base, self._rank)
        self.denoiser.disable_lora()  # the delta is in the weights now; peft's own path would add it again
        self._fused = True

    def _unfuse(self) -> None:
        if self._fused:
            with torch.no_grad():
                for module, base in self._base_weights:
                    module.base_layer.weight.copy_(base)
            self._fused = False

    @contextmanager
    def _work(self):
        """Let this thread through the guards for the duration of a slot operation (under `_lock`)."""
        outer, self._working = self._working, threading.get_ident()
        try:
            yield
        finally:
            self._working = outer

    def _guard(self, obj, names: tuple[str, ...]) -> None:
        """Replace `obj`'s adapter-switching methods by ones that raise unless the slot itself calls them."""
        if obj in self._guarded:
            return
        for name in names:
            real = getattr(obj, name, None)
            if real is not None:
                setattr(obj, name, _guarded(self, type(obj).__name__, name, real))
        self._guarded.add(obj)


def _guarded(slot: SwapSlot, owner: str, name: str, real):
    def guard(*args, **kwargs):
        if slot._working != threading.get_ident():
            raise LivePipelineError(
                f"{owner}.{name} would change the adapters of the live pipeline, whose fused weights peft does not "
                "know about: make versions live through LiveModel (or SwapSlot), or load a pipeline of your own "
                "(load_pipeline) to experiment")
        return real(*args, **kwargs)
    guard.__wrapped__ = real
    return guard


def fuse_into(module, base: torch.Tensor, rank: int, out: torch.Tensor | None = None) -> None:
    """out (default: module.base_layer.weight) = base + scaling * B A for the adapter's A and B, in one pass (no
    delta tensor) for a plain linear LoRA; other layer types (convolutions, DoRA) go through peft's own
    `get_delta_weight`."""
    weight = module.base_layer.weight if out is None else out
    a, b = module.lora_A[ADAPTER_NAME].weight, module.lora_B[ADAPTER_NAME].weight
    plain_linear = (isinstance(module.base_layer, torch.nn.Linear) and not module.fan_in_fan_out
                    and not module.use_dora.get(ADAPTER_NAME, False) and a.dtype == weight.dtype)
    if plain_linear and 0 < rank <= a.shape[0]:
        torch.addmm(base, b[:, :rank], a[:rank], alpha=float(module.scaling[ADAPTER_NAME]), out=weight)
    else:
        torch.add(base, module.get_delta_weight(ADAPTER_NAME).to(weight.dtype), out=weight)


@dataclass
class _Prepared:
    """A swap that `SwapSlot.prepare` has done all but the commit of."""

    version: int
    lora: str | Path | bytes | dict
    stamp: tuple | None  # a file's (size, mtime) when prepared from a path: a rewritten file is not the same adapter
    rank: int


def _stamp(lora) -> tuple | None:
    if not isinstance(lora, (str, Path)):
        return None
    path = Path(lora)
    path = path / LORA_WEIGHT_NAME if path.is_dir() else path
    st = path.stat()
    return st.st_size, st.st_mtime_ns
