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
from eidetic_func.methods.protocol import StepPlan, TaskContext, Traits
from eidetic_func.ops.bridge import bridge
from eidetic_func.ops.capacity import capacity
from eidetic_func.ops.lifecycle import finish_task, recycle, revisit
from eidetic_func.ops.prune import prune
from eidetic_func.training.config import as_list
from eidetic_func.training.loop import TaskProgress


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
    ) -> tuple[EideticState, Any]:
        config = ctx.config
        if not (ctx.last or config.last_task):
            p = ctx.progress
            if not p.lr_lowered and config.lr_factor < 1.0 and ctx.optimizer is not None:
                # max_epochs ended training before a plateau: still prune at the lowered rate
                for group in ctx.optimizer.param_groups:
                    group["lr"] = group["lr"] * config.lr_factor
                p = dataclasses.replace(p, lr_lowered=True)
            state, mstate = _prune_phase(model, state, mstate, p, ctx)
        if config.finish:
            state = finish_task(state, task=ctx.task, forward_transfer=config.forward_transfer)
            state = recycle(state, generator=ctx.generator)
            ctx.record("finish", pruned_fraction=None)
        return state, mstate


def _prune_phase(
    model: nn.Module,
    state: EideticState,
    mstate: Any,
    p: TaskProgress,
    ctx: TaskContext,
) -> tuple[EideticState, Any]:
    """Prune and recover until the accuracy leaves the tolerance; the last good state."""
    config, record = ctx.config, ctx.record
    if ctx.epoch is None:
        raise ConfigError("pruning recovers with training epochs: TaskContext.epoch is required")
    steps = itertools.cycle(as_list(config.pruning_step))
    kinds = itertools.cycle(as_list(config.pruning_type))
    for _ in range(p.pruning_iteration):  # resume the cycles where they were
        next(steps), next(kinds)
    adaptive = config.pruning_schedule == "adaptive"
    smallest = min(as_list(config.pruning_step))
    if adaptive and p.adaptive_step == 0.0:
        p = dataclasses.replace(p, adaptive_step=config.first_pruning_step)
    data = ctx.score_loader if ctx.score_loader is not None else ctx.loader
    good = (state, mstate)  # the last state whose accuracy is within tolerance
    while True:
        floor = p.best * (1 - config.tolerance)
        if p.metric < floor:
            record("stop", reason=f"accuracy {p.metric:.4f} below {floor:.4f}")
            return good
        pruned_fraction = capacity(state).pruned_fraction
        if pruned_fraction > config.max_masking_ratio:
            record(
                "stop",
                reason=f"pruned fraction {pruned_fraction:.3f} above {config.max_masking_ratio}",
            )
            return good
        good, good_metric = (state, mstate), p.metric
        if p.pruning_iteration > 0:
            ctx.checkpoint(state, mstate, p)
        fraction, kind = next(steps), next(kinds)
        if adaptive:  # of the remaining neurons, never past max_masking_ratio
            left = 1.0 - pruned_fraction
            headroom = (config.max_masking_ratio - pruned_fraction) / left if left > 0 else 0.0
            fraction = min(p.adaptive_step, headroom)
            if fraction <= 0.0:
                record("stop", reason=f"pruned fraction at {config.max_masking_ratio}")
                return good
        start = time.perf_counter()
        batches = _take(data, config.score_batches, state) if kind in DATA_METHODS else None
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
                fraction=fraction,
                method=kind,
                constant_step=config.constant_step,
            )
            state = bridge(pruned)
        except NothingToPrune as stop:
            record("stop", reason=str(stop))
            return good
        p = dataclasses.replace(p, pruning_iteration=p.pruning_iteration + 1)
        pruned_fraction = capacity(state).pruned_fraction
        record(
            "prune",
            iteration=p.pruning_iteration,
            scoring=kind,
            step=fraction,
            pruned_fraction=pruned_fraction,
            seconds=time.perf_counter() - start,
        )
        metric = p.metric
        for recovery in range(config.max_recovery_epochs):
            start = time.perf_counter()
            (state, mstate), metric, loss = ctx.epoch(
                (state, mstate), f"prune {p.pruning_iteration} recovery {recovery + 1}"
            )
            p = dataclasses.replace(p, metric=metric)
            record(
                "recover",
                iteration=p.pruning_iteration,
                epoch=recovery + 1,
                metric=metric,
                loss=loss,
                pruned_fraction=pruned_fraction,
                seconds=time.perf_counter() - start,
            )
            within = metric >= p.best * (1 - config.tolerance)
            p = dataclasses.replace(p, best=max(p.best, metric))
            if within:
                break
        if adaptive and p.metric < p.best * (1 - config.tolerance):
            # a failed step: back to the snapshot, and try half the step from there
            state, mstate = good
            p = dataclasses.replace(p, metric=good_metric, adaptive_step=p.adaptive_step / 2)
            record("restore", reason=f"accuracy {metric:.4f} below the tolerance")
            if p.adaptive_step < smallest:
                record("stop", reason=f"the adaptive step fell below {smallest}")
                return good


def _take(data: Iterable[Batch], n: int | None, state: EideticState) -> list[Batch]:
    device = next(iter(state.params.values())).device
    batches = list(data) if n is None else list(itertools.islice(iter(data), n))
    if not batches:
        raise DataError("no data to score importance with")
    return [(x.to(device), y.to(device)) for x, y in batches]
