"""Rehearsal methods on a reservoir buffer (:mod:`eidetic_func.methods.reservoir`): ER, DER,
DER++ (hyperparameters named as in Synapse / Mammoth):

- :class:`ER` (experience replay): cross-entropy over the batch and a replayed sample
  together (the mean over both, as when the two are concatenated into one batch);
- :class:`DER` (Buzzega et al. 2020): cross-entropy on the batch plus ``alpha`` × the mean
  squared error between the network's logits on a replayed sample and the logits stored
  when that sample was added;
- :class:`DERPP` (DER++): plus ``beta`` × cross-entropy on a second, independent sample.

Every step adds the current batch to the buffer after the optimizer step (DER stores the
logits the network produced for it in that step, before the update, as in the paper).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from eidetic_func.core.errors import ShapeError
from eidetic_func.core.pytree import pytree_dataclass
from eidetic_func.core.state import EideticState
from eidetic_func.core.types import Batch
from eidetic_func.methods.fields import integer, number, validate_fields
from eidetic_func.methods.protocol import StepPlan, Traits, objective_plan
from eidetic_func.methods.reservoir import (
    ReservoirBuffer,
    Samples,
    buffer_sample,
    generator_from,
    grouped_by_task,
    min_group,
    reservoir_add,
    reservoir_init,
    rng_init,
)
from eidetic_func.training.step import Apply

__all__ = ["DER", "DERPP", "ER", "ReplayState", "der_loss", "er_loss"]


# --------------------------------------------------------------------------- losses


def er_loss(
    apply: Apply, x: Tensor, y: Tensor, task: int, replay: Samples, *, min_size: int = 1
) -> tuple[Tensor, Tensor]:
    """``(loss, logits of x)``: mean cross-entropy over the batch and the replayed samples.

    Replayed samples go through their own heads; an empty ``replay`` gives plain
    cross-entropy on the batch.
    """
    logits = apply(x, task)
    total = F.cross_entropy(logits, y, reduction="sum")
    count = y.shape[0]
    for t, index in grouped_by_task(replay, min_size=min_size):
        total = total + F.cross_entropy(apply(replay.x[index], t), replay.y[index], reduction="sum")
        count += index.numel()
    return total / count, logits


def der_loss(
    apply: Apply,
    x: Tensor,
    y: Tensor,
    task: int,
    replay: Samples,
    *,
    alpha: float,
    replay_ce: Samples | None = None,
    beta: float = 0.0,
    min_size: int = 1,
) -> tuple[Tensor, Tensor]:
    """``(loss, logits of x)`` of DER / DER++.

    ``CE(f(x), y) + alpha · MSE(f(replay.x), replay.logits) + beta · CE(f(replay_ce.x),
    replay_ce.y)``; the MSE averages over every logit of every replayed sample (each
    through its own head, against the first ``num_classes`` stored columns). Terms whose
    samples are empty (or ``None``) are left out.
    """
    logits = apply(x, task)
    loss = F.cross_entropy(logits, y)
    if len(replay) > 0:
        squared = logits.new_zeros(())
        count = 0
        for t, index in grouped_by_task(replay, min_size=min_size):
            out = apply(replay.x[index], t)
            target = replay.logits[index, : out.shape[1]]
            if target.shape[1] != out.shape[1]:
                raise ShapeError(
                    f"head {t} has {out.shape[1]} outputs but the buffer stores "
                    f"{replay.logits.shape[1]} logits per sample"
                )
            squared = squared + (out - target).pow(2).sum()
            count += out.numel()
        if count:
            loss = loss + alpha * squared / count
    if replay_ce is not None and len(replay_ce) > 0:
        total, seen = logits.new_zeros(()), 0
        for t, index in grouped_by_task(replay_ce, min_size=min_size):
            out = apply(replay_ce.x[index], t)
            total = total + F.cross_entropy(out, replay_ce.y[index], reduction="sum")
            seen += index.numel()
        if seen:
            loss = loss + beta * total / seen
    return loss, logits


# --------------------------------------------------------------------------- methods


@pytree_dataclass
class ReplayState:
    """ER / DER state: the reservoir buffer and the generator state of the next step."""

    buffer: ReservoirBuffer
    rng: Tensor


@dataclasses.dataclass(frozen=True)
class ER:
    """Experience replay with a reservoir buffer (Chaudhry et al. 2019, "tiny episodic memories").

    ``buffer_size``: examples kept (all tasks together); ``buffer_sample_size``: examples
    replayed per step; ``seed``: the buffer's sampling and reservoir draws.
    """

    # every update of the network is an averaged gradient: data-parallel processes agree
    traits: ClassVar[Traits] = Traits(data_parallel=True)

    buffer_size: int = integer(1024, minimum=1)
    buffer_sample_size: int = integer(32, minimum=1)
    seed: int = 0
    name: str = "er"

    def __post_init__(self) -> None:
        validate_fields(self)

    def init(self, model: nn.Module, state: EideticState) -> ReplayState:
        return ReplayState(buffer=reservoir_init(self.buffer_size), rng=rng_init(self.seed))

    def plan(
        self, model: nn.Module, state: EideticState, mstate: ReplayState, batch: Batch, *, task: int
    ) -> StepPlan:
        x, y = batch
        generator = generator_from(mstate.rng)
        replay = buffer_sample(mstate.buffer, self.buffer_sample_size, generator=generator)

        def objective(apply: Apply, params: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
            return er_loss(apply, x, y, task, replay, min_size=min_group(model))

        def update() -> ReplayState:
            buffer = reservoir_add(mstate.buffer, x, y, task, generator=generator)
            return ReplayState(buffer=buffer, rng=generator.get_state())

        return objective_plan(objective, update)


def der_init(model: nn.Module, buffer_size: int, seed: int) -> ReplayState:
    """An empty buffer storing logits as wide as the widest head of ``model.num_classes``."""
    classes: Any = getattr(model, "num_classes", None)
    width = max(classes) if isinstance(classes, list | tuple) and classes else 0
    buffer = reservoir_init(buffer_size, logits_width=int(width))
    return ReplayState(buffer=buffer, rng=rng_init(seed))


def der_plan(
    model: nn.Module,
    mstate: ReplayState,
    batch: Batch,
    task: int,
    *,
    sample_size: int,
    alpha: float,
    beta: float,
) -> StepPlan:
    """DER's step (DER++'s with ``beta > 0``): :func:`der_loss` on replayed samples, then
    the batch and its logits of this step (before the update) join the buffer."""
    x, y = batch
    generator = generator_from(mstate.rng)
    replay = buffer_sample(mstate.buffer, sample_size, generator=generator)
    replay_ce = buffer_sample(mstate.buffer, sample_size, generator=generator) if beta > 0 else None
    seen: list[Tensor] = []  # the batch's logits in this step: only the objective sees them

    def objective(apply: Apply, params: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        loss, logits = der_loss(
            apply,
            x,
            y,
            task,
            replay,
            alpha=alpha,
            replay_ce=replay_ce,
            beta=beta,
            min_size=min_group(model),
        )
        seen.append(logits.detach())
        return loss, logits

    def update() -> ReplayState:
        buffer = reservoir_add(mstate.buffer, x, y, task, seen[0], generator=generator)
        return ReplayState(buffer=buffer, rng=generator.get_state())

    return objective_plan(objective, update)


@dataclasses.dataclass(frozen=True)
class DER:
    """Dark experience replay (Buzzega et al. 2020): match stored logits, weight ``alpha``.

    The buffer stores each example's logits from the step it was seen in (zero-padded to
    the widest head of ``model.num_classes``).
    """

    # every update of the network is an averaged gradient: data-parallel processes agree
    traits: ClassVar[Traits] = Traits(data_parallel=True)

    buffer_size: int = integer(1024, minimum=1)
    buffer_sample_size: int = integer(32, minimum=1)
    alpha: float = number(1.0, low=0.0)
    seed: int = 0
    name: str = "der"

    def __post_init__(self) -> None:
        validate_fields(self)

    def init(self, model: nn.Module, state: EideticState) -> ReplayState:
        return der_init(model, self.buffer_size, self.seed)

    def plan(
        self, model: nn.Module, state: EideticState, mstate: ReplayState, batch: Batch, *, task: int
    ) -> StepPlan:
        size = self.buffer_sample_size
        return der_plan(model, mstate, batch, task, sample_size=size, alpha=self.alpha, beta=0.0)


@dataclasses.dataclass(frozen=True)
class DERPP:
    """DER++: DER plus ``beta`` × cross-entropy on a second, independent replayed sample."""

    # every update of the network is an averaged gradient: data-parallel processes agree
    traits: ClassVar[Traits] = Traits(data_parallel=True)

    buffer_size: int = integer(1024, minimum=1)
    buffer_sample_size: int = integer(32, minimum=1)
    alpha: float = number(1.0, low=0.0)
    seed: int = 0
    beta: float = number(1.0, low=0.0)
    name: str = "der++"

    def __post_init__(self) -> None:
        validate_fields(self)

    def init(self, model: nn.Module, state: EideticState) -> ReplayState:
        return der_init(model, self.buffer_size, self.seed)

    def plan(
        self, model: nn.Module, state: EideticState, mstate: ReplayState, batch: Batch, *, task: int
    ) -> StepPlan:
        size, alpha = self.buffer_sample_size, self.alpha
        return der_plan(model, mstate, batch, task, sample_size=size, alpha=alpha, beta=self.beta)
