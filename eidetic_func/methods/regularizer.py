"""Methods whose loss is the task loss plus a regularizer, and the quadratic penalty they share.

A :class:`RegularizedMethod` adds ``regularizer(model, mstate, apply, params, batch,
task)`` to the cross-entropy of the current task: a differentiable scalar (or None). EWC,
online EWC, SI and MAS use :func:`quadratic_penalty`; LwF a distillation loss. Methods
that must see the task loss's gradient (SI) set ``observes = True`` and implement
``observe``: their step differentiates the task loss, records its gradient, adds the
regularizer's gradient, and reports the parameter change of the step to ``observe``.

The same three hooks drive the imperative :class:`eidetic_func.methods.Synapse`
adapter, so a method behaves identically in ``train_task`` and in a user's loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from eidetic_func.core.state import EideticState
from eidetic_func.core.types import Batch
from eidetic_func.methods.protocol import BaseMethod, StepPlan, Traits
from eidetic_func.training.step import Apply


def quadratic_penalty(
    importance: dict[str, Tensor], anchor: dict[str, Tensor], params: dict[str, Tensor]
) -> Tensor:
    """``Σ_k Σ importance_k · (params_k − anchor_k)²`` over the keys of ``importance``.

    Keys must be in ``anchor`` and ``params`` (same shapes); differentiable in ``params``.
    Returns a scalar on the parameters' device (zero for an empty ``importance``).
    """
    terms = [(imp * (params[k] - anchor[k]).square()).sum() for k, imp in importance.items()]
    if not terms:
        ref = next(iter(params.values()))
        return torch.zeros((), dtype=ref.dtype, device=ref.device)
    return torch.stack(terms).sum()


@dataclasses.dataclass(frozen=True)
class RegularizedMethod(BaseMethod):
    """Cross-entropy on the current task plus :meth:`regularizer` (see the module docstring);
    with ``observes``, the step also reports the task-loss gradient to :meth:`observe`."""

    # every update of the network is an averaged gradient: data-parallel processes agree
    traits: ClassVar[Traits] = Traits(data_parallel=True)

    observes: ClassVar[bool] = False

    def observe(
        self,
        mstate: Any,
        grads: dict[str, Tensor],
        before: dict[str, Tensor],
        after: dict[str, Tensor],
    ) -> Any:
        """The method state after a step with task-loss gradients ``grads`` moved
        ``before`` to ``after`` (only called when ``observes``)."""
        return mstate

    def plan(
        self, model: nn.Module, state: EideticState, mstate: Any, batch: Batch, *, task: int
    ) -> StepPlan:
        if not self.observes:
            return super().plan(model, state, mstate, batch, task=task)
        recorded: dict[str, Tensor] = {}

        def add_regularizer(
            grads: dict[str, Tensor], apply: Apply, params: dict[str, Tensor]
        ) -> dict[str, Tensor]:
            recorded.update(grads)  # the task loss's gradient, before the regularizer's
            extra = self.regularizer(model, mstate, apply, params, batch, task)
            return grads if extra is None else add_gradient(grads, extra, params)

        def update(before: EideticState, after: EideticState) -> Any:
            return self.observe(mstate, recorded, before.params, after.params)

        return StepPlan(grad_transform=add_regularizer, update=update)


def add_gradient(
    grads: dict[str, Tensor], loss: Tensor, params: dict[str, Tensor]
) -> dict[str, Tensor]:
    """``grads`` plus the gradient of ``loss`` with respect to ``params`` (missing = zero)."""
    names = list(params)
    extra = torch.autograd.grad(loss, [params[k] for k in names], allow_unused=True)
    out = dict(grads)
    for k, e in zip(names, extra):
        if e is not None:
            out[k] = e if k not in out else out[k] + e
    return out


def state_batches(loader: Iterable[Batch], state: EideticState) -> Iterable[Batch]:
    """``loader``'s batches on the device of the state's parameters."""
    device = next(iter(state.params.values())).device
    return ((x.to(device), y.to(device)) for x, y in loader)
