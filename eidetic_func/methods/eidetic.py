"""EideticNet as a method: at the end of a task, prune → recover → finish → recycle.

Its training steps are plain (the frozen entries of earlier tasks are restored by every
step); what makes it EideticNet is the end of a task. The rule (the original's): keep a
snapshot, prune ``pruning_step`` of the remaining neurons (``pruning_type``; both may be
lists that cycle), recover for up to ``max_recovery_epochs`` — until the accuracy falls
below ``best × (1 − tolerance)`` or the pruned fraction of the task's neurons exceeds
``max_masking_ratio`` — then restore the last good snapshot, and finish the task (its
neurons freeze) and recycle the free ones. The ``adaptive`` schedule halves the step
after a failed one instead of stopping. The settings are the run's
:class:`~eidetic_func.training.config.TrainConfig`; the last task is not pruned.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Iterable
from typing import Any, ClassVar

from torch import nn

from eidetic_func.core.errors import ConfigError, DataError, NothingToPrune
from eidetic_func.core.state import EideticState
from eidetic_func.core.types import Batch
from eidetic_func.importance.score import DATA_METHODS, score
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
    Measured,
    NothingLeft,
    Observation,
    Prune,
    Pruned,
    Recovered,
    Restore,
    Save,
    Schedule,
    Settings,
    Stop,
    Train,
    start,
    transition,
)
from eidetic_func.ops.bridge import bridge
from eidetic_func.ops.capacity import capacity
from eidetic_func.ops.lifecycle import finish_task, recycle, revisit
from eidetic_func.ops.prune import prune


@dataclasses.dataclass(frozen=True)
class EideticNet:
    """Iterative structured pruning and freezing (Miller et al., EideticNet).

    Configured by the run's ``TrainConfig`` (pruning steps, types, tolerance, schedule,
    ``forward_transfer``, ``finish``); the network's topology is the state's.
    """

    name: str = "eidetic"
    traits: ClassVar[Traits] = Traits(
        data_parallel=True,
        task_incremental=True,
        router=True,
        revisits=True,
        grows=True,
        owns=True,
    )

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
            state = revisit(state, task=task, forward_transfer=ctx.config.forward_transfer)
        return state, mstate

    def end_task(
        self, model: nn.Module, state: EideticState, mstate: Any, ctx: TaskContext
    ) -> tuple[EideticState, Any, Decision]:
        """One call of the end of task: prune and recover (a decision for the loop) until
        the schedule stops, then finish and recycle (Done)."""
        config = ctx.config
        records: Records = ()
        if not (ctx.last or config.last_task):
            if mstate is None and not ctx.progress.lr_lowered and config.lr_factor < 1.0:
                # max_epochs ended training before a plateau: still prune at the lowered rate
                return state, mstate, ScaleLearningRate(config.lr_factor)
            if not isinstance(mstate, Pruning):
                mstate = Pruning(start(config, ctx.progress.best))
            state, mstate, decision = _drive(model, state, mstate, ctx, config)
            if not isinstance(decision, Done):
                return state, mstate, decision
            records = decision.records
        if config.finish:
            state = finish_task(state, task=ctx.task, forward_transfer=config.forward_transfer)
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
    model: nn.Module, state: EideticState, pruning: Pruning, ctx: TaskContext, settings: Settings
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
    settings: Any,
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
