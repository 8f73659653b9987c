"""The task loop executes what a method's end of task decides (plain data)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from eidetic_func.models import MLP

import eidetic_func as ef
from eidetic_func.methods.chain import ChainState, chain
from eidetic_func.methods.decisions import DONE, Continue, Decision, Recover, ScaleLearningRate
from eidetic_func.methods.protocol import TaskContext, init_state
from eidetic_func.runner.task import train_task
from eidetic_func.training.config import TrainConfig


@dataclasses.dataclass(frozen=True)
class _Scripted:
    """Ends a task with a fixed list of decisions, noting the metric each call sees; its
    method state is the number of calls so far."""

    name: str = "scripted"
    script: tuple[Decision, ...] = ()

    def init(self, model: Any, state: ef.EideticState) -> int:
        return 0

    def end_task(
        self, model: Any, state: ef.EideticState, mstate: int, ctx: TaskContext
    ) -> tuple[ef.EideticState, int, Decision]:
        SEEN.append((self.name, mstate, ctx.metric, ctx.progress.lr_lowered))
        if mstate < len(self.script):
            return state, mstate + 1, self.script[mstate]
        return state, 0, DONE


SEEN: list[tuple[str, int, float | None, bool]] = []


def _run(method: Any) -> tuple[list[dict], list[Any], torch.optim.Optimizer]:
    SEEN.clear()
    torch.manual_seed(0)
    model = MLP(10, [2, 2], num_layers=2, width=8, bn=False)
    state = ef.init(model)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 10, generator=g)
    data = [(x[:16], (x[:16, 0] > 0).long()), (x[16:], (x[16:, 0] > 0).long())]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    saved: list[Any] = []
    _, _, history = train_task(
        model, state, data, task=0, optimizer=opt, generator=g, method=method,
        mstate=init_state(method, model, state), config=TrainConfig(max_epochs=1),
        progress=False, checkpoint=lambda s, ms, p, h: saved.append((ms, p.phase)),
    )  # fmt: skip
    return history, saved, opt


def test_the_loop_executes_each_decision_and_calls_again_until_done() -> None:
    script = (
        ScaleLearningRate(0.5, records=(("note", {"why": "lower"}),)),
        Recover("again", epochs=2, fields={"k": 1}),
        Continue(resumable=True),
    )
    history, saved, opt = _run(_Scripted(script=script))
    phases = [h["phase"] for h in history]
    assert phases == ["train", "note", "recover", "recover", "end_task"]
    note, *recovered = history[1:4]
    assert note["why"] == "lower" and note["lr"] == 0.1, "records are written before acting"
    assert [h["lr"] for h in recovered] == [0.05, 0.05] and all(h["k"] == 1 for h in recovered)
    assert [s[1] for s in SEEN] == [0, 1, 2, 3]
    assert SEEN[0][2] is None and SEEN[2][2] == recovered[-1]["metric"], "the last epoch's metric"
    assert not SEEN[0][3] and SEEN[1][3], "the progress says the rate was lowered"
    assert (3, "end") in saved, "a resumable decision is saved with the method state it returns"
    assert opt.param_groups[0]["lr"] == 0.1, "the task's rate is restored at its end"


def test_a_chain_ends_its_members_in_order_and_saves_which_member_is_ending() -> None:
    first = _Scripted(name="first", script=(Continue(resumable=True),))
    second = _Scripted(name="second", script=(Recover("r"), Continue(resumable=True)))
    history, saved, _ = _run(chain(first, second))
    assert [(n, k) for n, k, _, _ in SEEN] == [
        ("first", 0), ("first", 1), ("second", 0), ("second", 1), ("second", 2),
    ]  # fmt: skip
    points = [ms for ms, phase in saved if phase == "end" and isinstance(ms, ChainState)]
    assert [p.ending for p in points] == [0, 0, 1]  # after training, then each member's save
    assert points[1]["first"] == 1 and points[2]["second"] == 2
    assert [h["phase"] for h in history].count("recover") == 1


def test_a_decision_that_cannot_be_carried_out_is_refused_naming_why() -> None:
    with pytest.raises(ef.ConfigError, match="at least one epoch"):
        ef.Recover("recover", epochs=0)
    with pytest.raises(ef.ConfigError, match="at least one epoch"):
        ef.TrainWith(("adam", {"lr": 1e-3}), "retrain", epochs=0)
    with pytest.raises(ef.ConfigError, match="optimizer must be one of"):
        ef.TrainWith(("lbfgs", {}), "retrain")


@pytest.mark.parametrize(
    "returned",
    [
        pytest.param(lambda s, m: (s, m), id="the old protocol's pair"),
        pytest.param(lambda s, m: (s, m, None), id="no decision"),
        pytest.param(lambda s, m: (s, m, "done"), id="a string for a decision"),
    ],
)
def test_an_end_of_task_that_returns_no_decision_is_refused_naming_the_method(
    returned: Any,
) -> None:
    @dataclasses.dataclass(frozen=True)
    class Old:
        name: str = "old-style"

        def end_task(self, model: Any, state: Any, mstate: Any, ctx: Any) -> Any:
            return returned(state, mstate)

    with pytest.raises(
        ef.ConfigError, match=r"old-style\.end_task must return \(state, mstate, decision\)"
    ):
        ef.methods.end_task(Old(), None, "state", None, None)
