"""Online meta-learning, as the seed tutorial's ``OnlineMetaLearning`` (MAML-style).

Every step adapts a copy of the parameters to the current batch with ``inner_steps`` plain
gradient steps of size ``inner_lr`` (the inner loop), then takes one optimizer step (the
outer loop) on the current batch's loss at the adapted parameters plus the loss on a
batch drawn from an episodic memory (a reservoir of ``buffer_size`` examples) at the
parameters themselves:

    θ'  = θ − α ∇L_batch(θ)            (repeated ``inner_steps`` times)
    L   = L_batch(θ') + L_memory(θ)

The outer gradient of ``L_batch(θ')`` is taken first-order (``∇_θ' L``, as first-order
MAML): the tutorial's code adapts a deep copy and so drops that term altogether, which
leaves the outer step with the memory loss only. Memory samples run through their own
task's head (task-incremental). The tutorial's values: ``inner_lr`` 0.01, 5 inner steps,
a memory of 1000; the outer learning rate is the run's optimizer's (0.001 with Adam).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eidetic_func.core.pytree import pytree_dataclass
from eidetic_func.core.state import EideticState
from eidetic_func.core.types import Batch
from eidetic_func.importance.per_sample import call_logits
from eidetic_func.methods.fields import integer, number, validate_fields
from eidetic_func.methods.protocol import StepPlan, Traits, objective_plan
from eidetic_func.methods.reservoir import (
    ReservoirBuffer,
    buffer_sample,
    generator_from,
    grouped_by_task,
    min_group,
    reservoir_add,
    reservoir_init,
    rng_init,
)
from eidetic_func.ops.forward import train_mode
from eidetic_func.training.step import Apply


@pytree_dataclass
class OMLState:
    """The episodic memory and the generator state of the next step."""

    buffer: ReservoirBuffer
    rng: Tensor


def adapt(
    model: nn.Module,
    params: dict[str, Tensor],
    buffers: dict[str, Tensor],
    batch: Batch,
    *,
    task: int,
    lr: float,
    steps: int,
) -> dict[str, Tensor]:
    """``params`` after ``steps`` gradient steps of size ``lr`` on ``batch`` (detached; the
    BatchNorm statistics in ``buffers`` are left as they are)."""
    x, y = batch
    adapted = {k: v.detach() for k, v in params.items()}
    for _ in range(steps):
        leaves = {k: v.requires_grad_(True) for k, v in adapted.items()}
        with train_mode(model, True):
            logits = call_logits(model, leaves, {k: b.clone() for k, b in buffers.items()}, x, task)
        grads = torch.autograd.grad(
            F.cross_entropy(logits, y), list(leaves.values()), allow_unused=True
        )  # other tasks' heads take no part
        adapted = {
            k: (p if g is None else p - lr * g).detach() for (k, p), g in zip(leaves.items(), grads)
        }
    return adapted


@dataclasses.dataclass(frozen=True)
class OML:
    """Online meta-learning with the tutorial's ``inner_lr``, ``inner_steps`` and memory.

    The inner loop (:func:`adapt`) is part of one step's loss, not a training loop: its
    adapted copy is discarded, and the network changes only by the loop's optimizer step.
    Nothing happens at a task's end (no ``end_task``)."""

    # every update of the network is an averaged gradient: data-parallel processes agree
    traits: ClassVar[Traits] = Traits(data_parallel=True)

    inner_lr: float = number(0.01, low=0.0, low_open=True)
    inner_steps: int = integer(5, minimum=0)
    buffer_size: int = integer(1000, minimum=1)
    seed: int = integer(0, minimum=0)
    name: str = "oml"

    def __post_init__(self) -> None:
        validate_fields(self)

    def init(self, model: nn.Module, state: EideticState) -> OMLState:
        return OMLState(buffer=reservoir_init(self.buffer_size), rng=rng_init(self.seed))

    def plan(
        self, model: nn.Module, state: EideticState, mstate: OMLState, batch: Batch, *, task: int
    ) -> StepPlan:
        x, y = batch
        g = generator_from(mstate.rng)
        memory = buffer_sample(mstate.buffer, x.shape[0], generator=g)
        adapted = adapt(
            model,
            state.params,
            state.buffers,
            batch,
            task=task,
            lr=self.inner_lr,
            steps=self.inner_steps,
        )

        def objective(apply: Apply, params: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
            # first-order: the value at θ', the gradient ∇_θ' L passed straight to θ
            shifted = {k: p + (adapted[k] - p).detach() for k, p in params.items()}
            with train_mode(model, True):
                buffers = {k: b.clone() for k, b in state.buffers.items()}
                logits = call_logits(model, shifted, buffers, x, task)
            loss = F.cross_entropy(logits, y)
            for t, index in grouped_by_task(memory, min_size=min_group(model)):
                loss = loss + F.cross_entropy(apply(memory.x[index], t), memory.y[index])
            return loss, logits

        def update() -> OMLState:
            buffer = reservoir_add(mstate.buffer, x, y, task, generator=g)
            return OMLState(buffer=buffer, rng=g.get_state())

        return objective_plan(objective, update)
