"""Which entries a task's subnetwork uses: the task mask."""

from __future__ import annotations

import torch
from torch import Tensor

from eidetic_func.core.state import EideticState
from eidetic_func.core.validate import task_id


def task_entries(state: EideticState, task: int) -> dict[str, Tensor]:
    """Per parameter, a bool mask of the entries task ``task`` uses.

    Entries owned by tasks ``0..task``; plus, unless ``task`` is finished (it is being
    trained, or comes later), the free entries the current pruning mask keeps: capacity it
    trains or will train.
    """
    task_id(task)
    masks = {}
    for k, own in state.owner.items():
        if k not in state.params:
            continue
        used = (own >= 0) & (own <= task)
        if task not in state.finished:
            used = used | ((own < 0) & state.keep[k])
        masks[k] = used
    return masks


def apply_task_mask(state: EideticState, task: int) -> dict[str, Tensor]:
    """Parameters of task ``task``'s subnetwork; every other entry is zero.

    Outputs of a finished task computed with these parameters do not change when later
    tasks add or train entries: those entries are zero here.
    """
    masks = task_entries(state, task)
    return {
        k: torch.where(masks[k], p, torch.zeros((), dtype=p.dtype, device=p.device))
        for k, p in state.params.items()
    }


def needs_task_mask(state: EideticState, task: int) -> bool:
    """False when ``state.params`` already equal :func:`apply_task_mask` for ``task``'s outputs.

    That is the case for an unfinished task when no later task owns anything: free pruned
    entries are zero by the state's invariant, and other heads are not evaluated.
    """
    return task in state.finished or any(t > task for t in state.finished)
