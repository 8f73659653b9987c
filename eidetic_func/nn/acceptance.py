"""What a traced network must show before its tasks can be promised bit-identical outputs.

The masks own parameters and BatchNorm statistics, and nothing else; the state's tensors
are handed to the network's forward. So a network is refused (:class:`TopologyError`,
naming the tensor, module or graph node) when, on the example input and on a random one:

- its forward in training mode changes a parameter, or a buffer other than a BatchNorm
  statistic (a running mean of its own, a step counter, a max-norm constraint, a
  ``.data =`` assignment): such state would move under later tasks, and no mask covers it;
- its forward in evaluation mode changes any parameter or buffer;
- two evaluations of the same input differ (``F.dropout(h, p)`` without
  ``training=self.training``, noise added in forward): a finished task's outputs must be
  a function of its input.

Every check runs on copies: the model passed in is never changed, and the caller's random
number generators are left as they were.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from eidetic_func.core.errors import TopologyError

# Buffers that BatchNorm updates in training mode: its running statistics are owned per
# channel by the masks; its batch counter only sets the update factor of free channels.
BN_UPDATED = ("running_mean", "running_var", "num_batches_tracked")

_RANDOM_FUNCTIONS = frozenset(
    {
        torch.rand,
        torch.randn,
        torch.rand_like,
        torch.randn_like,
        torch.randint,
        torch.randint_like,
        torch.randperm,
        torch.bernoulli,
        torch.normal,
        torch.poisson,
        torch.multinomial,
    }
)
_RANDOM_METHODS = frozenset(
    {"bernoulli_", "normal_", "uniform_", "random_", "exponential_", "geometric_", "cauchy_"}
    | {"log_normal_", "bernoulli", "multinomial"}
)
# function -> position of its ``training`` argument (all default to True)
_DROPOUTS = {
    F.dropout: 2,
    F.dropout1d: 2,
    F.dropout2d: 2,
    F.dropout3d: 2,
    F.alpha_dropout: 2,
    F.feature_alpha_dropout: 2,
}


def check_network(model: nn.Module, example_input: Tensor, graph: fx.Graph | None = None) -> None:
    """Refuse ``model`` (``forward(x, task)``) unless its forward writes nothing the masks do
    not own and its evaluation is deterministic (see the module docstring). ``graph``, the
    network's trace in evaluation mode, lets a refusal name the random node."""
    inputs = [example_input]
    if example_input.is_floating_point():
        generator = torch.Generator(device="cpu").manual_seed(0)
        noise = torch.randn(example_input.shape, generator=generator, dtype=example_input.dtype)
        inputs.append(noise.to(example_input.device))
    name = type(model).__name__
    with torch.random.fork_rng(devices=_cuda_devices(example_input)), torch.no_grad():
        trainer = copy.deepcopy(model).train()
        for x in inputs:
            before = _identities(trainer)
            _call(trainer, x, name, "training")
            _refuse_writes(trainer, before, "training", allowed=_bn_updated(trainer))
        evaluator = copy.deepcopy(model).eval()
        for x in inputs:
            before = _identities(evaluator)
            outputs = []
            for seed in (1, 2):
                torch.manual_seed(seed)
                outputs.append(_call(evaluator, x, name, "evaluation"))
            _refuse_writes(evaluator, before, "evaluation", allowed=set())
            if not _same(outputs[0], outputs[1]):
                raise TopologyError(
                    f"{name} gives two different outputs for the same input in evaluation "
                    f"mode{_random_nodes(graph)}: a finished task's outputs could not stay "
                    "bit-identical. Make randomness depend on self.training (e.g. "
                    "F.dropout(h, p, self.training), or an nn.Dropout module)"
                )


def _cuda_devices(x: Tensor) -> list[int]:
    return [x.device.index or 0] if x.device.type == "cuda" else []


def _call(model: nn.Module, x: Tensor, name: str, mode: str) -> object:
    try:
        return model(x, 0)
    except Exception as err:
        raise TopologyError(
            f"the example input does not run through {name} in {mode} mode: {err}"
        ) from err


def _tensors(model: nn.Module) -> Iterator[tuple[str, str, Tensor]]:
    """``(kind, name, tensor)`` of every parameter and buffer."""
    for key, p in model.named_parameters(remove_duplicate=False):
        yield "parameter", key, p
    for key, b in model.named_buffers(remove_duplicate=False):
        yield "buffer", key, b


def _identities(model: nn.Module) -> dict[str, tuple[int, int, int]]:
    """What changes when a tensor is written in place (version), replaced by assignment
    (identity) or through ``.data`` (storage)."""
    return {
        key: (id(t), t.data_ptr(), t._version) for _, key, t in _tensors(model) if t is not None
    }


def _bn_updated(model: nn.Module) -> set[str]:
    return {
        f"{prefix}.{stat}" if prefix else stat
        for prefix, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for stat in BN_UPDATED
    }


def _refuse_writes(
    model: nn.Module, before: dict[str, tuple[int, int, int]], mode: str, allowed: set[str]
) -> None:
    after = _identities(model)
    kinds = {key: kind for kind, key, _ in _tensors(model)}
    for key in sorted(before.keys() | after.keys()):
        if key in allowed or before.get(key) == after.get(key):
            continue
        module = key.rpartition(".")[0] or "the model itself"
        kind = kinds.get(key, "tensor")
        raise TopologyError(
            f"the forward of {type(model).__name__} writes its {kind} {key!r} (module "
            f"{module!r}) in {mode} mode: "
            + (
                "the masks own parameters and BatchNorm statistics only, so this state would "
                "change under later tasks. Keep it constant, or make it a parameter trained "
                "by the optimizer"
                if mode == "training"
                else "evaluating a finished task must change nothing"
            )
        )


def _same(a: object, b: object) -> bool:
    """Equal to the last bit (NaN where the other has NaN counts as equal)."""
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if not a.is_floating_point():
            return bool(torch.equal(a, b))
        nan = a.isnan()
        return bool(torch.equal(nan, b.isnan()) and torch.equal(a[~nan], b[~nan]))
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return bool(a == b)


def _random_nodes(graph: fx.Graph | None) -> str:
    """`` (random nodes: ...)`` naming the graph's random operations, or ''."""
    if graph is None:
        return ""
    found = []
    for node in graph.nodes:
        if (node.op == "call_function" and node.target in _RANDOM_FUNCTIONS) or (
            node.op == "call_method" and node.target in _RANDOM_METHODS
        ):
            found.append(node)
        elif node.op == "call_function" and node.target in _DROPOUTS:
            position = _DROPOUTS[node.target]
            training = node.kwargs.get(
                "training", node.args[position] if len(node.args) > position else True
            )
            if training is not False:
                found.append(node)
    if found:
        names = ", ".join(f"{n.name!r} ({getattr(n.target, '__name__', n.target)})" for n in found)
        return f" (random operations at graph nodes {names})"
    # A random call with no traced input (torch.randn(())) runs once while tracing and
    # enters the graph as a constant: name those nodes.
    constants = [
        n.name for n in graph.nodes if n.op == "get_attr" and "_tensor_constant" in str(n.target)
    ]
    if constants:
        return (
            f" (values computed outside the graph, e.g. random draws, at graph nodes {constants})"
        )
    return ""
