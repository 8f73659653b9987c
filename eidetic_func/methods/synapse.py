"""A one-line change to an existing PyTorch loop: the regularization methods, imperatively.

The Synapse seed's convenience: keep your model, optimizer and loop, and replace
``loss.backward()`` with ``cl.backward(loss, inputs=x, targets=y, task=t)``; call
``cl.end_task(loader, task=t)`` after each task. :class:`Synapse` is the imperative shell
around a method's pure state (``cl.mstate``): ``backward`` back-propagates your loss and
then the method's regularizer into the parameters' ``.grad`` (for SI it also records the
task loss's gradient and, at the next call, the step your optimizer took). Your own
``optimizer.step()`` does the rest. Runnable example (Split-MNIST as two 5-class tasks)::

    import torch
    import torch.nn.functional as F
    from eidetic_func.methods import EWC, Synapse
    from eidetic_func.data import load_sequence, loaders
    from eidetic_func.models import MLP

    torch.manual_seed(0)
    sequence = load_sequence("embedded", num_tasks=2)
    model = MLP(784, sequence.num_classes, num_layers=2, width=100)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    cl = Synapse(model, EWC(lambda_ewc=100.0))
    for t, task in enumerate(sequence):
        train = loaders(task, 64, seed=t).train
        model.train()
        for x, y in train:
            loss = F.cross_entropy(model(x, task=t), y)
            optimizer.zero_grad()
            cl.backward(loss, inputs=x, targets=y, task=t)  # instead of loss.backward()
            optimizer.step()
        cl.end_task(train, task=t)

Models whose ``forward`` takes a ``task`` argument are called as ``model(x, task=h)``
(multi-head; LwF needs this); others as ``model(x)``. Any ``nn.Module`` works, plain
BatchNorm included (the adapter never freezes anything). Joint training is offline and
has no place in a ``backward``: use :func:`eidetic_func.train_task`.
With the same data order, optimizer and generator, a loop with ``cl.backward`` reaches
the same parameters as ``train_method_task`` (a test checks this bit for bit).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from eidetic_func.core.errors import ConfigError
from eidetic_func.core.state import EideticState
from eidetic_func.core.types import Batch
from eidetic_func.importance.per_sample import takes_task
from eidetic_func.methods.decisions import Done
from eidetic_func.methods.joint import Joint
from eidetic_func.methods.protocol import (
    Method,
    Observe,
    StepPlan,
    TaskContext,
    end_task,
    init_state,
    plan_step,
)


class Synapse:
    """Drive ``method`` (a regularization method) from an imperative training loop.

    Each ``backward`` asks the method for its step's plan (:func:`plan_step`): a penalty,
    and optionally an ``observe`` of the task loss's gradient; methods whose step needs
    more (a loss of their own, a gradient transform) are refused there.
    ``generator`` seeds what the method draws at task ends (e.g. EWC's Fisher labels);
    default ``torch.Generator().manual_seed(0)``. ``mstate`` is the method's current
    (immutable) state; it is replaced, never modified.
    """

    def __init__(
        self, model: nn.Module, method: Method, *, generator: torch.Generator | None = None
    ) -> None:
        if isinstance(method, Joint):
            raise ConfigError(
                "joint training is offline (it keeps every task's data); train it with "
                "eidetic_func.train_task, not in a backward()"
            )
        self.model = model
        self.method = method
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.mstate: Any = init_state(method, model, self.snapshot())
        self._pending: tuple[Observe, dict[str, Tensor], dict[str, Tensor]] | None = None

    def snapshot(self, task: int = 0) -> EideticState:
        """The model's parameters and buffers now, copied into a state (nothing owned)."""
        params = {k: p.detach().clone() for k, p in self.model.named_parameters()}
        buffers = {
            k: b.detach().clone()
            for k, b in self.model.named_buffers()
            if not k.endswith("frozen_channels")
        }
        return EideticState(params=params, buffers=buffers, owner={}, keep={}, task=task)

    def backward(self, loss: Tensor, *, inputs: Tensor, targets: Tensor, task: int = 0) -> Tensor:
        """``loss.backward()`` plus the method's penalty; returns the penalty's value.

        ``inputs``/``targets`` are the batch ``loss`` was computed on (LwF distils on the
        inputs). Gradients accumulate into ``.grad`` as ``loss.backward()`` would.
        """
        self._settle()
        loss.backward()
        params = dict(self.model.named_parameters())
        plan = self._plan(params, (inputs, targets), task)
        if plan.observe is not None:
            grads = {k: p.grad.detach().clone() for k, p in params.items() if p.grad is not None}
            before = {k: p.detach().clone() for k, p in params.items()}
            self._pending = (plan.observe, grads, before)
        extra = None if plan.penalty is None else plan.penalty(self._apply, params)  # type: ignore[arg-type]
        if extra is None:
            return torch.zeros((), device=loss.device, dtype=loss.dtype)
        extra.backward()
        return extra.detach()

    def end_task(self, loader: Any, *, task: int) -> None:
        """Close task ``task``: importance, anchors or old outputs from ``loader``'s batches."""
        self._settle()
        ctx = TaskContext(loader=loader, task=task, generator=self.generator)
        _, self.mstate, decision = end_task(
            self.method, self.model, self.snapshot(task), self.mstate, ctx
        )
        if not isinstance(decision, Done):
            raise ConfigError(f"{self.method.name} ends a task by training more: use train_task")

    def _apply(self, x: Tensor, head: int) -> Tensor:
        return self.model(x, task=head) if takes_task(self.model) else self.model(x)

    def _plan(self, params: dict[str, nn.Parameter], batch: Batch, task: int) -> StepPlan:
        """The method's plan for this step (the state: the live parameters, not copied)."""
        live = {k: p.detach() for k, p in params.items()}
        state = EideticState(params=live, buffers={}, owner={}, keep={}, task=task)
        plan = plan_step(self.method, self.model, state, self.mstate, batch, task=task)
        if plan.objective is not None or plan.grad_transform is not None or plan.update is not None:
            raise ConfigError(
                f"{self.method.name}'s step is more than the task loss plus a penalty; "
                "Synapse drives regularization methods (EWC, OnlineEWC, SI, MAS, LwF, "
                "FineTune): train it with eidetic_func.train_task"
            )
        return plan

    def _settle(self) -> None:
        """Report the step taken since the last ``backward`` to the method (SI's Δθ)."""
        if self._pending is None:
            return
        observe, grads, before = self._pending
        after = {k: p.detach() for k, p in self.model.named_parameters()}
        self.mstate = observe(grads, before, after)
        self._pending = None
