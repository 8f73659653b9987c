"""EideticNet's pruning schedule as a pure state machine: ``transition(settings, schedule,
observation) → (schedule, action)``, no tensors, no training.

One pruning step (the original's rule): at the top, stop if the accuracy is below
``best × (1 − tolerance)``, the pruned share above ``max_masking_ratio`` or
``max_pruning_steps`` steps taken; otherwise the
current state is the last good one (resumable after the first step); prune
``pruning_step`` of the remaining neurons (``pruning_type``; both cycle by iteration);
recover up to ``max_recovery_epochs`` epochs, until the accuracy is within the tolerance;
back to the top. A stop restores the last good state. The ``adaptive`` schedule starts at
``first_pruning_step``, never prunes past ``max_masking_ratio``, and after a failed step
restores the last good state and halves the step, stopping once it falls below the
smallest ``pruning_step``.

The wiring (:mod:`eidetic_func.methods.eidetic`) executes the actions: it observes the
pruned share (:class:`Measured`), prunes (:class:`Pruned` or :class:`NothingLeft`), and
hands :class:`Train` to the task loop (:class:`Recovered` comes back).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

from eidetic_func.training.config import as_list

SCHEDULES = ("fixed", "adaptive")


class Settings(Protocol):
    """What the schedule reads (EideticNet's fields)."""

    @property
    def pruning_step(self) -> float | Sequence[float]: ...
    @property
    def pruning_type(self) -> str | Sequence[str]: ...
    @property
    def tolerance(self) -> float: ...
    @property
    def max_masking_ratio(self) -> float: ...
    @property
    def max_recovery_epochs(self) -> int: ...
    @property
    def pruning_schedule(self) -> str: ...
    @property
    def first_pruning_step(self) -> float: ...
    @property
    def max_pruning_steps(self) -> int | None: ...


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Where the schedule is. ``phase``: ``"check"`` (the top), ``"ready"`` (checked and
    saved, prune next), ``"pruning"``, ``"recovering"``, ``"stopping"`` (restored, stop
    next), ``"stopped"``. ``iteration``: pruning steps taken (their cycling position);
    ``best``/``metric``: the best and the latest accuracy; ``good_metric``: the last good
    state's; ``adaptive_step``: the adaptive schedule's next step; ``recovery``: recovery
    epochs since the last step; ``good``: the current state is the last good one (else
    the wiring keeps a snapshot)."""

    phase: str = "check"
    iteration: int = 0
    best: float = 0.0
    metric: float = 0.0
    good_metric: float = 0.0
    adaptive_step: float = 0.0
    recovery: int = 0
    good: bool = True


@dataclasses.dataclass(frozen=True)
class Measured:
    """Observation: the state's pruned share of its task's neurons."""

    pruned_fraction: float


@dataclasses.dataclass(frozen=True)
class Pruned:
    """Observation: the step pruned; the pruned share now (``seconds``: what it took)."""

    pruned_fraction: float
    seconds: float = 0.0


@dataclasses.dataclass(frozen=True)
class NothingLeft:
    """Observation: the step found nothing to prune."""

    reason: str


@dataclasses.dataclass(frozen=True)
class Recovered:
    """Observation: a recovery epoch's accuracy."""

    metric: float


@dataclasses.dataclass(frozen=True)
class Measure:
    """Action: observe :class:`Measured`."""


@dataclasses.dataclass(frozen=True)
class Save:
    """Action: the current state is the last good one and resumable: save it, then
    observe :class:`Measured` again."""


@dataclasses.dataclass(frozen=True)
class Prune:
    """Action: prune ``fraction`` of the remaining neurons scored by ``kind``."""

    fraction: float
    kind: str


@dataclasses.dataclass(frozen=True)
class Train:
    """Action: one recovery epoch (``epoch`` of pruning step ``iteration``)."""

    iteration: int
    epoch: int


@dataclasses.dataclass(frozen=True)
class Restore:
    """Action: back to the last good state (``reason``), then observe :class:`Measured`."""

    reason: str


@dataclasses.dataclass(frozen=True)
class Stop:
    """Action: the schedule ends (``reason``); ``restore``: back to the last good state."""

    reason: str
    restore: bool


Observation = Measured | Pruned | NothingLeft | Recovered
Action = Measure | Save | Prune | Train | Restore | Stop


def start(settings: Settings, best: float) -> Schedule:
    """The schedule after training reached ``best``."""
    adaptive = settings.pruning_schedule == "adaptive"
    step = settings.first_pruning_step if adaptive else 0.0
    return Schedule(best=best, metric=best, good_metric=best, adaptive_step=step)


def transition(
    settings: Settings, s: Schedule, observation: Observation
) -> tuple[Schedule, Action]:
    """The schedule's next state and the action to take (pure)."""
    if s.phase == "check" and isinstance(observation, Measured):
        return _check(settings, s, observation.pruned_fraction)
    if s.phase == "ready" and isinstance(observation, Measured):
        return _choose(settings, s, observation.pruned_fraction)
    if s.phase == "pruning" and isinstance(observation, NothingLeft):
        return _stop(s, observation.reason)
    if s.phase == "pruning" and isinstance(observation, Pruned):
        s = dataclasses.replace(
            s, phase="recovering", iteration=s.iteration + 1, recovery=0, good=False
        )
        return s, Train(s.iteration, 1)
    if s.phase == "recovering" and isinstance(observation, Recovered):
        return _recovered(settings, s, observation.metric)
    if s.phase == "stopping" and isinstance(observation, Measured):
        return _stop(s, f"the adaptive step fell below {min(as_list(settings.pruning_step))}")
    raise ValueError(f"the schedule in phase {s.phase!r} cannot observe {observation!r}")


def _stop(s: Schedule, reason: str) -> tuple[Schedule, Action]:
    return dataclasses.replace(s, phase="stopped", good=True), Stop(reason, restore=not s.good)


def _check(settings: Settings, s: Schedule, pruned_fraction: float) -> tuple[Schedule, Action]:
    floor = s.best * (1 - settings.tolerance)
    if s.metric < floor:
        return _stop(s, f"accuracy {s.metric:.4f} below {floor:.4f}")
    if pruned_fraction > settings.max_masking_ratio:
        limit = settings.max_masking_ratio
        return _stop(s, f"pruned fraction {pruned_fraction:.3f} above {limit}")
    cap = settings.max_pruning_steps
    if cap is not None and s.iteration >= cap:
        s = dataclasses.replace(s, good=True, good_metric=s.metric)  # the step was kept
        return _stop(s, f"{s.iteration} pruning step(s) taken: max_pruning_steps={cap}")
    s = dataclasses.replace(s, phase="ready", good=True, good_metric=s.metric)
    if s.iteration > 0:
        return s, Save()
    return _choose(settings, s, pruned_fraction)


def _choose(settings: Settings, s: Schedule, pruned_fraction: float) -> tuple[Schedule, Action]:
    steps, kinds = as_list(settings.pruning_step), as_list(settings.pruning_type)
    fraction, kind = steps[s.iteration % len(steps)], kinds[s.iteration % len(kinds)]
    if settings.pruning_schedule == "adaptive":  # of the remaining, never past the ratio
        limit = settings.max_masking_ratio
        left = 1.0 - pruned_fraction
        headroom = (limit - pruned_fraction) / left if left > 0 else 0.0
        fraction = min(s.adaptive_step, headroom)
        if fraction <= 0.0:
            return _stop(s, f"pruned fraction at {limit}")
    return dataclasses.replace(s, phase="pruning"), Prune(fraction, kind)


def _recovered(settings: Settings, s: Schedule, metric: float) -> tuple[Schedule, Action]:
    within = metric >= s.best * (1 - settings.tolerance)
    s = dataclasses.replace(s, metric=metric, recovery=s.recovery + 1, best=max(s.best, metric))
    if not within and s.recovery < settings.max_recovery_epochs:
        return s, Train(s.iteration, s.recovery + 1)
    failed = s.metric < s.best * (1 - settings.tolerance)
    if settings.pruning_schedule == "adaptive" and failed:
        # back to the snapshot, and try half the step from there
        smallest = min(as_list(settings.pruning_step))
        half = s.adaptive_step / 2
        phase = "stopping" if half < smallest else "check"
        s = dataclasses.replace(s, phase=phase, metric=s.good_metric, adaptive_step=half, good=True)
        return s, Restore(f"accuracy {metric:.4f} below the tolerance")
    return dataclasses.replace(s, phase="check"), Measure()
