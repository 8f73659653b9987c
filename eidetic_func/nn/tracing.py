"""Graph rewrites with ``torch.fx``: expose intermediate tensors without hooks.

Scoring and per-sample statistics need layer inputs, outputs and their gradients. Rather
than registering hooks on the user's modules, the model is traced once into a graph that
*returns* those tensors (or multiplies gates into them); the result is a new module that
shares the model's parameters and leaves the model itself untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch.fx as fx
from torch import nn

from eidetic_func.core.errors import TopologyError
from eidetic_func.nn.batchnorm import _TaskBatchNorm
from eidetic_func.nn.grown_layers import GrownConv2d, GrownLinear


class Tracer(fx.Tracer):
    """Keeps Task BatchNorm opaque (its branches depend on tensor sizes, not on the trace),
    and grown layers: a layer is one call in the graph however it computes its blocks."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        opaque = isinstance(m, _TaskBatchNorm | GrownLinear | GrownConv2d)
        return opaque or super().is_leaf_module(m, module_qualified_name)


def trace(model: nn.Module, task: int | None) -> fx.Graph:
    """The graph of ``model(x, task)`` (or ``model(x)`` with ``task=None``)."""
    try:
        return Tracer().trace(model, concrete_args=None if task is None else {"task": task})
    except Exception as err:
        raise TopologyError(f"cannot trace {type(model).__name__} with torch.fx: {err}") from err


def module_calls(graph: fx.Graph, names: Iterable[str]) -> dict[str, list[fx.Node]]:
    """The call nodes of each module path in ``names`` (empty when never called)."""
    wanted = set(names)
    calls: dict[str, list[fx.Node]] = {name: [] for name in wanted}
    for node in graph.nodes:
        if node.op == "call_module" and node.target in wanted:
            calls[str(node.target)].append(node)
    return calls


def returning(model: nn.Module, graph: fx.Graph, extra: object) -> fx.GraphModule:
    """``model``'s graph returning ``(original output, extra)``; ``extra`` may hold nodes."""
    output = next(n for n in graph.nodes if n.op == "output")
    output.args = ((output.args[0], extra),)
    graph.lint()
    return fx.GraphModule(model, graph)


def detach_uses(graph: fx.Graph, node: fx.Node) -> fx.Node:
    """Make downstream code read a copy of ``node``, so nothing overwrites it in place."""
    with graph.inserting_after(node):
        copy = graph.call_method("clone", (node,))
    redirect(node, copy)
    return copy


def redirect(node: fx.Node, new: fx.Node) -> None:
    """Every user of ``node`` but ``new`` itself reads ``new`` instead."""
    keep: Callable[[fx.Node], bool] = lambda user: user is not new  # noqa: E731
    node.replace_all_uses_with(new, delete_user_cb=keep)
