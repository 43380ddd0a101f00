"""The training worker: when to train, train, check, register, promote.

It wakes when `train_every` new preference votes exist since the last run, when `train_interval_s` has passed with
new votes, or when `request_training()` is called ("Train now"). A run trains a fresh LoRA on all labeled pairs so far
(optionally only some annotators'), checks the loss stayed finite and the fidelity guard passes, writes the adapter
to the blob store and registers it; a passing adapter becomes live, a failing one is recorded as rejected with the
reason, and one the guard could not measure (`FidelityReport.scored` false) stays a candidate with the reason, for
an admin to judge. Failures are recorded as failed training runs and leave the live adapter as it was. Only one run
at a time: in this process a lock, across processes and machines the database lease "trainer"
(`Repository.acquire_lease`), renewed from the progress callback and released when the run ends; a worker that died
holds it only until `lease_ttl_s` runs out, and registering or promoting checks the lease's fence in the same
transaction. A run that finds the lease taken returns `{"status": "busy", "holder": ...}` untrained.
Under `accelerate launch` with several processes this worker runs on the main process only and the others follow
its runs (`alignment.training.distributed`).

The worker touches storage and its own trainer, never the app's sampler: the live model follows the database
(`alignment.serving.live.LiveModel`). The same worker runs as a thread in the app or alone:

    python -m alignment.worker --data-dir studio-data [--database-url URL] [--train-every 8] [--once]
    accelerate launch --multi_gpu --num_processes 4 -m alignment.worker --database-url URL --data-dir /shared
"""

from __future__ import annotations

import collections
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image
from safetensors import SafetensorError

from alignment.core.trajectory import Trajectory
from alignment.families.loader import ModelLoadError
from alignment.serving.priority import SamplingFirst, WaitBudget, YieldingSampler
from alignment.serving.sampler import Sampler
from alignment.training.fidelity import FidelityGuard, FidelityReport
from alignment.training.guard_cache import BaseImageCache, shipped_entries
from alignment.training.trainer import Trainer, TrainingPair
from settings import ModelConfig, SamplerConfig, StoreConfig, TrainerConfig, WorkerConfig, is_anonymous
from settings_cli import CommandLine, Parsed
from storage import StorageError

log = logging.getLogger(__name__)

LEASE_NAME = "trainer"  # the database lease that lets one worker train at a time
# What a run is doing, for the UI: `state()["phase"]`. "waiting for votes" whenever no run is going.
PHASES = ("waiting for votes", "training", "checking fidelity", "going live")


class LeaseLostError(RuntimeError):
    """The training lease expired or was taken over during a run (another worker may be training now)."""


class WorkerStopped(RuntimeError):
    """The worker was stopped during a run: the run ends as interrupted between two steps or guard renders, with
    nothing registered (its votes train the next run)."""


def holder_is_dead(holder: str) -> bool:
    """True only when `holder` (a lease holder id, "host:pid:object") names a process of this machine that no
    longer exists. Another machine's holder, or an id of another shape, is never judged dead."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def to_training_pair(lp, repo) -> TrainingPair:
    """A storage LabeledPair as a trainer TrainingPair (preferred side first)."""
    if lp.choice == "left":
        w, l, target = lp.left, lp.right, 1.0
    elif lp.choice == "right":
        w, l, target = lp.right, lp.left, 1.0
    else:
        w, l, target = lp.left, lp.right, 0.5
    if w.trajectory_hash and l.trajectory_hash:
        return TrainingPair(lp.prompt, Trajectory.from_bytes(repo.read_blob(w.trajectory_hash)),
                            Trajectory.from_bytes(repo.read_blob(l.trajectory_hash)), target)
    return TrainingPair(lp.prompt, None, None, target, _image(repo, w.image_hash), _image(repo, l.image_hash))


def load_training_pairs(repo, watermark: int, annotators: list[str] | None,
                        quarantined: list[dict] | None = None, *, signed_in_only: bool = False
                        ) -> tuple[list, list[TrainingPair]]:
    """The labeled pairs whose vote id is at most `watermark` (and the trainer's view of them); `signed_in_only`
    leaves out anonymous annotators' votes. A pair whose blob is missing or damaged, or whose trajectory or image
    cannot be read, is left out, logged, and appended to `quarantined` as `{"pair_id", "reason"}`: one bad file
    never fails every run."""
    labeled, pairs = [], []
    for lp in repo.labeled_pairs(annotators=annotators):
        if lp.vote_id > watermark or (signed_in_only and is_anonymous(lp.annotator)):
            continue
        try:
            pair = to_training_pair(lp, repo)
        except (StorageError, ValueError, OSError, SafetensorError) as e:  # PIL's UnidentifiedImageError is OSError
            log.warning("pair %d left out of training: %s", lp.pair_id, e)
            if quarantined is not None:
                quarantined.append({"pair_id": lp.pair_id, "reason": f"{type(e).__name__}: {e}"[:300]})
            continue
        labeled.append(lp)
        pairs.append(pair)
    return labeled, pairs


def _image(repo, h: str) -> Image.Image:
    import io
    return Image.open(io.BytesIO(repo.read_blob(h))).convert("RGB")


class Worker:
    def __init__(self, repo, model_id: str = "embedded", trainer_config: TrainerConfig | None = None,
                 config: WorkerConfig | None = None, device: str | None = None, dtype: str | None = None,
                 on_change: Callable[[dict], None] | None = None, trainer: Trainer | None = None,
                 before_train: Callable[[dict], None] | None = None):
        """`before_train(spec)` runs once a run's pairs are loaded, with `{"watermark", "annotators", "config"}`
        (`alignment.training.distributed.announce` starts the other processes' share of the run with it)."""
        self.repo = repo
        self.before_train = before_train
        self.model_id = model_id
        self.config = config or WorkerConfig()
        self._trainer_config = trainer_config or TrainerConfig()
        self._device, self._dtype = device, dtype
        self._trainer = trainer
        self._guard: FidelityGuard | None = None
        self.on_change = on_change
        self._run_lock = threading.Lock()  # one training run at a time
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._requested = False
        self._thread: threading.Thread | None = None
        self._state = "stopped"
        self._progress: tuple[int, int] | None = None
        self._phase = PHASES[0]
        # the current run's phases: when each began (time.monotonic); finished runs' are in `run_phases`, the
        # newest last, with "done" and the run's adapter "version"
        self.phase_times: dict[str, float] = {}
        self.run_phases: collections.deque[dict] = collections.deque(maxlen=16)
        self._train_started = 0.0  # monotonic time of the run's first training step report (for time left)
        self._last_error: str | None = None
        self._last_run: dict | None = None
        self._last_attempt_vote_id = self._initial_watermark()
        # votes up to that id when it was read: a vote that commits later with a smaller id raises the count
        self._last_attempt_through = self.repo.votes_through(self._last_attempt_vote_id)
        self._last_attempt_time = time.monotonic()
        self.lease_holder_id = f"{socket.gethostname()}:{os.getpid()}:{id(self)}"
        self._lease_renewed_at = 0.0
        self._busy_logged_for: str | None = None  # the lease holder last reported busy (logged once each)
        self._fence = None  # the lease's fencing token while this worker holds it
        self._serving = False
        # the live model's generations in this process, yielded to before each step and guard render (the studio
        # sets it; None: nothing to yield to)
        self.priority: SamplingFirst | None = None
        self._budget: WaitBudget | None = None  # the run under way's waits for sampling
        self._warm_tried = False

    # ---- public API -------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._state = "idle"
        self._thread = threading.Thread(target=self.serve, name="alignment-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._state = "stopped"

    def request_training(self) -> bool:
        """Ask for a run now ("Train now"); False when one is already running."""
        if self._run_lock.locked():
            return False
        self._requested = True
        self._wake.set()
        return True

    @property
    def train_requested(self) -> bool:
        """A "Train now" is pending: the next poll starts a run (if there are enough votes)."""
        return self._requested

    def serve(self, between_polls: Callable[[], None] | None = None) -> None:
        """The polling loop, in the calling thread, until `stop()`: a run whenever `should_train()`; an error
        (e.g. a database hiccup) is recorded and the loop goes on. `between_polls()` runs after every poll (the
        main process of a multi-process run tells its followers it is idle there); its errors end the loop."""
        self._serving = True
        try:
            while not self._stop.is_set():
                try:
                    if self.should_train():
                        self.run_once()
                    elif self._warm_guard_due():
                        self.warm_guard()
                except Exception as e:  # the loop must survive anything and report it
                    self._last_error = f"{type(e).__name__}: {e}"
                    log.exception("worker loop error")
                if between_polls is not None:
                    between_polls()
                self._wake.wait(self.config.poll_s)
                self._wake.clear()
        finally:
            self._serving = False

    def set_trainer_config(self, cfg: TrainerConfig) -> None:
        if not isinstance(cfg, TrainerConfig):
            raise TypeError("expected a TrainerConfig")
        self._trainer_config = cfg

    @property
    def trainer_config(self) -> TrainerConfig:
        return self._trainer_config

    def state(self) -> dict:
        live = self.repo.live_adapter()
        return {"state": self._state, "last_error": self._last_error, "last_run": self._last_run,
                "progress": self._progress, "live_version": live.version if live else None,
                "votes_pending": self.votes_pending(), "phase": self._phase, "time_left_s": self.time_left_s()}

    def time_left_s(self) -> float | None:
        """Seconds of training left at the pace of the steps so far (None outside training or before a step)."""
        progress = self._progress
        if self._phase != "training" or progress is None or progress[0] <= 0:
            return None
        step, total = progress
        return round((time.monotonic() - self._train_started) / step * max(0, total - step), 1)

    # ---- one run ----------------------------------------------------------------------------------------------
    def votes_pending(self) -> int:
        """Preference votes not seen by the last run: newer ids, and older ids that committed after it read its
        watermark (possible on a server database)."""
        w = self._last_attempt_vote_id
        late = self.repo.votes_through(w) - self._last_attempt_through
        return self.repo.votes_since(w) + max(0, late)

    def should_train(self) -> bool:
        pending = self.votes_pending()
        total = self.repo.votes_since(0)
        if total < self.config.min_votes:
            return False
        if self._requested:
            return True
        if pending >= self.config.train_every:
            return True
        timer = self.config.train_interval_s
        return bool(timer and pending and time.monotonic() - self._last_attempt_time >= timer)

    def run_once(self) -> dict | None:
        """Train now if the lock is free; returns a summary of the run (None if another run holds the lock,
        `{"status": "busy", "holder": ...}` if another worker holds the database lease)."""
        return self.run_exclusively(self._run)

    def run_exclusively(self, run: Callable[[], dict]) -> dict | None:
        """Call `run()` as this worker's one run: under the in-process lock (None, uncalled, when another run holds
        it) and the database lease (`{"status": "busy", "holder": ...}`, uncalled, when another worker holds it),
        which `report_progress` renews and which is released afterwards, also when `run` raises."""
        if not self._run_lock.acquire(blocking=False):
            return None
        try:
            if not self._take_lease():
                held = self.repo.lease_holder(LEASE_NAME)
                if held is not None and held[0] != self._busy_logged_for:  # once per holder, not every poll
                    log.info("another worker holds the training lease: %s", held)
                    self._busy_logged_for = held[0]
                return {"status": "busy", "holder": held[0] if held else None}
            self._lease_renewed_at = time.monotonic()
            self._fence = self.repo.fence(LEASE_NAME, self.lease_holder_id)
            try:
                self._requested = False
                self._state = "training"
                self._phase, self._train_started = "training", time.monotonic()
                self.phase_times = {"training": self._train_started}
                return run()
            finally:
                self.run_phases.append({**self.phase_times, "done": time.monotonic(),
                                        "version": (self._last_run or {}).get("version")})
                self._fence = None
                self._release_lease()
        finally:
            self._state = "idle" if self._serving and not self._stop.is_set() else "stopped"
            self._progress, self._phase = None, PHASES[0]
            self._run_lock.release()

    def _run(self) -> dict:
        cfg = self._trainer_config
        watermark, through = self.repo.watermark()
        self._last_attempt_vote_id, self._last_attempt_through = watermark, through
        self._last_attempt_time = time.monotonic()
        stale = self.repo.interrupt_running_runs("the worker running it stopped before finishing (its lease expired)")
        if stale:
            log.warning("closed %d training run(s) left 'running' by a worker that died", stale)
        run_id = self.repo.start_training_run({**cfg.to_dict(), "model_id": self.model_id})
        self._budget = self._wait_budget(self.config.sampling_wait_run_s)
        parent = self.repo.live_adapter()
        try:
            annotators = list(self.config.train_annotators) if self.config.train_annotators else None
            quarantined: list[dict] = []
            labeled, pairs = load_training_pairs(self.repo, watermark, annotators, quarantined,
                                                 signed_in_only=self.config.train_voters == "signed-in")
            trainer = self.trainer()
            trainer.config = cfg
            self.guard(trainer)  # a scorer that cannot be built (e.g. a CLIP model that does not load) fails first
            if self.before_train is not None:
                self.before_train({"watermark": watermark, "annotators": annotators, "config": cfg.to_dict()})
            result = trainer.train(pairs, progress=self.report_progress)
            self._enter("checking fidelity")
            lora, report, chosen = self._guarded_choice(trainer, result)
            self._enter("going live")
            metrics = {**result.metrics, **chosen}
            if self._budget is not None:
                metrics["sampling_waited_s"] = round(self._budget.waited_s, 1)
            metrics = {k: v for k, v in metrics.items() if v is not None}
            if quarantined:
                metrics["quarantined_pairs"] = quarantined
            # passed: live; measured and failed: rejected; not measured: stays a candidate for an admin to judge
            status = "live" if report.passed else "rejected" if report.scored else "candidate"
            if self._fence is None:
                raise LeaseLostError(f"the training lease expired before the adapter could be registered "
                                     f"(holder {self.lease_holder_id})")
            record = self.repo.register_adapter(
                lora, parent_version=parent.version if parent else None, objective=cfg.objective,
                hyperparams={**cfg.to_dict(), "last_vote_id": watermark, "model_id": self.model_id},
                votes_used=len(labeled),
                metrics={**metrics, "loss_curve": [round(h["loss"], 5) for h in result.history]}, fence=self._fence)
            self.repo.set_adapter_status(record.version, status, report.reason, fence=self._fence)
        except Exception as e:  # a run boundary: any failure is recorded, the live adapter stays as it was
            self._last_error = f"{type(e).__name__}: {e}"
            ended = "interrupted" if isinstance(e, WorkerStopped) else "failed"
            log.warning("training run %s %s: %s", run_id, ended, self._last_error)
            self.repo.finish_training_run(run_id, ended, error=self._last_error)
            self._last_run = {"run_id": run_id, "status": ended, "error": self._last_error}
            self._notify()
            return self._last_run
        self.repo.finish_training_run(run_id, "rejected" if status == "rejected" else "succeeded", error=report.reason,
                                      metrics=metrics, adapter_version=record.version)
        self._last_error = report.reason
        self._last_run = {"run_id": run_id, "status": status, "version": record.version, "metrics": metrics,
                          "reason": report.reason, "votes_used": len(labeled)}
        self._notify()
        return self._last_run

    def _enter(self, phase: str) -> None:
        self._phase = phase
        self.phase_times[phase] = time.monotonic()

    def _guarded_choice(self, trainer: Trainer, result) -> tuple[bytes, FidelityReport, dict]:
        """The adapter to register: the latest checkpoint of the run (the final weights first) that passes the
        fidelity guard on its selection seeds and then again on its confirmation seeds (`FidelityGuard.decide`);
        if none passes the selection, the final weights with their own report (rejected, or a candidate when the
        guard could not measure them). The metrics' `fidelity_*` figures are the confirmation seeds'; the guard's
        own figures on the seeds it selected on are `guard_selection_*`."""
        final_step = result.checkpoints[-1][0]
        t0 = time.perf_counter()
        sampler = _Stoppable(self._guard_sampler(trainer, self._budget), self._stop.is_set,
                             lambda: WorkerStopped("the worker was stopped during the run's fidelity guard"))
        decision = self.guard(trainer).decide(sampler, trainer, result.checkpoints,
                                              before_each=self._keep_going)  # renders a while: keep the lease
        info = {**decision.as_metrics(), "checkpoint_step": final_step if decision.step is None else decision.step,
                "checkpoints_checked": len(decision.selection), "guard_seconds": round(time.perf_counter() - t0, 1),
                "guard_selection_fidelity_final": decision.selection[0].candidate}
        if decision.step is None or decision.step == final_step:
            return result.lora, decision.verdict, info
        return trainer.export_lora(), decision.verdict, info

    # ---- the guard's base images, ahead of the first run --------------------------------------------------------
    def _warm_guard_due(self) -> bool:
        """Not rendered yet, and the first run within reach: a quarter of the votes that start one (so a studio set
        to train rarely, or not at all, spends nothing on it)."""
        if self._warm_tried or not self.config.warm_guard or self._stop.is_set():
            return False
        cfg = self.config
        return 4 * self.votes_pending() >= cfg.train_every and 4 * self.repo.votes_since(0) >= cfg.min_votes

    def warm_guard(self) -> bool:
        """Render the fidelity guard's base images now, while waiting for votes (a run's guard then renders only its
        candidates): once per worker, when the first run is within reach, yielding to sampling like a run, and giving way to a
        run that becomes due. True when it rendered both seed sets; a failure is logged and left to the first run
        to report."""
        if not self._run_lock.acquire(blocking=False):
            return False
        self._warm_tried = True
        try:
            trainer = self.trainer()
            guard = self.guard(trainer)
            if guard.base_ready:
                return False
            enable = trainer.set_adapter_enabled if trainer.has_adapter else (lambda on: None)
            t0 = time.perf_counter()
            # a run that becomes due goes first: it renders what is left (the images finished so far are kept)
            # nobody waits for these images yet: they yield to every generation, with no bound in all
            guard.render_base(_Stoppable(self._guard_sampler(trainer, self._wait_budget(math.inf)),
                                         lambda: self._stop.is_set() or self.should_train()), enable)
            log.info("the fidelity guard's base images are ready (%.1f s)", time.perf_counter() - t0)
            return True
        except _Stopped:
            return False
        except Exception as e:  # noqa: BLE001 - the first run builds the same parts and reports what fails
            log.warning("could not prepare the fidelity guard's base images: %s: %s", type(e).__name__, e)
            return False
        finally:
            self._run_lock.release()

    # ---- parts ------------------------------------------------------------------------------------------------
    def trainer(self) -> Trainer:
        if self._trainer is None:
            self._trainer = Trainer(self.model_id, self._trainer_config, device=self._device, dtype=self._dtype)
        return self._trainer

    def guard(self, trainer: Trainer) -> FidelityGuard:
        """The fidelity guard for `trainer`'s model, built once from this worker's settings (`ScorerError` when
        the scorer they name cannot be built)."""
        if self._guard is None:
            cfg, model = self.config, trainer.model
            data_dir = getattr(self.repo, "data_dir", None)
            shipped = shipped_entries(model) if cfg.shipped_guard_base else None
            cache = None if data_dir is None else BaseImageCache(Path(data_dir) / "cache" / "guard-base",
                                                                 shipped=shipped)
            self._guard = FidelityGuard.for_model(cfg, model, cache=cache)
        return self._guard

    def _guard_sampler(self, trainer: Trainer, budget: WaitBudget | None):
        sampler = Sampler(trainer.model, SamplerConfig.from_defaults(trainer.model.sampler_defaults), fuse=False)
        return sampler if budget is None else YieldingSampler(sampler, budget)

    def _wait_budget(self, total_s: float) -> WaitBudget | None:
        """Waits for the live model in this process, at most `total_s` in all; None when there is nothing to yield
        to (no live model in this process, or waits off)."""
        if not self.config.sampling_wait_s or self.priority is None:
            return None
        return WaitBudget(self.priority, self.config.sampling_wait_s, total_s)

    def report_progress(self, step: int, total: int) -> None:
        """The trainer's progress callback: progress for the UI, the lease heartbeat (renewed every third of its
        ttl; `LeaseLostError` when the lease was lost, `WorkerStopped` when the worker was stopped: either ends the
        run), then sampling first: the next step waits while the live model in this process makes images, within
        the run's budget (`sampling_wait_run_s`)."""
        self._progress = (step, total)
        self._keep_going()
        if step < total and self._budget is not None:
            self._budget.wait()

    def _keep_going(self) -> None:
        """Between two steps or guard renders: renew the lease (`_heartbeat`), and stop the run if the worker was
        stopped (`WorkerStopped`), so that closing a studio does not leave a run going on beside what comes next."""
        self._heartbeat()
        if self._stop.is_set():
            raise WorkerStopped("the worker was stopped during the run")

    def _heartbeat(self) -> None:
        """Renew the training lease every third of its ttl; a lost lease stops the run."""
        now = time.monotonic()
        if now - self._lease_renewed_at < self.config.lease_ttl_s / 3:
            return
        self._lease_renewed_at = now
        if not self.repo.renew_lease(LEASE_NAME, self.lease_holder_id, self.config.lease_ttl_s):
            raise LeaseLostError(f"the training lease expired or was taken over (holder {self.lease_holder_id})")

    def _take_lease(self) -> bool:
        """The training lease, also from a holder that died on this machine (after a crash or SIGKILL of the
        studio, its restarted worker need not wait out the dead one's ttl)."""
        ttl = self.config.lease_ttl_s
        if self.repo.acquire_lease(LEASE_NAME, self.lease_holder_id, ttl):
            return True
        held = self.repo.lease_holder(LEASE_NAME)
        if held is None or not holder_is_dead(held[0]):
            return False
        if self.repo.take_over_lease(LEASE_NAME, held[0], self.lease_holder_id, ttl):
            log.warning("took the training lease over from %s, whose process is gone", held[0])
            return True
        return False

    def _release_lease(self) -> None:
        try:
            self.repo.release_lease(LEASE_NAME, self.lease_holder_id)
        except Exception as e:  # the lease expires on its own; a failed release must not hide the run's result
            log.warning("could not release the training lease: %s", e)

    def _initial_watermark(self) -> int:
        live = self.repo.live_adapter()
        return int(live.hyperparams.get("last_vote_id", 0)) if live is not None else 0

    def _notify(self) -> None:
        if self.on_change is not None:
            self.on_change(self._last_run or {})


class _Stopped(Exception):
    """Rendering ahead gave way (the worker stopped, or a run became due)."""


class _Stoppable:
    """A sampler that stops rendering, between batches, once `stop()` is true (raising `error`)."""

    def __init__(self, sampler, stop: Callable[[], bool], error: Callable[[], Exception] = _Stopped):
        self._sampler, self._stop, self._error = sampler, stop, error

    def generate(self, *args, **kwargs):
        if self._stop():
            raise self._error()
        return self._sampler.generate(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._sampler, name)


def parse_args(argv: list[str] | None = None) -> Parsed:
    """The worker's settings (the app's training settings, under the same names) from `argv` and STUDIO_*."""
    cli = CommandLine(ModelConfig, StoreConfig, TrainerConfig, WorkerConfig, prog="python -m alignment.worker",
                      description=__doc__)
    cli.add_argument("--once", action="store_true", help="train once now (if there are votes) and exit")
    return cli.parse(argv)


def main(argv: list[str] | None = None) -> None:
    from alignment.training import distributed
    from storage import Repository, StorageError, masked_url

    parsed = parse_args(argv)
    tcfg, wcfg = parsed.build(TrainerConfig), parsed.build(WorkerConfig)  # a bad value exits here, with code 2
    model, store, once = parsed.build(ModelConfig), parsed.build(StoreConfig), parsed.extra.once
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    processes, device, state = distributed.launched_processes(), model.device, None
    if processes > 1:  # started by `accelerate launch` (or torchrun) with several processes
        import torch
        cpu = (device or "").startswith("cpu") or not torch.cuda.is_available()
        state = distributed.init_processes(cpu=cpu)
        device = device or ("cpu" if cpu else str(state.device))
    try:
        if state is None:
            repo = Repository(store.data_dir, store.database_url)
        else:
            with state.main_process_first():  # rank 0 migrates the database; the others then open it
                repo = Repository(store.data_dir, store.database_url)
    except StorageError as e:  # e.g. an unreachable database URL: one clear line, not a traceback
        raise SystemExit(f"error: {e}") from None
    try:  # loaded before the first run, so a bad --model fails at start and the lease never waits for a load
        trainer = Trainer(model.model, tcfg, device=device, dtype=model.dtype)
    except ModelLoadError as e:
        raise SystemExit(f"error: {e}") from None
    if state is not None and not state.is_main_process:
        log.info("training process %d of %d follows the main process", state.process_index, processes)
        signed_in_only = wcfg.train_voters == "signed-in"
        distributed.follow(lambda watermark, annotators: load_training_pairs(
            repo, watermark, annotators, signed_in_only=signed_in_only)[1], trainer)
        return
    worker = Worker(repo, trainer.model.model_id, tcfg, wcfg, device=device, trainer=trainer,
                    on_change=lambda run: log.info("run: %s", run),
                    before_train=distributed.announce if state is not None else None)
    log.info("worker %s watching %s with blobs in %s (%d training process(es))", worker.lease_holder_id,
             masked_url(repo.engine.url), store.data_dir, processes)
    if state is not None:
        run = distributed.lead(worker, once=once)
        if once:
            print(run)
        return
    if once:
        print(worker.run_once())
        return
    worker.start()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        worker.stop()


if __name__ == "__main__":
    main()
