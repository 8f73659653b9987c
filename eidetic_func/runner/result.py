"""What a run measured (:class:`RunResult`), from where its fold ended."""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

from eidetic_func.core.state import EideticState
from eidetic_func.methods.protocol import state_bytes
from eidetic_func.ops.capacity import capacity
from eidetic_func.runner import run_warnings
from eidetic_func.runner.config import RunConfig
from eidetic_func.runner.record import RunRecord
from eidetic_func.runner.setup import RunSetup
from eidetic_func.training import metrics


@dataclasses.dataclass
class RunResult:
    """What a run measured. ``matrix[i][j]``: accuracy on task ``j`` after visit ``i``."""

    config: RunConfig
    task_names: list[str]
    visits: list[int]
    matrix: list[list[float]]
    after_finish: dict[int, list[float]]
    final: list[float]
    summary: dict[str, Any]
    capacity: dict[str, Any] | None
    extra_memory_bytes: int
    router: dict[str, float] | None
    history: list[dict[str, Any]]
    seconds: float
    state: EideticState = dataclasses.field(repr=False)
    parallel: dict[str, Any] | None = None
    is_main: bool = True
    warnings: list[str] = dataclasses.field(default_factory=list)  # see run_warnings

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "task_names": self.task_names,
            "visits": self.visits,
            "accuracy_matrix": self.matrix,
            "accuracy_after_finish": {str(k): v for k, v in self.after_finish.items()},
            "final_accuracy": self.final,
            "summary": self.summary,
            "capacity": self.capacity,
            "extra_memory_bytes": self.extra_memory_bytes,
            "router": self.router,
            "parallel": self.parallel,
            "seconds": self.seconds,
            "warnings": self.warnings,
        }


def measure(setup: RunSetup, record: RunRecord) -> RunResult:
    """The result of a run whose fold ended at ``record``."""
    parallel_info = None
    if setup.parallel.world_size > 1:
        parallel_info = {
            "world_size": setup.parallel.world_size,
            "state_digest": setup.parallel.check_identical(record.state, "at the end of the run"),
        }
    num_tasks = len(setup.sequence)
    matrix = [list(row) for row in record.matrix]
    return RunResult(
        config=setup.config,
        task_names=[t.name for t in setup.sequence],
        visits=setup.schedule,
        matrix=matrix,
        after_finish={k: list(v) for k, v in record.after_finish.items()},
        final=matrix[-1],
        summary=metrics.summarize(matrix[:num_tasks]).to_dict(),
        capacity=None if record.state.topology is None else capacity(record.state).to_dict(),
        extra_memory_bytes=_extra_memory(record.state, record.mstate),
        router=record.router,
        history=list(record.history),
        seconds=record.seconds + time.perf_counter() - setup.started,
        state=record.state,
        parallel=parallel_info,
        is_main=setup.parallel.is_main,
        warnings=[
            *run_warnings.data_warnings(setup.config, setup.sequence),
            *run_warnings.chance_warnings(setup.sequence, record.history),
            *run_warnings.growth_warnings(setup.config, bool(record.state.growth)),
        ],
    )


def _extra_memory(state: EideticState, mstate: Any) -> int:
    """Bytes a method keeps beyond the network: its state, and the ownership masks of
    methods that freeze by ownership (EideticNet, PackNet, progressive networks)."""
    masks = sum(t.numel() * t.element_size() for t in [*state.owner.values(), *state.keep.values()])
    return state_bytes(mstate) + (masks if state.finished else 0)


def dumps(result: RunResult) -> str:
    """``result`` as indented JSON (what ``results.json`` holds)."""
    return json.dumps(result.to_dict(), indent=2)
