"""An epoch of training steps on the model's workspace, the state materialised once.

:func:`train_step` returns a new immutable state after every step: a copy of every
parameter the step wrote, a finiteness pass, and host reads of the loss and the targets'
range. Over an epoch none of that is needed per step: :class:`Epoch` projects the
workspace (the model's own parameters) onto the frozen entries in place after every
optimizer step — whole frozen rows and columns only, where ownership is by neuron — keeps
the steps' loss, accuracy and target range on the device, and reads them once at the end
(or every ``check_every`` steps), where it also checks the parameters are finite and
materialises the state. A step performs no host read.

The result is bit-identical to the same sequence of :func:`train_step` calls (a property
test proves it for every model family, optimizer and method plan). What differs is when a
bad step is found: a non-finite loss or parameter, or a target outside the head, raises
at the next read, naming the first bad step; the error's ``state`` is the last state read
as good (the epoch's start, or the last check), and the optimizer's statistics have seen
the steps after it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eidetic_func.core import validate
from eidetic_func.core.errors import DataError, NonFiniteError
from eidetic_func.core.state import EideticState, bn_prefixes
from eidetic_func.core.types import LossFn
from eidetic_func.ops.forward import frozen_affines, frozen_channels_set, train_mode
from eidetic_func.ops.step_masks import StepMasks, step_masks
from eidetic_func.ops.workspace import (
    Workspace,
    anchor,
    hold_workspace,
    load_workspace,
    restorer,
)
from eidetic_func.training.step import (
    GradTransform,
    Objective,
    _applier,
    _check_unwritten,
    _optimizer_step,
    backward_in_mode,
    check_batch,
    check_call,
)
from eidetic_func.training.step_checks import check_finite_step, outside_error
from eidetic_func.training.step_values import StepValues, read_steps, wide_float

# a batch's objective: batch -> objective(apply, params) -> (loss, logits)
ObjectiveFor = Callable[[tuple[Tensor, Tensor]], Objective | None]


@dataclasses.dataclass(frozen=True)
class EpochMetrics:
    """What an epoch measured: the loss summed over its samples (each step's mean loss
    times its batch size), correct predictions, samples and steps."""

    loss_sum: float
    correct: int
    count: int
    steps: int

    @property
    def loss(self) -> float:
        """The mean loss per sample."""
        return self.loss_sum / self.count

    @property
    def accuracy(self) -> float:
        return self.correct / self.count


class Epoch:
    """Training steps of one task on one model, read and materialised at checks (mutable,
    like an optimizer; use one per epoch, through :func:`train_epoch` or a loop of
    :meth:`step` and one :meth:`finish`).

    ``current`` is the state as the steps go: its parameters and buffers are the model's
    own tensors (read them during a step; they change with the next), its masks the
    start's. ``buffer_sync(buffers)`` (data-parallel runs) averages the model's floating
    buffers in place after every step.
    """

    def __init__(
        self,
        model: nn.Module,
        state: EideticState,
        *,
        optimizer: torch.optim.Optimizer,
        task: int | None = None,
        masks: StepMasks | None = None,
        workspace: Workspace | None = None,
        compiled: bool = False,
        zero_frozen_grads: bool = False,
        check_every: int | None = None,
        buffer_sync: Callable[[dict[str, Tensor]], None] | None = None,
        description: str = "epoch",
    ) -> None:
        if check_every is not None:
            validate.integer(check_every, "check_every", minimum=1)
        self.model, self.start, self.optimizer = model, state, optimizer
        self.task = state.task if task is None else task
        self.compiled, self.zero_frozen_grads = compiled, zero_frozen_grads
        self.check_every, self.buffer_sync, self.description = check_every, buffer_sync, description
        self.masks = step_masks(state) if masks is None else masks
        self.masks.check(state)
        self.workspace = Workspace() if workspace is None else workspace
        self.live, self.buffers = check_call(model, state, optimizer, self.task)
        self._load()
        self.good = state  # the last state read as good
        self.current = state.replace(
            params={k: p.detach() for k, p in self.live.items()},
            buffers={**state.buffers, **{k: b.detach() for k, b in self.buffers.items()}},
        )
        self._modules = list(model.modules())
        self._affines = frozen_affines(model, self.masks, state, self.live, self.buffers)
        self._pending: list[tuple[StepValues, int]] = []  # device values and batch size per step
        self._written: set[str] = set()  # parameters written since the epoch started
        self._unchecked: set[str] = set()  # ... since the last check
        self._steps = self._correct = self._count = 0
        self._loss_sum = 0.0

    def _load(self) -> None:
        load_workspace(self.workspace, self.live, self.start.params)
        records, masks = self.workspace.records, self.masks
        self._restorers: dict[str, tuple[int, Callable[[], object]]] = {}
        for k, p in self.live.items():
            if masks.coverage[k] is None:
                record = records[k]
                if record.bits is not masks.bits[k]:
                    record.bits = masks.bits[k]
                    record.anchor = anchor(masks, k, self.start.params[k])
                self._restorers[k] = (
                    p.data_ptr(),
                    restorer(masks, k, record.anchor, p, self.start.params[k]),
                )
        self._versions = {k: p._version for k, p in self.live.items()}
        norms = set(bn_prefixes(self.start))
        with torch.no_grad():
            for k, b in self.buffers.items():
                b.copy_(self.start.buffers[k])
        self._owned = []  # (statistic, owned channels, their values): restored after each step
        for k, owned in masks.owned.items():
            channels = owned.nonzero().squeeze(1)
            if channels.numel():
                b = self.buffers[k].detach()
                self._owned.append((b, channels, self.start.buffers[k].index_select(0, channels)))
        self._fixed = {
            k: (b, b._version) for k, b in self.buffers.items() if k.rpartition(".")[0] not in norms
        }

    @contextmanager
    def _modes(self) -> Iterator[None]:
        with (
            train_mode(self.model, True, modules=self._modules),
            frozen_channels_set(self.model, self.masks, self._affines),
        ):
            yield

    def step(
        self,
        batch: tuple[Tensor, Tensor],
        *,
        loss_fn: LossFn = F.cross_entropy,
        objective: Objective | None = None,
        grad_transform: GradTransform | None = None,
    ) -> bool:
        """One training step on ``batch`` (see :func:`train_step` for ``loss_fn``,
        ``objective`` and ``grad_transform``); no host read unless a check is due. Returns
        whether it ended with a check (the state then read as good is ``self.good``)."""
        x, y = check_batch(self.model, batch, self.start)
        self.optimizer.zero_grad(set_to_none=True)
        apply = _applier(self.model, self.start, self.live, self.compiled)
        with self._modes():
            values = backward_in_mode(
                apply,
                self.live,
                (x, y),
                task=self.task,
                loss_fn=loss_fn,
                objective=objective,
                grad_transform=grad_transform,
            )
        _check_unwritten(self.model, self._fixed)
        _optimizer_step(
            self.optimizer,
            self.live,
            self.masks,
            zero_frozen_grads=self.zero_frozen_grads,
            compiled=self.compiled,
        )
        self._project()
        self._pending.append((values, int(x.shape[0])))
        if self.check_every is not None and len(self._pending) >= self.check_every:
            self._check()
            self.good = self._materialise()
            return True
        return False

    def _project(self) -> None:
        """Restore the frozen entries of every parameter written since the last step, and
        the owned BN statistics, in place."""
        masks, start = self.masks, self.start
        whole: list[str] = []  # written tensors with every entry frozen: one multi-tensor copy
        with torch.no_grad():
            for k, p in self.live.items():
                if p._version == self._versions[k]:
                    continue
                coverage = masks.coverage[k]
                if coverage is False:
                    whole.append(k)
                elif coverage is None:
                    where, restore = self._restorers[k]
                    if where != p.data_ptr():  # the optimizer gave it new storage
                        where, restore = (
                            p.data_ptr(),
                            restorer(
                                masks, k, self.workspace.records[k].anchor, p, start.params[k]
                            ),
                        )
                        self._restorers[k] = (where, restore)
                    restore()
                self._written.add(k)
                if coverage is not False:
                    self._unchecked.add(k)
            if whole:
                torch._foreach_copy_(
                    [self.live[k] for k in whole], [start.params[k] for k in whole]
                )
            for k in self._written:
                self._versions[k] = self.live[k]._version
            self._restore_owned_statistics()
            if self.buffer_sync is not None:
                self.buffer_sync(self.buffers)
                self._restore_owned_statistics()

    def _restore_owned_statistics(self) -> None:
        for b, channels, values in self._owned:
            b.index_copy_(0, channels, values)

    def _check(self) -> None:
        """Read the pending steps' values and the parameters' finiteness (one host read);
        raise for the first bad step, with the last good state as ``error.state``."""
        pending, self._pending = self._pending, []
        changed = {k: self.live[k].detach() for k in sorted(self._unchecked)}
        self._unchecked = set()
        sums = [p.sum(dtype=wide_float(p.device)) for p in changed.values()]
        rows, total = read_steps([v for v, _ in pending], torch.stack(sums).sum() if sums else None)
        first = self._steps + 1
        for row, (values, count) in zip(rows, pending):
            loss = row.loss
            self._steps += 1
            if row.outside is not None:
                where = self._where(self._steps)
                raise self._error(outside_error(*row.outside, where, classes=values.classes))
            if not math.isfinite(loss):
                raise self._error(
                    NonFiniteError(
                        f"the loss is {loss} at {self._where(self._steps)}; the last state "
                        "read as good is kept (error.state: the epoch's start, or its last "
                        "check), but the optimizer's statistics saw the steps since: rebuild "
                        "the optimizer or reload a checkpoint, and consider a lower learning "
                        "rate or float32"
                    )
                )
            self._correct += row.correct
            self._count += count
            self._loss_sum += loss * count
        if total is not None and not math.isfinite(total):
            where = (
                f"one of steps {first}..{self._steps} of {self.description!r} (check_every=1 "
                "names which)"
                if first < self._steps
                else self._where(first)
            )
            try:
                check_finite_step(changed, self.task, where=where)
            except NonFiniteError as e:
                raise self._error(e) from None

    def _where(self, step: int) -> str:
        return f"step {step} of {self.description!r}"

    def _error(self, error: Exception) -> Exception:
        setattr(error, "state", self.good)  # noqa: B010 (library errors carry no such field)
        return error

    def _materialise(self) -> EideticState:
        """The state the workspace holds now, sharing no tensor with it; the workspace
        record then says it holds that state."""
        params = {}
        for k, p in self.live.items():
            unchanged = k not in self._written or self.masks.coverage[k] is False
            params[k] = (
                self.start.params[k]
                if unchanged
                else p.detach().clone(memory_format=torch.contiguous_format)
            )
        buffers = {
            **self.start.buffers,
            **{
                k: b.detach().clone(memory_format=torch.contiguous_format)
                for k, b in self.buffers.items()
            },
        }
        hold_workspace(self.workspace, self.live, params)
        return self.start.replace(params=params, buffers=buffers)

    def finish(self) -> tuple[EideticState, EpochMetrics]:
        """Read the remaining steps (raising for a bad one, see :meth:`_check`) and return
        ``(the state after the last step, the epoch's metrics)``. Raises
        :class:`DataError` if no step ran."""
        if self._pending:
            self._check()
            self.good = self._materialise()
        if self._steps == 0:
            raise DataError(f"no training data in {self.description!r}: the batches are empty")
        metrics = EpochMetrics(
            loss_sum=self._loss_sum,
            correct=self._correct,
            count=self._count,
            steps=self._steps,
        )
        return self.good, metrics


def train_epoch(
    model: nn.Module,
    state: EideticState,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    optimizer: torch.optim.Optimizer,
    task: int | None = None,
    loss_fn: LossFn = F.cross_entropy,
    objective: ObjectiveFor | None = None,
    grad_transform: GradTransform | None = None,
    zero_frozen_grads: bool = False,
    compiled: bool = False,
    masks: StepMasks | None = None,
    workspace: Workspace | None = None,
    check_every: int | None = None,
    description: str = "epoch",
) -> tuple[EideticState, EpochMetrics]:
    """One pass of training steps over ``batches``: ``(state, metrics)``, bit-identical to
    the same :func:`train_step` calls, with no host read inside a step (see the module
    docstring). Owned and pruned entries come back bit-identical.

    Arguments are :func:`train_step`'s, except ``objective(batch)``, which returns the
    batch's objective (or None for ``loss_fn``), and ``check_every``: read the steps'
    values and check the parameters every N steps rather than once at the end (a bad step
    then loses at most N steps; each check copies the state once). Raises
    :class:`NonFiniteError` or :class:`ShapeError` naming the first bad step, with the
    last state read as good as ``error.state``; :class:`DataError` for no batches.
    """
    run = Epoch(
        model,
        state,
        optimizer=optimizer,
        task=task,
        masks=masks,
        workspace=workspace,
        compiled=compiled,
        zero_frozen_grads=zero_frozen_grads,
        check_every=check_every,
        description=description,
    )
    for batch in batches:
        run.step(
            batch,
            loss_fn=loss_fn,
            objective=None if objective is None else objective(batch),
            grad_transform=grad_transform,
        )
    return run.finish()
