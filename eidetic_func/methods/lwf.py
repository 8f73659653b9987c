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
from typing import Any

import torch
from torch import Tensor, nn

from eidetic_func.core import validate
from eidetic_func.core.pytree import pytree_dataclass, static_field
from eidetic_func.core.state import EideticState
from eidetic_func.core.types import Batch
from eidetic_func.importance.per_sample import call_logits
from eidetic_func.methods.decisions import DONE, Decision
from eidetic_func.methods.protocol import TaskContext
from eidetic_func.methods.regularizer import RegularizedMethod
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


@dataclasses.dataclass(frozen=True)
class LwF(RegularizedMethod):
    """LwF with ``lambda_o`` (λ_o, default 1) and ``temperature`` (T, default 2), as the paper.

    Each step runs one extra forward pass per earlier head with the old parameters and
    one with the current ones.
    """

    name: str = "lwf"
    lambda_o: float = 1.0
    temperature: float = 2.0

    def __post_init__(self) -> None:
        validate.number(self.lambda_o, "lambda_o", low=0.0)
        validate.number(self.temperature, "temperature", low=0.0, low_open=True)

    def init(self, model: nn.Module, state: EideticState) -> LwFState:
        return LwFState(params=dict(state.params), buffers=dict(state.buffers))

    def regularizer(
        self,
        model: nn.Module,
        mstate: Any,
        apply: Apply,
        params: dict[str, Tensor],
        batch: Batch,
        task: int,
    ) -> Tensor | None:
        heads = [h for h in mstate.heads if h != task]
        head_of = getattr(model, "head_of", None)
        if callable(head_of):  # one head shared by every task: distil it once
            heads = list(dict.fromkeys(head_of(h) for h in heads))
        if not heads:
            return None
        x = batch[0]
        terms = []
        for h in heads:
            with torch.no_grad(), train_mode(model, False):
                old = call_logits(model, mstate.params, mstate.buffers, x, h)
            terms.append(distillation_loss(apply(x, h), old, self.temperature))
        return self.lambda_o * torch.stack(terms).sum()

    def end_task(
        self, model: nn.Module, state: EideticState, mstate: Any, ctx: TaskContext
    ) -> tuple[EideticState, LwFState, Decision]:
        task = ctx.task
        heads = tuple(sorted({*mstate.heads, task}))
        return (
            state,
            LwFState(params=dict(state.params), buffers=dict(state.buffers), heads=heads),
            DONE,
        )
