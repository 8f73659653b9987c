"""One task of any method: begin it, train it until it plateaus, end it.

Imperative and thin: it runs the method's epochs (:func:`method_epoch`: no host read
inside a step) until the accuracy plateaus
(:func:`~eidetic_func.training.loop.train_until_plateau`) and hands the end of the task to
the method (EideticNet prunes, recovers, finishes and recycles there; EWC estimates its
Fisher; ER keeps its buffer). Every decision is recorded in the returned history, and its
progress is a small record (:class:`TaskProgress`) so that a run can stop after any epoch
or pruning step and resume.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import Optimizer
from tqdm import tqdm

from eidetic_func.core.errors import ConfigError
from eidetic_func.core.state import EideticState
from eidetic_func.core.types import Batch, LossFn, Record
from eidetic_func.methods.decisions import Done, Recover, ScaleLearningRate, TrainWith
from eidetic_func.methods.eidetic import EideticNet
from eidetic_func.methods.epoch import method_epoch
from eidetic_func.methods.protocol import (
    Method,
    TaskContext,
    advance,
    begin_task,
    end_task,
    traits,
)
from eidetic_func.ops.step_masks import StepMasks, step_masks
from eidetic_func.ops.workspace import Workspace
from eidetic_func.runner.build import implementation
from eidetic_func.training.config import TrainConfig
from eidetic_func.training.distributed import SINGLE, Parallel, Single
from eidetic_func.training.loop import (
    TaskProgress,
    device_of,
    learning_rates,
    scale_learning_rates,
    set_learning_rates,
    train_until_plateau,
)
from eidetic_func.training.metrics import evaluate
from eidetic_func.training.step import check_trainable

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
    (:mod:`eidetic_func.training.distributed`; methods whose traits allow it) ``loader`` is this
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
    ctx, shell = _context(
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
        history=history,
    )
    if resume is None:
        state, mstate = begin_task(method, state, mstate, task=task, ctx=ctx)
    check_trainable(state, task)
    carry = (state, mstate)
    if p.phase == "train":
        carry, p = train_until_plateau(
            shell.epoch,
            carry,
            p,
            config=config,
            optimizer=optimizer,
            record=shell.record,
            after_epoch=lambda c, q: shell.save(c[0], c[1], q),
        )
        p = dataclasses.replace(p, phase="end", metric=p.best)
        shell.save(*carry, p)
    start = time.perf_counter()
    (state, mstate), p = _end_task(method, model, carry, p, ctx, shell)
    shell.record("end_task", seconds=time.perf_counter() - start)
    set_learning_rates(optimizer, p.lrs)  # the next task starts where this one did
    if state.task == task and config.finish:  # the method did not finish the task itself
        state = advance(state, task)
    parallel.check_identical(state, f"after task {task}")
    shell.save(state, mstate, dataclasses.replace(p, phase="done"))
    return state, mstate, history


@dataclasses.dataclass(frozen=True)
class _Shell:
    """What the loop does for a task: train one epoch of the method's step (``label``; with
    another optimizer than the run's where given), add to the history, save a resumable
    point."""

    epoch: Callable[..., tuple[TaskCarry, float, float]]  # (carry, label, optimizer=None)
    record: Callable[..., None]
    save: Callable[[EideticState, Any, TaskProgress], None]
    optimizer: torch.optim.Optimizer


def _end_task(
    method: Method,
    model: nn.Module,
    carry: TaskCarry,
    p: TaskProgress,
    ctx: TaskContext,
    shell: _Shell,
) -> tuple[TaskCarry, TaskProgress]:
    """Call the method's end of task and execute its decisions until it is Done."""
    metric: float | None = None
    while True:
        ctx = ctx.replace(progress=p, metric=metric)
        state, mstate, decision = end_task(method, model, *carry, ctx)
        carry = (state, mstate)
        for phase, fields in decision.records:
            shell.record(phase, **fields)
        if decision.resumable:
            shell.save(state, mstate, p)
        if isinstance(decision, Done):
            return carry, p
        if isinstance(decision, ScaleLearningRate):
            scale_learning_rates(shell.optimizer, decision.factor)
            p = dataclasses.replace(p, lr_lowered=True)
        elif isinstance(decision, Recover | TrainWith):
            carry, metric = _train_more(model, carry, decision, shell)


def _train_more(
    model: nn.Module, carry: TaskCarry, decision: Recover | TrainWith, shell: _Shell
) -> tuple[TaskCarry, float]:
    """The decision's epochs, each recorded: the carry and the last epoch's metric."""
    fresh = None if isinstance(decision, Recover) else _optimizer(model, *decision.optimizer)
    lr = {} if fresh is None else {"lr": fresh.param_groups[0]["lr"]}
    metric = 0.0
    for k in range(decision.epochs):
        start = time.perf_counter()
        label = decision.label if decision.epochs == 1 else f"{decision.label} ({k + 1})"
        carry, metric, loss = shell.epoch(carry, label, fresh)
        seconds = time.perf_counter() - start
        fields = {**decision.fields, **lr}
        shell.record(decision.phase, **fields, metric=metric, loss=loss, seconds=seconds)
    return carry, metric


def _optimizer(model: nn.Module, name: str, options: Mapping[str, Any]) -> Optimizer:
    """A fresh ``torch.optim`` optimizer ``name`` over the model's parameters."""
    kinds = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
    params = list(model.parameters())
    optimizer: Optimizer = kinds[name](params, **{**implementation(params), **options})
    return optimizer


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
    history: list[Record],
) -> tuple[TaskContext, _Shell]:
    """The task's context (data) and its shell: its epoch (the method's steps over
    ``loader``, measured on ``stop_loader`` if given), history record and checkpoint."""
    latest: dict[str, float] = {}  # the last epoch's training accuracy, under stop_loader

    def record(phase: str, **fields: Any) -> None:
        extra = latest if phase in ("train", "recover", "retrain") else {}
        lr = optimizer.param_groups[0]["lr"]
        entry = {"task": task, "phase": phase, "method": method.name, "time": time.time()}
        history.append({**entry, "lr": lr, **extra, **fields})

    train = _epochs(model, method, task, loader, optimizer, config, loss_fn, progress, parallel)

    def epoch(
        carry: TaskCarry, label: str, other: Optimizer | None = None
    ) -> tuple[TaskCarry, float, float]:
        carry, accuracy, loss = train(carry, label, other)
        if stop_loader is None:
            return carry, accuracy, loss
        latest["train_metric"] = accuracy
        return carry, evaluate(model, carry[0], stop_loader, task=task), loss

    def save(s: EideticState, ms: Any, q: TaskProgress) -> None:
        if checkpoint is not None:
            checkpoint(s, ms, q, history)

    ctx = TaskContext(
        loader=loader,
        task=task,
        generator=generator,
        config=config,
        last=last,
        score_loader=score_loader,
        reduce=parallel.score_reduce,
    )
    return ctx, _Shell(epoch=epoch, record=record, save=save, optimizer=optimizer)


def _epochs(
    model: nn.Module,
    method: Method,
    task: int,
    loader: Iterable[Batch],
    optimizer: Optimizer,
    config: TrainConfig,
    loss_fn: LossFn,
    progress: bool,
    parallel: Parallel | Single,
) -> Callable[[TaskCarry, str, Optimizer | None], tuple[TaskCarry, float, float]]:
    """The task's training epoch over ``loader`` (:func:`method_epoch`): ``(carry,
    training accuracy, mean loss)``, totalled over data-parallel processes.

    The step masks are prepared on the first epoch and again whenever the state's masks
    are other tensors (after a pruning step); the workspace lives as long as the task."""
    prepared: list[StepMasks] = []
    workspace = Workspace()
    # progress: bars on a terminal; where stderr is a file or a pipe (a log), a line per epoch
    bars = progress and parallel.is_main and sys.stderr.isatty()
    lines = progress and parallel.is_main and not bars

    def epoch(
        carry: TaskCarry, label: str, other: Optimizer | None
    ) -> tuple[TaskCarry, float, float]:
        state, mstate = carry
        if not prepared or not prepared[0].matches(state):
            prepared[:] = [step_masks(state)]
        device = device_of(state)
        description = f"{method.name} task {task} {label}"
        shown = tqdm(loader, desc=description, leave=False, disable=not bars)
        start = time.perf_counter()
        state, mstate, measured = method_epoch(
            method,
            model,
            state,
            mstate,
            ((x.to(device), y.to(device)) for x, y in shown),
            optimizer=optimizer if other is None else other,
            task=task,
            loss_fn=loss_fn,
            grad_transform=parallel.grad_transform,
            # another optimizer's steps run eagerly: compiling them would only recompile
            compiled=config.compiled and other is None,
            masks=prepared[0],
            workspace=workspace,
            check_every=config.check_every,
            buffer_sync=parallel.buffer_sync,
            description=description,
        )
        correct, count, loss_sum = parallel.sum_metrics(
            measured.correct, measured.count, measured.loss_sum
        )
        if lines:
            print(
                f"{description}: accuracy {correct / count:.4f}, loss {loss_sum / count:.4f}, "
                f"{time.perf_counter() - start:.1f} s",
                file=sys.stderr,
                flush=True,
            )
        return (state, mstate), correct / count, loss_sum / count

    return epoch
