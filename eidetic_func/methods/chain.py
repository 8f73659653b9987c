"""Methods applied together (``chain(EWC(), ER())``): penalties add, gradient transforms
apply in order, task ends run in order, each member keeps its own state under its name."""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import Tensor, nn

from eidetic_func.core.errors import ConfigError
from eidetic_func.core.state import EideticState
from eidetic_func.core.types import Batch
from eidetic_func.methods.decisions import Decision, Done, Records, with_records
from eidetic_func.methods.protocol import (
    Method,
    Penalty,
    StepPlan,
    TaskContext,
    Traits,
    begin_task,
    compose_transforms,
    end_task,
    init_state,
    lowered,
    plan_step,
    traits,
    updated,
)
from eidetic_func.training.step import Apply


@dataclasses.dataclass(frozen=True)
class ChainState:
    """A chain's method state: each member's state under its name (in the chain's order),
    and ``ending``, the member whose end of task is under way (0 outside one)."""

    members: dict[str, Any]
    ending: int = 0

    def __getitem__(self, name: str) -> Any:
        return self.members[name]

    def with_member(self, name: str, value: Any) -> ChainState:
        return dataclasses.replace(self, members={**self.members, name: value})


@dataclasses.dataclass(frozen=True)
class Chain:
    """Methods applied together; the state is a :class:`ChainState` (see :func:`chain`)."""

    methods: tuple[Method, ...]

    def __post_init__(self) -> None:
        if len(self.methods) < 2:
            raise ConfigError("a chain combines at least two methods")
        names = [m.name for m in self.methods]
        if len(set(names)) != len(names):
            raise ConfigError(f"a chain lists each method once, got {names}")
        networks = {traits(m).network for m in self.methods} - {None}
        if len(networks) > 1:
            raise ConfigError(f"{' and '.join(names)} need different networks: {networks}")
        owners = [m.name for m in self.methods if traits(m).owns]
        if len(owners) > 1:
            raise ConfigError(
                f"{' and '.join(owners)} each end a task by owning what it uses and moving to "
                "the next task; a chain may hold only one of them"
            )

    @property
    def name(self) -> str:
        return "+".join(m.name for m in self.methods)

    def member(self, name: str) -> Method:
        """The member called ``name``."""
        for m in self.methods:
            if m.name == name:
                return m
        raise ConfigError(f"{self.name} has no member {name!r}")

    @property
    def traits(self) -> Traits:
        each = [traits(m) for m in self.methods]
        return Traits(
            data_parallel=all(t.data_parallel for t in each),
            task_incremental=any(t.task_incremental for t in each),
            router=any(t.router for t in each),
            revisits=all(t.revisits for t in each),
            network=next((t.network for t in each if t.network is not None), None),
            grows=all(t.grows for t in each),
            owns=any(t.owns for t in each),
        )

    def init(self, model: nn.Module, state: EideticState) -> ChainState:
        return ChainState({m.name: init_state(m, model, state) for m in self.methods})

    def plan(
        self, model: nn.Module, state: EideticState, mstate: ChainState, batch: Batch, *, task: int
    ) -> StepPlan:
        plans = [
            lowered(plan_step(m, model, state, mstate[m.name], batch, task=task))
            for m in self.methods
        ]
        objectives = [p.objective for p in plans if p.objective is not None]
        if len(objectives) > 1:
            own = [m.name for m, p in zip(self.methods, plans) if p.objective is not None]
            raise ConfigError(
                f"{' and '.join(own)} each define the step's whole loss: chain only one of them"
            )

        def update() -> ChainState:
            members = {
                m.name: updated(m.name, p, mstate[m.name]) for m, p in zip(self.methods, plans)
            }
            return dataclasses.replace(mstate, members=members)

        return StepPlan(
            objective=objectives[0] if objectives else None,
            penalty=_sum_penalties([p.penalty for p in plans if p.penalty is not None]),
            grad_transform=compose_transforms([p.grad_transform for p in plans]),
            update=update if any(p.update is not None for p in plans) else None,
        )

    def begin_task(
        self, state: EideticState, mstate: ChainState, *, task: int, ctx: TaskContext
    ) -> tuple[EideticState, ChainState]:
        for m in self.methods:
            state, own = begin_task(m, state, mstate[m.name], task=task, ctx=ctx)
            mstate = mstate.with_member(m.name, own)
        return state, mstate

    def end_task(
        self, model: nn.Module, state: EideticState, mstate: ChainState, ctx: TaskContext
    ) -> tuple[EideticState, ChainState, Decision]:
        """The members' ends of task in order, each called until it is Done; a decision of
        the ending member goes to the loop (``mstate.ending`` says whose it is)."""
        done: Records = ()
        for i in range(mstate.ending, len(self.methods)):
            m = self.methods[i]
            state, own, decision = end_task(m, model, state, mstate[m.name], ctx)
            mstate = dataclasses.replace(mstate.with_member(m.name, own), ending=i)
            if not isinstance(decision, Done):
                return state, mstate, with_records(decision, done)
            done = (*done, *decision.records)
            ctx = ctx.replace(metric=None)  # the next member's first call
        return state, dataclasses.replace(mstate, ending=0), Done(records=done)


def _sum_penalties(penalties: list[Penalty]) -> Penalty | None:
    if len(penalties) <= 1:
        return penalties[0] if penalties else None

    def total(apply: Apply, params: dict[str, Tensor]) -> Tensor | None:
        total: Tensor | None = None
        for penalty in penalties:
            term = penalty(apply, params)
            if term is not None:
                total = term if total is None else total + term
        return total

    return total


def chain(*methods: Method) -> Chain:
    """The methods together, in order: ``chain(EWC(), ER())`` (nested chains flatten)."""
    flat: list[Method] = []
    for m in methods:
        flat.extend(m.methods if isinstance(m, Chain) else [m])
    return Chain(tuple(flat))
