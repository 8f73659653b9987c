"""Synaptic intelligence (Zenke, Poole & Ganguli, 2017): importance from the training path.

While task ``t`` trains, every step adds ``−g · Δθ`` to a running ``ω`` (per entry), with
``g`` the gradient of the **task loss** (not of the penalty) and ``Δθ`` the parameter
change the optimizer made in that step: a path integral of each entry's contribution to
lowering the loss. At the end of the task

    Ω ← Ω + ω / (Δθ_task² + ξ),   ω ← 0,   θ* ← θ

with ``Δθ_task`` the change over the whole task, and later tasks minimise
``L(θ) + c · Σ Ω (θ − θ*)²``. ``Δθ`` is measured from the states before and after each
step, so the path integral is exact for any optimizer (Synapse's ``model_lr · g²`` is its
plain-SGD special case).
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import ClassVar

import torch
from torch import Tensor, nn

from eidetic_func.core.pytree import pytree_dataclass, static_field
from eidetic_func.core.state import EideticState
from eidetic_func.core.types import Batch
from eidetic_func.methods.decisions import DONE, Decision
from eidetic_func.methods.fields import number, validate_fields
from eidetic_func.methods.protocol import StepPlan, TaskContext, Traits, penalty_plan
from eidetic_func.methods.regularizer import quadratic_penalty


@pytree_dataclass
class SIState:
    """``omega`` (ω, this task's path integral), ``importance`` (Ω) and ``anchor`` (θ*).

    ``anchor`` is the parameters at the end of the previous task, i.e. where the current
    task started (the initial parameters before the first task).
    """

    omega: dict[str, Tensor]
    importance: dict[str, Tensor]
    anchor: dict[str, Tensor]
    tasks: int = static_field(default=0)


def si_init(params: dict[str, Tensor]) -> SIState:
    """Zero ω and Ω, anchored at ``params``."""
    zeros = {k: torch.zeros_like(v) for k, v in params.items()}
    return SIState(omega=zeros, importance=dict(zeros), anchor=dict(params))


def si_observe(
    mstate: SIState,
    grads: dict[str, Tensor],
    before: dict[str, Tensor],
    after: dict[str, Tensor],
) -> SIState:
    """``ω ← ω − g · (after − before)`` for the entries with a task-loss gradient ``g``."""
    omega = dict(mstate.omega)
    for k, g in grads.items():
        omega[k] = omega[k] - g.detach() * (after[k] - before[k])
    return dataclasses.replace(mstate, omega=omega)


def si_consolidate(mstate: SIState, params: dict[str, Tensor], xi: float) -> SIState:
    """End of a task: ``Ω ← Ω + ω / ((params − θ*)² + ξ)``, ``ω ← 0``, ``θ* ← params``."""
    importance = {
        k: mstate.importance[k] + w / ((params[k] - mstate.anchor[k]).square() + xi)
        for k, w in mstate.omega.items()
    }
    zeros = {k: torch.zeros_like(v) for k, v in mstate.omega.items()}
    return SIState(omega=zeros, importance=importance, anchor=dict(params), tasks=mstate.tasks + 1)


def si_penalty(c: float, mstate: SIState, params: dict[str, Tensor]) -> Tensor | None:
    """``c · Σ Ω (θ − θ*)²`` (None before the first task ends)."""
    if mstate.tasks == 0:
        return None
    return c * quadratic_penalty(mstate.importance, mstate.anchor, params)


@dataclasses.dataclass(frozen=True)
class SI:
    """SI: ``c · Σ Ω (θ − θ*)²``; defaults as the Synapse seed's ``SI``.

    - ``c``: the penalty strength (Synapse's ``alpha``; default 0.5). On Split-MNIST
      (MLP 2×100) a larger value does better (5: 97.9% vs 95.8% on earlier tasks);
    - ``xi``: ξ, the damping of ``ω / (Δθ² + ξ)`` (default 0.01).

    Its step differentiates the task loss only, hands that gradient to
    :func:`si_observe`, then adds the penalty's gradient; the reported loss is the task
    loss.
    """

    # every update of the network is an averaged gradient: data-parallel processes agree
    traits: ClassVar[Traits] = Traits(data_parallel=True)

    c: float = number(0.5, low=0.0)
    xi: float = number(0.01, low=0.0, low_open=True)
    name: str = "si"

    def __post_init__(self) -> None:
        validate_fields(self)

    def init(self, model: nn.Module, state: EideticState) -> SIState:
        return si_init(state.params)

    def plan(
        self, model: nn.Module, state: EideticState, mstate: SIState, batch: Batch, *, task: int
    ) -> StepPlan:
        return penalty_plan(
            partial(si_penalty, self.c, mstate), observe=partial(si_observe, mstate)
        )

    def end_task(
        self, model: nn.Module, state: EideticState, mstate: SIState, ctx: TaskContext
    ) -> tuple[EideticState, SIState, Decision]:
        return state, si_consolidate(mstate, state.params, self.xi), DONE
