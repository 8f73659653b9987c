"""One training step with any ``torch.optim`` optimizer, frozen entries restored after it.

The optimizer is built over ``model.parameters()`` as usual (one optimizer may serve a
whole task sequence). The model's parameters and buffers are the step's workspace: the
state is copied in (parameters only when they do not already hold it: the previous step
left them equal to the state it returned), the model runs on them directly, the optimizer
updates them in place, and the result is projected back onto the state's frozen and pruned
entries (:func:`eidetic_func.ops.freeze`), in the workspace too. The returned state never
aliases the workspace, so states stay immutable; the model's own tensors are scratch.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.graph import increment_version
from torch.func import functional_call

from eidetic_func.core.compiling import (
    compile_kwargs,
    device_of,
    optimizer_compile_kwargs,
    optimizer_device,
)
from eidetic_func.core.errors import (
    ConfigError,
    NonFiniteError,
    ShapeError,
    TaskError,
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
from eidetic_func.ops.freeze import _mask, _trainable_bits, freeze_buffers
from eidetic_func.ops.mask import needs_task_mask, task_entries
from eidetic_func.ops.workspace import load_workspace, project_workspace

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

    The model's parameters are the step's workspace: the state is copied into them unless
    they still hold the last step's result, unwritten since (by version counter). Any
    optimizer works, fused ones included. Write them between steps under
    ``torch.no_grad()``, not through ``.data`` (which no version counter sees), or better,
    change the state.

    ``compiled`` runs the model's forward and backward and the optimizer's step under
    ``torch.compile`` (built on the first call for each model and optimizer, kept for
    later ones; a new task's frozen BN channels or learning rate may recompile once).
    Freezing is unchanged: the projection runs after the compiled optimizer step.
    """
    task = state.task if task is None else task
    check_trainable(state, task)
    check_task(model, task)
    if not isinstance(batch, tuple | list) or len(batch) != 2:
        raise ShapeError("batch must be an (inputs, targets) pair of tensors")
    x, y = batch
    workspace: dict[str, Tensor] = dict(model.named_parameters())
    own_buffers = {k: b for k, b in model.named_buffers() if not k.endswith("frozen_channels")}
    _check_same(workspace, state.params, "params")
    _check_same(own_buffers, state.buffers, "buffers")
    check_input(model, x, next(iter(state.params.values())).dtype if state.params else None)
    x = standard_layout(x)
    if not isinstance(y, Tensor) or y.shape[:1] != x.shape[:1]:
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ShapeError(f"targets must be a tensor with batch size {x.shape[0]}, got {shape}")
    _check_optimizer(optimizer, workspace)

    load_workspace(model, workspace, state.params)
    with torch.no_grad():
        for k, b in own_buffers.items():
            b.copy_(state.buffers[k])
    # buffers outside BatchNorm are no state of any task: the step may not write them
    norms = set(bn_prefixes(state))
    fixed = {
        k: (b, b._version) for k, b in own_buffers.items() if k.rpartition(".")[0] not in norms
    }
    optimizer.zero_grad(set_to_none=True)
    masked: dict[int, dict[str, Tensor]] = {}

    def apply(inputs: Tensor, head: int) -> Tensor:
        if not needs_task_mask(state, head):
            return (_compiled_model(model) if compiled else model)(inputs, head)
        # a finished head or a revisit: entries of later tasks read as zero
        if head not in masked:
            used = task_entries(state, head)
            masked[head] = {k: torch.where(used[k], p, 0.0) for k, p in workspace.items()}
        return functional_call(model, masked[head], (inputs,), {"task": head}, strict=False)

    # forward, backward and any gradient transform (which may run the network again, e.g.
    # on a replay memory) all see training mode and the state's frozen BN channels
    with train_mode(model, True), frozen_channels_set(model, state):
        try:
            if objective is None:
                logits = apply(x, task)
                y = _check_labels(logits, y, loss_fn)
                loss = loss_fn(logits, y)
            else:
                loss, logits = objective(apply, workspace)
        except ValueError as e:
            if "more than 1 value per channel" not in str(e):
                raise
            raise ShapeError(
                f"a batch of {x.shape[0]} sample cannot be batch-normalized in training mode; "
                "use batches of at least 2 (the library's loaders drop such a last batch)"
            ) from None
        if loss.dim() != 0:
            raise ShapeError(f"the loss must be a scalar, got shape {tuple(loss.shape)}")
        if logits.dim() == 2 and not y.is_floating_point() and logits.shape[0] == y.shape[0]:
            correct = (logits.detach().argmax(1) == y).sum()
        else:
            correct = torch.zeros((), device=loss.device)
        loss_value, correct_value = torch.stack([loss.detach().float(), correct.float()]).tolist()
        if not math.isfinite(loss_value):
            raise NonFiniteError(
                f"loss is {loss_value} at task {task}; the state is returned unchanged (lower the "
                "learning rate or check the data)"
            )
        loss.backward()
        if grad_transform is not None:
            grads = {k: p.grad for k, p in workspace.items() if p.grad is not None}
            for k, g in grad_transform(grads, apply, workspace).items():
                workspace[k].grad = g
    written = [k for k, (b, version) in fixed.items() if b._version != version]
    if written:
        raise TopologyError(
            f"the forward of {type(model).__name__} writes its buffer {written[0]!r} in training "
            "mode: the masks own parameters and BatchNorm statistics only, so it would change "
            "under later tasks (the state is returned unchanged; ef.check_network finds such "
            "networks before training)"
        )
    if zero_frozen_grads:
        bits = _trainable_bits(state)
        for k, p in workspace.items():
            if p.grad is not None:
                _mask(bits[k], p.grad)
    if compiled:
        _compiled_optimizer_step(optimizer)()
    else:
        optimizer.step()
    _count_as_written(optimizer)
    params = project_workspace(model, workspace, state)
    _check_finite_step({k: p for k, p in params.items() if p is not state.params[k]}, task)
    buffers = freeze_buffers(own_buffers, state, copy=True)
    new = state.replace(params=params, buffers=buffers)
    return new, StepMetrics(loss=loss_value, correct=int(correct_value), count=int(x.shape[0]))


# Compiled callables per model and optimizer. torch.compile keeps a strong reference to
# what it compiles, so a weak cache could never drop them: keep the few most recent.
_COMPILED: collections.OrderedDict[tuple[str, int], tuple[object, Callable[..., Any]]] = (
    collections.OrderedDict()
)
_COMPILED_KEEP = 8


def _cached(
    kind: str, owner: object, build: Callable[[], Callable[..., Any]]
) -> Callable[..., Any]:
    key = (kind, id(owner))
    entry = _COMPILED.get(key)
    if entry is None or entry[0] is not owner:
        entry = (owner, build())
        _COMPILED[key] = entry
        while len(_COMPILED) > _COMPILED_KEEP:
            _COMPILED.popitem(last=False)
    _COMPILED.move_to_end(key)
    return entry[1]


# torch.compile's options for compiled steps (tests swap in a quicker backend).
COMPILE_OPTIONS: dict[str, Any] = {}


def _compiled_model(model: nn.Module) -> Callable[..., Tensor]:
    def build() -> Callable[..., Tensor]:
        return torch.compile(model, **compile_kwargs(device_of(model), COMPILE_OPTIONS))

    return _cached("model", model, build)


def _compiled_optimizer_step(optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    def build() -> Callable[[], None]:
        options = optimizer_compile_kwargs(optimizer_device(optimizer), COMPILE_OPTIONS)

        @torch.compile(fullgraph=False, **options)
        def step() -> None:
            optimizer.step()

        return step

    return _cached("optimizer", optimizer, build)


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


def _check_finite_step(changed: dict[str, Tensor], task: int) -> None:
    """Raise if the step's new parameters hold a non-finite value.

    One pass and one host sync per step: a sum is finite unless some entry is not (or
    the sum overflows, which the exact count then rules out). Only values entering the
    state count (frozen entries were restored), so a NaN is never frozen into a task.
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
        raise NonFiniteError(
            f"the optimizer step of task {task} produced {sum(bad.values())} non-finite "
            f"parameters: {shown}{' ...' if len(bad) > 3 else ''}. The state you passed is "
            "unchanged; the optimizer's statistics were updated by this step (rebuild the "
            "optimizer or reload a checkpoint), and consider a lower learning rate or float32"
        )


def _check_labels(logits: Tensor, y: Tensor, loss_fn: LossFn) -> Tensor:
    """Targets for the loss: class indices within the head (int64), checked here rather
    than failing as a raw torch error or a CUDA device assert.

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
    low, high = (int(v) for v in torch.aminmax(y))
    if low < 0 or high >= logits.shape[1]:
        raise ShapeError(
            f"targets must be class indices in 0..{logits.shape[1] - 1} for this head, got "
            f"{low}..{high} (are labels remapped per task?)"
        )
    return y.long() if default_loss else y


def _check_optimizer(optimizer: torch.optim.Optimizer, workspace: dict[str, Tensor]) -> None:
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
