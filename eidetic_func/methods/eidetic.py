"""EideticNet as a method: at the end of a task, prune → recover → finish → recycle.

Its training steps are plain (the frozen entries of earlier tasks are restored by every
step); what makes it EideticNet is the end of a task. The rule (the original's): keep a
snapshot, prune ``pruning_step`` of the remaining neurons (``pruning_type``; both may be
lists that cycle), recover for up to ``max_recovery_epochs`` — until the accuracy falls
below ``best × (1 − tolerance)`` or the pruned fraction of the task's neurons exceeds
``max_masking_ratio`` — then restore the last good snapshot, and finish the task (its
neurons freeze) and recycle the free ones. The ``adaptive`` schedule halves the step
after a failed one instead of stopping. The settings are the method's fields (the run's
``RunConfig.eidetic``; the task loop's are :class:`~eidetic_func.training.config.TrainConfig`:
``lr_factor``, ``finish``); the last task is not pruned.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

from torch import nn

from eidetic_func.core import validate
from eidetic_func.core.errors import ConfigError, DataError, NothingToPrune
from eidetic_func.core.state import EideticState
from eidetic_func.core.types import Batch
from eidetic_func.importance.score import DATA_METHODS, SCORING_METHODS, score
from eidetic_func.methods.decisions import (
    Continue,
    Decision,
    Done,
    Records,
    Recover,
    ScaleLearningRate,
)
from eidetic_func.methods.protocol import StepPlan, TaskContext, Traits
from eidetic_func.methods.schedule import (
    SCHEDULES,
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
from eidetic_func.ops.bridge import bridge
from eidetic_func.ops.capacity import capacity
from eidetic_func.ops.lifecycle import finish_task, recycle, revisit
from eidetic_func.ops.prune import prune
from eidetic_func.training.config import as_list, option


@dataclasses.dataclass(frozen=True)
class EideticNet:
    """Iterative structured pruning and freezing (Miller et al., EideticNet).

    ``pruning_step`` and ``pruning_type`` may be sequences, used in turn and cycled.
    ``tolerance`` is relative: pruning stops when accuracy < ``best × (1 − tolerance)``.
    ``max_masking_ratio`` bounds the pruned share of the neurons this task may use.
    ``score_batches`` caps the batches used for data-driven scores (None: all).
    ``pruning_schedule``: ``"adaptive"`` (the default) starts with ``first_pruning_step``,
    keeps its size while steps succeed, and after a failed step restores the snapshot and
    halves it, stopping when it falls below ``pruning_step`` (or at ``max_masking_ratio``,
    which it approaches exactly): about the same kept capacity and accuracy in far fewer
    recovery epochs; ``"fixed"`` (the original's, which the paper presets pin) prunes
    ``pruning_step`` per step until the accuracy leaves the tolerance. ``forward_transfer``: later tasks read earlier tasks'
    features. The task loop's settings (``lr_factor``, ``finish``) are the run's
    ``TrainConfig``; the network's topology is the state's.
    """

    name: str = "eidetic"
    pruning_step: float | Sequence[float] = option(
        0.1,
        "fraction of the remaining neurons pruned per step; a comma list cycles",
        group="method",
        metavar="STEP[,STEP...]",
    )
    pruning_type: str | Sequence[str] = option(
        "taylor",
        "how neurons are scored for pruning; a comma list cycles",
        group="method",
        choices=SCORING_METHODS,
        metavar="TYPE[,TYPE...]",
    )
    max_recovery_epochs: int = option(
        2, "epochs to recover after each pruning step", group="method"
    )
    tolerance: float = option(
        0.01, "stop pruning when accuracy < best × (1 − tolerance)", group="method"
    )
    max_masking_ratio: float = option(
        0.95, "stop once this share of a task's neurons is pruned", group="method"
    )
    constant_step: bool = option(
        False,
        "prune a fraction of all neurons per step, not of the remaining ones",
        group="method",
    )
    pruning_schedule: str = option(
        "adaptive",
        "adaptive: start with --first-pruning-step, halve it (restoring the snapshot) after a "
        "failed step, stop below --pruning-step: similar kept capacity in far fewer recovery "
        "epochs; fixed: the original's steps of --pruning-step until the accuracy drops",
        group="method",
        choices=SCHEDULES,
    )
    first_pruning_step: float = option(
        0.5, "the adaptive schedule's first step, of the remaining neurons", group="method"
    )
    score_batches: int | None = option(
        16,
        "batches of training data used for data-driven pruning scores (Taylor)",
        group="method",
        metavar="N",
    )
    forward_transfer: bool = option(
        True,
        "later tasks read earlier tasks' features (--no-forward-transfer: every task gets "
        "a disjoint subnetwork)",
        group="method",
    )
    max_pruning_steps: int | None = option(
        None,
        "stop a task's pruning after this many pruning steps, kept or not (a short run: "
        "--epochs 2 --max-pruning-steps 1; 0: no pruning, the task keeps every free neuron)",
        group="method",
        metavar="N",
        none="until the schedule stops",
    )
    traits: ClassVar[Traits] = Traits(
        data_parallel=True,
        task_incremental=True,
        router=True,
        revisits=True,
        grows=True,
        owns=True,
    )

    def __post_init__(self) -> None:
        validate.integer(self.max_recovery_epochs, "max_recovery_epochs", minimum=1)
        if not as_list(self.pruning_step) or not as_list(self.pruning_type):
            raise ConfigError("pruning_step and pruning_type must not be empty")
        for step in as_list(self.pruning_step):
            validate.fraction(step, "pruning_step")
        for kind in as_list(self.pruning_type):
            validate.choice(kind, "pruning_type", SCORING_METHODS)
        validate.number(self.tolerance, "tolerance", low=0.0, high=1.0, high_open=True)
        validate.number(
            self.max_masking_ratio, "max_masking_ratio", low=0.0, high=1.0, low_open=True
        )
        validate.choice(self.pruning_schedule, "pruning_schedule", SCHEDULES)
        validate.fraction(self.first_pruning_step, "first_pruning_step")
        if self.score_batches is not None:
            validate.integer(self.score_batches, "score_batches", minimum=1)
        if self.max_pruning_steps is not None:
            validate.integer(self.max_pruning_steps, "max_pruning_steps", minimum=0)
        for name in ("constant_step", "forward_transfer"):
            validate.boolean(getattr(self, name), name)

    def init(self, model: nn.Module, state: EideticState) -> None:
        return None

    def plan(
        self, model: nn.Module, state: EideticState, mstate: Any, batch: Batch, *, task: int
    ) -> StepPlan:
        return StepPlan()

    def begin_task(
        self, state: EideticState, mstate: Any, *, task: int, ctx: TaskContext
    ) -> tuple[EideticState, Any]:
        """A finished task is revisited (its head released, everything else frozen)."""
        if task in state.finished:
            state = revisit(state, task=task, forward_transfer=self.forward_transfer)
        return state, mstate

    def end_task(
        self, model: nn.Module, state: EideticState, mstate: Any, ctx: TaskContext
    ) -> tuple[EideticState, Any, Decision]:
        """One call of the end of task: prune and recover (a decision for the loop) until
        the schedule stops, then finish and recycle (Done)."""
        config = ctx.config  # the task loop's: its learning-rate factor, whether to finish
        records: Records = ()
        if not ctx.last:
            if mstate is None and not ctx.progress.lr_lowered and config.lr_factor < 1.0:
                # max_epochs ended training before a plateau: still prune at the lowered rate
                return state, mstate, ScaleLearningRate(config.lr_factor)
            if not isinstance(mstate, Pruning):
                mstate = Pruning(start(self, ctx.progress.best))
            state, mstate, decision = _drive(model, state, mstate, ctx, self)
            if not isinstance(decision, Done):
                return state, mstate, decision
            records = decision.records
        if config.finish:
            state = finish_task(state, task=ctx.task, forward_transfer=self.forward_transfer)
            state = recycle(state, generator=ctx.generator)
            records = (*records, ("finish", {"pruned_fraction": None}))
        return state, None, Done(records)


@dataclasses.dataclass(frozen=True)
class Pruning:
    """EideticNet's method state while it prunes a task: where its schedule is, and the
    last good state while the current one is not (None where it is: what a resumable
    point holds)."""

    schedule: Schedule
    snapshot: EideticState | None = None


def _drive(
    model: nn.Module, state: EideticState, pruning: Pruning, ctx: TaskContext, settings: EideticNet
) -> tuple[EideticState, Pruning | None, Decision]:
    """Run the schedule's actions until one is the loop's (save, recover) or it stops."""
    records: list[tuple[str, dict[str, Any]]] = []
    s, snapshot = pruning.schedule, pruning.snapshot
    observation: Observation
    if s.phase == "recovering":
        if ctx.metric is None:
            raise ConfigError("a recovering schedule needs the recovery epoch's metric")
        observation = Recovered(ctx.metric)
    else:
        observation = Measured(capacity(state).pruned_fraction)
    while True:
        s, action = transition(settings, s, observation)
        if isinstance(action, Stop):
            records.append(("stop", {"reason": action.reason}))
            if action.restore:
                assert snapshot is not None
                state = snapshot
            return state, None, Done(tuple(records))
        if isinstance(action, Save):
            return state, Pruning(s), Continue(tuple(records), resumable=True)
        if isinstance(action, Train):
            fields = {
                "iteration": action.iteration,
                "epoch": action.epoch,
                "pruned_fraction": capacity(state).pruned_fraction,
            }
            label = f"prune {action.iteration} recovery {action.epoch}"
            return (
                state,
                Pruning(s, snapshot),
                Recover(label, fields=fields, records=tuple(records)),
            )
        if isinstance(action, Prune):
            snapshot = state  # the checks passed: the state before the step is good
            state, observation = _prune(model, state, action, ctx, settings)
            if isinstance(observation, Pruned):
                records.append(("prune", _prune_fields(action, s.iteration + 1, observation)))
            continue
        if isinstance(action, Restore):
            assert snapshot is not None
            state, snapshot = snapshot, None
            records.append(("restore", {"reason": action.reason}))
        observation = Measured(capacity(state).pruned_fraction)


def _prune(
    model: nn.Module,
    state: EideticState,
    action: Prune,
    ctx: TaskContext,
    settings: EideticNet,
) -> tuple[EideticState, Observation]:
    """Score, prune and bridge one step: the new state and what was observed."""
    start_time = time.perf_counter()
    data = ctx.score_loader if ctx.score_loader is not None else ctx.loader
    kind = action.kind
    batches = _take(data, settings.score_batches, state) if kind in DATA_METHODS else None
    scores = score(
        model,
        state,
        batches,
        method=kind,
        task=ctx.task,
        generator=ctx.generator,
        reduce=ctx.reduce,
    )
    try:
        pruned = prune(
            state,
            scores,
            fraction=action.fraction,
            method=kind,
            constant_step=settings.constant_step,
        )
        state = bridge(pruned)
    except NothingToPrune as stop:
        return state, NothingLeft(str(stop))
    return state, Pruned(capacity(state).pruned_fraction, time.perf_counter() - start_time)


def _prune_fields(action: Prune, iteration: int, observed: Pruned) -> dict[str, Any]:
    return {
        "iteration": iteration,
        "scoring": action.kind,
        "step": action.fraction,
        "pruned_fraction": observed.pruned_fraction,
        "seconds": observed.seconds,
    }


def _take(data: Iterable[Batch], n: int | None, state: EideticState) -> list[Batch]:
    device = next(iter(state.params.values())).device
    batches = list(data) if n is None else list(itertools.islice(iter(data), n))
    if not batches:
        raise DataError("no data to score importance with")
    return [(x.to(device), y.to(device)) for x, y in batches]
