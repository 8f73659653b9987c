"""The method protocol and the shell that trains one task with a method."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import TrainConfig
from ..state import EideticState
from ..step import Apply, StepMetrics, check_trainable, train_step
from ..train import (
    Batch,
    Record,
    TaskProgress,
    learning_rates,
    run_epoch,
    set_learning_rates,
    train_until_plateau,
)


@runtime_checkable
class Method(Protocol):
    """A continual-learning method: pure functions over ``(EideticState, method state)``.

    - ``init(model, state)`` → the method's initial state (a pytree, or any immutable value);
    - ``step(model, state, mstate, batch, optimizer=, task=)`` → ``(state, mstate, metrics)``:
      one optimizer step on the current task's batch (usually :func:`eidetic_func.train_step`
      with an ``objective`` / ``grad_transform``);
    - ``end_task(model, state, mstate, loader, task=, generator=)`` → ``(state, mstate)``:
      what happens once a task is learned (importance, anchors, memories, ownership).
    """

    @property
    def name(self) -> str: ...  # read-only, so frozen dataclasses satisfy the protocol

    def init(self, model: nn.Module, state: EideticState) -> Any: ...

    def step(
        self,
        model: nn.Module,
        state: EideticState,
        mstate: Any,
        batch: Batch,
        *,
        optimizer: torch.optim.Optimizer,
        task: int,
    ) -> tuple[EideticState, Any, StepMetrics]: ...

    def end_task(
        self,
        model: nn.Module,
        state: EideticState,
        mstate: Any,
        loader: Iterable[Batch],
        *,
        task: int,
        generator: torch.Generator,
    ) -> tuple[EideticState, Any]: ...


@dataclasses.dataclass(frozen=True)
class BaseMethod:
    """Defaults: cross-entropy steps plus :meth:`regularizer` (by default :meth:`penalty`),
    nothing at task end."""

    name: str = "finetune"

    def init(self, model: nn.Module, state: EideticState) -> Any:
        return None

    def penalty(self, mstate: Any, params: dict[str, Tensor], task: int) -> Tensor | None:
        """A regularizer on the parameters (differentiable), or None."""
        return None

    def regularizer(
        self,
        model: nn.Module,
        mstate: Any,
        apply: Apply,
        params: dict[str, Tensor],
        batch: Batch,
        task: int,
    ) -> Tensor | None:
        """The extra loss term (differentiable in ``params``), or None. Default: ``penalty``."""
        return self.penalty(mstate, params, task)

    def step(
        self,
        model: nn.Module,
        state: EideticState,
        mstate: Any,
        batch: Batch,
        *,
        optimizer: torch.optim.Optimizer,
        task: int,
    ) -> tuple[EideticState, Any, StepMetrics]:
        x, y = batch

        def objective(apply: Apply, params: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
            logits = apply(x, task)
            loss = F.cross_entropy(logits, y)
            extra = self.regularizer(model, mstate, apply, params, batch, task)
            return (loss if extra is None else loss + extra), logits

        state, metrics = train_step(
            model, state, batch, optimizer=optimizer, task=task, objective=objective
        )
        return state, mstate, metrics

    def end_task(
        self,
        model: nn.Module,
        state: EideticState,
        mstate: Any,
        loader: Iterable[Batch],
        *,
        task: int,
        generator: torch.Generator,
    ) -> tuple[EideticState, Any]:
        return state, mstate


def advance(state: EideticState, task: int) -> EideticState:
    """Move to task ``task + 1`` without owning anything (methods that do not freeze).

    The task is not marked finished: with nothing owned, a finished task's subnetwork
    would be empty. Its head simply stays trainable, as in the methods' papers.
    """
    return state.replace(task=task + 1)


def train_method_task(
    model: nn.Module,
    state: EideticState,
    mstate: Any,
    loader: Iterable[Batch],
    *,
    method: Method,
    task: int,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig | None = None,
    generator: torch.Generator,
    progress: bool = True,
) -> tuple[EideticState, Any, list[Record]]:
    """Train task ``task`` with ``method`` until the training accuracy plateaus, then end it.

    Uses the same epoch loop and stopping rule as EideticNet's ``train_task`` (pruning
    settings in ``config`` are ignored). Returns the state for the next task (its ``task``
    advanced; ownership only if the method assigns it), the method state and the history.
    """
    check_trainable(state, task)
    config = config or TrainConfig()
    history: list[Record] = []
    device = next(iter(state.params.values())).device

    def record(phase: str, **fields: Any) -> None:
        history.append(
            {"task": task, "phase": phase, "method": method.name, "time": time.time(), **fields}
        )

    def step(
        carry: tuple[EideticState, Any], batch: Batch
    ) -> tuple[tuple[EideticState, Any], StepMetrics]:
        s, ms, metrics = method.step(
            model, carry[0], carry[1], batch, optimizer=optimizer, task=task
        )
        return (s, ms), metrics

    def epoch(
        carry: tuple[EideticState, Any], label: str
    ) -> tuple[tuple[EideticState, Any], float, float]:
        return run_epoch(
            step,
            carry,
            loader,
            device=device,
            description=f"{method.name} task {task} {label}",
            progress=progress,
        )

    lrs = learning_rates(optimizer)
    (state, mstate), _ = train_until_plateau(
        epoch, (state, mstate), TaskProgress(), config=config, optimizer=optimizer, record=record
    )
    start = time.perf_counter()
    state, mstate = method.end_task(model, state, mstate, loader, task=task, generator=generator)
    record("end_task", seconds=time.perf_counter() - start)
    set_learning_rates(optimizer, lrs)  # every task starts at the same rate
    if state.task == task:  # the method did not finish the task itself
        state = advance(state, task)
    return state, mstate, history
