"""The training shell: one task of any method, trained until it plateaus, then ended.

Imperative and thin: it loops over data, runs the method's steps (:func:`method_step`)
and hands the end of the task to the method (EideticNet prunes, recovers, finishes and
recycles there; EWC estimates its Fisher; ER keeps its buffer). Every decision is
recorded in the returned history, and its progress is a small record
(:class:`TaskProgress`) so that a run can stop after any epoch or pruning step and resume.

The stopping rule (EideticNet's, for every method): train until the training accuracy
plateaus (``patience`` epochs without improvement, or 100%), then one more epoch,
optionally at a learning rate lowered by ``lr_factor``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .config import TrainConfig
from .distributed import SINGLE, Parallel, Single
from .eidetic import EideticNet
from .errors import ConfigError, DataError
from .method import Method, TaskContext, TaskProgress, advance, method_step, traits
from .metrics import evaluate
from .state import EideticState
from .step import StepMetrics, check_trainable
from .types import Batch, LossFn, Record

Carry = TypeVar("Carry")
# (the state, the method state): what a task's training threads
TaskCarry = tuple[EideticState, Any]


EIDETIC = EideticNet()  # the default method

CheckpointCallback = Callable[[EideticState, Any, TaskProgress, list[Record]], None]


def train_task(
    model: nn.Module,
    state: EideticState,
    loader: Iterable[Batch],
    *,
    task: int,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    method: Method = EIDETIC,
    mstate: Any = None,
    config: TrainConfig | None = None,
    loss_fn: LossFn = F.cross_entropy,
    score_loader: Iterable[Batch] | None = None,
    stop_loader: Iterable[Batch] | None = None,
    last: bool = False,
    progress: bool = True,
    checkpoint: CheckpointCallback | None = None,
    resume: TaskProgress | None = None,
    parallel: Parallel | Single = SINGLE,
) -> tuple[EideticState, Any, list[Record]]:
    """Train task ``task`` with ``method`` (default EideticNet) and end it:
    ``(state, mstate, history)``.

    ``loader`` yields ``(x, y)`` batches (re-iterated every epoch); ``mstate`` is the
    method's state (``method.init``); ``config`` the loop's and pruning's settings;
    ``score_loader`` (default
    ``loader``) feeds importance scores; ``generator`` drives random choices; ``last``:
    nothing is trained after this task (EideticNet does not prune it).
    ``checkpoint(state, mstate, progress, history)`` is called after every epoch, after
    the training phase, after every kept pruning step and at the end; pass the progress
    back as ``resume`` (with that state) to continue.

    The stopping metric is the running training accuracy of each epoch (the original's
    rule); with ``stop_loader`` (a held-out split) it is the eval-mode accuracy on it, and
    the training accuracy is kept in the history as ``train_metric``. With ``parallel``
    (:mod:`eidetic_func.distributed`; methods whose traits allow it) ``loader`` is this
    process's shard: gradients, BN statistics, metrics and scores are combined, and the
    state is checked to be identical on every process at the end. Works with any
    ``torch.optim`` optimizer over ``model.parameters()``; its learning rates are restored
    when the task ends, so every task starts at the same rate.
    """
    config = config or TrainConfig()
    if parallel.world_size > 1 and not traits(method).data_parallel:
        raise ConfigError(f"{method.name} does not support data parallelism; run one process")
    p = resume or TaskProgress()
    if not p.lrs:
        p = dataclasses.replace(p, lrs=learning_rates(optimizer))
    history: list[Record] = []
    ctx = _context(
        model,
        state,
        loader,
        method=method,
        task=task,
        optimizer=optimizer,
        generator=generator,
        config=config,
        loss_fn=loss_fn,
        score_loader=score_loader,
        stop_loader=stop_loader,
        last=last,
        progress=progress,
        checkpoint=checkpoint,
        parallel=parallel,
        resume_at=p,
        history=history,
    )
    if resume is None:
        state, mstate = method.begin_task(state, mstate, task=task, ctx=ctx)
    check_trainable(state, task)
    carry = (state, mstate)
    if p.phase == "train":
        assert ctx.epoch is not None
        carry, p = train_until_plateau(
            ctx.epoch,
            carry,
            p,
            config=config,
            optimizer=optimizer,
            record=ctx.record,
            after_epoch=lambda c, q: ctx.checkpoint(c[0], c[1], q),
        )
        p = dataclasses.replace(p, phase="end", metric=p.best)
        ctx.checkpoint(*carry, p)
    start = time.perf_counter()
    state, mstate = method.end_task(model, *carry, ctx.replace(progress=p))
    ctx.record("end_task", seconds=time.perf_counter() - start)
    set_learning_rates(optimizer, p.lrs)  # the next task starts where this one did
    if state.task == task and config.finish:  # the method did not finish the task itself
        state = advance(state, task)
    parallel.check_identical(state, f"after task {task}")
    ctx.checkpoint(state, mstate, dataclasses.replace(p, phase="done"))
    return state, mstate, history


def _context(
    model: nn.Module,
    state: EideticState,
    loader: Iterable[Batch],
    *,
    method: Method,
    task: int,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    config: TrainConfig,
    loss_fn: LossFn,
    score_loader: Iterable[Batch] | None,
    stop_loader: Iterable[Batch] | None,
    last: bool,
    progress: bool,
    checkpoint: CheckpointCallback | None,
    parallel: Parallel | Single,
    resume_at: TaskProgress,
    history: list[Record],
) -> TaskContext:
    """The task's context: its epoch (the method's steps over ``loader``, measured on
    ``stop_loader`` if given), its history record and its checkpoint callback."""
    latest: dict[str, float] = {}  # the last epoch's training accuracy, under stop_loader

    def record(phase: str, **fields: Any) -> None:
        extra = latest if phase in ("train", "recover") else {}
        lr = optimizer.param_groups[0]["lr"]
        entry = {"task": task, "phase": phase, "method": method.name, "time": time.time()}
        history.append({**entry, "lr": lr, **extra, **fields})

    step = _stepper(method, model, optimizer, task, loss_fn, config.compiled, parallel)
    device = _device(state)

    def epoch(carry: TaskCarry, label: str) -> tuple[TaskCarry, float, float]:
        carry, accuracy, loss = run_epoch(
            step,
            carry,
            loader,
            device=device,
            description=f"{method.name} task {task} {label}",
            progress=progress and parallel.is_main,
            combine=parallel.sum_metrics,
        )
        if stop_loader is None:
            return carry, accuracy, loss
        latest["train_metric"] = accuracy
        return carry, evaluate(model, carry[0], stop_loader, task=task), loss

    def save(s: EideticState, ms: Any, q: TaskProgress) -> None:
        if checkpoint is not None:
            checkpoint(s, ms, q, history)

    return TaskContext(
        loader=loader,
        task=task,
        generator=generator,
        config=config,
        last=last,
        progress=resume_at,
        epoch=epoch,
        record=record,
        checkpoint=save,
        score_loader=score_loader,
        reduce=parallel.score_reduce,
        optimizer=optimizer,
    )


def _stepper(
    method: Method,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    task: int,
    loss_fn: LossFn,
    compiled: bool,
    parallel: Parallel | Single,
) -> Callable[[TaskCarry, Batch], tuple[TaskCarry, StepMetrics]]:
    """One training step of ``method`` on a ``(state, mstate)`` carry."""

    def step(carry: TaskCarry, batch: Batch) -> tuple[TaskCarry, StepMetrics]:
        state, mstate = carry
        new, mstate, metrics = method_step(
            method,
            model,
            state,
            mstate,
            batch,
            optimizer=optimizer,
            task=task,
            loss_fn=loss_fn,
            grad_transform=parallel.grad_transform,
            compiled=compiled,
        )
        return (parallel.sync_buffers(new, state), mstate), metrics

    return step


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
