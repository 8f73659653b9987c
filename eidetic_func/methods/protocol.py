"""The method protocol: what a continual-learning method adds to training, and composition.

A method (EideticNet, EWC, ER, …) is a small frozen dataclass of hyperparameters (checked
by :func:`~eidetic_func.methods.fields.validate_fields`) plus pure functions that thread an
immutable method state ``mstate`` next to the :class:`EideticState` (like optax's
``(init, update)`` pairs). Every hook is optional; no base class supplies them — the
shell and chains call them through this module's functions, which supply the defaults:

- ``init(model, state)`` → the method's initial state (:func:`init_state`; default None);
- ``plan(model, state, mstate, batch, *, task)`` → a :class:`StepPlan`: what the method
  adds to one training step (a loss of its own, a penalty, a gradient transform, and its
  state after the step), built with :func:`penalty_plan` / :func:`objective_plan`
  (:func:`plan_step`; default: the plain task loss). :func:`method_step` runs the plan
  as one :func:`train_step`;
- ``begin_task(state, mstate, *, task, ctx)`` → ``(state, mstate)`` before a task is
  trained (:func:`begin_task`; default: unchanged);
- ``end_task(model, state, mstate, ctx)`` → ``(state, mstate, decision)`` once the task is
  learned (:func:`end_task`; default: unchanged, Done). :class:`TaskContext` is plain
  data (the task's data, settings, progress): importance, anchors, memories, or a step of
  EideticNet's prune → recover → finish → recycle. The decision
  (:mod:`eidetic_func.methods.decisions`) is what the task loop does next: train more
  epochs (with the run's optimizer or another), lower the learning rate, save a
  checkpoint, or nothing (Done). A method never runs a training loop itself.
- ``traits``: a :class:`Traits` (default: ``Traits()``).

Methods compose with :func:`~eidetic_func.methods.chain.chain` (``chain(EWC(), ER())``):
penalties add, gradient transforms apply in order, task ends run in order, each member
keeps its own state.
What the shell needs to know of a method is in its :class:`Traits`, never its name.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterable
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eidetic_func.core.errors import ConfigError
from eidetic_func.core.state import EideticState
from eidetic_func.core.types import Batch, LossFn
from eidetic_func.importance.taylor import Reduce
from eidetic_func.methods.decisions import DECISIONS, DONE, Decision
from eidetic_func.ops.step_masks import StepMasks
from eidetic_func.ops.workspace import Workspace
from eidetic_func.training.config import TrainConfig
from eidetic_func.training.loop import TaskProgress
from eidetic_func.training.step import Apply, GradTransform, Objective, StepMetrics, train_step

# penalty(apply, params) -> a differentiable scalar added to the loss, or None
Penalty = Callable[[Apply, dict[str, Tensor]], Tensor | None]
# update() -> the method state after the step (from what the plan saw during it)
Update = Callable[[], Any]
# observe(task-loss gradients, params before the step, params after it) -> the method state
Observe = Callable[[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]], Any]


@dataclasses.dataclass(frozen=True)
class Traits:
    """What the shell needs to know about a method (instead of its name).

    ``data_parallel``: the network's state stays identical across data-parallel
    processes — every update is an averaged gradient and every end of task a function of
    identical parameters (a per-process method state, such as a replay buffer, may differ).
    ``task_incremental``: it needs one head (or column) per task. ``router``: a task router
    can be trained on its frozen features. ``revisits``: a finished task can be trained
    again. ``network``: the network it is built for (``"progressive"``: columns), None
    for any. ``grows``: the network may grow between tasks (:func:`eidetic_func.grow`):
    nothing the method keeps has the shape of a parameter. ``owns``: it ends a task by
    owning what the task uses and moving the state to the next task (at most one member of
    a chain may).
    """

    data_parallel: bool = False
    task_incremental: bool = False
    router: bool = False
    revisits: bool = False
    network: str | None = None
    grows: bool = False
    owns: bool = False


def traits(method: Method) -> Traits:
    """``method``'s traits (the defaults if it declares none)."""
    declared = getattr(method, "traits", None)
    return declared if isinstance(declared, Traits) else Traits()


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """What a method adds to one training step (every part optional).

    ``objective(apply, params) -> (loss, logits)`` replaces the task loss (at most one
    method of a chain may); ``penalty(apply, params)`` is added to the loss;
    ``grad_transform(grads, apply, params)`` rewrites the gradients before the optimizer
    step; ``update()`` returns the method state after the step, from what the plan's
    functions saw during it (None: the state is unchanged). ``observe(grads, before,
    after)`` returns the method state after a step whose task-loss gradient was ``grads``
    (SI's path integral); ``before`` and ``after`` hold the values, before and after the
    step, of the parameters with a gradient (copies, the caller's to keep). The penalty's
    gradient is then added to the task loss's rather than differentiated with it
    (:func:`lowered`), and the plan has no ``update`` or ``grad_transform``.
    """

    objective: Objective | None = None
    penalty: Penalty | None = None
    grad_transform: GradTransform | None = None
    update: Update | None = None
    observe: Observe | None = None


@dataclasses.dataclass(frozen=True)
class TaskContext:
    """What a method sees when task ``task`` ends (plain data: the loop acts on what the
    method decides, :mod:`eidetic_func.methods.decisions`).

    ``loader``: the task's training data; ``generator``: the run's generator for random
    choices; ``config``: how tasks are trained; ``last``: nothing is trained after this
    task; ``progress``: where the task is (a resumed run may be mid-way); ``metric``: the
    last epoch's metric after a :class:`~eidetic_func.methods.decisions.Recover` (None on
    the first call); ``score_loader``: data for importance scores; ``reduce``: sums over
    data-parallel processes.
    """

    loader: Iterable[Batch]
    task: int
    generator: torch.Generator
    config: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    last: bool = False
    progress: TaskProgress = dataclasses.field(default_factory=TaskProgress)
    metric: float | None = None
    score_loader: Iterable[Batch] | None = None
    reduce: Reduce | None = None

    def replace(self, **changes: Any) -> TaskContext:
        return dataclasses.replace(self, **changes)


@runtime_checkable
class Method(Protocol):
    """A continual-learning method (see the module docstring): a name, and any of the hooks
    ``traits``, ``init``, ``plan``, ``begin_task`` and ``end_task``; a missing hook takes
    its default (:func:`init_state`, :func:`plan_step`, :func:`begin_task`,
    :func:`end_task`)."""

    @property
    def name(self) -> str: ...  # read-only, so frozen dataclasses satisfy the protocol


def init_state(method: Method, model: nn.Module, state: EideticState) -> Any:
    """``method.init(model, state)``; no state (None) for a method without ``init``."""
    init = getattr(method, "init", None)
    return None if init is None else init(model, state)


def plan_step(
    method: Method, model: nn.Module, state: EideticState, mstate: Any, batch: Batch, *, task: int
) -> StepPlan:
    """``method.plan(...)``: what it adds to a step on ``batch``; nothing (plain task loss)
    for a method without ``plan``."""
    plan = getattr(method, "plan", None)
    return StepPlan() if plan is None else plan(model, state, mstate, batch, task=task)


def begin_task(
    method: Method, state: EideticState, mstate: Any, *, task: int, ctx: TaskContext
) -> tuple[EideticState, Any]:
    """``method.begin_task(...)`` before task ``task`` trains; unchanged without the hook."""
    begin = getattr(method, "begin_task", None)
    return (state, mstate) if begin is None else begin(state, mstate, task=task, ctx=ctx)


def end_task(
    method: Method, model: nn.Module, state: EideticState, mstate: Any, ctx: TaskContext
) -> tuple[EideticState, Any, Decision]:
    """``method.end_task(...)`` once the task is learned: ``(state, mstate, decision)``;
    unchanged and :class:`Done` without the hook."""
    end = getattr(method, "end_task", None)
    if end is None:
        return state, mstate, DONE
    returned = end(model, state, mstate, ctx)
    # a method written for the old protocol returns (state, mstate); an unknown decision
    # would leave the loop calling it again forever
    if not (
        isinstance(returned, tuple) and len(returned) == 3 and isinstance(returned[2], DECISIONS)
    ):
        raise ConfigError(
            f"{method.name}.end_task must return (state, mstate, decision) with a decision "
            f"of {[d.__name__ for d in DECISIONS]}, got {_shape(returned)}"
        )
    return returned


def _shape(value: Any) -> str:
    if isinstance(value, tuple):
        return f"a tuple of {len(value)} ({', '.join(type(v).__name__ for v in value)})"
    return f"a {type(value).__name__}"


def penalty_plan(
    penalty: Callable[[dict[str, Tensor]], Tensor | None], *, observe: Observe | None = None
) -> StepPlan:
    """A step of the task loss plus ``penalty(params)`` (a differentiable scalar, or None),
    e.g. ``penalty_plan(partial(my_penalty, strength, mstate))``; with ``observe`` see
    :class:`StepPlan`."""
    return StepPlan(penalty=lambda apply, params: penalty(params), observe=observe)


def objective_plan(objective: Objective, update: Update | None = None) -> StepPlan:
    """A step whose whole loss is ``objective(apply, params) -> (loss, logits)``, and whose
    method state afterwards is ``update()`` (None: unchanged)."""
    return StepPlan(objective=objective, update=update)


def updated(name: str, plan: StepPlan, mstate: Any) -> Any:
    """The method state after a step of ``plan`` (``mstate`` if it has no ``update``).

    An ``update`` written for the earlier protocol, ``update(before, after)``, is refused
    naming the method, rather than failing as a bare TypeError."""
    if plan.update is None:
        return mstate
    try:
        return plan.update()
    except TypeError:
        required = [
            p
            for p in inspect.signature(plan.update).parameters.values()
            if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        if not required:
            raise
        raise ConfigError(
            f"{name}'s step plan has update({', '.join(p.name for p in required)}); update() "
            "takes no arguments (it returns the method state from what the plan saw during the "
            "step; parameter values before and after a step come to observe(grads, before, "
            "after)): see the CHANGELOG"
        ) from None


def lowered(plan: StepPlan) -> StepPlan:
    """``plan`` without ``observe``: its penalty's gradient is added after the task loss's
    gradient is recorded, and the update hands that gradient to ``observe``."""
    observe, penalty = plan.observe, plan.penalty
    if observe is None:
        return plan
    if plan.update is not None or plan.grad_transform is not None:
        raise ConfigError("a plan that observes gradients has no update or grad_transform")
    recorded: dict[str, Tensor] = {}  # this step's task-loss gradient, before the penalty's
    before: dict[str, Tensor] = {}  # the values of those parameters before the step
    stepped: dict[str, Tensor] = {}  # the parameters themselves (after the step: its result)

    def add_penalty(
        grads: dict[str, Tensor], apply: Apply, params: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        recorded.update(grads)
        before.update({k: params[k].detach().clone() for k in grads})
        stepped.update({k: params[k] for k in grads})
        extra = None if penalty is None else penalty(apply, params)
        return grads if extra is None else add_gradient(grads, extra, params)

    def update() -> Any:
        after = {k: p.detach().clone() for k, p in stepped.items()}
        return observe(recorded, before, after)

    return StepPlan(objective=plan.objective, grad_transform=add_penalty, update=update)


def method_step(
    method: Method,
    model: nn.Module,
    state: EideticState,
    mstate: Any,
    batch: Batch,
    *,
    optimizer: torch.optim.Optimizer,
    task: int | None = None,
    loss_fn: LossFn = F.cross_entropy,
    grad_transform: GradTransform | None = None,
    compiled: bool = False,
    masks: StepMasks | None = None,
    workspace: Workspace | None = None,
) -> tuple[EideticState, Any, StepMetrics]:
    """One optimizer step of ``method`` on ``batch`` for ``task`` (default: the state's):
    ``(state, mstate, metrics)``.

    The loss is the plan's objective, else ``loss_fn(logits, targets)``, plus its penalty.
    ``grad_transform`` (e.g. averaging over data-parallel processes) runs before the
    plan's own. Frozen entries come back bit-identical (:func:`train_step`, which takes
    ``masks`` and ``workspace`` as given).
    """
    task = state.task if task is None else task
    plan = lowered(plan_step(method, model, state, mstate, batch, task=task))
    objective = plan.objective
    if plan.penalty is not None:
        objective = with_penalty(objective, plan.penalty, batch, task, loss_fn)
    new, metrics = train_step(
        model,
        state,
        batch,
        optimizer=optimizer,
        task=task,
        loss_fn=loss_fn,
        objective=objective,
        grad_transform=compose_transforms([grad_transform, plan.grad_transform]),
        compiled=compiled,
        masks=masks,
        workspace=workspace,
    )
    return new, updated(method.name, plan, mstate), metrics


def with_penalty(
    objective: Objective | None, penalty: Penalty, batch: Batch, task: int, loss_fn: LossFn
) -> Objective:
    x, y = batch

    def total(apply: Apply, params: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        if objective is None:
            logits = apply(x, task)
            loss = loss_fn(logits, y)
        else:
            loss, logits = objective(apply, params)
        extra = penalty(apply, params)
        return (loss if extra is None else loss + extra), logits

    return total


def add_gradient(
    grads: dict[str, Tensor], loss: Tensor, params: dict[str, Tensor]
) -> dict[str, Tensor]:
    """``grads`` plus the gradient of ``loss`` with respect to ``params`` (missing = zero)."""
    names = list(params)
    extra = torch.autograd.grad(loss, [params[k] for k in names], allow_unused=True)
    out = dict(grads)
    for k, e in zip(names, extra):
        if e is not None:
            out[k] = e if k not in out else out[k] + e
    return out


def compose_transforms(transforms: list[GradTransform | None]) -> GradTransform | None:
    given = [t for t in transforms if t is not None]
    if len(given) <= 1:
        return given[0] if given else None

    def composed(
        grads: dict[str, Tensor], apply: Apply, params: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        for transform in given:
            grads = transform(grads, apply, params)
        return grads

    return composed


def advance(state: EideticState, task: int) -> EideticState:
    """Move to task ``task + 1`` without owning anything (methods that do not freeze).

    The task is not marked finished: with nothing owned, a finished task's subnetwork
    would be empty. Its head simply stays trainable, as in the methods' papers.
    """
    return state.replace(task=task + 1)


def state_bytes(value: Any) -> int:
    """Bytes held by the tensors of a method state (its extra memory)."""
    if isinstance(value, Tensor):
        return value.numel() * value.element_size()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(state_bytes(getattr(value, f.name)) for f in dataclasses.fields(value))
    if isinstance(value, dict):
        return sum(state_bytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(state_bytes(v) for v in value)
    return 0
