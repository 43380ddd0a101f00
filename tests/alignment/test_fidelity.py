"""The fidelity guard's checkpoint selection: the latest state that passes, or none."""

from alignment.training.fidelity import FidelityGuard, FidelityReport


class FakeTrainer:
    """Holds one 'state' (a checkpoint's step) and records what was restored, like Trainer.restore."""

    def __init__(self):
        self.state = None
        self.enabled = []

    def restore(self, state):
        self.state = state["step"]

    def set_adapter_enabled(self, on):
        self.enabled.append(on)


def guard_passing(trainer: FakeTrainer, passing_steps: set[int]) -> tuple[FidelityGuard, list]:
    """A guard whose check passes exactly when the restored state is in `passing_steps` (no rendering)."""
    guard = FidelityGuard(embedded=True, limit=1)
    checked = []

    def check(sampler, set_adapter_enabled):
        set_adapter_enabled(True)
        checked.append(trainer.state)
        ok = trainer.state in passing_steps
        return FidelityReport(0.9, 0.9 if ok else 0.7, 0.1, ok, None if ok else "too far")

    guard.check = check
    return guard, checked


def checkpoints(*steps):
    return [(step, {"step": step}) for step in steps]


def test_select_keeps_the_latest_checkpoint_that_passes_and_stops_there():
    trainer = FakeTrainer()
    guard, checked = guard_passing(trainer, {20, 40})
    before = []
    chosen, reports = guard.select(None, trainer, checkpoints(20, 40, 60, 80), before_each=lambda: before.append(1))
    assert chosen == 40 and trainer.state == 40  # the trainer is left holding the chosen state
    assert checked == [80, 60, 40] and len(before) == 3  # latest first; 20 is never rendered
    assert [r.passed for r in reports] == [False, False, True] and trainer.enabled == [True] * 3


def test_select_returns_none_when_no_checkpoint_passes():
    trainer = FakeTrainer()
    guard, checked = guard_passing(trainer, set())
    chosen, reports = guard.select(None, trainer, checkpoints(20, 40))
    assert chosen is None and checked == [40, 20] and not any(r.passed for r in reports)
    assert reports[0].candidate == 0.7 and reports[0].reason == "too far"


def test_select_takes_the_final_state_when_it_passes():
    trainer = FakeTrainer()
    guard, checked = guard_passing(trainer, {60, 80})
    chosen, reports = guard.select(None, trainer, checkpoints(60, 80))
    assert chosen == 80 and len(reports) == 1 and checked == [80]
