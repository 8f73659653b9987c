"""The training step's checks: of its task, its targets, its optimizer and its result.

Each raises a library error (:mod:`eidetic_func.core.errors`) that says what to change,
rather than letting a raw torch error or a CUDA device assert surface mid-step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from eidetic_func.core.errors import ConfigError, NonFiniteError, ShapeError, TaskError
from eidetic_func.core.state import EideticState
from eidetic_func.core.types import LossFn


def check_trainable(state: EideticState, task: int) -> None:
    """Raise unless ``task`` is the task the state is training (and not a finished one)."""
    if task in state.finished:
        raise TaskError(
            f"task {task} is finished; revisit it explicitly (eidetic_func.revisit) to train it "
            f"again (the state is training task {state.task})"
        )
    if task != state.task:
        raise TaskError(
            f"task {task} is not the task being trained (state.task={state.task}); tasks are "
            "trained in order, each closed by finish_task"
        )


def check_finite_step(changed: dict[str, Tensor], task: int, *, where: str | None = None) -> None:
    """Raise if the step's new parameters hold a non-finite value.

    One pass and one host sync per step: a sum is finite unless some entry is not (or
    the sum overflows, which the exact count then rules out). Only values entering the
    state count (frozen entries were restored), so a NaN is never frozen into a task.
    ``where`` names the steps for an epoch's check (whose error keeps the last good state).
    """
    if not changed:
        return
    sums = [p.sum() for p in changed.values()]
    if len({s.dtype for s in sums}) > 1:
        sums = [s.double() for s in sums]
    if math.isfinite(float(torch.stack(sums).sum())):
        return
    stepped = list(changed.items())
    counts = torch.stack([(~torch.isfinite(p)).sum() for _, p in stepped]).tolist()
    bad = {k: int(n) for (k, _), n in zip(stepped, counts) if n}
    if bad:
        shown = ", ".join(f"{k} ({n})" for k, n in list(bad.items())[:3])
        kept = (
            "The state you passed is unchanged; the optimizer's statistics were updated by this "
            "step"
            if where is None
            else "The last state read as good is kept (error.state); the optimizer's statistics "
            "saw those steps"
        )
        raise NonFiniteError(
            f"{where or f'the optimizer step of task {task}'} produced {sum(bad.values())} "
            f"non-finite parameters: {shown}{' ...' if len(bad) > 3 else ''}. {kept} (rebuild "
            "the optimizer or reload a checkpoint), and consider a lower learning rate or float32"
        )


def check_labels(logits: Tensor, y: Tensor, loss_fn: LossFn) -> Tensor:
    """Targets for the loss, checked for their kind and shape (no host read; their range
    is checked on the device: :func:`eidetic_func.training.step_values.guard_targets`).

    With the default cross-entropy, targets are integer class indices of shape ``[B]``
    (any integer dtype, converted to int64) or class probabilities shaped like the logits;
    a custom ``loss_fn`` gets its targets as given.
    """
    default_loss = loss_fn is F.cross_entropy
    if default_loss and (y.dtype == torch.bool or y.is_complex()):
        raise ShapeError(f"targets must be integer class indices, got {y.dtype}")
    if y.is_floating_point():
        if default_loss and y.shape != logits.shape:
            raise ShapeError(
                f"targets must be integer class indices of shape [B], or class probabilities "
                f"of the logits' shape {tuple(logits.shape)}; got {y.dtype} "
                f"{tuple(y.shape)}"
            )
        return y
    if logits.dim() != 2 or y.dtype == torch.bool:
        return y
    if y.dim() != 1:
        raise ShapeError(f"class targets must be 1-D, got shape {tuple(y.shape)}")
    return y.long() if default_loss else y


def outside_error(low: int, high: int, where: str, classes: int | None = None) -> ShapeError:
    """The error for class targets outside the head (``low..high`` seen in ``where``)."""
    allowed = "within the head" if classes is None else f"in 0..{classes - 1} for this head"
    return ShapeError(
        f"targets must be class indices {allowed}, got {low}..{high} in {where} (are labels "
        "remapped per task?); nothing of that step enters a returned state"
    )


def check_optimizer(optimizer: torch.optim.Optimizer, workspace: dict[str, Tensor]) -> None:
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError(f"optimizer must be a torch.optim.Optimizer, got {optimizer!r}")
    if isinstance(optimizer, torch.optim.LBFGS):
        raise ConfigError(
            "LBFGS needs a closure that re-evaluates the loss several times per step; "
            "train_step takes one optimizer step per batch without a closure: use SGD, Adam, "
            "AdamW, RMSprop or another optimizer that steps without one"
        )
    known = {id(p) for p in workspace.values()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) not in known:
                raise ConfigError(
                    "the optimizer holds a tensor that is not a parameter of the model; build it "
                    "with optimizer_cls(model.parameters(), ...)"
                )
