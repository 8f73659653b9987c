"""The task's epoch loop: epochs until the metric plateaus (one epoch's steps:
:mod:`eidetic_func.training.epoch`).

The stopping rule (EideticNet's, for every method): train until the training accuracy
plateaus (``patience`` epochs without improvement, or 100%), then one more epoch,
optionally at a learning rate lowered by ``lr_factor``. Where a task is in that loop is a
small record (:class:`TaskProgress`), so a run can stop after any epoch and resume.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

from eidetic_func.core.errors import ConfigError
from eidetic_func.core.state import EideticState
from eidetic_func.training.config import TrainConfig

Carry = TypeVar("Carry")
# (the state, the method state): what a task's training threads
TaskCarry = tuple[EideticState, Any]


@dataclasses.dataclass(frozen=True)
class TaskProgress:
    """Where a task's training is: enough to resume it after an epoch or at a resumable
    point of its end (the method's own progress there is in its method state)."""

    phase: str = "train"  # "train" → "end" → "done"
    epoch: int = 0
    best: float = 0.0
    best_epoch: int = 0
    metric: float = 0.0
    lrs: tuple[float, ...] = ()  # the optimizer's learning rates when the task started
    lr_lowered: bool = False  # ``lr_factor`` has been applied in this task
    stopping: bool = False  # the plateau is reached: one more training epoch, then end

    def __post_init__(self) -> None:
        object.__setattr__(self, "lrs", tuple(float(lr) for lr in self.lrs))
        if self.phase == "prune":  # checkpoints written before the phase was renamed
            object.__setattr__(self, "phase", "end")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> TaskProgress:
        """The progress a checkpoint holds; the pruning fields of earlier versions (now the
        method's state) are dropped, so such a point resumes at the start of the task's end."""
        retired = ("pruning_iteration", "adaptive_step", "end_member")
        return cls(**{k: v for k, v in saved.items() if k not in retired})


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
            scale_learning_rates(optimizer, config.lr_factor)
            p = dataclasses.replace(p, lr_lowered=True)
        if metric > p.best:
            p = dataclasses.replace(p, best=metric, best_epoch=p.epoch)
        if after_epoch is not None and p.epoch < config.max_epochs:
            after_epoch(carry, p)
    return carry, p


def device_of(state: EideticState) -> torch.device:
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


def scale_learning_rates(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Multiply every parameter group's learning rate by ``factor``."""
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * factor
