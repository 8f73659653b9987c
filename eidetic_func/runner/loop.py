"""The fold over a run's visits: grow, train the visit's task, evaluate every task, save.

:func:`fold` takes a :class:`RunSetup` and the :class:`RunRecord` to start from (a fresh
one, :func:`first_record`, or a restored one) and trains every visit left, then the task
router when the run has one. The run is checkpointed by :func:`save` only: after every
visit, and mid-task after every epoch and kept pruning step when so configured.
"""

from __future__ import annotations

import time
from typing import Any

from eidetic_func.core.state import EideticState
from eidetic_func.core.types import Record
from eidetic_func.methods.protocol import init_state
from eidetic_func.nn.init import init
from eidetic_func.ops.growth import grow, growth_plan
from eidetic_func.runner import record as run_record
from eidetic_func.runner.record import RunCheckpoint, RunRecord
from eidetic_func.runner.router import route_and_classify, router_loaders
from eidetic_func.runner.setup import RunSetup
from eidetic_func.runner.task import CheckpointCallback, train_task
from eidetic_func.training import metrics
from eidetic_func.training.loop import TaskProgress


def first_record(setup: RunSetup) -> RunRecord:
    """Where a fresh run starts: the network's initial state, the method's."""
    state = init(setup.model, topology=setup.topology)
    return RunRecord(state=state, mstate=init_state(setup.method, setup.model, state))


def fold(setup: RunSetup, record: RunRecord) -> tuple[RunSetup, RunRecord]:
    """Every visit from ``record.visit`` on, then the router (unless trained already)."""
    while record.visit < len(setup.schedule):
        setup, record = _grow(setup, record)
        record = _visit(setup, record)
    if setup.router and record.router is None:
        setup, record = _grow(setup, record)
        record = _route(setup, record)
    return setup, record


def _grow(setup: RunSetup, record: RunRecord) -> tuple[RunSetup, RunRecord]:
    """Before a task begins: the units the growth policy names get their new neurons.

    The network, its topology and the optimizer (built afresh for the new parameters) are
    replaced; a task resumed mid-way grew already (its state records it).
    """
    config = setup.config
    if not config.grows or record.progress is not None or record.state.topology is None:
        return setup, record
    plan = growth_plan(record.state, policy=config.grow_policy, neurons=config.grow)
    if not plan:
        return setup, record
    model, state = setup.model, record.state
    for name, neurons in plan.items():
        model, state = grow(
            model,
            state,
            unit=name,
            neurons=neurons,
            generator=setup.core,
            forward_transfer=config.eidetic.forward_transfer,  # only EideticNet grows
        )
    added = ", ".join(f"{name} +{n}" for name, n in plan.items())
    setup.log(f"  grew ({config.grow_policy}): {added}")
    task = setup.schedule[record.visit] if record.visit < len(setup.schedule) else "router"
    grew = tuple(
        {"task": task, "phase": "grow", "method": setup.method.name, "time": time.time(),
         "unit": name, "neurons": n, "reason": config.grow_policy}
        for name, n in plan.items()
    )  # fmt: skip
    record = record.replace(state=state, history=(*record.history, *grew))
    return setup.with_network(model, state.topology), record


def _visit(setup: RunSetup, record: RunRecord) -> RunRecord:
    """Train the task of visit ``record.visit`` (or finish it, resumed) and evaluate all."""
    task = setup.schedule[record.visit]
    visit = f"visit {record.visit + 1}/{len(setup.schedule)}"
    setup.log(f"task {task} ({setup.sequence[task].name}), {visit}")
    state, mstate, history = _train(
        setup,
        record,
        setup.trains[task],
        task=task,
        stop_loader=setup.loaders[task].val,
        # the router, when trained, is the last task and the only unpruned one (as in the
        # original's experiments): every real task leaves its capacity to it
        last=record.visit == len(setup.schedule) - 1 and not setup.router,
    )
    tests = [lo.test for lo in setup.loaders]
    row = tuple(metrics.accuracy_row(setup.model, state, tests, range(len(setup.sequence))))
    setup.log("  accuracy " + " ".join(f"{a:.4f}" for a in row))
    record = record.replace(
        state=state,
        mstate=mstate,
        visit=record.visit + 1,
        progress=None,
        matrix=(*record.matrix, row),
        after_finish={**record.after_finish, task: (*record.after_finish.get(task, ()), row[task])},
        history=(*record.history, *history),
    )
    if setup.config.checkpoint_every != "never":
        save(setup, record)
    return record


def _route(setup: RunSetup, record: RunRecord) -> RunRecord:
    """Train the task router (the last task, unpruned: it takes the capacity every real
    task left) and measure class-incremental accuracy with it."""
    loader, stop = router_loaders(setup)
    router = len(setup.sequence)
    state, mstate, history = _train(setup, record, loader, task=router, stop_loader=stop, last=True)
    tests = [lo.test for lo in setup.loaders]
    accuracy = route_and_classify(setup.model, state, setup.sequence, tests, router=router)
    record = record.replace(
        state=state,
        mstate=mstate,
        router=accuracy,
        progress=None,
        history=(*record.history, *history),
    )
    if setup.config.checkpoint_every != "never":
        save(setup, record)
    return record


def _train(
    setup: RunSetup,
    record: RunRecord,
    loader: Any,
    *,
    task: int,
    stop_loader: Any,
    last: bool,
) -> tuple[EideticState, Any, list[Record]]:
    """Train ``task`` on ``loader`` from ``record`` with the run's method and settings."""
    return train_task(
        setup.model,
        record.state,
        loader,
        method=setup.method,
        mstate=record.mstate,
        task=task,
        optimizer=setup.optimizer,
        generator=setup.core,
        config=setup.config.train,
        stop_loader=stop_loader,
        last=last,
        progress=setup.config.progress,
        checkpoint=_mid_task_checkpoint(setup, record),
        resume=record.progress,
        parallel=setup.parallel,
    )


def _mid_task_checkpoint(setup: RunSetup, record: RunRecord) -> CheckpointCallback:
    """Save the run mid-task (after every epoch and pruning step, when so configured), so
    ``--resume`` continues the task where it was rather than from its start."""

    def checkpoint(s: EideticState, ms: Any, p: TaskProgress, h: list[Record]) -> None:
        if setup.config.checkpoint_every == "pruning-step" and p.phase != "done":
            mid = record.replace(state=s, mstate=ms, progress=p, history=(*record.history, *h))
            save(setup, mid)

    return checkpoint


def save(setup: RunSetup, record: RunRecord) -> None:
    """The one place a run is checkpointed (by the main process, with an output dir)."""
    if setup.path is None or not setup.parallel.is_main:
        return
    seconds = record.seconds + time.perf_counter() - setup.started
    checkpoint = RunCheckpoint(
        config=setup.config,
        world_size=setup.parallel.world_size,
        record=record.replace(seconds=seconds),
        sampling=setup.sampling(),
    )
    run_record.write(setup.path, checkpoint, setup.optimizer)
