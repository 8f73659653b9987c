"""One training step with any ``torch.optim`` optimizer, frozen entries restored after it.

The optimizer is built over ``model.parameters()`` as usual (one optimizer may serve a
whole task sequence). The model's parameters and buffers are the step's workspace: the
state is copied in (parameters only when they do not already hold it: the previous step
left them equal to the state it returned), the model runs on them directly, the optimizer
updates them in place, and the result is projected back onto the state's frozen and pruned
entries (:func:`eidetic_func.ops.freeze`), in the workspace too. The returned state never
aliases the workspace, so states stay immutable; the model's own tensors are scratch.

The step in named parts, in order: check the call, load the workspace, loss and gradients,
the optimizer step, projection onto the frozen entries, metrics. What it derives from the
state's ownership and pruning mask comes in as a value (``masks``,
:mod:`eidetic_func.ops.step_masks`), and what the model's parameters hold as another
(``workspace``, :mod:`eidetic_func.ops.workspace`); neither is cached in a module.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.graph import increment_version
from torch.func import functional_call

from eidetic_func.core.errors import (
    NonFiniteError,
    ShapeError,
    TopologyError,
)
from eidetic_func.core.state import EideticState, _check_same, bn_prefixes
from eidetic_func.core.types import LossFn
from eidetic_func.ops.forward import (
    check_input,
    check_task,
    frozen_channels_set,
    standard_layout,
    train_mode,
)
from eidetic_func.ops.freeze import freeze_buffers, mask_
from eidetic_func.ops.mask import needs_task_mask, task_entries
from eidetic_func.ops.step_masks import StepMasks, step_masks
from eidetic_func.ops.workspace import Workspace, load_workspace, project_workspace
from eidetic_func.training.step_checks import (
    check_finite_step,
    check_labels,
    check_optimizer,
    check_trainable,
    outside_error,
)
from eidetic_func.training.step_compile import (
    _compiled_model,
    _compiled_optimizer_step,
)
from eidetic_func.training.step_values import (
    StepRead,
    StepValues,
    guard_targets,
    read_steps,
)

# apply(x, task) -> logits of head `task`, with the step's parameters (training mode)
Apply = Callable[[Tensor, int], Tensor]
# objective(apply, params) -> (scalar loss, logits of the step's batch)
Objective = Callable[[Apply, dict[str, Tensor]], tuple[Tensor, Tensor]]
# grad_transform(grads, apply, params) -> grads to step with
GradTransform = Callable[[dict[str, Tensor], Apply, dict[str, Tensor]], dict[str, Tensor]]


@dataclass(frozen=True)
class StepMetrics:
    """What one step measured: mean loss, correct predictions and batch size."""

    loss: float
    correct: int
    count: int


def train_step(
    model: nn.Module,
    state: EideticState,
    batch: tuple[Tensor, Tensor],
    *,
    optimizer: torch.optim.Optimizer,
    task: int | None = None,
    loss_fn: LossFn = F.cross_entropy,
    objective: Objective | None = None,
    grad_transform: GradTransform | None = None,
    zero_frozen_grads: bool = False,
    compiled: bool = False,
    masks: StepMasks | None = None,
    workspace: Workspace | None = None,
) -> tuple[EideticState, StepMetrics]:
    """Train ``task`` (default: the state's) on one batch; owned and pruned entries come back
    bit-identical.

    The loss is ``loss_fn(logits, targets)`` (a scalar), or ``objective(apply, params)``
    returning ``(loss, logits of batch)`` — for methods whose loss has more terms:
    ``apply(x, t)`` runs the network for head ``t`` with this step's parameters, and
    ``params`` are those parameters (differentiable). ``grad_transform(grads, apply,
    params)`` may replace the gradients before the optimizer step (e.g. a projection).

    A non-finite loss raises :class:`NonFiniteError` before the optimizer runs (the state
    is unchanged and the optimizer's statistics are untouched). ``zero_frozen_grads`` also
    zeroes gradients of frozen entries before the step, so momentum and moment estimates
    ignore them; freezing itself never depends on it.

    ``masks`` are the state's :func:`eidetic_func.ops.step_masks.step_masks`, prepared
    once per task and again whenever its ownership or pruning mask changes (a state whose
    masks are other tensors is refused with :class:`StateMismatchError`); None derives
    them for this step alone (the same result, slower).

    The model's parameters are the step's workspace: the state is copied into them unless
    ``workspace`` (a :class:`eidetic_func.ops.workspace.Workspace` kept beside the model,
    like its optimizer) records that they still hold the last step's result, unwritten
    since (by version counter); without one, every step copies. Any optimizer works, fused
    ones included. Write the parameters between steps under ``torch.no_grad()``, not
    through ``.data`` (which no version counter sees), or better, change the state.

    ``compiled`` runs the model's forward and backward and the optimizer's step under
    ``torch.compile`` (built on the first call for each model and optimizer, kept for
    later ones; a new task's frozen BN channels or learning rate may recompile once).
    Freezing is unchanged: the projection runs after the compiled optimizer step.
    """
    task = state.task if task is None else task
    live, own_buffers = check_call(model, state, optimizer, task)
    x, y = check_batch(model, batch, state)
    if masks is None:
        masks = step_masks(state)
    else:
        masks.check(state)
    workspace = Workspace() if workspace is None else workspace
    fixed = _load(workspace, live, own_buffers, state)
    optimizer.zero_grad(set_to_none=True)
    loss_value, correct_value = _loss_and_grads(
        model,
        state,
        masks,
        live,
        (x, y),
        task=task,
        loss_fn=loss_fn,
        objective=objective,
        grad_transform=grad_transform,
        compiled=compiled,
    )
    _check_unwritten(model, fixed)
    _optimizer_step(optimizer, live, masks, zero_frozen_grads=zero_frozen_grads, compiled=compiled)
    params = project_workspace(workspace, live, state, masks)
    check_finite_step({k: p for k, p in params.items() if p is not state.params[k]}, task)
    buffers = freeze_buffers(own_buffers, state, copy=True, masks=masks)
    new = state.replace(params=params, buffers=buffers)
    return new, StepMetrics(loss=loss_value, correct=int(correct_value), count=int(x.shape[0]))


def check_call(
    model: nn.Module, state: EideticState, optimizer: torch.optim.Optimizer, task: int
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``(the model's parameters, its buffers other than frozen_channels)``, checked
    against the state, the task and the optimizer."""
    check_trainable(state, task)
    check_task(model, task)
    live: dict[str, Tensor] = dict(model.named_parameters())
    own_buffers = {k: b for k, b in model.named_buffers() if not k.endswith("frozen_channels")}
    _check_same(live, state.params, "params")
    _check_same(own_buffers, state.buffers, "buffers")
    check_optimizer(optimizer, live)
    return live, own_buffers


def check_batch(
    model: nn.Module, batch: tuple[Tensor, Tensor], state: EideticState
) -> tuple[Tensor, Tensor]:
    """``(inputs in the standard layout, targets)`` of ``batch``, checked (no host read)."""
    if not isinstance(batch, tuple | list) or len(batch) != 2:
        raise ShapeError("batch must be an (inputs, targets) pair of tensors")
    x, y = batch
    check_input(model, x, next(iter(state.params.values())).dtype if state.params else None)
    x = standard_layout(x)
    if not isinstance(y, Tensor) or y.shape[:1] != x.shape[:1]:
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ShapeError(f"targets must be a tensor with batch size {x.shape[0]}, got {shape}")
    return x, y


def _load(
    workspace: Workspace,
    live: dict[str, Tensor],
    own_buffers: dict[str, Tensor],
    state: EideticState,
) -> dict[str, tuple[Tensor, int]]:
    """Load the state into the model's parameters and buffers; returns the buffers outside
    BatchNorm with their version counters (no state of any task: the step may not write
    them)."""
    load_workspace(workspace, live, state.params)
    with torch.no_grad():
        for k, b in own_buffers.items():
            b.copy_(state.buffers[k])
    norms = set(bn_prefixes(state))
    return {k: (b, b._version) for k, b in own_buffers.items() if k.rpartition(".")[0] not in norms}


def _applier(
    model: nn.Module, state: EideticState, live: dict[str, Tensor], compiled: bool
) -> Apply:
    """``apply(x, head)`` on the model's parameters (``live``), in this step."""
    masked: dict[int, dict[str, Tensor]] = {}

    def apply(inputs: Tensor, head: int) -> Tensor:
        if not needs_task_mask(state, head):
            return (_compiled_model(model) if compiled else model)(inputs, head)
        # a finished head or a revisit: entries of later tasks read as zero
        if head not in masked:
            used = task_entries(state, head)
            masked[head] = {k: torch.where(used[k], p, 0.0) for k, p in live.items()}
        return functional_call(model, masked[head], (inputs,), {"task": head}, strict=False)

    return apply


def _loss_and_grads(
    model: nn.Module,
    state: EideticState,
    masks: StepMasks,
    live: dict[str, Tensor],
    batch: tuple[Tensor, Tensor],
    *,
    task: int,
    loss_fn: LossFn,
    objective: Objective | None,
    grad_transform: GradTransform | None,
    compiled: bool,
) -> tuple[float, float]:
    """Forward, backward and the gradient transform, gradients left in ``live``:
    ``(loss, correct predictions)``. Raises before the backward on a non-finite loss."""

    read: list[StepRead] = []

    def read_first(values: StepValues) -> None:  # the step's one read before its backward
        read.extend(read_steps([values])[0])
        loss_value, outside = read[0].loss, read[0].outside
        if outside is not None:
            raise outside_error(*outside, "this batch", classes=values.classes)
        if not math.isfinite(loss_value):
            raise NonFiniteError(
                f"loss is {loss_value} at task {task}; the state is returned unchanged (lower the "
                "learning rate or check the data)"
            )

    with train_mode(model, True), frozen_channels_set(model, masks):
        backward_in_mode(
            _applier(model, state, live, compiled),
            live,
            batch,
            task=task,
            loss_fn=loss_fn,
            objective=objective,
            grad_transform=grad_transform,
            before_backward=read_first,
        )
    return read[0].loss, read[0].correct


def backward_in_mode(
    apply: Apply,
    live: dict[str, Tensor],
    batch: tuple[Tensor, Tensor],
    *,
    task: int,
    loss_fn: LossFn,
    objective: Objective | None,
    grad_transform: GradTransform | None,
    before_backward: Callable[[StepValues], None] | None = None,
) -> StepValues:
    """Forward, backward and the gradient transform with the model already in training
    mode and its frozen BN channels set, gradients left in ``live``. Returns the step's
    values on the device (no host read; ``before_backward(values)`` may read them).
    Class targets are checked on the device (:mod:`eidetic_func.training.step_values`)."""
    loss, logits, y, targets = _loss(apply, live, batch, task, loss_fn, objective)
    if loss.dim() != 0:
        raise ShapeError(f"the loss must be a scalar, got shape {tuple(loss.shape)}")
    if logits.dim() == 2 and not y.is_floating_point() and logits.shape[0] == y.shape[0]:
        correct = (logits.detach().argmax(1) == y).sum()
    else:
        correct = torch.zeros((), device=loss.device, dtype=torch.long)
    classes = logits.shape[1] if logits.dim() == 2 else 0
    values = StepValues(loss=loss.detach(), correct=correct, targets=targets, classes=classes)
    if before_backward is not None:
        before_backward(values)
    loss.backward()
    if grad_transform is not None:
        grads = {k: p.grad for k, p in live.items() if p.grad is not None}
        for k, g in grad_transform(grads, apply, live).items():
            live[k].grad = g
    return values


def _loss(
    apply: Apply,
    live: dict[str, Tensor],
    batch: tuple[Tensor, Tensor],
    task: int,
    loss_fn: LossFn,
    objective: Objective | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """``(loss, logits, targets as the loss took them, the class targets' [lowest,
    highest] or None)`` of the batch."""
    x, y = batch
    try:
        if objective is None:
            logits = apply(x, task)
            y, targets = guard_targets(logits, check_labels(logits, y, loss_fn))
            return loss_fn(logits, y), logits, y, targets
        loss, logits = objective(apply, live)
        return loss, logits, y, None
    except ValueError as e:
        if "more than 1 value per channel" not in str(e):
            raise
        raise ShapeError(
            f"a batch of {x.shape[0]} sample cannot be batch-normalized in training mode; "
            "use batches of at least 2 (the library's loaders drop such a last batch)"
        ) from None


def _check_unwritten(model: nn.Module, fixed: dict[str, tuple[Tensor, int]]) -> None:
    """Raise if the forward wrote a buffer outside BatchNorm (``fixed``, with versions)."""
    written = [k for k, (b, version) in fixed.items() if b._version != version]
    if written:
        raise TopologyError(
            f"the forward of {type(model).__name__} writes its buffer {written[0]!r} in training "
            "mode: the masks own parameters and BatchNorm statistics only, so it would change "
            "under later tasks (the state is returned unchanged; ef.check_network finds such "
            "networks before training)"
        )


def _optimizer_step(
    optimizer: torch.optim.Optimizer,
    live: dict[str, Tensor],
    masks: StepMasks,
    *,
    zero_frozen_grads: bool,
    compiled: bool,
) -> None:
    """The optimizer's step on the model's parameters (frozen entries' gradients zeroed
    first with ``zero_frozen_grads``), every tensor it may have written counted so."""
    if zero_frozen_grads:
        for k, p in live.items():
            if p.grad is not None:
                mask_(masks.bits[k], p.grad)
    if compiled:
        _compiled_optimizer_step(optimizer)()
    else:
        optimizer.step()
    _count_as_written(optimizer)


def _count_as_written(optimizer: torch.optim.Optimizer) -> None:
    """Bump the version counter of every tensor the optimizer step may have written.

    Version counters tell :func:`project_workspace` what the step wrote, but fused kernels
    (``fused=True``) and ``.data`` writes bump none. torch's own optimizers never touch a
    tensor without a gradient (a later task's head, say), so for them only tensors with a
    gradient count; any other optimizer may write anything it holds.
    """
    grad_only = type(optimizer).__module__.startswith("torch.optim.")
    for group in optimizer.param_groups:
        for p in group["params"]:
            if not grad_only or p.grad is not None:
                increment_version(p)
