"""What the channel trace of :mod:`eidetic_func.nn.traced_topology` knows: the operations
that pass channels through, reshape, add or reduce them, and the refusal of everything else
(a :class:`TopologyError` naming the graph node and why)."""

from __future__ import annotations

import operator
from typing import Any, NoReturn

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from eidetic_func.core.errors import TopologyError

PASS_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardswish,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Identity,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
)
PASS_FUNCTIONS: tuple[Any, ...] = (
    F.relu,
    F.relu6,
    F.leaky_relu,
    F.elu,
    F.gelu,
    F.silu,
    F.hardswish,
    torch.relu,
    torch.sigmoid,
    torch.tanh,
    F.sigmoid,
    F.tanh,
    F.dropout,
    F.max_pool1d,
    F.max_pool2d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
)
# Pooling reads (batch, channels, *spatial): given one dimension fewer, torch takes the
# tensor as unbatched and pools across the channels (across neurons).
POOL_RANKS: dict[Any, int] = {
    **dict.fromkeys((nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d), 3),
    **dict.fromkeys((nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d), 4),
    **dict.fromkeys((F.max_pool1d, F.avg_pool1d, F.adaptive_avg_pool1d, F.adaptive_max_pool1d), 3),
    **dict.fromkeys((F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d), 4),
}
PASS_METHODS = ("relu", "sigmoid", "tanh", "contiguous", "clone", "float", "to", "detach")
RESHAPES_FUNCTIONS: tuple[Any, ...] = (torch.flatten, torch.reshape)
RESHAPE_METHODS = ("flatten", "view", "reshape")
ADDS: tuple[Any, ...] = (operator.add, operator.iadd, torch.add)
REDUCE_METHODS = ("mean", "sum", "amax")
REDUCE_FUNCTIONS: tuple[Any, ...] = (torch.mean, torch.sum, torch.amax)


def refusal(node: fx.Node, why: str) -> TopologyError:
    """The error refusing ``node`` (named with its target) for reason ``why``."""
    return TopologyError(
        f"cannot derive a prune topology at node {node.name!r} ({node.target}): {why}"
    )


def unknown_operation(node: fx.Node) -> NoReturn:
    """Refuse ``node``: an operation whose effect on channels the trace does not know."""
    raise refusal(
        node,
        "an operation whose effect on channels the trace does not know (supported: "
        "Linear, ungrouped Conv1d/2d, BatchNorm, activations, dropout, pooling, flatten, "
        "residual adds, channel concatenation)",
    )


def node_shape(node: fx.Node) -> list[int]:
    """The shape of ``node``'s output (recorded by shape propagation); refused if not one tensor."""
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        raise refusal(node, "its output is not a single tensor")
    return list(meta.shape)


def check_pool_rank(node: fx.Node, rank: int | None) -> None:
    """Refuse a pooling of ``rank``-D inputs applied to a tensor of another rank (``None``: no pooling)."""
    if rank is None:
        return
    arg = node.args[0] if node.args else None
    shape = node_shape(arg) if isinstance(arg, fx.Node) else None
    if shape is not None and len(shape) != rank:
        raise refusal(
            node,
            f"pooling of {rank - 2} spatial dimension(s) applied to a {len(shape)}-D "
            f"tensor: torch takes it as unbatched and pools across channels (neurons); "
            f"give it (batch, channels{', length' if rank == 3 else ', height, width'})",
        )


def scalar_other(node: fx.Node) -> bool:
    """Whether a binary ``node`` combines its feature tensor with a constant (no second tensor)."""
    others = [a for a in node.args[1:] if isinstance(a, fx.Node)]
    return not others and isinstance(node.args[0], fx.Node)
