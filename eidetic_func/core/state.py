"""The state of an eidetic network: parameters, BN statistics, ownership, pruning mask.

All tensors live in plain ``dict[str, Tensor]`` keyed like ``named_parameters()`` /
``named_buffers()``. A state is immutable: every function returns a new one (tensors that
did not change are shared, never written to).

Ownership (``owner``) is the single source of truth for freezing: an entry with
``owner >= 0`` belongs to that task and is bit-identical from then on. It covers every
parameter entry and every BatchNorm running statistic (per channel). ``keep`` is the
current task's pruning mask over parameters; free entries with ``keep == False`` are
always exactly zero (pruning and bridging zero them, :func:`eidetic_func.ops.freeze` keeps
them so), which is why the network of the task being trained needs no masking.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from eidetic_func.core.errors import NoTopology, StateMismatchError, TopologyError
from eidetic_func.core.pytree import pytree_dataclass, static_field
from eidetic_func.core.topology import Topology, check_topology

FREE = -1
OWNER_DTYPE = torch.int16
BN_STATS = ("running_mean", "running_var")


@dataclasses.dataclass(frozen=True)
class Growth:
    """One growth of the network (:func:`eidetic_func.grow`): ``neurons`` added to ``unit``."""

    unit: str
    neurons: int


@pytree_dataclass
class EideticState:
    """Immutable training state (a pytree; ``task`` and ``finished`` are static).

    - ``params``: ``{name: Tensor}``, detached, like ``model.named_parameters()``.
    - ``buffers``: ``{name: Tensor}``, BN running statistics and counters.
    - ``owner``: ``{name: int16 Tensor}`` for every parameter and BN running statistic,
      same shape; ``-1`` free, ``t`` owned (frozen) by task ``t``.
    - ``keep``: ``{name: bool Tensor}`` per parameter; the current task's pruning mask.
    - ``task``: the task being trained (or the next one, after ``finish_task``).
    - ``finished``: the tasks finished so far, in ascending order.
    - ``topology``: the network's prunable structure, checked against the tensors once
      (:func:`init`, :func:`with_topology`); None for methods that need none.
    - ``growth``: every growth of the network so far, in order (:func:`eidetic_func.grow`);
      what a fresh model needs to take this state (:func:`eidetic_func.regrow`).
    """

    params: dict[str, Tensor]
    buffers: dict[str, Tensor]
    owner: dict[str, Tensor]
    keep: dict[str, Tensor]
    task: int = static_field(default=0)
    finished: tuple[int, ...] = static_field(default=())
    topology: Topology | None = static_field(default=None)
    growth: tuple[Growth, ...] = static_field(default=())

    def replace(self, **changes: Any) -> EideticState:
        """A copy with ``changes`` applied (like ``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


def declared_topology(model: nn.Module) -> Topology | None:
    """``model.topology()`` if the model declares one, else None (also for a model whose
    ``topology()`` raises :class:`NoTopology`); any other :class:`TopologyError` is raised."""
    declared = getattr(model, "topology", None)
    if not callable(declared):
        return None
    try:
        topology: Topology = declared()
    except NoTopology:  # a network that declares it has none (progressive columns)
        return None
    return topology  # any other refusal (a traced network the tracer refuses) surfaces here


def with_topology(state: EideticState, topology: Topology) -> EideticState:
    """``state`` carrying ``topology``, checked against its tensors (TopologyError if it
    does not fit). A loaded checkpoint's state gets its topology back this way."""
    if not isinstance(topology, Topology):
        raise TopologyError(f"topology must be a Topology, got {type(topology).__name__}")
    check_topology(topology, state.params, state.buffers)
    return state.replace(topology=topology)


def topology_of(state: EideticState) -> Topology:
    """The topology ``state`` carries; TopologyError if it carries none."""
    if state.topology is None:
        raise TopologyError(
            "this state carries no topology: create it with ef.init(model, topology=...) "
            "(ef.trace_topology traces one) or attach one with ef.with_topology(state, ...)"
        )
    return state.topology


def check_state(model: nn.Module, state: EideticState) -> None:
    """Raise :class:`StateMismatchError` unless ``state`` has the model's structure."""
    expected = dict(model.named_parameters())
    _check_same(expected, state.params, "params")
    buffers = {k: v for k, v in model.named_buffers() if not k.endswith("frozen_channels")}
    _check_same(buffers, state.buffers, "buffers")


def _check_same(expected: Mapping[str, Tensor], got: Mapping[str, Tensor], what: str) -> None:
    if expected.keys() != got.keys():
        missing = sorted(expected.keys() - got.keys())
        extra = sorted(got.keys() - expected.keys())
        raise StateMismatchError(
            f"state.{what} does not match the model: missing {missing[:5]}, unexpected {extra[:5]}"
        )
    for k, v in expected.items():
        if v.shape != got[k].shape or v.dtype != got[k].dtype:
            raise StateMismatchError(
                f"state.{what}[{k!r}] has shape {tuple(got[k].shape)} and dtype {got[k].dtype}; "
                f"the model expects {tuple(v.shape)} and {v.dtype}"
            )


def bn_prefixes(state: EideticState) -> list[str]:
    """Module paths of the BatchNorm layers in ``state`` (those with running statistics)."""
    suffix = ".running_mean"
    return [k[: -len(suffix)] for k in state.buffers if k.endswith(suffix)]
