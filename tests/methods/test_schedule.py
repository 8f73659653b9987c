"""EideticNet's pruning schedule as a pure state machine, on its own (no network)."""

from __future__ import annotations

from typing import Any

import pytest

from eidetic_func.core.errors import ConfigError
from eidetic_func.methods.eidetic import EideticNet
from eidetic_func.methods.registry import decode_state, encode_state
from eidetic_func.methods.schedule import (
    Action,
    Measure,
    Measured,
    NothingLeft,
    Observation,
    Prune,
    Pruned,
    Recovered,
    Restore,
    Save,
    Schedule,
    Stop,
    Train,
    start,
    transition,
)


def _Settings(**changes: Any) -> EideticNet:  # noqa: N802 (reads like the record it builds)
    """EideticNet (the schedule's real settings) with this file's defaults and ``changes``."""
    defaults = {
        "pruning_step": 0.25,
        "tolerance": 0.1,
        "max_masking_ratio": 0.9,
        "pruning_schedule": "fixed",
    }
    return EideticNet(**{**defaults, **changes})


def _step(
    settings: EideticNet, s: Schedule, observation: Observation, expected: type
) -> tuple[Schedule, Action]:
    s, action = transition(settings, s, observation)
    assert isinstance(action, expected), action
    return s, action


def test_the_first_step_prunes_at_once_and_later_steps_offer_a_resumable_point_first() -> None:
    settings = _Settings()
    s, action = _step(settings, start(settings, 0.8), Measured(0.0), Prune)
    assert action == Prune(0.25, "taylor") and s.good
    s, action = _step(settings, s, Pruned(0.25), Train)
    assert action == Train(1, 1) and not s.good, "the pruned state is not good until it recovers"
    s, _ = _step(settings, s, Recovered(0.79), Measure)
    s, _ = _step(settings, s, Measured(0.25), Save)
    assert s.good and s.good_metric == 0.79 and s.phase == "ready"
    _, action = _step(settings, s, Measured(0.25), Prune)


def test_steps_and_scorings_cycle_by_iteration() -> None:
    settings = _Settings(pruning_step=[0.1, 0.2], pruning_type=["random", "l2", "taylor"])
    s = start(settings, 1.0)
    chosen = []
    for i in range(4):
        s, action = transition(settings, s, Measured(0.0))
        if isinstance(action, Save):
            s, action = transition(settings, s, Measured(0.0))
        assert isinstance(action, Prune)
        chosen.append((action.fraction, action.kind))
        s, _ = _step(settings, s, Pruned(0.1 * (i + 1)), Train)
        s, _ = _step(settings, s, Recovered(1.0), Measure)
    assert chosen == [(0.1, "random"), (0.2, "l2"), (0.1, "taylor"), (0.2, "random")]


def test_recovery_stops_early_within_tolerance_and_at_max_recovery_epochs() -> None:
    settings = _Settings(max_recovery_epochs=3)
    s, _ = _step(settings, start(settings, 0.8), Measured(0.0), Prune)
    s, _ = _step(settings, s, Pruned(0.25), Train)
    s, action = _step(settings, s, Recovered(0.5), Train)
    assert action == Train(1, 2)
    s, action = _step(settings, s, Recovered(0.6), Train)
    s, _ = _step(settings, s, Recovered(0.65), Measure)  # the third: no more, still failed
    assert s.metric == 0.65 and s.recovery == 3


def test_a_fixed_schedule_stops_below_tolerance_and_restores_the_last_good_state() -> None:
    settings = _Settings(max_recovery_epochs=1)
    s, _ = _step(settings, start(settings, 0.8), Measured(0.0), Prune)
    s, _ = _step(settings, s, Pruned(0.25), Train)
    s, _ = _step(settings, s, Recovered(0.5), Measure)
    s, action = _step(settings, s, Measured(0.25), Stop)
    assert action.restore and "below" in action.reason and s.phase == "stopped"


def test_a_schedule_stops_above_max_masking_ratio_back_at_the_last_state_below_it() -> None:
    settings = _Settings(max_masking_ratio=0.3)
    s, _ = _step(settings, start(settings, 0.8), Measured(0.0), Prune)
    s, _ = _step(settings, s, Pruned(0.4), Train)
    s, _ = _step(settings, s, Recovered(0.8), Measure)
    _, action = _step(settings, s, Measured(0.4), Stop)
    assert action.restore and "above 0.3" in action.reason


def test_nothing_to_prune_stops_with_the_unpruned_state() -> None:
    settings = _Settings()
    s, _ = _step(settings, start(settings, 0.8), Measured(0.0), Prune)
    _, action = _step(settings, s, NothingLeft("no neuron left"), Stop)
    assert action == Stop("no neuron left", restore=False)


@pytest.mark.parametrize("schedule", ["fixed", "adaptive"])
@pytest.mark.parametrize("cap", [0, 1, 3])
def test_max_pruning_steps_stops_after_that_many_steps_keeping_the_last(
    schedule: str, cap: int
) -> None:
    settings = _Settings(pruning_schedule=schedule, max_pruning_steps=cap, max_masking_ratio=0.99)
    s, pruned, steps = start(settings, 0.8), 0.0, 0
    while True:
        s, action = transition(settings, s, Measured(pruned))
        if isinstance(action, Save):
            s, action = transition(settings, s, Measured(pruned))
        if isinstance(action, Stop):
            break
        assert isinstance(action, Prune)
        pruned, steps = pruned + (1 - pruned) * action.fraction, steps + 1
        s, _ = _step(settings, s, Pruned(pruned), Train)
        s, _ = _step(settings, s, Recovered(0.8), Measure)  # every step is kept
    assert steps == cap and not action.restore and f"max_pruning_steps={cap}" in action.reason
    with pytest.raises(ConfigError, match="max_pruning_steps"):
        _Settings(max_pruning_steps=-1)


def _to_prune(settings: EideticNet, s: Schedule, fraction: float) -> tuple[Schedule, Prune]:
    """From the top to the next pruning step (past a resumable point, if one is offered)."""
    s, action = transition(settings, s, Measured(fraction))
    if isinstance(action, Save):
        s, action = transition(settings, s, Measured(fraction))
    assert isinstance(action, Prune), action
    return s, action


def test_an_adaptive_schedule_halves_after_a_failed_step_and_stops_below_the_smallest() -> None:
    settings = _Settings(pruning_schedule="adaptive", pruning_step=0.1, max_recovery_epochs=1)
    s = start(settings, 0.8)
    tried = []
    while True:
        s, action = _to_prune(settings, s, 0.0)
        tried.append(action.fraction)
        s, _ = _step(settings, s, Pruned(action.fraction), Train)
        s, restore = _step(settings, s, Recovered(0.3), Restore)
        assert s.metric == 0.8 and s.good, "back to the snapshot's state and accuracy"
        assert "0.3000 below" in restore.reason
        if s.phase == "stopping":
            break
    assert tried == [0.5, 0.25, 0.125]
    _, action = _step(settings, s, Measured(0.0), Stop)
    assert not action.restore and "fell below 0.1" in action.reason


def test_an_adaptive_step_keeps_its_size_while_steps_succeed() -> None:
    settings = _Settings(pruning_schedule="adaptive", max_masking_ratio=0.99)
    s, tried = start(settings, 0.8), []
    for fraction in (0.0, 0.5, 0.75):
        s, action = _to_prune(settings, s, fraction)
        tried.append(action.fraction)
        s, _ = _step(settings, s, Pruned(fraction + 0.1), Train)
        s, _ = _step(settings, s, Recovered(0.8), Measure)
    assert tried == [0.5, 0.5, 0.5]


def test_an_adaptive_step_never_prunes_past_max_masking_ratio() -> None:
    settings = _Settings(pruning_schedule="adaptive", max_masking_ratio=0.6)
    _, action = _step(settings, start(settings, 0.8), Measured(0.5), Prune)
    assert action.fraction == pytest.approx(0.2)  # (0.6 - 0.5) / (1 - 0.5)
    _, action = _step(settings, start(settings, 0.8), Measured(0.6), Stop)
    assert "at 0.6" in action.reason


def _metric(iteration: int, epoch: int) -> float:
    """A recovery epoch's accuracy, a function of where it is (so a resumed run sees it)."""
    return 0.8 - 0.015 * iteration * (iteration % 3) + 0.01 * epoch


def _run(settings: EideticNet, s: Schedule, pruned: float) -> list[tuple[Schedule, Action, float]]:
    """Drive the schedule to its stop: each transition's schedule, action and pruned share."""
    trace: list[tuple[Schedule, Action, float]] = []
    observation: Observation = Measured(pruned)
    snapshot = pruned
    while s.phase != "stopped":
        s, action = transition(settings, s, observation)
        trace.append((s, action, pruned))
        if isinstance(action, Prune):
            snapshot, pruned = pruned, pruned + action.fraction * (1 - pruned)
            observation = Pruned(pruned)
        elif isinstance(action, Train):
            observation = Recovered(_metric(action.iteration, action.epoch))
        else:
            pruned = snapshot if isinstance(action, Restore) else pruned
            observation = Measured(pruned)
    return trace


@pytest.mark.parametrize("schedule", ["fixed", "adaptive"])
def test_a_schedule_resumed_from_any_saved_point_continues_exactly(schedule: str) -> None:
    settings = _Settings(
        pruning_schedule=schedule, pruning_step=0.1, tolerance=0.08, max_masking_ratio=0.97
    )
    trace = _run(settings, start(settings, 0.8), 0.0)
    saves = [i for i, (_, action, _) in enumerate(trace) if isinstance(action, Save)]
    assert len(saves) >= 2 and isinstance(trace[-1][1], Stop)
    if schedule == "adaptive":
        assert any(isinstance(action, Restore) for _, action, _ in trace)
    for i in saves:
        saved, _, pruned = trace[i]
        restored = decode_state(encode_state(saved))  # as a checkpoint holds it
        assert restored == saved
        assert _run(settings, restored, pruned) == trace[i + 1 :]
