"""A network's first state: ``init(model)`` — everything free, nothing pruned."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from eidetic_func.core.errors import TopologyError
from eidetic_func.core.state import (
    BN_STATS,
    FREE,
    OWNER_DTYPE,
    EideticState,
    declared_topology,
    with_topology,
)
from eidetic_func.core.topology import Topology
from eidetic_func.nn.acceptance import check_network
from eidetic_func.nn.batchnorm import is_task_batchnorm


def init(
    model: nn.Module,
    *,
    topology: Topology | None = None,
    task: int = 0,
    example_input: Tensor | None = None,
) -> EideticState:
    """The state of a fresh model: everything free, nothing pruned, training ``task``.

    The model's parameters and buffers are copied (detached, contiguous whatever the
    model's memory format); the model is not modified.
    Every BatchNorm must be a Task variant (see ``eidetic_func.convert_batchnorm``) so
    that channels of finished tasks can keep their statistics while later tasks train.
    ``topology`` (default: the model's own ``model.topology()``, if it declares one —
    :class:`eidetic_func.MultiHead` traces its own, refusals included — else none; trace
    one with :func:`eidetic_func.trace_topology`) is checked once here and carried by the
    state: the pure functions read it from there. With ``example_input`` (one batch), the
    network must also pass :func:`eidetic_func.check_network` — a hand-written topology
    is not traced, and nothing else runs its forward here.
    """
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not is_task_batchnorm(module):
            raise TopologyError(
                f"module {name!r} is a plain {type(module).__name__}; its statistics cannot be "
                "frozen per task. Use eidetic_func.convert_batchnorm(model) first."
            )
    # One memory format for every state (a checkpoint and growth give contiguous tensors
    # too): a convolution computed in another format rounds differently.
    params = {k: _canonical(v) for k, v in model.named_parameters()}
    buffers = {
        k: _canonical(v) for k, v in model.named_buffers() if not k.endswith("frozen_channels")
    }
    owned = {**params, **{k: v for k, v in buffers.items() if k.rsplit(".", 1)[-1] in BN_STATS}}
    owner = {k: torch.full_like(v, FREE, dtype=OWNER_DTYPE) for k, v in owned.items()}
    keep = {k: torch.ones_like(v, dtype=torch.bool) for k, v in params.items()}
    state = EideticState(params=params, buffers=buffers, owner=owner, keep=keep, task=task)
    topology = topology if topology is not None else declared_topology(model)
    if example_input is not None:
        check_network(model, example_input)
    return state if topology is None else with_topology(state, topology)


def _canonical(tensor: Tensor) -> Tensor:
    """A detached copy of ``tensor`` in the contiguous memory format."""
    return tensor.detach().clone(memory_format=torch.contiguous_format)
