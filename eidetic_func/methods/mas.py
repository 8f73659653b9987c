"""Memory aware synapses (Aljundi et al., 2018): importance from the output's sensitivity.

After task ``t``, the importance of each parameter entry is the mean over the task's
samples of the magnitude of the **per-sample** gradient of the squared L2 norm of the
network's output (the logits of head ``t``),

    Ω_t = 1/N Σ_i | ∂ ‖f(x_i; θ)‖²₂ / ∂θ |,

computed in inference mode; no labels are needed. Importances are **summed** over tasks
(``Ω ← Ω + Ω_t``, as the MAS seed's ``consolidate_reg_params`` and the authors' code do),
the anchor is the last task's parameters, and later tasks minimise
``L(θ) + reg_lambda · Σ Ω (θ − θ*)²`` (the seed's penalty gradient is
``2 · reg_lambda · Ω · (θ − θ*)``). Every parameter is regularized, heads included.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from functools import partial
from typing import ClassVar

import torch
from torch import Tensor, nn

from eidetic_func.core.pytree import pytree_dataclass, static_field
from eidetic_func.core.state import EideticState
from eidetic_func.core.types import Batch
from eidetic_func.importance.gradient_stats import per_sample_sums
from eidetic_func.importance.per_sample import (
    IMPLEMENTATIONS,
    Implementation,
    add_into,
    check_finite,
    squared_norm_loss,
    take_samples,
)
from eidetic_func.methods.decisions import DONE, Decision
from eidetic_func.methods.fields import choice, integer, number, validate_fields
from eidetic_func.methods.protocol import StepPlan, TaskContext, Traits, penalty_plan
from eidetic_func.methods.regularizer import quadratic_penalty, state_batches


def mas_importance(
    model: nn.Module,
    params: dict[str, Tensor],
    buffers: dict[str, Tensor],
    batches: Iterable[Batch],
    *,
    task: int,
    max_samples: int | None = None,
    implementation: Implementation = "fast",
    chunk_size: int | None = None,
) -> dict[str, Tensor]:
    """``{name: 1/N Σ_i |∂‖f(x_i)‖²/∂θ|}`` for head ``task`` over the first ``max_samples``
    samples of ``batches`` (all if None); shaped like ``params``. Labels are ignored."""
    totals: dict[str, Tensor] = {}
    count = 0
    for x, y in take_samples(batches, max_samples):
        sums = per_sample_sums(
            model,
            params,
            buffers,
            x,
            y,
            task=task,
            loss=squared_norm_loss,
            reduction="abs",
            implementation=implementation,
            chunk_size=chunk_size,
        )
        totals = add_into(totals, sums)
        count += x.shape[0]
    out = {k: totals[k] / count for k in params}
    check_finite(out, "the MAS importance")
    return out


@pytree_dataclass
class MASState:
    """Accumulated importance ``Ω``, the anchor ``θ*`` (last task's parameters), tasks seen."""

    importance: dict[str, Tensor]
    anchor: dict[str, Tensor]
    tasks: int = static_field(default=0)


def mas_update(
    mstate: MASState, importance: dict[str, Tensor], params: dict[str, Tensor]
) -> MASState:
    """``Ω ← Ω + Ω_t``, ``θ* ← params``."""
    total = {k: mstate.importance[k] + v for k, v in importance.items()}
    return MASState(importance=total, anchor=dict(params), tasks=mstate.tasks + 1)


def mas_penalty(reg_lambda: float, mstate: MASState, params: dict[str, Tensor]) -> Tensor | None:
    """``reg_lambda · Σ Ω (θ − θ*)²`` (None before the first task ends)."""
    if mstate.tasks == 0:
        return None
    return reg_lambda * quadratic_penalty(mstate.importance, mstate.anchor, params)


@dataclasses.dataclass(frozen=True)
class MAS:
    """MAS: ``reg_lambda · Σ Ω (θ − θ*)²`` with per-sample importance summed over tasks.

    - ``reg_lambda``: default 0.01, the MAS seed's (tuned there for AlexNet on
      Tiny-ImageNet). On Split-MNIST (MLP 2×100) it helps little; 1.0 is clearly better
      (and 10 makes SGD at learning rate 0.1 diverge);
    - ``samples``: training samples of the task to estimate Ω with (None: all);
    - ``implementation`` / ``chunk_size``: as in :class:`eidetic_func.methods.EWC`.
    """

    # every update of the network is an averaged gradient: data-parallel processes agree
    traits: ClassVar[Traits] = Traits(data_parallel=True)

    reg_lambda: float = number(0.01, low=0.0)
    samples: int | None = integer(None, minimum=1)
    implementation: Implementation = choice("fast", IMPLEMENTATIONS)
    chunk_size: int | None = integer(None, minimum=1)
    name: str = "mas"

    def __post_init__(self) -> None:
        validate_fields(self)

    def init(self, model: nn.Module, state: EideticState) -> MASState:
        zeros = {k: torch.zeros_like(v) for k, v in state.params.items()}
        return MASState(importance=zeros, anchor=dict(state.params))

    def plan(
        self, model: nn.Module, state: EideticState, mstate: MASState, batch: Batch, *, task: int
    ) -> StepPlan:
        return penalty_plan(partial(mas_penalty, self.reg_lambda, mstate))

    def end_task(
        self, model: nn.Module, state: EideticState, mstate: MASState, ctx: TaskContext
    ) -> tuple[EideticState, MASState, Decision]:
        importance = mas_importance(
            model,
            state.params,
            state.buffers,
            state_batches(ctx.loader, state),
            task=ctx.task,
            max_samples=self.samples,
            implementation=self.implementation,
            chunk_size=self.chunk_size,
        )
        return state, mas_update(mstate, importance, state.params), DONE
