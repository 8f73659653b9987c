"""The method protocol: plans run as one step, chains compose, the registry names them."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from eidetic_func.models import MLP

import eidetic_func as ef
from eidetic_func.methods import DER, ER, EWC, GEM, MAS, SI, FineTune, ReplayState
from eidetic_func.methods.chain import chain
from eidetic_func.methods.eidetic import Pruning
from eidetic_func.methods.ewc import ewc_penalty
from eidetic_func.methods.mas import mas_penalty
from eidetic_func.methods.protocol import (
    StepPlan,
    TaskContext,
    init_state,
    method_step,
    plan_step,
    traits,
)
from eidetic_func.methods.registry import create
from eidetic_func.runner.task import train_task
from eidetic_func.training.config import TrainConfig
from eidetic_func.training.distributed import Parallel


def _model() -> MLP:
    torch.manual_seed(0)
    return MLP(10, [2, 2], num_layers=2, width=12, bn=False)


def _data(seed: int, n: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=g)
    y = (x[:, 0] > 0).long()
    return [(x[i : i + 16], y[i : i + 16]) for i in range(0, n, 16)]


def _ended(method: Any, model: MLP) -> tuple[ef.EideticState, Any]:
    """The state and method state after task 0 (trained a little, then ended)."""
    state = ef.init(model)
    state, mstate, _ = train_task(
        model,
        state,
        _data(0),
        method=method,
        mstate=init_state(method, model, state),
        task=0,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
        generator=torch.Generator().manual_seed(0),
        config=TrainConfig(max_epochs=2, patience=2),
        progress=False,
    )
    return state, mstate


def test_a_chain_adds_its_members_penalties_to_the_task_loss() -> None:
    ewc, mas = EWC(lambda_ewc=50.0), MAS(reg_lambda=3.0)
    model = _model()
    state, ended = _ended(chain(ewc, mas), model)
    ewc_state, mas_state = ended["ewc"], ended["mas"]
    moved = state.replace(params={k: v + 0.05 for k, v in state.params.items()})
    x, y = _data(1)[0]
    _, _, metrics = method_step(
        chain(ewc, mas),
        model,
        moved,
        ended,
        (x, y),
        optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
        task=1,
    )
    ewc_term = ewc_penalty(ewc.lambda_ewc, ewc_state, moved.params)
    mas_term = mas_penalty(mas.reg_lambda, mas_state, moved.params)
    assert ewc_term is not None and mas_term is not None
    with torch.no_grad():
        logits = torch.func.functional_call(model, moved.params, (x,), {"task": 1})
        expected = F.cross_entropy(logits, y) + ewc_term + mas_term
    assert ewc_term > 0 < mas_term
    assert metrics.loss == pytest.approx(float(expected), rel=1e-6)


def test_a_chain_keeps_each_members_state_and_ends_tasks_in_order() -> None:
    method = chain(EWC(), ER(buffer_size=40, buffer_sample_size=8))
    model = _model()
    state, ended = _ended(method, model)
    ewc_state, er_state = ended["ewc"], ended["er"]
    assert state.task == 1
    assert len(ewc_state.fishers) == 1, "EWC estimated its Fisher at the end of task 0"
    assert isinstance(er_state, ReplayState)
    assert er_state.buffer.seen > 0 and er_state.buffer.seen % 64 == 0, "ER saw every epoch"


def test_a_chain_of_one_method_steps_exactly_like_the_method() -> None:
    x, y = _data(2)[0]
    results = []
    for method in (SI(c=0.5), chain(SI(c=0.5), FineTune())):
        model = _model()
        state = ef.init(model)
        mstate = init_state(method, model, state)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(3):
            state, mstate, _ = method_step(
                method, model, state, mstate, (x, y), optimizer=opt, task=0
            )
        results.append((state, mstate if method.name == "si" else mstate["si"]))
    (a, ma), (b, mb) = results
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k]), k
        assert torch.equal(ma.omega[k], mb.omega[k]), k


def test_two_methods_that_each_define_the_whole_loss_are_refused() -> None:
    model = _model()
    state = ef.init(model)
    method = chain(ER(), DER())
    with pytest.raises(ef.ConfigError, match="whole loss"):
        plan_step(method, model, state, init_state(method, model, state), _data(0)[0], task=0)


def test_a_chain_needs_two_distinct_methods() -> None:
    with pytest.raises(ef.ConfigError, match="at least two"):
        ef.Chain((EWC(),))
    with pytest.raises(ef.ConfigError, match="once"):
        chain(EWC(), EWC())


@pytest.mark.parametrize("name", ["eidetic+packnet", "packnet+eidetic", "eidetic+progressive"])
def test_a_chain_of_two_methods_that_own_finished_tasks_is_refused_at_construction(
    name: str,
) -> None:
    """Each would finish the task and move the state on: refused before any training, by
    the registry and by the run's config, naming both members and the reason."""
    first, second = name.split("+")
    message = f"{first} and {second} each end a task by owning"
    with pytest.raises(ef.ConfigError, match=message):
        create(name)
    with pytest.raises(ef.ConfigError, match=message):
        ef.RunConfig(method=name)


def test_chains_flatten_and_combine_traits() -> None:
    method = chain(chain(ef.EideticNet(), EWC()), ER())
    assert [m.name for m in method.methods] == ["eidetic", "ewc", "er"]
    kind = traits(method)
    assert kind.router and kind.task_incremental and kind.data_parallel
    assert not traits(chain(ER(), GEM())).data_parallel, "GEM projects per process"


def test_the_registry_builds_chains_and_routes_their_options() -> None:
    method = create("ewc+er", lambda_ewc=7.0, buffer_size=30, seed=3)
    assert method.name == "ewc+er"
    ewc, er = method.methods  # type: ignore[attr-defined]
    assert ewc.lambda_ewc == 7.0 and er.buffer_size == 30 and er.seed == 3
    both = create("der+++er", **{"der++.buffer_size": 10, "er.buffer_size": 20})
    assert [m.buffer_size for m in both.methods] == [10, 20]  # type: ignore[attr-defined]
    with pytest.raises(ef.ConfigError, match="all have option"):
        create("er+der", buffer_size=10)
    with pytest.raises(ef.ConfigError, match="fits no method"):
        create("ewc+er", nope=1)
    with pytest.raises(ef.ConfigError, match="method must be one of"):
        create("ewc+nope")


def test_a_method_without_data_parallel_traits_is_refused_under_parallelism() -> None:
    model = _model()
    with pytest.raises(ef.ConfigError, match="data parallelism"):
        train_task(
            model,
            ef.init(model),
            _data(0),
            method=GEM(),  # projects against this process's own memory
            task=0,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            generator=torch.Generator(),
            parallel=Parallel(rank=0, world_size=2),  # refused before any collective
        )


def test_eidetic_end_of_task_on_a_state_without_a_topology_is_a_clear_error() -> None:
    model = _model()
    bare = ef.init(model).replace(topology=None)
    ctx = TaskContext(_data(0), task=0, generator=torch.Generator(), last=True)
    with pytest.raises(ef.TopologyError, match="carries no topology"):
        ef.EideticNet().end_task(model, bare, None, ctx)


def test_a_plan_update_runs_after_its_step_with_what_the_step_saw() -> None:
    @dataclasses.dataclass(frozen=True)
    class Watch:
        name: str = "watch"

        def plan(self, model: Any, state: Any, mstate: Any, batch: Any, *, task: int) -> StepPlan:
            seen: list[torch.Tensor] = []

            def objective(apply: Any, params: Any) -> tuple[torch.Tensor, torch.Tensor]:
                logits = apply(batch[0], task)
                seen.append(logits.detach())
                return F.cross_entropy(logits, batch[1]), logits

            return StepPlan(objective=objective, update=lambda: (mstate or 0) + len(seen))

    model = _model()
    state = ef.init(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    _, mstate, _ = method_step(Watch(), model, state, None, _data(0)[0], optimizer=opt, task=0)
    assert mstate == 1


def test_observe_gets_copies_of_the_parameters_before_and_after_the_step() -> None:
    seen: list[tuple[dict[str, torch.Tensor], ...]] = []

    def observe(grads: Any, before: Any, after: Any) -> None:
        seen.append((grads, before, after))

    @dataclasses.dataclass(frozen=True)
    class Watch:
        name: str = "watch"

        def plan(self, model: Any, state: Any, mstate: Any, batch: Any, *, task: int) -> StepPlan:
            return ef.penalty_plan(lambda params: None, observe=observe)

    model = _model()
    state = ef.init(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    new, _, _ = method_step(Watch(), model, state, None, _data(0)[0], optimizer=opt, task=0)
    grads, before, after = seen[0]
    assert set(before) == set(after) == set(grads) and "heads.0.weight" in grads
    for k in grads:
        assert torch.equal(before[k], state.params[k]) and torch.equal(after[k], new.params[k])
        assert before[k] is not state.params[k] and after[k] is not new.params[k]
    assert not torch.equal(before["heads.0.weight"], after["heads.0.weight"])


def test_progress_saved_mid_pruning_by_earlier_versions_resumes_at_the_end_of_the_task() -> None:
    saved = {"phase": "prune", "pruning_iteration": 3, "adaptive_step": 0.25, "end_member": 1}
    assert ef.TaskProgress.from_dict(saved).phase == "end"


def test_a_chain_resumed_mid_pruning_ends_its_earlier_members_only_once() -> None:
    config = TrainConfig(max_epochs=20, patience=3)
    eidetic = ef.EideticNet(pruning_step=0.2, tolerance=0.2, max_recovery_epochs=1)
    method = chain(EWC(), eidetic)  # EWC's Fisher first, then EideticNet prunes
    data = _data(5)

    def fresh() -> tuple[Any, ef.EideticState, torch.optim.Optimizer, torch.Generator]:
        model = _model()
        return (
            model,
            ef.init(model),
            torch.optim.Adam(model.parameters(), lr=1e-2),
            (torch.Generator().manual_seed(7)),
        )

    def run(**kwargs: Any) -> tuple[ef.EideticState, Any, list]:
        return train_task(
            model, state, data, method=method, task=0, optimizer=opt, generator=g,
            config=config, progress=False, **kwargs,
        )  # fmt: skip

    model, state, opt, g = fresh()
    saved: list[tuple[Any, ...]] = []

    def keep(s: ef.EideticState, ms: Any, p: ef.TaskProgress, h: list) -> None:
        saved.append((s, ms, p, copy.deepcopy(opt.state_dict()), g.get_state()))

    reference, reference_m, _ = run(mstate=init_state(method, model, state), checkpoint=keep)
    mid = [e for e in saved if isinstance(e[1]["eidetic"], Pruning)]
    assert mid and mid[0][1].ending == 1, "a checkpoint inside EideticNet's pruning"
    state, mstate, progress, opt_state, g_state = mid[0]
    model, _, opt, g = fresh()
    opt.load_state_dict(opt_state)
    g.set_state(g_state)
    resumed, resumed_m, _ = run(mstate=mstate, resume=progress)
    assert len(resumed_m["ewc"].fishers) == len(reference_m["ewc"].fishers) == 1
    for k in reference.params:
        assert torch.equal(resumed.params[k], reference.params[k]), k


def test_an_update_written_for_the_old_protocol_is_refused_naming_the_method() -> None:
    @dataclasses.dataclass(frozen=True)
    class Old:
        name: str = "old-method"

        def plan(self, model: Any, state: Any, mstate: Any, batch: Any, *, task: int) -> StepPlan:
            return StepPlan(update=lambda before, after: mstate)

    model = _model()
    state = ef.init(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ef.ConfigError, match=r"old-method's step plan has update\(before, after\)"):
        method_step(Old(), model, state, None, _data(0)[0], optimizer=opt, task=0)
    with pytest.raises(ef.ConfigError, match="old-method's step plan"):
        ef.method_epoch(Old(), model, state, None, _data(0)[:2], optimizer=opt, task=0)


def test_a_type_error_inside_an_update_is_not_mistaken_for_the_old_protocol() -> None:
    @dataclasses.dataclass(frozen=True)
    class Broken:
        name: str = "broken"

        def plan(self, model: Any, state: Any, mstate: Any, batch: Any, *, task: int) -> StepPlan:
            return StepPlan(update=lambda: len(None))  # type: ignore[arg-type]

    model = _model()
    state = ef.init(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="NoneType"):
        method_step(Broken(), model, state, None, _data(0)[0], optimizer=opt, task=0)
