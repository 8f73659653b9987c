"""Elastic weight consolidation (Kirkpatrick et al., 2017) and online EWC (Schwarz et al., 2018).

After task ``t`` the diagonal Fisher information of the parameters at their trained values
``θ*_t`` is estimated from the task's training data, and later tasks minimise

    L(θ) + λ/2 · Σ_t Σ F_t (θ − θ*_t)²          (EWC: one Fisher and anchor per task)
    L(θ) + λ/2 · Σ F (θ − θ*)²,  F ← γ F + F_t   (online EWC: a running Fisher, one anchor)

The Fisher is a mean of **per-sample** squared gradients of the log-likelihood,
``F = 1/N Σ_i (∂ log p(ŷ_i | x_i; θ)/∂θ)²`` (never the square of a mini-batch gradient,
which is smaller by about the batch size and is not a Fisher), with the network in
inference mode and ``ŷ_i`` drawn from the model's own predictive distribution (the true
Fisher, ``fisher="true"``), averaged over all of them (``"exact"``: ``Σ_c p_c g_c²``, C
gradients per sample) or the dataset's labels (``"empirical"``). Every parameter is
regularized, heads included: an earlier head keeps its trained values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from functools import partial
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from eidetic_func.core import validate
from eidetic_func.core.errors import ConfigError
from eidetic_func.core.pytree import pytree_dataclass, static_field
from eidetic_func.core.state import EideticState
from eidetic_func.core.types import Batch
from eidetic_func.importance.gradient_stats import per_sample_sums
from eidetic_func.importance.per_sample import (
    IMPLEMENTATIONS,
    Implementation,
    add_into,
    call_logits,
    check_finite,
    cross_entropy_loss,
    take_samples,
)
from eidetic_func.methods.decisions import DONE, Decision
from eidetic_func.methods.fields import choice, integer, number, validate_fields
from eidetic_func.methods.protocol import StepPlan, TaskContext, Traits, penalty_plan
from eidetic_func.methods.regularizer import quadratic_penalty, state_batches
from eidetic_func.ops.forward import train_mode

FisherKind = Literal["true", "exact", "empirical"]
FISHER_KINDS: tuple[str, ...] = ("true", "exact", "empirical")


def fisher_diagonal(
    model: nn.Module,
    params: dict[str, Tensor],
    buffers: dict[str, Tensor],
    batches: Iterable[Batch],
    *,
    task: int,
    fisher: FisherKind = "true",
    generator: torch.Generator | None = None,
    max_samples: int | None = None,
    implementation: Implementation = "fast",
    chunk_size: int | None = None,
) -> dict[str, Tensor]:
    """Diagonal Fisher of head ``task`` at ``params``: ``{name: Tensor}`` shaped like ``params``.

    ``F = 1/N Σ_i E[(∂ log p(y | x_i)/∂θ)²]`` over the first ``max_samples`` samples of
    ``batches`` (all if None); the expectation is one label drawn from ``p(· | x_i)`` with
    ``generator`` (``"true"``), all labels weighted by ``p`` (``"exact"``), or the given
    label (``"empirical"``). Inference mode; nothing is modified.
    """
    validate.choice(fisher, "fisher", FISHER_KINDS)
    totals: dict[str, Tensor] = {}
    count = 0
    for x, y in take_samples(batches, max_samples):
        xs, ys, weights = _fisher_targets(model, params, buffers, x, y, task, fisher, generator)
        sums = per_sample_sums(
            model,
            params,
            buffers,
            xs,
            ys,
            task=task,
            loss=cross_entropy_loss,
            reduction="square",
            weights=weights,
            implementation=implementation,
            chunk_size=chunk_size,
        )
        totals = add_into(totals, sums)
        count += x.shape[0]
    out = {k: totals[k] / count for k in params}
    check_finite(out, "the Fisher information")
    return out


def _fisher_targets(
    model: nn.Module,
    params: dict[str, Tensor],
    buffers: dict[str, Tensor],
    x: Tensor,
    y: Tensor,
    task: int,
    fisher: FisherKind,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The samples, labels and weights whose weighted squared gradients make the Fisher."""
    if fisher == "empirical":
        return x, y, None
    with torch.no_grad(), train_mode(model, False):
        probs = torch.softmax(call_logits(model, params, buffers, x, task), -1)
    if fisher == "exact":
        classes = probs.shape[1]
        xs = x.repeat_interleave(classes, 0)
        ys = torch.arange(classes, device=x.device).repeat(x.shape[0])
        return xs, ys, probs.reshape(-1)
    if generator is None:
        raise ConfigError("fisher='true' samples labels: pass a torch.Generator")
    drawn = torch.multinomial(probs.to(generator.device), 1, generator=generator)
    return x, drawn.squeeze(1).to(x.device), None


@pytree_dataclass
class EWCState:
    """One diagonal Fisher and one anchor (the trained parameters) per finished task."""

    fishers: tuple[dict[str, Tensor], ...] = ()
    anchors: tuple[dict[str, Tensor], ...] = ()


@pytree_dataclass
class OnlineEWCState:
    """The running Fisher ``F`` and the anchor ``θ*`` of the last task; ``tasks`` seen so far."""

    fisher: dict[str, Tensor]
    anchor: dict[str, Tensor]
    tasks: int = static_field(default=0)


def task_fisher(
    method: EWC | OnlineEWC,
    model: nn.Module,
    state: EideticState,
    ctx: TaskContext,
) -> dict[str, Tensor]:
    """The Fisher of the task that ``ctx`` ends, with ``method``'s settings."""
    return fisher_diagonal(
        model,
        state.params,
        state.buffers,
        state_batches(ctx.loader, state),
        task=ctx.task,
        fisher=method.fisher,
        generator=ctx.generator,
        max_samples=method.fisher_samples,
        implementation=method.implementation,
        chunk_size=method.chunk_size,
    )


def ewc_penalty(lambda_ewc: float, mstate: EWCState, params: dict[str, Tensor]) -> Tensor | None:
    """``λ/2 Σ_t Σ F_t (θ − θ*_t)²`` (None before the first task ends)."""
    if not mstate.fishers:
        return None
    terms = [quadratic_penalty(f, a, params) for f, a in zip(mstate.fishers, mstate.anchors)]
    return 0.5 * lambda_ewc * torch.stack(terms).sum()


def online_ewc_penalty(
    lambda_ewc: float, mstate: OnlineEWCState, params: dict[str, Tensor]
) -> Tensor | None:
    """``λ/2 Σ F (θ − θ*)²`` (None before the first task ends)."""
    if mstate.tasks == 0:
        return None
    return 0.5 * lambda_ewc * quadratic_penalty(mstate.fisher, mstate.anchor, params)


@dataclasses.dataclass(frozen=True)
class EWC:
    """EWC: ``λ/2 Σ_t Σ F_t (θ − θ*_t)²``, one Fisher and anchor per finished task.

    - ``lambda_ewc``: λ. The papers tune it per benchmark over orders of magnitude; the
      default 100 suits Split-MNIST task-incremental with a per-sample Fisher (measured
      on an MLP 2×100: 100–1000 best, 10 too weak, 10⁴ too stiff);
    - ``fisher``: ``"true"`` (labels sampled from the model), ``"exact"`` or ``"empirical"``;
    - ``fisher_samples``: training samples of the task to estimate it with (None: all);
    - ``implementation``: ``"fast"`` (default; Linear/BatchNorm identity, vmap for other
      layers), ``"vmap"`` (``vmap(grad)``, the reference) or ``"loop"`` — all exact;
      ``chunk_size`` bounds vmap's memory
      (:func:`eidetic_func.importance.gradient_stats.per_sample_sums`).

    Memory grows by two parameter copies per task; :class:`OnlineEWC` keeps one.
    """

    # every update of the network is an averaged gradient: data-parallel processes agree
    traits: ClassVar[Traits] = Traits(data_parallel=True)

    lambda_ewc: float = number(100.0, low=0.0)
    fisher: FisherKind = choice("true", FISHER_KINDS)
    fisher_samples: int | None = integer(None, minimum=1)
    implementation: Implementation = choice("fast", IMPLEMENTATIONS)
    chunk_size: int | None = integer(None, minimum=1)
    name: str = "ewc"

    def __post_init__(self) -> None:
        validate_fields(self)

    def init(self, model: nn.Module, state: EideticState) -> EWCState:
        return EWCState()

    def plan(
        self, model: nn.Module, state: EideticState, mstate: EWCState, batch: Batch, *, task: int
    ) -> StepPlan:
        return penalty_plan(partial(ewc_penalty, self.lambda_ewc, mstate))

    def end_task(
        self, model: nn.Module, state: EideticState, mstate: EWCState, ctx: TaskContext
    ) -> tuple[EideticState, EWCState, Decision]:
        fisher = task_fisher(self, model, state, ctx)
        anchors = (*mstate.anchors, dict(state.params))
        return state, EWCState(fishers=(*mstate.fishers, fisher), anchors=anchors), DONE


@dataclasses.dataclass(frozen=True)
class OnlineEWC:
    """Online EWC: ``λ/2 Σ F (θ − θ*)²`` with ``F ← γ F + F_t`` and ``θ*`` the last task's.

    ``gamma`` (γ ∈ [0, 1]) discounts older Fishers; default 1.0 (no decay: every task's
    Fisher counts fully). Other fields as in :class:`EWC`.
    """

    # every update of the network is an averaged gradient: data-parallel processes agree
    traits: ClassVar[Traits] = Traits(data_parallel=True)

    lambda_ewc: float = number(100.0, low=0.0)
    fisher: FisherKind = choice("true", FISHER_KINDS)
    fisher_samples: int | None = integer(None, minimum=1)
    implementation: Implementation = choice("fast", IMPLEMENTATIONS)
    chunk_size: int | None = integer(None, minimum=1)
    gamma: float = number(1.0, low=0.0, high=1.0)
    name: str = "online-ewc"

    def __post_init__(self) -> None:
        validate_fields(self)

    def init(self, model: nn.Module, state: EideticState) -> OnlineEWCState:
        zeros = {k: torch.zeros_like(v) for k, v in state.params.items()}
        return OnlineEWCState(fisher=zeros, anchor=dict(state.params))

    def plan(
        self,
        model: nn.Module,
        state: EideticState,
        mstate: OnlineEWCState,
        batch: Batch,
        *,
        task: int,
    ) -> StepPlan:
        return penalty_plan(partial(online_ewc_penalty, self.lambda_ewc, mstate))

    def end_task(
        self, model: nn.Module, state: EideticState, mstate: OnlineEWCState, ctx: TaskContext
    ) -> tuple[EideticState, OnlineEWCState, Decision]:
        fisher = task_fisher(self, model, state, ctx)
        return state, online_update(mstate, fisher, state.params, self.gamma), DONE


def online_update(
    mstate: OnlineEWCState, fisher: dict[str, Tensor], params: dict[str, Tensor], gamma: float
) -> OnlineEWCState:
    """``F ← γ F + F_t`` and ``θ* ← params``: the online-EWC state after one more task."""
    running = {k: gamma * mstate.fisher[k] + f for k, f in fisher.items()}
    return OnlineEWCState(fisher=running, anchor=dict(params), tasks=mstate.tasks + 1)
