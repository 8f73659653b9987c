"""Progressive networks (Rusu et al. 2016): a new column per task, earlier columns frozen.

The network is ``models.progressive.ProgressiveMLP`` (every column built up front). This
method trains task ``t`` with plain cross-entropy — only column ``t`` (with its laterals
and head) changes, earlier columns being owned — and at the end of the task
:func:`own_column` gives column ``t`` to task ``t``. Freezing is the core's projection
(``eidetic_func.ops.freeze``), so one optimizer of any kind — AdamW with weight decay, momentum
carried across tasks — may serve the whole sequence: earlier columns stay bit-identical.
Later columns are then re-initialized (``eidetic_func.recycle``), which also undoes the
weight decay a decoupled-decay optimizer applied to them while they were unused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from eidetic_func.core.errors import ConfigError
from eidetic_func.core.state import EideticState
from eidetic_func.methods.decisions import DONE, Decision
from eidetic_func.methods.packnet import own_entries
from eidetic_func.methods.protocol import TaskContext, Traits
from eidetic_func.ops.lifecycle import recycle

__all__ = ["ColumnModel", "Progressive", "column_entries", "own_column"]


@runtime_checkable
class ColumnModel(Protocol):
    """A model with one column per task: ``column_prefixes(t)`` names what column ``t`` adds."""

    def column_prefixes(self, task: int) -> tuple[str, ...]: ...


def column_entries(state: EideticState, prefixes: Sequence[str]) -> dict[str, Tensor]:
    """Per owned tensor, all-True for those whose name starts with one of ``prefixes``."""
    return {
        k: torch.full_like(own, k.startswith(tuple(prefixes)), dtype=torch.bool)
        for k, own in state.owner.items()
    }


def own_column(state: EideticState, model: ColumnModel, *, task: int) -> EideticState:
    """Task ``task`` owns column ``task`` (layers, laterals, head) and is finished. Pure.

    Earlier columns are already owned by their tasks; ownership only grows.
    """
    return own_entries(state, task=task, entries=column_entries(state, model.column_prefixes(task)))


@dataclasses.dataclass(frozen=True)
class Progressive:
    """Progressive networks on a :class:`ColumnModel` (``models.progressive.ProgressiveMLP``);
    steps are plain cross-entropy (no ``plan``)."""

    traits: ClassVar[Traits] = Traits(
        data_parallel=True, task_incremental=True, network="progressive", owns=True
    )

    name: str = "progressive"

    def init(self, model: nn.Module, state: EideticState) -> None:
        if not isinstance(model, ColumnModel):
            raise ConfigError(
                f"Progressive needs a model with a column per task (column_prefixes), such as "
                f"models.progressive.ProgressiveMLP; got {type(model).__name__}"
            )
        return None

    def end_task(
        self, model: nn.Module, state: EideticState, mstate: None, ctx: TaskContext
    ) -> tuple[EideticState, None, Decision]:
        """Own column ``task``; re-initialize the later (free) columns from ``generator``."""
        task, generator = ctx.task, ctx.generator
        if not isinstance(model, ColumnModel):
            raise ConfigError(f"{type(model).__name__} has no columns (column_prefixes)")
        state = own_column(state, model, task=task)
        return recycle(state, generator=generator), mstate, DONE
