"""Growing the network: more neurons for a unit that has run out, finished tasks untouched.

:func:`grow` is pure: it returns a widened copy of the model and the state that fits it.
Growing unit ``U`` by ``k`` neurons appends ``k`` output rows to each of ``U``'s producers
and ``k`` channels to its BatchNorms, and inserts, in every layer reading ``U``, the
``k·repeat`` input columns that read them (right after ``U``'s block of columns). The
widened layers compute in blocks (:mod:`eidetic_func.nn.grown_layers`), so every output a
finished task sees is computed by exactly the products it was computed by before.

What the added entries hold:

- added columns in rows owned by a finished task: zero, owned by that task (rows are
  owned whole), so that task's outputs gain exactly ``+0.0``;
- everything else added is free: weights and biases drawn as :func:`eidetic_func.recycle`
  draws them, BatchNorm channels the identity (weight 1, bias 0, mean 0, variance 1);
  the current task may use it, save what forward transfer off forbids and what reads
  a neuron it pruned (masked out and zero, as :func:`eidetic_func.ops.bridge` leaves them).

The state records every growth (``state.growth``), so a checkpoint of a grown network
can be loaded into a fresh one: ``model, topology = regrow(model, checkpoint.state.growth)``.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn

from eidetic_func.core import validate
from eidetic_func.core.errors import ConfigError, TopologyError
from eidetic_func.core.state import (
    FREE,
    EideticState,
    Growth,
    bn_prefixes,
    check_state,
    declared_topology,
    topology_of,
    with_topology,
)
from eidetic_func.core.topology import Reader, Topology, Unit, neuron_owner, rows
from eidetic_func.nn.batchnorm import TaskBatchNorm1d, TaskBatchNorm2d
from eidetic_func.nn.grown_layers import (
    GrownConv2d,
    GrownLinear,
    GrownTaskBatchNorm1d,
    GrownTaskBatchNorm2d,
    Ranges,
)
from eidetic_func.ops.bridge import bridge
from eidetic_func.ops.lifecycle import fresh_keep, initial_value
from eidetic_func.ops.workspace import Workspace, load_workspace

GROW_POLICIES = ("when-full", "refill")

# (dim, at, count): ``count`` entries inserted at index ``at`` of dimension ``dim``
Insert = tuple[int, int, int]


def grow(
    model: nn.Module,
    state: EideticState,
    *,
    unit: str,
    neurons: int,
    generator: torch.Generator,
    forward_transfer: bool = True,
) -> tuple[nn.Module, EideticState]:
    """``(model, state)`` with ``neurons`` more neurons in unit ``unit``.

    Neither input is modified: the model is copied. The returned state carries the
    widened topology and records the growth in ``state.growth``; the returned model holds
    the state's values. Every finished task's outputs, and every owned entry and
    statistic, stay bit-identical (the property tests check it for MLP, ConvNet and ResNet
    units). An optimizer built for the old model must be rebuilt for the new one.
    """
    topology = topology_of(state)
    if isinstance(neurons, bool) or not isinstance(neurons, int) or neurons < 1:
        raise ConfigError(f"neurons must be a positive int, got {neurons!r}")
    validate.generator(generator)
    check_state(model, state)
    target = topology.unit(unit)
    grown = copy.deepcopy(model)
    widened, inserts = _widen(grown, topology, target, neurons)

    params, buffers = dict(state.params), dict(state.buffers)
    owner, keep = dict(state.owner), dict(state.keep)
    added: dict[str, Tensor] = {}
    for key, where in inserts.items():
        for dim, at, count in where:  # rows before columns (a layer reading its own unit)
            if key in params:
                params[key] = _insert(params[key], dim, at, count, 0)
                new_keep = torch.zeros_like(keep[key])
                keep[key] = _insert(keep[key], dim, at, count, True)
                added[key] = _insert(added.get(key, new_keep), dim, at, count, True)
            else:  # a BatchNorm statistic: the identity transform
                value = 1 if key.endswith("running_var") else 0
                buffers[key] = _insert(buffers[key], dim, at, count, value)
            before = owner[key]
            owner[key] = _insert(before, dim, at, count, FREE)
            if dim == 1:  # columns added to owned rows belong to the row's task
                row_owner = before.flatten(1).amax(1)
                owned = _insert(torch.zeros_like(before, dtype=torch.bool), dim, at, count, True)
                owned = owned & rows(row_owner >= 0, owned)
                owner[key] = torch.where(owned, rows(row_owner, owner[key]), owner[key])

    norms = set(bn_prefixes(state))
    _, allowed = fresh_keep(params, owner, keep, widened, state.task, forward_transfer)
    for key, new in added.items():
        free = new & (owner[key] < 0)
        keep[key] = torch.where(new, allowed[key], keep[key])
        fresh = initial_value(key, params[key], params, norms, generator)
        params[key] = torch.where(free & keep[key], fresh, params[key])
    grown_state = state.replace(
        params=params,
        buffers=buffers,
        owner=owner,
        keep=keep,
        growth=(*state.growth, Growth(unit, neurons)),
    )
    grown_state = bridge(with_topology(grown_state, widened))
    _load(grown, grown_state)
    return grown, grown_state


def regrow(
    model: nn.Module, growth: Sequence[Growth], *, topology: Topology | None = None
) -> tuple[nn.Module, Topology]:
    """A copy of ``model`` widened by ``growth`` (e.g. ``checkpoint.state.growth``), and
    its topology (grown from ``topology``, default the model's declared one).

    The copy has the grown structure; its values are the model's, zero where added: load
    the checkpoint's state into it (``checkpoint.fit(model=...)`` checks it fits).
    """
    if topology is None:
        topology = declared_topology(model)
        if topology is None:
            raise TopologyError(
                f"{type(model).__name__} declares no topology; pass the one it was grown from"
            )
    grown = copy.deepcopy(model)
    for g in growth:
        if not isinstance(g, Growth):
            raise ConfigError(f"growth must be a sequence of Growth records, got {g!r}")
        topology, _ = _widen(grown, topology, topology.unit(g.unit), g.neurons)
    return grown, topology


def growth_plan(state: EideticState, *, policy: str, neurons: int = 0) -> dict[str, int]:
    """Neurons to add to each unit before the next task (units that need none left out).

    ``"when-full"``: ``neurons`` for every unit in which no neuron is free. ``"refill"``
    (the original EideticNet's policy): for every unit, as many as it takes to have as
    many free neurons as it had before any task or growth, so every task starts with the
    capacity the first one had.
    """
    validate.choice(policy, "policy", GROW_POLICIES)
    if policy == "when-full":
        return dict.fromkeys(full_units(state), neurons) if neurons > 0 else {}
    plan = {}
    for unit in topology_of(state).units:
        owner = neuron_owner(unit, state.owner)
        added = sum(g.neurons for g in state.growth if g.unit == unit.name)
        missing = owner.numel() - added - int((owner < 0).sum())
        if missing > 0:
            plan[unit.name] = missing
    return plan


def full_units(state: EideticState) -> tuple[str, ...]:
    """Names of the units in which no neuron is free (every one owned by a task)."""
    topology = topology_of(state)
    return tuple(
        u.name for u in topology.units if not bool((neuron_owner(u, state.owner) < 0).any())
    )


# ----------------------------------------------------------------------------- structure


def _widen(
    model: nn.Module, topology: Topology, unit: Unit, k: int
) -> tuple[Topology, dict[str, list[Insert]]]:
    """Widen ``model`` in place by ``k`` neurons of ``unit``; the new topology and, per
    parameter or statistic key, where entries were inserted, in order (a layer that reads
    the unit it produces, ``h + f(W h)``, gets rows, then columns)."""
    size = int(_layer(model, unit.producers[0], unit).weight.shape[0])
    inserts: dict[str, list[Insert]] = {}
    for p in unit.producers:
        layer = _layer(model, p, unit)
        _add_rows(layer, size, k)
        for leaf in ("weight", "bias"):
            inserts.setdefault(f"{p}.{leaf}", []).append((0, size, k))
    for n in unit.norms:
        _add_channels(_norm(model, n, unit), size, k)
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            inserts.setdefault(f"{n}.{leaf}", []).append((0, size, k))
    shifts: dict[str, tuple[int, int]] = {}
    for r in unit.readers:
        at, count = r.offset + size * r.repeat, k * r.repeat
        _add_columns(_layer(model, r.layer, unit), at, count)
        inserts.setdefault(f"{r.layer}.weight", []).append((1, at, count))
        shifts[r.layer] = (at, count)
    keys = {k for k, _ in model.named_parameters()} | {k for k, _ in model.named_buffers()}
    inserts = {key: where for key, where in inserts.items() if key in keys}
    return _shift_readers(topology, unit.name, shifts), inserts


def _shift_readers(topology: Topology, grown: str, shifts: dict[str, tuple[int, int]]) -> Topology:
    """Readers of other units in a widened layer move past the inserted columns."""

    def moved(r: Reader) -> Reader:
        at, count = shifts.get(r.layer, (0, 0))
        return dataclasses.replace(r, offset=r.offset + count) if count and r.offset >= at else r

    units = tuple(
        u if u.name == grown else dataclasses.replace(u, readers=tuple(map(moved, u.readers)))
        for u in topology.units
    )
    return dataclasses.replace(topology, units=units)


def _layer(model: nn.Module, name: str, unit: Unit) -> nn.Linear | nn.Conv2d:
    layer = model.get_submodule(name)
    if isinstance(layer, nn.Linear) or (isinstance(layer, nn.Conv2d) and layer.groups == 1):
        return layer
    raise TopologyError(
        f"cannot grow unit {unit.name!r}: layer {name!r} is a {type(layer).__name__}; only "
        "Linear and Conv2d (groups=1) layers grow"
    )


def _norm(model: nn.Module, name: str, unit: Unit) -> TaskBatchNorm1d | TaskBatchNorm2d:
    norm = model.get_submodule(name)
    if isinstance(norm, TaskBatchNorm1d | TaskBatchNorm2d):
        return norm
    raise TopologyError(
        f"cannot grow unit {unit.name!r}: norm {name!r} is a {type(norm).__name__}, not a "
        "Task BatchNorm"
    )


def _add_rows(layer: nn.Linear | nn.Conv2d, size: int, k: int) -> None:
    grown = _make_grown(layer)
    grown.weight = _wider(grown.weight, 0, size, k)
    if grown.bias is not None:
        grown.bias = _wider(grown.bias, 0, size, k)
    grown.row_groups = (*grown.row_groups, (size, size + k))
    if isinstance(grown, GrownLinear):
        grown.out_features += k
    else:
        grown.out_channels += k


def _add_columns(layer: nn.Linear | nn.Conv2d, at: int, count: int) -> None:
    grown = _make_grown(layer)
    grown.weight = _wider(grown.weight, 1, at, count)
    shifted = tuple(_shift(group, at, count) for group in grown.column_groups)
    grown.column_groups = (*shifted, ((at, at + count),))
    if isinstance(grown, GrownLinear):
        grown.in_features += count
    else:
        grown.in_channels += count


def _add_channels(norm: TaskBatchNorm1d | TaskBatchNorm2d, size: int, k: int) -> None:
    grown: GrownTaskBatchNorm1d | GrownTaskBatchNorm2d
    if isinstance(norm, GrownTaskBatchNorm1d | GrownTaskBatchNorm2d):
        grown = norm
    else:
        norm.__class__ = (
            GrownTaskBatchNorm1d if isinstance(norm, TaskBatchNorm1d) else GrownTaskBatchNorm2d
        )
        grown = cast(GrownTaskBatchNorm1d | GrownTaskBatchNorm2d, norm)
        grown.channel_groups = ((0, size),)
    assert grown.running_mean is not None and grown.running_var is not None
    if grown.weight is not None:
        grown.weight = _wider(grown.weight, 0, size, k, 1)
    if grown.bias is not None:
        grown.bias = _wider(grown.bias, 0, size, k)
    grown.running_mean = _insert(grown.running_mean, 0, size, k, 0)
    grown.running_var = _insert(grown.running_var, 0, size, k, 1)
    grown.channel_groups = (*grown.channel_groups, (size, size + k))
    grown.num_features += k


def _make_grown(layer: nn.Linear | nn.Conv2d) -> GrownLinear | GrownConv2d:
    """``layer`` itself, now computing in blocks (one block, until it grows)."""
    if isinstance(layer, GrownLinear | GrownConv2d):
        return layer
    rows_, cols = int(layer.weight.shape[0]), int(layer.weight.shape[1])
    layer.__class__ = GrownLinear if isinstance(layer, nn.Linear) else GrownConv2d
    grown = cast(GrownLinear | GrownConv2d, layer)
    grown.row_groups = ((0, rows_),)
    grown.column_groups = (((0, cols),),)
    return grown


def _shift(ranges: Ranges, at: int, count: int) -> Ranges:
    """``ranges`` after ``count`` columns are inserted at ``at`` (a range around it splits)."""
    out: list[tuple[int, int]] = []
    for a, b in ranges:
        if b <= at:
            out.append((a, b))
        elif a >= at:
            out.append((a + count, b + count))
        else:
            out.extend(((a, at), (at + count, b + count)))
    return tuple(out)


def _wider(p: Tensor, dim: int, at: int, count: int, value: float = 0) -> nn.Parameter:
    return nn.Parameter(_insert(p.detach(), dim, at, count, value), requires_grad=p.requires_grad)


def _insert(t: Tensor, dim: int, at: int, count: int, value: float | bool) -> Tensor:
    """``t`` with ``count`` entries of ``value`` inserted at index ``at`` of ``dim``."""
    shape = list(t.shape)
    shape[dim] = count
    fill = torch.full(shape, value, dtype=t.dtype, device=t.device)
    return torch.cat([t.narrow(dim, 0, at), fill, t.narrow(dim, at, t.shape[dim] - at)], dim)


def _load(model: nn.Module, state: EideticState) -> None:
    """Give the (freshly copied) model the state's values."""
    load_workspace(Workspace(), dict(model.named_parameters()), state.params)
    with torch.no_grad():
        for key, b in model.named_buffers():
            if key in state.buffers:
                b.copy_(state.buffers[key])


__all__ = ["Growth", "full_units", "grow", "growth_plan", "regrow"]
