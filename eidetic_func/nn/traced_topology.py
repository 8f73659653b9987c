"""A model's prune topology derived by tracing (``torch.fx``), for any network that follows
the library's convention: ``forward(x, task)`` with one Linear head per task in ``heads``.

The trace follows where every channel comes from. Each value in the graph is described by
its channel axis (dim 1) as a list of *segments*: a run of channels of one unit, or of the
network input, each spread over ``repeat`` columns once a feature map is flattened. Then:

- Linear / Conv1d / Conv2d (ungrouped) read their input's unit segments (one
  :class:`Reader` per segment, at its column offset) and start a new unit;
- BatchNorm joins the unit it normalizes;
- activations, dropout, pooling, flatten / view / reshape and channel-wise reductions pass
  channels through (flattening multiplies ``repeat`` by the spatial size);
- ``a + b`` of two feature maps ties their units into one (a residual stream);
- ``torch.cat`` along channels concatenates segments;
- the heads read the features of head 0's input (every head reads the same features).

Anything that mixes channels in another way — grouped or depthwise convolutions,
LayerNorm / GroupNorm, attention, products of two feature maps, a network input added to a
unit, an unknown module or function — cannot be pruned soundly by structured masks and is
refused with a :class:`TopologyError` naming the graph node and why (the operations known
and the refusals: :mod:`eidetic_func.nn.trace_rules`). The result is checked
with :func:`check_topology` like a declared one.
"""

from __future__ import annotations

import copy
import math
import operator
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.fx.passes.shape_prop import ShapeProp

from eidetic_func.core.errors import TopologyError
from eidetic_func.core.topology import Reader, Topology, Unit, check_topology
from eidetic_func.nn.acceptance import check_network
from eidetic_func.nn.trace_rules import (
    ADDS,
    PASS_FUNCTIONS,
    PASS_METHODS,
    PASS_MODULES,
    POOL_RANKS,
    REDUCE_FUNCTIONS,
    REDUCE_METHODS,
    RESHAPE_METHODS,
    RESHAPES_FUNCTIONS,
    check_pool_rank,
    node_shape,
    refusal,
    scalar_other,
    unknown_operation,
)
from eidetic_func.nn.tracing import Tracer

INPUT = -1  # the segment source of network inputs (not a unit)


@dataclass(frozen=True)
class Segment:
    """``size`` channels of ``source`` (a unit id, or ``INPUT``), each ``repeat`` columns wide."""

    source: int
    size: int
    repeat: int = 1


@dataclass
class _Unit:
    producers: list[str]
    norms: list[str] = field(default_factory=list)
    readers: list[Reader] = field(default_factory=list)


def trace_topology(model: nn.Module, example_input: Tensor) -> Topology:
    """The prune topology of ``model`` (``forward(x, task)``, heads in ``model.heads``).

    ``example_input`` is one batch (at least two samples if the model has BatchNorm) of the
    inputs the model takes; it is run through copies of the model, which is never changed.
    The network must also pass :func:`eidetic_func.nn.acceptance.check_network`: its forward
    writes no parameter and no buffer but BatchNorm statistics, and evaluates
    deterministically.
    Units come in the order their first producer runs; a unit is named after its
    producer, a residual stream of several producers ``stream.<k>``.
    """
    heads = getattr(model, "heads", None)
    if not isinstance(heads, nn.ModuleList) or len(heads) == 0:
        raise TopologyError(
            f"{type(model).__name__} has no `heads` ModuleList: the convention is one Linear "
            "head per task in model.heads, and forward(x, task)"
        )
    for t, head in enumerate(heads):
        if not isinstance(head, nn.Linear):
            raise TopologyError(f"heads.{t} is a {type(head).__name__}; heads must be Linear")
    replica = copy.deepcopy(model).eval()
    try:
        graph = Tracer().trace(replica, concrete_args={"task": 0})
    except Exception as err:
        raise TopologyError(f"cannot trace {type(model).__name__} with torch.fx: {err}") from err
    module = fx.GraphModule(replica, graph)
    try:
        with torch.no_grad():
            ShapeProp(module).propagate(example_input)
    except Exception as err:
        raise TopologyError(
            f"the example input does not run through {type(model).__name__}: {err}"
        ) from err
    topology = _Walk(module, len(heads)).topology(model)
    check_network(model, example_input, graph)
    return topology


class _Walk:
    """One pass over the traced graph, building units with a union-find over residual ties."""

    def __init__(self, module: fx.GraphModule, num_heads: int) -> None:
        self.module = module
        self.modules = dict(module.named_modules())
        self.num_heads = num_heads
        self.units: list[_Unit] = []
        self.parent: list[int] = []
        self.values: dict[fx.Node, list[Segment] | None] = {}  # None: not a feature tensor
        self.head_input: list[Segment] | None = None

    def topology(self, model: nn.Module) -> Topology:
        for node in self.module.graph.nodes:
            self.values[node] = self._visit(node)
        if self.head_input is None:
            raise TopologyError("forward(x, 0) never calls heads.0")
        heads = tuple(f"heads.{t}" for t in range(self.num_heads))
        for head in heads:
            self._read(head, self.head_input, head)
        topology = self._build(heads)
        params = {k: v.detach() for k, v in model.named_parameters()}
        buffers = {k: v.detach() for k, v in model.named_buffers()}
        check_topology(topology, params, buffers)
        return topology

    # ------------------------------------------------------------------------ graph nodes

    def _visit(self, node: fx.Node) -> list[Segment] | None:
        if node.op == "placeholder":
            if not hasattr(node.meta.get("tensor_meta"), "shape"):
                return None  # the concrete task id
            shape = node_shape(node)
            return [Segment(INPUT, shape[1] if len(shape) > 1 else 1)]
        if node.op in ("output", "get_attr"):
            return None
        if node.op == "call_module":
            return self._module(node, self.modules[str(node.target)])
        if not any(self.values.get(a) for a in node.all_input_nodes):
            return None  # no feature tensor flows in: guards, size arithmetic
        if node.op == "call_function":
            return self._function(node)
        if node.op == "call_method":
            return self._method(node)
        raise refusal(node, f"unsupported graph operation {node.op!r}")

    def _module(self, node: fx.Node, m: nn.Module) -> list[Segment] | None:
        name = str(node.target)
        x = self._input(node, 0)
        if name.startswith("heads."):
            if name != "heads.0":
                raise refusal(node, "forward(x, 0) must call only heads.0")
            if self.head_input is not None:
                raise refusal(node, "the head is called twice; a task's logits are one call")
            self.head_input = x
            return None
        if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d):
            if isinstance(m, nn.Conv1d | nn.Conv2d) and m.groups != 1:
                raise refusal(
                    node,
                    f"a grouped or depthwise convolution (groups={m.groups}) ties "
                    "input and output channels in groups; structured masks cannot prune it",
                )
            if any(name in u.producers for u in self.units):
                raise refusal(node, "the layer is called twice (shared weights)")
            self._read(name, x, node.name)
            self.units.append(_Unit(producers=[name]))
            self.parent.append(len(self.parent))
            return [Segment(len(self.units) - 1, int(m.weight.shape[0]))]
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if any(name in u.norms for u in self.units):
                raise refusal(
                    node,
                    "the BatchNorm is called twice: its per-channel statistics and weights "
                    "would be shared by two units (or counted twice in one)",
                )
            sources = {self._find(s.source) for s in x if s.source != INPUT}
            if len(sources) != 1 or any(s.source == INPUT for s in x):
                raise refusal(node, "BatchNorm must normalize the channels of one unit")
            self.units[sources.pop()].norms.append(name)
            return x
        if isinstance(m, PASS_MODULES):
            check_pool_rank(node, POOL_RANKS.get(type(m)))
            return x
        if isinstance(m, nn.Flatten):
            return self._flatten(node, x, m.start_dim)
        raise refusal(
            node,
            f"{type(m).__name__} is not supported (it may mix channels: LayerNorm, GroupNorm, "
            "attention, ...)",
        )

    def _function(self, node: fx.Node) -> list[Segment] | None:
        target = node.target
        if target is getattr and node.args[1] in ("shape", "dtype", "device", "ndim"):
            return None  # a size or a property, not a feature tensor
        if target is operator.getitem or target is getattr:
            return None if self.values.get(node.args[0]) is None else unknown_operation(node)  # type: ignore[arg-type]
        if target in PASS_FUNCTIONS:
            check_pool_rank(node, POOL_RANKS.get(target))
            return self._input(node, 0)
        if target in ADDS:
            return self._add(node)
        if target is torch.cat:
            return self._cat(node)
        if target in RESHAPES_FUNCTIONS:
            return self._reshape(node, self._input(node, 0))
        if target in REDUCE_FUNCTIONS:
            return self._reduce(node, self._input(node, 0))
        if target in (operator.mul, operator.truediv, torch.mul) and scalar_other(node):
            return self._input(node, 0)
        return unknown_operation(node)

    def _method(self, node: fx.Node) -> list[Segment] | None:
        name = str(node.target)
        if name == "size" or name == "dim":
            return None
        x = self._input(node, 0)
        if name in PASS_METHODS:
            return x
        if name in ("expand", "repeat") and all(s.source == INPUT for s in x):
            return [Segment(INPUT, node_shape(node)[1])]  # e.g. grey images into RGB
        if name in RESHAPE_METHODS:
            return self._reshape(node, x)
        if name in REDUCE_METHODS:
            return self._reduce(node, x)
        if name in ("add", "add_"):
            return self._add(node)
        if name in ("mul", "mul_", "div", "div_") and scalar_other(node):
            return x
        return unknown_operation(node)

    # --------------------------------------------------------------------- channel rules

    def _read(self, layer: str, x: list[Segment], where: str) -> None:
        """``layer`` reads ``x``: a Reader for every unit segment (never the input mixed in)."""
        if all(s.source == INPUT for s in x):
            return
        if any(s.source == INPUT for s in x):
            raise TopologyError(
                f"node {where!r}: {layer} reads the network input and units together; a "
                "layer reads either the input or units"
            )
        roots = [self._find(s.source) for s in x]
        if len(set(roots)) != len(roots):
            raise TopologyError(
                f"node {where!r}: {layer} reads the same unit twice (e.g. torch.cat([h, h * 2])); "
                "a pruned or grown neuron must be one column range per reader"
            )
        offset = 0
        for s, root in zip(x, roots):
            self.units[root].readers.append(Reader(layer, s.repeat, offset))
            offset += s.size * s.repeat

    def _add(self, node: fx.Node) -> list[Segment] | None:
        tensors = [a for a in node.args if isinstance(a, fx.Node) and self.values.get(a)]
        if not tensors:
            return None  # arithmetic on sizes
        for other in node.args:
            if not isinstance(other, fx.Node) or other in tensors:
                continue
            shape = getattr(other.meta.get("tensor_meta"), "shape", None)
            if shape is not None and math.prod(shape) > 1:
                raise refusal(
                    node,
                    f"a tensor of shape {tuple(shape)} that no layer of the topology holds "
                    f"({other.target if other.op == 'get_attr' else other.name}) is added to "
                    "the channels: a pruned neuron would still carry it, and growth could not "
                    "widen it (a scalar is fine; a per-channel bias belongs in a layer)",
                )
        if len(tensors) == 1:
            return self.values[tensors[0]]
        a, b = (self.values[t] for t in tensors)
        assert a is not None and b is not None
        if [(s.size, s.repeat) for s in a] != [(s.size, s.repeat) for s in b]:
            raise refusal(node, "the two summands are not laid out alike channel by channel")
        for sa, sb in zip(a, b):
            if (sa.source == INPUT) != (sb.source == INPUT):
                raise refusal(
                    node,
                    "the network input is added to a unit: a pruned channel would still "
                    "carry the input",
                )
            if sa.source != INPUT:
                self._union(sa.source, sb.source)
        return a

    def _cat(self, node: fx.Node) -> list[Segment]:
        parts = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if dim not in (1, -len(node_shape(node))):
            raise refusal(node, f"concatenation along dim {dim}, not the channel dim 1")
        out: list[Segment] = []
        for p in parts:  # type: ignore[union-attr]
            value = self.values.get(p) if isinstance(p, fx.Node) else None
            if value is None:
                raise refusal(node, "concatenates something that is not a feature tensor")
            out.extend(value)
        return out

    def _reshape(self, node: fx.Node, x: list[Segment]) -> list[Segment]:
        before, after = node_shape(node.args[0]), node_shape(node)  # type: ignore[arg-type]
        if before == after or (len(after) > 2 and after[:2] == before[:2]):
            return x  # row-major: equal leading dims keep every channel where it was
        if len(after) == 2 and after[0] == before[0] and len(before) > 2:
            spatial = 1
            for d in before[2:]:
                spatial *= d
            return [Segment(s.source, s.size, s.repeat * spatial) for s in x]
        raise refusal(
            node,
            f"a reshape from {tuple(before)} to {tuple(after)} is not a flatten of "
            "(batch, channels, ...) into (batch, features)",
        )

    def _flatten(self, node: fx.Node, x: list[Segment], start_dim: int) -> list[Segment]:
        if start_dim != 1:
            raise refusal(node, f"flatten from dim {start_dim}; only from dim 1")
        return self._reshape(node, x)

    def _reduce(self, node: fx.Node, x: list[Segment]) -> list[Segment]:
        before = node_shape(node.args[0])  # type: ignore[arg-type]
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        dims = (dims,) if isinstance(dims, int) else dims
        if not isinstance(dims, tuple | list) or not dims:
            raise refusal(node, "a reduction over every dimension mixes channels")
        axes = {int(d) % len(before) for d in dims}
        if 0 in axes or 1 in axes:
            raise refusal(node, "a reduction over the batch or channel dimension")
        return x  # a reduction over spatial dims keeps the channels

    # ------------------------------------------------------------------------- helpers

    def _input(self, node: fx.Node, i: int) -> list[Segment]:
        arg = node.args[i] if i < len(node.args) else None
        value = self.values.get(arg) if isinstance(arg, fx.Node) else None
        if value is None:
            raise refusal(node, "its input is not a feature tensor the trace follows")
        return value

    def _find(self, u: int) -> int:
        while self.parent[u] != u:
            self.parent[u] = self.parent[self.parent[u]]
            u = self.parent[u]
        return u

    def _union(self, a: int, b: int) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def _build(self, heads: tuple[str, ...]) -> Topology:
        roots = sorted({self._find(u) for u in range(len(self.units))})
        merged: dict[int, _Unit] = {r: _Unit(producers=[]) for r in roots}
        for u, unit in enumerate(self.units):
            target = merged[self._find(u)]
            target.producers.extend(unit.producers)
            target.norms.extend(unit.norms)
            target.readers.extend(r for r in unit.readers if r not in target.readers)
        units, streams = [], 0
        for r in roots:
            unit = merged[r]
            if len(unit.producers) > 1:
                name, streams = f"stream.{streams}", streams + 1
            else:
                name = unit.producers[0]
            units.append(Unit(name, tuple(unit.producers), tuple(unit.norms), tuple(unit.readers)))
        return Topology(units=tuple(units), heads=heads)
