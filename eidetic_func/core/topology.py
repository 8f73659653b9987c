"""A model's prune topology, as plain data.

A *unit* is a group of neurons: the output rows / channels of one or more *producer*
layers (Linear or Conv) that are tied together. Most units have one producer; residual
streams tie every layer that is added into the same stream (e.g. a ResNet stage's last
convolutions and its shortcut), so channel ``c`` of the unit is pruned, owned and scored
as one neuron across all of them. Each unit lists its BatchNorm layers and the layers that
*read* it: ``Reader(layer, repeat, offset)`` says that channel ``c`` of the unit is read
through input columns ``offset + c*repeat ... offset + (c+1)*repeat - 1`` of that layer
(``repeat`` is the spatial size when a conv feature map is flattened into a Linear).

Heads (one Linear per task) read units but are not pruned. Layers that read no unit read
the network input. Everything here is checked against the state by :func:`check_topology`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from eidetic_func.core.errors import TopologyError


@dataclass(frozen=True)
class Reader:
    """A layer reading a unit; channel ``c`` maps to ``repeat`` input columns at ``offset``."""

    layer: str
    repeat: int = 1
    offset: int = 0


@dataclass(frozen=True)
class Unit:
    """Neurons shared by ``producers`` (tied output channels), normalized by ``norms``."""

    name: str
    producers: tuple[str, ...]
    norms: tuple[str, ...] = ()
    readers: tuple[Reader, ...] = ()


@dataclass(frozen=True)
class Topology:
    """Prunable units in forward order and the task heads (``heads[t]`` is task t's)."""

    units: tuple[Unit, ...]
    heads: tuple[str, ...]

    @property
    def num_tasks(self) -> int:
        return len(self.heads)

    def unit(self, name: str) -> Unit:
        for u in self.units:
            if u.name == name:
                return u
        raise TopologyError(f"no unit named {name!r}; units are {[u.name for u in self.units]}")


def param_keys(layer: str) -> tuple[str, str]:
    return f"{layer}.weight", f"{layer}.bias"


def rows(channel_mask: Tensor, like: Tensor) -> Tensor:
    """Broadcast a per-output-channel mask ``[C]`` to a weight/bias of shape ``[C, ...]``."""
    return channel_mask.view((-1,) + (1,) * (like.dim() - 1))


def columns(column_mask: Tensor, like: Tensor) -> Tensor:
    """Broadcast a per-input-column mask ``[I]`` to a weight of shape ``[O, I, ...]``."""
    return column_mask.view((1, -1) + (1,) * (like.dim() - 2))


def reader_columns(reader: Reader, channel_mask: Tensor, in_features: int) -> Tensor:
    """Input-column mask ``[in_features]`` of ``reader`` that is True where a masked channel is read."""
    cols = torch.zeros(in_features, dtype=torch.bool, device=channel_mask.device)
    block = channel_mask.repeat_interleave(reader.repeat)
    cols[reader.offset : reader.offset + block.numel()] = block
    return cols


def unit_size(unit: Unit, params: dict[str, Tensor]) -> int:
    return int(params[f"{unit.producers[0]}.weight"].shape[0])


def neuron_alive(unit: Unit, keep: dict[str, Tensor]) -> Tensor:
    """``[C]`` bool: True where a reader can still see the neuron — the one liveness rule.

    A neuron is alive while any of its own entries is kept: a weight of a producer row, a
    producer bias, or its BatchNorm scale or shift. A neuron whose weights are all masked
    (with forward transfer off, every input it could read may belong to another task)
    still outputs its bias or BatchNorm shift, so it is alive: finishing the task keeps
    it. Pruning removes all of a neuron's entries at once (:func:`eidetic_func.ops.prune`).
    """
    size = keep[f"{unit.producers[0]}.weight"].shape[0]
    alive = torch.zeros(size, dtype=torch.bool, device=keep[f"{unit.producers[0]}.weight"].device)
    for p in unit.producers:
        alive = alive | keep[f"{p}.weight"].flatten(1).any(1)
    for key in neuron_vector_keys(unit):
        if key in keep:
            alive = alive | keep[key]
    return alive


def neuron_vector_keys(unit: Unit) -> tuple[str, ...]:
    """Keys of the unit's per-neuron vectors that readers see: producer biases, norm affine."""
    return tuple(f"{p}.bias" for p in unit.producers) + tuple(
        f"{n}.{leaf}" for n in unit.norms for leaf in ("weight", "bias")
    )


def neuron_owner(unit: Unit, owner: dict[str, Tensor]) -> Tensor:
    """``[C]`` int: the task owning each neuron (rows are owned whole), ``-1`` if free."""
    return owner[f"{unit.producers[0]}.weight"].flatten(1).amax(1)


def check_topology(
    topology: Topology, params: dict[str, Tensor], buffers: dict[str, Tensor]
) -> None:
    """Raise :class:`TopologyError` unless ``topology`` fits these parameters exactly.

    Checks shapes, that readers cover each reading layer's input columns exactly once,
    and that every parameter belongs to some producer, norm or head — a parameter outside
    the topology would never be owned, hence never frozen.
    """
    covered: set[str] = set()
    reads: dict[str, list[tuple[int, int, str]]] = {}
    if not topology.heads:
        raise TopologyError("topology has no heads; give one head per task")
    for unit in topology.units:
        size = _check_producers(unit, params)
        covered.update(k for p in unit.producers for k in param_keys(p) if k in params)
        _check_norms(unit, size, buffers)
        covered.update(k for n in unit.norms for k in param_keys(n) if k in params)
        for r in unit.readers:
            _check_reader(unit, r, params)
            reads.setdefault(r.layer, []).append((r.offset, r.offset + size * r.repeat, unit.name))
    for h in topology.heads:
        w = params.get(f"{h}.weight")
        if w is None or w.dim() != 2:
            raise TopologyError(f"head {h!r} is not a Linear layer")
        covered.update(k for k in param_keys(h) if k in params)
    for layer, spans in reads.items():
        _check_tiling(layer, spans, int(params[f"{layer}.weight"].shape[1]))
    uncovered = sorted(set(params) - covered)
    if uncovered:
        raise TopologyError(
            f"parameters outside the topology would never be frozen: {uncovered[:5]}"
            f"{' ...' if len(uncovered) > 5 else ''}"
        )


def _check_producers(unit: Unit, params: dict[str, Tensor]) -> int:
    """The unit's size: its producers are Linear/Conv layers of equal outputs, biases to match."""
    if not unit.producers:
        raise TopologyError(f"unit {unit.name!r} has no producers")
    size = None
    for p in unit.producers:
        w = params.get(f"{p}.weight")
        if w is None or w.dim() < 2:
            raise TopologyError(f"producer {p!r} of unit {unit.name!r} is not a Linear/Conv layer")
        if size is not None and w.shape[0] != size:
            raise TopologyError(
                f"unit {unit.name!r}: producer {p!r} has {w.shape[0]} outputs, expected {size}"
            )
        size = int(w.shape[0])
        bias = params.get(f"{p}.bias")
        if bias is not None and bias.shape != (size,):
            raise TopologyError(f"bias of {p!r} has shape {tuple(bias.shape)}, expected ({size},)")
    assert size is not None
    return size


def _check_norms(unit: Unit, size: int, buffers: dict[str, Tensor]) -> None:
    """Every norm of the unit is a BatchNorm of ``size`` channels."""
    for n in unit.norms:
        stats = buffers.get(f"{n}.running_mean")
        if stats is None or stats.shape != (size,):
            raise TopologyError(
                f"norm {n!r} of unit {unit.name!r} is not a BatchNorm of {size} channels"
            )


def _check_reader(unit: Unit, r: Reader, params: dict[str, Tensor]) -> None:
    """A reader is a Linear/Conv layer with ``repeat >= 1`` and ``offset >= 0``."""
    w = params.get(f"{r.layer}.weight")
    if w is None or w.dim() < 2:
        raise TopologyError(f"reader {r.layer!r} of unit {unit.name!r} is not a Linear/Conv layer")
    if r.repeat < 1 or r.offset < 0:
        raise TopologyError(f"reader {r.layer!r}: repeat must be >= 1 and offset >= 0")


def _check_tiling(layer: str, spans: list[tuple[int, int, str]], in_features: int) -> None:
    """The ``(start, stop, unit)`` column spans read by ``layer`` tile its input exactly."""
    position = 0
    for start, stop, name in sorted(spans):
        if start != position:
            raise TopologyError(
                f"layer {layer!r} input columns {position}..{start - 1} are not read from any "
                f"unit, or unit {name!r} overlaps another; readers must tile the input exactly"
            )
        position = stop
    if position != in_features:
        raise TopologyError(
            f"layer {layer!r} has {in_features} input columns but its readers cover {position}"
        )


def flatten_repeat(channels: int, features: int) -> int:
    """Spatial positions per channel when ``channels`` feature maps flatten to ``features``."""
    if features % channels:
        raise TopologyError(f"{features} features cannot come from flattening {channels} channels")
    return features // channels


__all__ = [
    "Reader",
    "Topology",
    "Unit",
    "check_topology",
    "columns",
    "flatten_repeat",
    "neuron_alive",
    "neuron_owner",
    "neuron_vector_keys",
    "reader_columns",
    "rows",
]
