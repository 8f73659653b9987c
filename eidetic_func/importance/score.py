"""Neuron importance for every prunable unit: ``score(model, state, batches, ...)``."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from eidetic_func.core.errors import ConfigError
from eidetic_func.core.state import EideticState, topology_of
from eidetic_func.core.topology import Unit
from eidetic_func.core.types import Batch
from eidetic_func.core.validate import task_id
from eidetic_func.importance.taylor import Implementation, Reduce, batch_scores, per_sample_scores
from eidetic_func.ops.mask import apply_task_mask, needs_task_mask
from eidetic_func.ops.prune import DATA_METHODS, SCORING_METHODS, prunable


def score(
    model: nn.Module,
    state: EideticState,
    batches: Iterable[Batch] | None,
    *,
    method: str,
    task: int | None = None,
    generator: torch.Generator | None = None,
    implementation: Implementation = "fast",
    reduce: Reduce | None = None,
) -> dict[str, Tensor]:
    """Importance of every neuron: ``{unit name: [C] float scores}``; low means prunable.

    - ``"l1"`` / ``"l2"``: norm of the neuron's weights (all its producer rows);
    - ``"random"``: uniform, from ``generator`` (required);
    - ``"taylor"``: per-sample first-order Taylor importance over ``batches`` (see
      :mod:`eidetic_func.importance.taylor`; ``implementation`` picks fast / vmap / loop);
    - ``"taylor_batch"``: the original EideticNet batch-level variant, for parity.

    Neurons owned by a task, or already pruned in this task, score ``+inf``: no pruning
    step can select them. Scoring uses BatchNorm in inference mode and never changes
    ``state``. ``task`` defaults to the state's. With data parallelism, ``reduce`` sums the data-driven scores' partial sums
    over processes (see :mod:`eidetic_func.training.distributed`), so every process prunes alike.
    """
    if not isinstance(method, str) or method not in SCORING_METHODS:
        raise ConfigError(
            f"unknown scoring method {method!r}; choose one of {list(SCORING_METHODS)}"
        )
    topology = topology_of(state)
    task = state.task if task is None else task_id(task, num_tasks=topology.num_tasks)
    params = apply_task_mask(state, task) if needs_task_mask(state, task) else state.params
    if method in DATA_METHODS:
        if batches is None:
            raise ConfigError(f"method {method!r} needs batches of data to score with")
        if method == "taylor":
            raw = per_sample_scores(
                model,
                state,
                params,
                batches,
                task=task,
                topology=topology,
                implementation=implementation,
                reduce=reduce,
            )
        else:
            raw = batch_scores(
                model, state, params, batches, task=task, topology=topology, reduce=reduce
            )
    elif method == "random":
        if generator is None:
            raise ConfigError("method 'random' needs a seeded torch.Generator (generator=...)")
        raw = {}
        for unit in topology.units:
            size = state.params[f"{unit.producers[0]}.weight"].shape[0]
            raw[unit.name] = torch.rand(size, generator=generator, device=generator.device)
    else:
        p = 1 if method == "l1" else 2
        raw = {unit.name: _row_norm(state, unit, p) for unit in topology.units}
    ok = prunable(state)
    return {
        name: torch.where(ok[name].to(s.device), s, torch.full_like(s, float("inf")))
        for name, s in raw.items()
    }


def _row_norm(state: EideticState, unit: Unit, p: int) -> Tensor:
    """Lp norm of each neuron's weights, over all its producer rows: ``[C]``."""
    total = sum(state.params[f"{q}.weight"].flatten(1).abs().pow(p).sum(1) for q in unit.producers)
    assert isinstance(total, Tensor)
    return total.pow(1 / p)
