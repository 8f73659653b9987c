"""Joint training: every task trained on the union of all tasks' data so far (an upper bound).

**Offline**: it keeps the complete training data of every finished task, which continual
learning forbids; it bounds what any method can reach with the same model and budget.

At the end of each task the method stores the task's training tensors (from its loader,
on the parameters' device) in its state. Each step of a later task then adds, for every
stored task, a batch of the same size as the current one, drawn uniformly with
replacement by a generator seeded with ``(seed, step)`` (reproducible). Each sample goes
through its own task's head (multi-head); the loss is the mean cross-entropy over all
samples of the step, so every task seen so far weighs equally (the union, for tasks of
equal size). Each head's batch is a separate forward pass (BatchNorm statistics are
those of each task's batch).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eidetic_func.core.errors import DataError
from eidetic_func.core.pytree import pytree_dataclass, static_field
from eidetic_func.core.state import EideticState
from eidetic_func.core.types import Batch
from eidetic_func.methods.decisions import DONE, Decision
from eidetic_func.methods.fields import integer, validate_fields
from eidetic_func.methods.protocol import StepPlan, TaskContext, Traits, objective_plan
from eidetic_func.methods.regularizer import state_batches
from eidetic_func.training.step import Apply


@pytree_dataclass
class JointState:
    """Training data of the finished tasks (``inputs[i]``, ``targets[i]`` of ``tasks[i]``)
    and the number of steps taken (which seeds the next draw)."""

    inputs: tuple[Tensor, ...] = ()
    targets: tuple[Tensor, ...] = ()
    tasks: tuple[int, ...] = static_field(default=())
    steps: int = static_field(default=0)


def replay_batches(mstate: JointState, size: int, seed: int) -> list[tuple[int, Tensor, Tensor]]:
    """``[(task, x, y)]``: ``size`` samples of every stored task, drawn for this step."""
    generator = torch.Generator().manual_seed((seed * 1_000_003 + mstate.steps) % (1 << 63))
    out = []
    for t, x, y in zip(mstate.tasks, mstate.inputs, mstate.targets):
        idx = torch.randint(x.shape[0], (size,), generator=generator).to(x.device)
        out.append((t, x[idx], y[idx]))
    return out


@dataclasses.dataclass(frozen=True)
class Joint:
    """Joint training (offline upper bound); ``seed`` drives the draws from stored tasks,
    ``max_samples_per_task`` caps what is stored per task (None: everything)."""

    # every update of the network is an averaged gradient: data-parallel processes agree
    traits: ClassVar[Traits] = Traits(data_parallel=True)

    seed: int = integer(0, minimum=0)
    max_samples_per_task: int | None = integer(None, minimum=1)
    name: str = "joint"

    def __post_init__(self) -> None:
        validate_fields(self)

    def init(self, model: nn.Module, state: EideticState) -> JointState:
        return JointState()

    def plan(
        self, model: nn.Module, state: EideticState, mstate: Any, batch: Batch, *, task: int
    ) -> StepPlan:
        x, y = batch
        replay = [r for r in replay_batches(mstate, x.shape[0], self.seed) if r[0] != task]

        def objective(apply: Apply, params: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
            logits = apply(x, task)
            total = F.cross_entropy(logits, y, reduction="sum")
            for t, xt, yt in replay:
                total = total + F.cross_entropy(apply(xt, t), yt, reduction="sum")
            return total / (x.shape[0] * (1 + len(replay))), logits

        def update() -> JointState:
            return dataclasses.replace(mstate, steps=mstate.steps + 1)

        return objective_plan(objective, update)

    def end_task(
        self, model: nn.Module, state: EideticState, mstate: Any, ctx: TaskContext
    ) -> tuple[EideticState, JointState, Decision]:
        loader, task = ctx.loader, ctx.task
        xs, ys, seen = [], [], 0
        for x, y in state_batches(loader, state):
            xs.append(x)
            ys.append(y)
            seen += x.shape[0]
            if self.max_samples_per_task is not None and seen >= self.max_samples_per_task:
                break
        if not xs:
            raise DataError(f"task {task}'s loader is empty: nothing to keep for joint training")
        limit = self.max_samples_per_task
        inputs, targets = torch.cat(xs)[:limit], torch.cat(ys)[:limit]
        keep = [i for i, t in enumerate(mstate.tasks) if t != task]  # a revisit replaces
        return (
            state,
            JointState(
                inputs=(*(mstate.inputs[i] for i in keep), inputs),
                targets=(*(mstate.targets[i] for i in keep), targets),
                tasks=(*(mstate.tasks[i] for i in keep), task),
                steps=mstate.steps,
            ),
            DONE,
        )
