"""The training shell: one task, trained, pruned iteratively, finished (the seed's ``train_task``).

Imperative and thin: it loops over data and calls the pure core (``train_step``,
``score``, ``prune``, ``bridge``, ``finish_task``, ``recycle``). Every decision it makes
is recorded in the returned history, and its progress is a small record
(:class:`TaskProgress`) so that a run can stop after any pruning step and resume.

The rule (EideticNet): train until the training accuracy plateaus (``patience`` epochs
without improvement, or 100%); optionally lower the learning rate; then repeat — keep a
snapshot, prune ``pruning_step`` of the remaining neurons (``pruning_type``; both may be
lists that cycle), recover for up to ``max_recovery_epochs`` — until the accuracy falls
below ``best × (1 − tolerance)`` or the pruned fraction of the task's neurons exceeds
``max_masking_ratio``, and then restore the last good snapshot.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .bridge import bridge
from .capacity import capacity
from .config import TrainConfig, as_list
from .errors import ConfigError, DataError, NothingToPrune
from .lifecycle import finish_task, recycle
from .metrics import evaluate
from .prune import prune
from .score import DATA_METHODS, score
from .state import EideticState
from .step import StepMetrics, check_trainable, train_step
from .taylor import Reduce
from .topology import Topology
from .types import Batch, LossFn, Record

if TYPE_CHECKING:
    from .distributed import Parallel

Carry = TypeVar("Carry")


@dataclasses.dataclass(frozen=True)
class TaskProgress:
    """Where :func:`train_task` is: enough to resume it after a pruning step."""

    phase: str = "train"  # "train" → "prune" → "done"
    epoch: int = 0
    best: float = 0.0
    best_epoch: int = 0
    metric: float = 0.0
    pruning_iteration: int = 0
    lrs: tuple[float, ...] = ()  # the optimizer's learning rates when the task started
    lr_lowered: bool = False  # ``lr_factor`` has been applied in this task
    stopping: bool = False  # the plateau is reached: one more training epoch, then prune
    adaptive_step: float = 0.0  # the adaptive schedule's next step (0: not started)

    def __post_init__(self) -> None:
        object.__setattr__(self, "lrs", tuple(float(lr) for lr in self.lrs))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


CheckpointCallback = Callable[[EideticState, TaskProgress, list[Record]], None]


def train_task(
    model: nn.Module,
    state: EideticState,
    loader: Iterable[Batch],
    *,
    task: int,
    topology: Topology,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig | None = None,
    generator: torch.Generator,
    loss_fn: LossFn = F.cross_entropy,
    score_loader: Iterable[Batch] | None = None,
    progress: bool = True,
    checkpoint: CheckpointCallback | None = None,
    resume: TaskProgress | None = None,
    parallel: Parallel | None = None,
    stop_loader: Iterable[Batch] | None = None,
) -> tuple[EideticState, list[Record]]:
    """Train, prune and (by default) finish task ``task``; return the new state and history.

    ``loader`` yields ``(x, y)`` batches of the task's training data (re-iterated every
    epoch). ``score_loader`` (default: ``loader``) feeds data-driven importance scores.
    ``generator`` drives random pruning and recycling. ``checkpoint(state, progress,
    history)`` is called after every training epoch, after the training phase, after every
    kept pruning step and at the end; pass the progress back as ``resume`` (with that
    state) to continue.

    The stopping metric (plateau, pruning tolerance) is the running training accuracy of
    each epoch, the original's rule; with ``stop_loader`` (a held-out split of the task's
    training data) it is the eval-mode accuracy on that split after each epoch, and the
    training accuracy is kept in the history as ``train_metric``.

    Works with any ``torch.optim`` optimizer built over ``model.parameters()``; one may
    serve the whole sequence. Returns the state ready for the next task (finished and
    recycled, unless ``config.finish`` is False). With ``parallel`` (data parallelism, see
    :mod:`eidetic_func.distributed`) ``loader`` is this process's shard; gradients, BN
    statistics, epoch metrics and scores are combined over processes, and the state is
    checked to be identical on all of them at the end.
    """
    check_trainable(state, task)
    config = config or TrainConfig()
    progress_state = resume or TaskProgress()
    if not progress_state.lrs:
        progress_state = dataclasses.replace(progress_state, lrs=learning_rates(optimizer))
    history: list[Record] = []
    steps = itertools.cycle(as_list(config.pruning_step))
    kinds = itertools.cycle(as_list(config.pruning_type))
    for _ in range(progress_state.pruning_iteration):  # resume the cycles where they were
        next(steps), next(kinds)

    latest: dict[str, float] = {}  # the last epoch's training accuracy, under stop_loader

    def record(phase: str, **fields: Any) -> None:
        lr = optimizer.param_groups[0]["lr"]
        extra = latest if phase in ("train", "recover") else {}
        history.append(
            {"task": task, "phase": phase, "time": time.time(), "lr": lr, **extra, **fields}
        )

    device = _device(state)
    progress = progress and (parallel is None or parallel.is_main)

    def step(s: EideticState, batch: Batch) -> tuple[EideticState, StepMetrics]:
        if parallel is None:
            return train_step(
                model,
                s,
                batch,
                optimizer=optimizer,
                task=task,
                loss_fn=loss_fn,
                compiled=config.compiled,
            )
        new, metrics = train_step(
            model,
            s,
            batch,
            optimizer=optimizer,
            task=task,
            loss_fn=loss_fn,
            grad_transform=parallel.average_grads,
            compiled=config.compiled,
        )
        return parallel.sync_buffers(new, s), metrics

    def epoch(s: EideticState, label: str) -> tuple[EideticState, float, float]:
        s, accuracy, loss = run_epoch(
            step,
            s,
            loader,
            device=device,
            description=f"task {task} {label}",
            progress=progress,
            combine=None if parallel is None else parallel.sum_metrics,
        )
        if stop_loader is None:
            return s, accuracy, loss
        latest["train_metric"] = accuracy
        return s, evaluate(model, s, stop_loader, task=task), loss

    p = progress_state
    if p.phase == "train":
        state, p = train_until_plateau(
            epoch,
            state,
            p,
            config=config,
            optimizer=optimizer,
            record=record,
            after_epoch=None if checkpoint is None else lambda s, q: checkpoint(s, q, history),
        )
        if not config.last_task and not p.lr_lowered and config.lr_factor < 1.0:
            # max_epochs ended training before a plateau: still prune at the lowered rate
            _scale_lr(optimizer, config.lr_factor)
            p = dataclasses.replace(p, lr_lowered=True)
        p = dataclasses.replace(p, phase="done" if config.last_task else "prune", metric=p.best)
        if checkpoint is not None:
            checkpoint(state, p, history)

    if p.phase == "prune":
        state, p = _prune_phase(
            model,
            state,
            p,
            task=task,
            topology=topology,
            config=config,
            generator=generator,
            steps=steps,
            kinds=kinds,
            data=score_loader if score_loader is not None else loader,
            epoch=epoch,
            record=record,
            checkpoint=checkpoint,
            history=history,
            reduce=None if parallel is None else parallel.reduce,
        )

    set_learning_rates(optimizer, p.lrs)  # the next task starts where this one did
    if config.finish:
        state = finish_task(state, topology, task=task, forward_transfer=config.forward_transfer)
        state = recycle(state, generator=generator)
        record("finish", pruned_fraction=None)
    if parallel is not None:
        parallel.check_identical(state, f"after task {task}")
    p = dataclasses.replace(p, phase="done")
    if checkpoint is not None:
        checkpoint(state, p, history)
    return state, history


def _prune_phase(
    model: nn.Module,
    state: EideticState,
    p: TaskProgress,
    *,
    task: int,
    topology: Topology,
    config: TrainConfig,
    generator: torch.Generator,
    steps: Iterable[float],
    kinds: Iterable[str],
    data: Iterable[Batch],
    epoch: Callable[[EideticState, str], tuple[EideticState, float, float]],
    record: Callable[..., None],
    checkpoint: CheckpointCallback | None,
    history: list[Record],
    reduce: Reduce | None,
) -> tuple[EideticState, TaskProgress]:
    step_iter, kind_iter = iter(steps), iter(kinds)
    adaptive = config.pruning_schedule == "adaptive"
    smallest = min(as_list(config.pruning_step))
    if adaptive and p.adaptive_step == 0.0:
        p = dataclasses.replace(p, adaptive_step=config.first_pruning_step)
    good = state  # the last state whose accuracy is within tolerance
    while True:
        floor = p.best * (1 - config.tolerance)
        if p.metric < floor:
            record("stop", reason=f"accuracy {p.metric:.4f} below {floor:.4f}")
            return good, p
        pruned_fraction = capacity(state, topology).pruned_fraction
        if pruned_fraction > config.max_masking_ratio:
            record(
                "stop",
                reason=f"pruned fraction {pruned_fraction:.3f} above {config.max_masking_ratio}",
            )
            return good, p
        good, good_metric = state, p.metric
        if checkpoint is not None and p.pruning_iteration > 0:
            checkpoint(state, p, history)
        fraction, kind = next(step_iter), next(kind_iter)
        if adaptive:  # of the remaining neurons, never past max_masking_ratio
            left = 1.0 - pruned_fraction
            headroom = (config.max_masking_ratio - pruned_fraction) / left if left > 0 else 0.0
            fraction = min(p.adaptive_step, headroom)
            if fraction <= 0.0:
                record("stop", reason=f"pruned fraction at {config.max_masking_ratio}")
                return good, p
        start = time.perf_counter()
        batches = (
            _take(data, config.score_batches, _device(state)) if kind in DATA_METHODS else None
        )
        scores = score(
            model,
            state,
            batches,
            method=kind,
            task=task,
            topology=topology,
            generator=generator,
            reduce=reduce,
        )
        try:
            state = bridge(
                prune(
                    state,
                    topology,
                    scores,
                    fraction=fraction,
                    method=kind,
                    constant_step=config.constant_step,
                ),
                topology,
            )
        except NothingToPrune as stop:
            record("stop", reason=str(stop))
            return good, p
        p = dataclasses.replace(p, pruning_iteration=p.pruning_iteration + 1)
        pruned_fraction = capacity(state, topology).pruned_fraction
        record(
            "prune",
            iteration=p.pruning_iteration,
            method=kind,
            step=fraction,
            pruned_fraction=pruned_fraction,
            seconds=time.perf_counter() - start,
        )
        for recovery in range(config.max_recovery_epochs):
            start = time.perf_counter()
            state, metric, loss = epoch(
                state, f"prune {p.pruning_iteration} recovery {recovery + 1}"
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
            state = good
            p = dataclasses.replace(p, metric=good_metric, adaptive_step=p.adaptive_step / 2)
            record("restore", reason=f"accuracy {metric:.4f} below the tolerance")
            if p.adaptive_step < smallest:
                record("stop", reason=f"the adaptive step fell below {smallest}")
                return good, p


def train_until_plateau(
    epoch: Callable[[Carry, str], tuple[Carry, float, float]],
    carry: Carry,
    progress: TaskProgress,
    *,
    config: TrainConfig,
    optimizer: torch.optim.Optimizer,
    record: Callable[..., None],
    after_epoch: Callable[[Carry, TaskProgress], None] | None = None,
) -> tuple[Carry, TaskProgress]:
    """Run epochs until the training accuracy plateaus (the original EideticNet rule).

    Stop at 100%, or once the accuracy is below the best for more than ``patience``
    epochs since the best; then one more epoch (at the learning rate lowered by
    ``lr_factor``, if asked: ``lr_lowered`` in the returned progress; the caller restores
    the rate). At most ``max_epochs`` epochs. ``epoch(carry, label)`` returns
    ``(carry, accuracy, loss)``. ``after_epoch(carry, progress)`` is called after every
    epoch but the last (to checkpoint: passing that progress back resumes exactly).
    """
    p = progress
    while p.epoch < config.max_epochs:
        start = time.perf_counter()
        carry, metric, loss = epoch(carry, f"epoch {p.epoch + 1}")
        p = dataclasses.replace(p, epoch=p.epoch + 1, metric=metric)
        record(
            "train",
            epoch=p.epoch,
            metric=metric,
            loss=loss,
            pruned_fraction=0.0,
            seconds=time.perf_counter() - start,
        )
        if p.stopping:
            break
        stopping = metric >= 1.0 or (metric < p.best and p.epoch - p.best_epoch > config.patience)
        p = dataclasses.replace(p, stopping=stopping)
        if stopping and config.lr_factor < 1.0 and not p.lr_lowered:
            _scale_lr(optimizer, config.lr_factor)
            p = dataclasses.replace(p, lr_lowered=True)
        if metric > p.best:
            p = dataclasses.replace(p, best=metric, best_epoch=p.epoch)
        if after_epoch is not None and p.epoch < config.max_epochs:
            after_epoch(carry, p)
    return carry, p


def run_epoch(
    step: Callable[[Carry, Batch], tuple[Carry, StepMetrics]],
    carry: Carry,
    loader: Iterable[Batch],
    *,
    device: torch.device,
    description: str,
    progress: bool,
    combine: Callable[[int, int, float], tuple[int, int, float]] | None = None,
) -> tuple[Carry, float, float]:
    """One pass of ``step`` over ``loader``: the new carry, training accuracy and mean loss.

    ``combine(correct, count, loss_sum)`` totals the metrics over processes.
    """
    correct = count = 0
    loss_sum = 0.0
    for x, y in tqdm(loader, desc=description, leave=False, disable=not progress):
        carry, m = step(carry, (x.to(device), y.to(device)))
        correct, count, loss_sum = correct + m.correct, count + m.count, loss_sum + m.loss * m.count
    if combine is not None:
        correct, count, loss_sum = combine(correct, count, loss_sum)
    if count == 0:
        raise DataError(f"no training data in {description!r}: the loader is empty")
    return carry, correct / count, loss_sum / count


def _take(data: Iterable[Batch], n: int | None, device: torch.device) -> list[Batch]:
    batches = list(data) if n is None else list(itertools.islice(iter(data), n))
    if not batches:
        raise DataError("no data to score importance with")
    return [(x.to(device), y.to(device)) for x, y in batches]


def _device(state: EideticState) -> torch.device:
    return next(iter(state.params.values())).device


def learning_rates(optimizer: torch.optim.Optimizer) -> tuple[float, ...]:
    """The learning rate of every parameter group."""
    return tuple(float(group["lr"]) for group in optimizer.param_groups)


def set_learning_rates(optimizer: torch.optim.Optimizer, lrs: Sequence[float]) -> None:
    """Set every parameter group's learning rate (``lrs`` from :func:`learning_rates`)."""
    if len(lrs) != len(optimizer.param_groups):
        raise ConfigError(
            f"{len(lrs)} learning rates for {len(optimizer.param_groups)} parameter groups"
        )
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr


def _scale_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * factor
