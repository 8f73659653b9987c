"""The one recipe for a method: a frozen dataclass of checked fields plus pure functions, no
base class; hooks it does not need are absent and the protocol supplies their defaults."""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, ClassVar

import pytest
import torch
from eidetic_func.models import MLP
from torch import Tensor

import eidetic_func as ef
from eidetic_func.methods import ER, FineTune
from eidetic_func.methods.fields import number
from eidetic_func.methods.protocol import begin_task, end_task, init_state, plan_step, traits
from eidetic_func.training.config import TrainConfig


# --- the worked example (the README's) ------------------------------------------------
def l2_penalty(strength: float, anchor: dict[str, Tensor] | None, params: dict[str, Tensor]):
    """strength · Σ (θ − θ*)² over the anchored parameters (None before the first anchor)."""
    if anchor is None:
        return None
    return strength * sum((params[k] - a).square().sum() for k, a in anchor.items())


@dataclasses.dataclass(frozen=True)
class L2Anchor:
    """Keep the parameters near where the last task left them."""

    traits: ClassVar[ef.Traits] = ef.Traits(data_parallel=True)
    strength: float = number(1.0, low=0.0)
    name: str = "l2-anchor"

    def __post_init__(self) -> None:
        ef.validate_fields(self)

    def plan(self, model, state, mstate, batch, *, task):
        return ef.penalty_plan(partial(l2_penalty, self.strength, mstate))

    def end_task(self, model, state, mstate, ctx):
        return state, dict(state.params), ef.Done()


# ----------------------------------------------------------------------------------------


def _data(seed: int) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 10, generator=g)
    y = (x[:, seed % 10] > 0).long()
    return [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]


def _train(method: Any, tasks: int = 2) -> tuple[ef.EideticState, Any, list[ef.EideticState]]:
    """Train ``tasks`` tasks through ef.train_task: the final state, method state, and the
    state at the end of each task."""
    torch.manual_seed(0)
    model = MLP(10, [2, 2], num_layers=2, width=8, bn=False)
    state = ef.init(model)
    mstate = init_state(method, model, state)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ends = []
    for t in range(tasks):
        state, mstate, _ = ef.train_task(
            model,
            state,
            _data(t),
            task=t,
            optimizer=optimizer,
            generator=torch.Generator().manual_seed(t),
            method=method,
            mstate=mstate,
            config=TrainConfig(max_epochs=3),
            progress=False,
        )
        ends.append(state)
    return state, mstate, ends


def _distance(a: ef.EideticState, b: ef.EideticState) -> float:
    return sum(float((a.params[k] - b.params[k]).square().sum()) for k in a.params)


def test_a_new_method_needs_no_base_class_and_its_penalty_holds_parameters_near_the_anchor() -> (
    None
):
    assert L2Anchor.__mro__ == (L2Anchor, object)
    final, anchor, ends = _train(L2Anchor(strength=5.0))
    assert all(torch.equal(anchor[k], final.params[k]) for k in final.params)  # end_task ran
    plain, _, plain_ends = _train(FineTune())
    assert _distance(ends[0], plain_ends[0]) == 0.0  # no penalty before the first anchor
    assert _distance(final, ends[0]) < 0.5 * _distance(plain, plain_ends[0])


def test_a_new_method_chained_with_er_keeps_both_members_states() -> None:
    _, mstate, _ = _train(ef.chain(L2Anchor(), ER(buffer_size=32, buffer_sample_size=8)))
    assert isinstance(mstate, ef.ChainState)
    assert mstate["l2-anchor"] is not None
    assert mstate["er"].buffer.seen == 2 * 3 * 64  # every step of both tasks reached ER


def test_a_new_methods_fields_are_checked_by_the_one_validator() -> None:
    with pytest.raises(ef.ConfigError, match="strength"):
        L2Anchor(strength=-1.0)
    with pytest.raises(ef.ConfigError, match="strength"):
        L2Anchor(strength=float("nan"))


@dataclasses.dataclass(frozen=True)
class Bare:
    name: str = "bare"


def test_a_method_missing_every_hook_gets_the_protocol_defaults() -> None:
    model = MLP(10, [2, 2], num_layers=1, width=4, bn=False)
    state = ef.init(model)
    ctx = ef.TaskContext(_data(0), task=0, generator=torch.Generator())
    assert init_state(Bare(), model, state) is None
    assert plan_step(Bare(), model, state, None, _data(0)[0], task=0) == ef.StepPlan()
    assert begin_task(Bare(), state, "m", task=0, ctx=ctx) == (state, "m")
    after, mstate, decision = end_task(Bare(), model, state, "m", ctx)
    assert after is state and mstate == "m" and isinstance(decision, ef.Done)
    assert traits(Bare()) == ef.Traits()


def test_a_method_missing_every_hook_trains_exactly_as_fine_tuning() -> None:
    bare, _, _ = _train(Bare())
    plain, _, _ = _train(FineTune())
    assert all(torch.equal(bare.params[k], plain.params[k]) for k in plain.params)
