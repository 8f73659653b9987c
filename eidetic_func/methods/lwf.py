"""Learning without forgetting (Li & Hoiem, 2016): distil the old model's outputs on new data.

While task ``t`` trains, every earlier head ``h`` is asked to keep answering the current
inputs as the model did when task ``t`` began:

    L = CE(f_t(x), y) + λ_o · Σ_{h<t} distillation_loss(f_h(x), f*_h(x), T)

with ``f*`` the parameters (and BN statistics) kept in the method state at the end of the
previous task, evaluated in inference mode, and ``distillation_loss`` the paper's
modified cross-entropy ``−Σ_c softmax(f*/T)_c · log softmax(f/T)_c`` (mean over the
batch; no ``T²`` factor, as in the paper). All parameters train, old heads included. The
paper's warm-up (training only the new head first) is not done. Computing ``f*`` on the
fly equals recording it before the task: the old parameters never change.
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
from eidetic_func.importance.per_sample import call_logits
from eidetic_func.methods.decisions import DONE, Decision
from eidetic_func.methods.fields import number, validate_fields
from eidetic_func.methods.protocol import StepPlan, TaskContext, Traits
from eidetic_func.ops.forward import train_mode
from eidetic_func.training.step import Apply


def distillation_loss(logits: Tensor, old_logits: Tensor, temperature: float) -> Tensor:
    """``mean_i −Σ_c softmax(old_i/T)_c · log_softmax(logits_i/T)_c`` (``[B, C]`` inputs).

    The cross-entropy between the softened old and new distributions; it differs from the
    KL divergence by the old distribution's entropy, a constant in the new parameters.
    """
    target = torch.softmax(old_logits.detach() / temperature, -1)
    return -(target * torch.log_softmax(logits / temperature, -1)).sum(-1).mean()


@pytree_dataclass
class LwFState:
    """The parameters and buffers at the end of the last task, and the heads trained so far."""

    params: dict[str, Tensor]
    buffers: dict[str, Tensor]
    heads: tuple[int, ...] = static_field(default=())


def lwf_penalty(
    model: nn.Module,
    lambda_o: float,
    temperature: float,
    mstate: LwFState,
    x: Tensor,
    task: int,
    apply: Apply,
    params: dict[str, Tensor],
) -> Tensor | None:
    """``λ_o · Σ_{h≠task} distillation_loss(f_h(x), f*_h(x), T)``, None with no earlier head.

    ``f*`` is the network at ``mstate``'s parameters and buffers in inference mode;
    ``f_h(x) = apply(x, h)``.
    """
    heads = [h for h in mstate.heads if h != task]
    head_of = getattr(model, "head_of", None)
    if callable(head_of):  # one head shared by every task: distil it once
        heads = list(dict.fromkeys(head_of(h) for h in heads))
    if not heads:
        return None
    terms = []
    for h in heads:
        with torch.no_grad(), train_mode(model, False):
            old = call_logits(model, mstate.params, mstate.buffers, x, h)
        terms.append(distillation_loss(apply(x, h), old, temperature))
    return lambda_o * torch.stack(terms).sum()


@dataclasses.dataclass(frozen=True)
class LwF:
    """LwF with ``lambda_o`` (λ_o, default 1) and ``temperature`` (T, default 2), as the paper.

    Each step runs one extra forward pass per earlier head with the old parameters and
    one with the current ones.
    """

    # every update of the network is an averaged gradient: data-parallel processes agree
    traits: ClassVar[Traits] = Traits(data_parallel=True)

    lambda_o: float = number(1.0, low=0.0)
    temperature: float = number(2.0, low=0.0, low_open=True)
    name: str = "lwf"

    def __post_init__(self) -> None:
        validate_fields(self)

    def init(self, model: nn.Module, state: EideticState) -> LwFState:
        return LwFState(params=dict(state.params), buffers=dict(state.buffers))

    def plan(
        self, model: nn.Module, state: EideticState, mstate: LwFState, batch: Batch, *, task: int
    ) -> StepPlan:
        penalty = partial(
            lwf_penalty, model, self.lambda_o, self.temperature, mstate, batch[0], task
        )
        return StepPlan(penalty=penalty)

    def end_task(
        self, model: nn.Module, state: EideticState, mstate: LwFState, ctx: TaskContext
    ) -> tuple[EideticState, LwFState, Decision]:
        heads = tuple(sorted({*mstate.heads, ctx.task}))
        new = LwFState(params=dict(state.params), buffers=dict(state.buffers), heads=heads)
        return state, new, DONE
