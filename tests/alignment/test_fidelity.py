"""The fidelity guard's checkpoint selection: the latest state that passes, or none."""

from alignment.fidelity import FidelityGuard, FidelityReport


def guard_passing(passing_states: set[int]) -> tuple[FidelityGuard, dict]:
    """A guard whose check passes exactly when the loaded state is in `passing_states` (no rendering)."""
    guard = FidelityGuard(embedded=True, limit=1)
    held = {"state": None, "checked": []}

    def check(sampler, set_adapter_enabled):
        held["checked"].append(held["state"])
        ok = held["state"] in passing_states
        return FidelityReport(0.9, 0.9 if ok else 0.7, 0.1, ok, None if ok else "too far")

    guard.check = check
    return guard, held


def candidates(held: dict, steps: list[int]):
    def load(step):
        return lambda: held.update(state=step)
    return [(step, load(step)) for step in steps]


def test_select_keeps_the_latest_checkpoint_that_passes_and_stops_there():
    guard, held = guard_passing({20, 40})
    chosen, reports = guard.select(None, lambda on: None, candidates(held, [80, 60, 40, 20]))
    assert chosen == 40 and held["state"] == 40  # the adapter is left holding the chosen state
    assert held["checked"] == [80, 60, 40]  # 20 is never rendered
    assert [r.passed for r in reports] == [False, False, True]


def test_select_returns_none_when_no_checkpoint_passes():
    guard, held = guard_passing(set())
    chosen, reports = guard.select(None, lambda on: None, candidates(held, [40, 20]))
    assert chosen is None and len(reports) == 2 and not any(r.passed for r in reports)
    assert reports[0].candidate == 0.7 and reports[0].reason == "too far"


def test_select_takes_the_final_state_when_it_passes():
    guard, held = guard_passing({80, 60})
    chosen, reports = guard.select(None, lambda on: None, candidates(held, [80, 60]))
    assert chosen == 80 and len(reports) == 1
