"""PackNet (Mallya & Lazebnik 2018): magnitude pruning, short retraining, entry-level ownership.

After a task is trained, a fraction ``prune_ratio`` of the free weights of every layer —
the lowest in magnitude, unstructured — is pruned (``keep = False``, zero); the rest are
retrained for ``retrain_epochs`` epochs by the task loop (a :class:`TrainWith` decision;
``train_step`` keeps pruned entries at zero);
then the surviving free weights become **owned** by the task (:func:`own_entries`), so the
core's freezing keeps them bit-identical for every later task, and the task is marked
finished, so ``eidetic_func.ops.forward(..., task=t)`` evaluates it through
``apply_task_mask``: later tasks' weights (the pruned entries they reuse) read as zero.

As in the paper (and its code's defaults ``train_bias=False``, ``train_bn=False``):

- only weights of Linear / Conv layers (tensors with two or more dimensions) are pruned;
  biases, BatchNorm parameters and task heads are not;
- biases and BatchNorm layers (parameters *and* running statistics) are trained with the
  first task and owned by it: they are shared by every task, so any later change would
  alter earlier tasks' outputs. Later tasks run BatchNorm with task 0's statistics
  (``TaskBatchNorm`` normalizes owned channels with their frozen statistics);
- each task has its own head (task-incremental), owned whole by its task.

Ownership is per entry here — finer than EideticNet's per neuron — which the core supports
as is: ``owner`` is per entry, ``freeze`` and ``apply_task_mask`` work entry-wise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import ClassVar

import torch
from torch import Tensor, nn

from eidetic_func.core.errors import ConfigError, TaskError
from eidetic_func.core.state import FREE, EideticState
from eidetic_func.methods.decisions import DONE, Decision, TrainWith
from eidetic_func.methods.fields import integer, number, validate_fields
from eidetic_func.methods.protocol import TaskContext, Traits

__all__ = ["PackNet", "magnitude_prune", "own_entries", "packnet_prunable"]


def packnet_prunable(state: EideticState) -> list[str]:
    """Parameters PackNet prunes: weights with ≥ 2 dimensions, task heads (``heads.*``) excluded."""
    return [k for k, p in state.params.items() if p.dim() >= 2 and not k.startswith("heads.")]


def magnitude_prune(state: EideticState, ratio: float, keys: Iterable[str]) -> EideticState:
    """Prune ``round(ratio × n_free)`` of the free, kept entries of each parameter in ``keys``.

    The smallest in magnitude go (ties broken by position, so the count is exact); they
    get ``keep = False`` and value zero. Owned entries and other parameters are untouched.
    Pure: a new state.
    """
    if not (isinstance(ratio, int | float) and 0.0 <= float(ratio) <= 1.0):
        raise ConfigError(f"ratio must be in [0, 1], got {ratio!r}")
    params, keep = dict(state.params), dict(state.keep)
    for k in keys:
        p = state.params[k]
        free = (state.owner[k] < 0) & state.keep[k]
        n_free = int(free.sum())
        n_prune = round(ratio * n_free)
        if n_prune == 0:
            continue
        # owned and already-pruned entries sort last: they are never chosen
        magnitude = torch.where(free, p.detach().abs(), torch.inf).reshape(-1)
        order = torch.argsort(magnitude, stable=True)[:n_prune]
        pruned = torch.zeros(p.numel(), dtype=torch.bool, device=p.device)
        pruned[order] = True
        pruned = pruned.view_as(p)
        keep[k] = state.keep[k] & ~pruned
        params[k] = torch.where(pruned, torch.zeros((), dtype=p.dtype, device=p.device), p)
    return state.replace(params=params, keep=keep)


def own_entries(state: EideticState, *, task: int, entries: Mapping[str, Tensor]) -> EideticState:
    """Finish ``task`` entry by entry: free entries marked in ``entries`` become owned by it.

    ``entries[key]`` (bool, shaped like ``state.owner[key]``; parameters or BN statistics)
    marks what the task claims; a parameter entry is owned only if it is also kept (a
    pruned entry stays free, at zero — pruning already zeroed it; it is zeroed again
    here so the invariant does not rest on the caller). Entries owned by other tasks are
    never re-owned. The task is marked finished (its outputs are then computed through
    ``apply_task_mask``) and the state moves to ``task + 1`` with nothing pruned. Pure.
    """
    if task != state.task:
        raise TaskError(f"cannot finish task {task}: the state is training task {state.task}")
    unknown = sorted(set(entries) - set(state.owner))
    if unknown:
        raise ConfigError(f"entries name tensors the state does not own: {unknown[:5]}")
    owner = dict(state.owner)
    params = dict(state.params)
    for k, claim in entries.items():
        own = state.owner[k]
        if claim.shape != own.shape:
            raise ConfigError(
                f"entries[{k!r}] has shape {tuple(claim.shape)}, expected {tuple(own.shape)}"
            )
        take = (own < 0) & claim.to(torch.bool)
        if k in state.keep:
            take = take & state.keep[k]
        owner[k] = torch.where(take, torch.tensor(task, dtype=own.dtype, device=own.device), own)
    for k, p in params.items():
        pruned = (owner[k] == FREE) & ~state.keep[k]
        params[k] = torch.where(pruned, torch.zeros((), dtype=p.dtype, device=p.device), p)
    keep = {k: torch.ones_like(v) for k, v in state.keep.items()}
    finished = tuple(sorted({*state.finished, task}))
    return state.replace(params=params, owner=owner, keep=keep, task=task + 1, finished=finished)


@dataclasses.dataclass(frozen=True)
class PackNet:
    """PackNet: prune ``prune_ratio`` of each layer's free weights, retrain, own the rest.

    ``retrain_epochs`` epochs of retraining after pruning, with a fresh Adam optimizer of
    learning rate ``retrain_lr`` (a :class:`TrainWith` decision: the task loop trains;
    the paper also retrains with its own schedule). Steps are plain cross-entropy (no
    ``plan``).
    """

    # not data-parallel: retraining steps a fresh optimizer on this process's data alone
    traits: ClassVar[Traits] = Traits(task_incremental=True, owns=True)

    prune_ratio: float = number(0.75, low=0.0, high=1.0, high_open=True)
    retrain_epochs: int = integer(1, minimum=0)
    retrain_lr: float = number(1e-3, low=0.0, low_open=True)
    name: str = "packnet"

    def __post_init__(self) -> None:
        validate_fields(self)

    def init(self, model: nn.Module, state: EideticState) -> None:
        if not any(k.startswith("heads.") for k in state.params):
            raise ConfigError(
                "PackNet needs one head per task, named heads.<t> (a models.TaskModel)"
            )
        return None

    def end_task(
        self, model: nn.Module, state: EideticState, mstate: None, ctx: TaskContext
    ) -> tuple[EideticState, None, Decision]:
        """Prune and have the loop retrain (the first call; a retrained call has the
        retraining's metric), then own what survived (and the shared entries, at task 0)."""
        if ctx.metric is None:
            state = magnitude_prune(state, self.prune_ratio, packnet_prunable(state))
            if self.retrain_epochs > 0:
                optimizer = ("adam", {"lr": self.retrain_lr})
                return state, mstate, TrainWith(optimizer, "retrain", epochs=self.retrain_epochs)
        return own_entries(state, task=ctx.task, entries=self.claims(state, ctx.task)), mstate, DONE

    def claims(self, state: EideticState, task: int) -> dict[str, Tensor]:
        """What ``task`` owns: its kept weights, its head, and every free shared entry.

        Shared entries (biases, BatchNorm parameters and statistics) are free only until
        the first task ends, so in effect they belong to task 0.
        """
        prunable = set(packnet_prunable(state))
        claims: dict[str, Tensor] = {}
        for k, own in state.owner.items():
            if k.startswith("heads."):
                mine = k.split(".")[1] == str(task)
                claims[k] = torch.full_like(own, mine, dtype=torch.bool)
            elif k in prunable:
                claims[k] = state.keep[k]
            else:
                claims[k] = torch.ones_like(own, dtype=torch.bool)
        return claims
