"""Closing a task (ownership) and preparing free capacity for the next one (recycling).

Ownership rules, applied by :func:`finish_task` for task ``t``:

- every free neuron that survived pruning is owned by ``t`` with its *whole* row (weights,
  bias) and its BatchNorm channel (weight, bias, running statistics). Entries of such a
  row that read pruned neurons are zero and stay so: old neurons never read new ones;
- pruned neurons are zeroed and stay free, as do their BatchNorm channels;
- task ``t``'s head is owned whole (columns reading pruned neurons at zero);
- without forward transfer, the next task may not read any owned neuron: in free rows
  (and in later heads) those input columns are masked out (``keep = False``, value 0),
  so each task's subnetwork is disjoint. The first layer reads the input, which is not a
  neuron, so it is never masked.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from eidetic_func.core import validate
from eidetic_func.core.errors import TaskError
from eidetic_func.core.state import BN_STATS, FREE, EideticState, bn_prefixes, topology_of
from eidetic_func.core.topology import (
    Topology,
    Unit,
    columns,
    neuron_alive,
    neuron_owner,
    reader_columns,
    rows,
)
from eidetic_func.core.validate import task_id


def finish_task(
    state: EideticState, *, task: int | None = None, forward_transfer: bool = True
) -> EideticState:
    """Give task ``task`` (default: the state's) its surviving neurons and head; zero pruned
    ones; move to ``task + 1``.

    Returns a state whose ``keep`` is all True (save the forward-transfer mask) for the
    next task. ``owner`` only grows.
    """
    topology = topology_of(state)
    if task is None:
        task = state.task
    task_id(task, num_tasks=topology.num_tasks)
    if task != state.task:
        raise TaskError(f"cannot finish task {task}: the state is training task {state.task}")
    params, owner = dict(state.params), dict(state.owner)
    t = torch.tensor(task, dtype=next(iter(owner.values())).dtype)

    status = [_neuron_status(unit, state) for unit in topology.units]
    for unit, (_, pruned) in zip(topology.units, status):
        # nothing that becomes owned may read a pruned neuron: it is free, and recycled
        for reader in unit.readers:
            key = f"{reader.layer}.weight"
            cols = columns(reader_columns(reader, pruned, params[key].shape[1]), params[key])
            params[key] = _zero(params[key], cols & (owner[key] < 0))
    for unit, (survive, pruned) in zip(topology.units, status):
        for layer in unit.producers:
            for key in (f"{layer}.weight", f"{layer}.bias"):
                if key not in params:
                    continue
                s, p = rows(survive, params[key]), rows(pruned, params[key])
                params[key] = _zero(params[key], p | (s & ~state.keep[key]))
                owner[key] = torch.where(s, t.to(owner[key].device), owner[key])
        for norm in unit.norms:
            for key in (f"{norm}.weight", f"{norm}.bias"):
                if key in params:
                    params[key] = _zero(params[key], pruned)
                    owner[key] = torch.where(survive, t.to(owner[key].device), owner[key])
            for stat in BN_STATS:
                key = f"{norm}.{stat}"
                owner[key] = torch.where(survive, t.to(owner[key].device), owner[key])

    head = topology.heads[task]
    for key in (f"{head}.weight", f"{head}.bias"):
        if key in params:
            free = owner[key] < 0
            params[key] = _zero(params[key], free & ~state.keep[key])
            owner[key] = torch.where(free, t.to(owner[key].device), owner[key])

    params, keep = fresh_keep(params, owner, state.keep, topology, task + 1, forward_transfer)
    finished = tuple(sorted({*state.finished, task}))
    return state.replace(params=params, owner=owner, keep=keep, task=task + 1, finished=finished)


def _neuron_status(unit: Unit, state: EideticState) -> tuple[Tensor, Tensor]:
    """``(survive, pruned)`` masks ``[C]`` over the unit's free neurons."""
    free = neuron_owner(unit, state.owner) < 0
    alive = neuron_alive(unit, state.keep)
    return free & alive, free & ~alive


def recycle(state: EideticState, *, generator: torch.Generator) -> EideticState:
    """Re-initialize every free entry, deterministically for a given generator state.

    Weights and biases of Linear/Conv layers: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (the
    PyTorch default, Kaiming-uniform with ``a=sqrt(5)``). BatchNorm channels: weight 1,
    bias 0, running mean 0, running variance 1. Free entries masked out for the current
    task (``keep == False``) are set to zero. Owned entries are untouched.
    """
    validate.generator(generator)
    norms = set(bn_prefixes(state))
    params = {}
    for key, p in state.params.items():
        free = state.owner[key] < 0
        fresh = initial_value(key, p, state.params, norms, generator)
        fresh = torch.where(state.keep[key], fresh, torch.zeros((), dtype=p.dtype, device=p.device))
        params[key] = torch.where(free, fresh, p)
    buffers = dict(state.buffers)
    for prefix in norms:
        for stat, value in (("running_mean", 0.0), ("running_var", 1.0)):
            key = f"{prefix}.{stat}"
            free = state.owner[key] < 0
            buffers[key] = torch.where(free, torch.full_like(buffers[key], value), buffers[key])
    return state.replace(params=params, buffers=buffers)


def initial_value(
    key: str, p: Tensor, params: dict[str, Tensor], norms: set[str], generator: torch.Generator
) -> Tensor:
    prefix, _, leaf = key.rpartition(".")
    weight = params.get(f"{prefix}.weight")
    if prefix in norms or weight is None or weight.dim() < 2:
        # normalization layers (or anything without a fan-in): the identity transform
        value = 1.0 if leaf == "weight" else 0.0
        return torch.full_like(p, value)
    fan_in = math.prod(weight.shape[1:])
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    u = torch.rand(p.shape, generator=generator, dtype=p.dtype, device=generator.device)
    return (u * (2 * bound) - bound).to(p.device)


def revisit(state: EideticState, *, task: int, forward_transfer: bool = True) -> EideticState:
    """Train finished task ``task`` again: its head is released, everything else stays frozen.

    The task may also take free capacity. Neurons it owns, and everything other tasks own,
    remain bit-identical; only this task's head entries become free again (the one
    documented exception to "ownership only grows"). Close it again with
    :func:`finish_task`; the next task must then be named explicitly (a new one, or
    another ``revisit``).
    """
    topology = topology_of(state)
    task_id(task, num_tasks=topology.num_tasks)
    if task not in state.finished:
        raise TaskError(
            f"task {task} is not finished (finished: {list(state.finished)}); train it normally"
        )
    head = topology.heads[task]
    owner = dict(state.owner)
    for key in (f"{head}.weight", f"{head}.bias"):
        if key in owner:
            owner[key] = torch.where(
                owner[key] == task, torch.full_like(owner[key], FREE), owner[key]
            )
    params, keep = fresh_keep(
        dict(state.params), owner, state.keep, topology, task, forward_transfer
    )
    finished = tuple(f for f in state.finished if f != task)
    return state.replace(params=params, owner=owner, keep=keep, task=task, finished=finished)


def fresh_keep(
    params: dict[str, Tensor],
    owner: dict[str, Tensor],
    keep: dict[str, Tensor],
    topology: Topology,
    task: int,
    forward_transfer: bool,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The pruning mask a task starts with: nothing pruned.

    Without forward transfer, free entries that read neurons owned by another task are
    masked out (and zero), so the task's subnetwork stays disjoint from the others.
    """
    fresh = {k: torch.ones_like(v) for k, v in keep.items()}
    if forward_transfer:
        return params, fresh
    params = dict(params)
    for unit in topology.units:
        n_owner = neuron_owner(unit, owner)
        foreign = (n_owner >= 0) & (n_owner != task)
        for reader in unit.readers:
            key = f"{reader.layer}.weight"
            cols = columns(reader_columns(reader, foreign, params[key].shape[1]), params[key])
            masked = cols & (owner[key] < 0)
            fresh[key] = fresh[key] & ~masked
            params[key] = _zero(params[key], masked)
    return params, fresh


def _zero(p: Tensor, where: Tensor) -> Tensor:
    return torch.where(where, torch.zeros((), dtype=p.dtype, device=p.device), p)
