"""A method's epoch: its plan for every batch, run as one :class:`Epoch` of steps.

Bit-identical to the same :func:`~eidetic_func.methods.protocol.method_step` calls, with
no host read inside a step (:mod:`eidetic_func.training.epoch`). Each batch's plan sees
the state as the steps go (``Epoch.current``: the model's own tensors as parameters,
valid during that step), and its ``update()`` gives the method state after the step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eidetic_func.core.errors import NonFiniteError, ShapeError
from eidetic_func.core.state import EideticState
from eidetic_func.core.types import Batch, LossFn
from eidetic_func.methods.protocol import (
    Method,
    compose_transforms,
    lowered,
    plan_step,
    updated,
    with_penalty,
)
from eidetic_func.ops.step_masks import StepMasks
from eidetic_func.ops.workspace import Workspace
from eidetic_func.training.epoch import Epoch, EpochMetrics
from eidetic_func.training.step import GradTransform


def method_epoch(
    method: Method,
    model: nn.Module,
    state: EideticState,
    mstate: Any,
    batches: Iterable[Batch],
    *,
    optimizer: torch.optim.Optimizer,
    task: int | None = None,
    loss_fn: LossFn = F.cross_entropy,
    grad_transform: GradTransform | None = None,
    compiled: bool = False,
    masks: StepMasks | None = None,
    workspace: Workspace | None = None,
    check_every: int | None = None,
    buffer_sync: Callable[[dict[str, Tensor]], None] | None = None,
    description: str = "epoch",
) -> tuple[EideticState, Any, EpochMetrics]:
    """One pass of ``method``'s steps over ``batches``: ``(state, mstate, metrics)``.

    Arguments as :func:`~eidetic_func.methods.protocol.method_step` and
    :func:`~eidetic_func.training.epoch.train_epoch`. A bad step raises naming it, with
    the last state read as good as ``error.state`` and the method state of that moment as
    ``error.method_state``.
    """
    run = Epoch(
        model,
        state,
        optimizer=optimizer,
        task=task,
        masks=masks,
        workspace=workspace,
        compiled=compiled,
        check_every=check_every,
        buffer_sync=buffer_sync,
        description=description,
    )
    good = mstate  # the method state when run.good was read
    try:
        for batch in batches:
            plan = lowered(plan_step(method, model, run.current, mstate, batch, task=run.task))
            objective = plan.objective
            if plan.penalty is not None:
                objective = with_penalty(objective, plan.penalty, batch, run.task, loss_fn)
            checked = run.step(
                batch,
                loss_fn=loss_fn,
                objective=objective,
                grad_transform=compose_transforms([grad_transform, plan.grad_transform]),
            )
            mstate = updated(method.name, plan, mstate)
            if checked:
                good = mstate
        new, metrics = run.finish()
    except (NonFiniteError, ShapeError) as error:
        if hasattr(error, "state"):
            setattr(error, "method_state", good)  # noqa: B010 (see Epoch._error)
        raise
    return new, mstate, metrics
