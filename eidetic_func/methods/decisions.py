"""What a method's end of task asks the task loop to do next: plain data, no callbacks.

``end_task`` returns ``(state, mstate, decision)``; the loop (:func:`eidetic_func.train_task`)
writes the decision's ``records`` to the history, saves a checkpoint first where the decision
is ``resumable`` (the returned state and method state are a point a run may resume from),
then executes it and, unless it is :class:`Done`, calls ``end_task`` again:

- :class:`Done`: the end of the task is complete;
- :class:`Continue`: call again at once (a resumable one is a checkpoint);
- :class:`ScaleLearningRate`: multiply every learning rate by ``factor``, once per task;
- :class:`Recover`: train ``epochs`` more epochs with the whole method's step, then call
  again with the last epoch's metric in ``TaskContext.metric``;
- :class:`TrainWith`: the same with a fresh optimizer of the decision's own (PackNet's
  retraining), the run's optimizer untouched.

A method never trains the network itself: the loop owns every training step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from eidetic_func.core.errors import ConfigError

# (phase, fields): entries for the task's history, in order
Records = tuple[tuple[str, Mapping[str, Any]], ...]


@dataclasses.dataclass(frozen=True)
class Done:
    """The end of the task is complete."""

    records: Records = ()
    resumable: bool = False


@dataclasses.dataclass(frozen=True)
class Continue:
    """Call ``end_task`` again at once (after saving this point where ``resumable``)."""

    records: Records = ()
    resumable: bool = False


@dataclasses.dataclass(frozen=True)
class ScaleLearningRate:
    """Multiply every parameter group's learning rate by ``factor`` (restored when the task
    ends), then call ``end_task`` again."""

    factor: float
    records: Records = ()
    resumable: bool = False


@dataclasses.dataclass(frozen=True)
class Recover:
    """Train ``epochs`` more epochs with the method's step, each recorded as ``phase``
    with ``fields`` plus its metric, loss and seconds; then call ``end_task`` again with
    the last epoch's metric in ``TaskContext.metric``."""

    label: str
    epochs: int = 1
    phase: str = "recover"
    fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    records: Records = ()
    resumable: bool = False

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"Recover trains at least one epoch, got {self.epochs}")


@dataclasses.dataclass(frozen=True)
class TrainWith:
    """Train ``epochs`` epochs with the method's step and a fresh optimizer
    ``optimizer = (name, options)`` over the model's parameters (``("adam", {"lr": 1e-3})``;
    names: :data:`OPTIMIZERS`), each recorded as ``phase`` like :class:`Recover`; then call
    ``end_task`` again with the last epoch's metric in ``TaskContext.metric``. The steps
    run eagerly (a fresh optimizer would only recompile)."""

    optimizer: tuple[str, Mapping[str, Any]]
    label: str
    epochs: int = 1
    phase: str = "retrain"
    fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    records: Records = ()
    resumable: bool = False

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"TrainWith trains at least one epoch, got {self.epochs}")
        if self.optimizer[0] not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer[0]!r}")


OPTIMIZERS = ("adam", "adamw", "sgd")  # what TrainWith may name (torch.optim's)

Decision = Done | Continue | ScaleLearningRate | Recover | TrainWith
DECISIONS = (Done, Continue, ScaleLearningRate, Recover, TrainWith)

DONE = Done()


def with_records(decision: Decision, records: Records) -> Decision:
    """``decision`` with ``records`` written before its own."""
    if not records:
        return decision
    return dataclasses.replace(decision, records=(*records, *decision.records))
