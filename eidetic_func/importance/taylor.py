"""First-order Taylor importance of neurons (Molchanov et al., 2019), computed exactly.

For a neuron with parameters θ_n (the rows and biases of its producer layers) the
per-sample importance is ``(Σ_{w∈θ_n} w · ∂L_i/∂w)²`` for sample ``i``, averaged over
samples. A layer's output ``z = W x + b`` is linear in each output row, so with a gate
``g`` multiplied into the neuron's outputs, ``∂L/∂g |_{g=1} = Σ_{outputs} z · ∂L/∂z =
Σ_{w∈θ_n} w · ∂L/∂w``: the same number, without any weight gradient. Implementations:

- ``fast``: the model traced with ``torch.fx`` with one gate per sample and neuron
  multiplied into every producer's output; one forward and one ``autograd.grad`` to the
  gates per batch (:func:`gated`). :func:`compile_scorer` is the same under
  ``torch.compile``;
- ``vmap``: the reference, ``vmap(grad(loss_i))`` over samples with ``functional_call``;
- ``loop``: the same per-sample gradients in a Python loop (the slow, obvious way).

``vmap`` and ``loop`` are the shared per-sample engine's (:mod:`eidetic_func.importance.per_sample`,
which Fisher and MAS use too), with the statistic ``Σ_{w∈θ_n} w · ∂L_i/∂w`` per neuron.

All use BatchNorm in inference mode (a sample's loss must not depend on the other
samples) and a *summed* loss, so ``∂(Σ_j L_j)/∂g_i = ∂L_i/∂g_i``: per-sample gradients
of a mean loss would be ``1/B`` of these and the squared scores ``1/B²``.

:func:`batch_scores` is the original EideticNet variant, kept for parity: per batch, the
mean over samples and positions of ``|z · ∂L/∂z|`` (mean-reduced loss), summed over
batches. It ranks neurons differently from the per-sample definition.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from eidetic_func.core.compiling import compile_kwargs, device_of
from eidetic_func.core.errors import DataError, TopologyError
from eidetic_func.core.state import EideticState
from eidetic_func.core.topology import Topology, Unit
from eidetic_func.core.types import Batch
from eidetic_func.importance.per_sample import (
    Implementation,
    check_finite,
    check_implementation,
    cross_entropy_loss,
    per_sample_stats,
    restrict,
)
from eidetic_func.nn.tracing import module_calls, redirect, returning, trace
from eidetic_func.ops.forward import train_mode

# reduce(partial sums per unit, sample count) -> the sums and count over all processes
Reduce = Callable[[dict[str, Tensor], int], tuple[dict[str, Tensor], int]]
# (params, buffers) of a module, as functional_call takes them
Entries = tuple[dict[str, Tensor], dict[str, Tensor]]


def _producer_calls(
    model: nn.Module, topology: Topology, task: int
) -> tuple[fx.Graph, dict[str, fx.Node]]:
    """The graph of ``model(x, task)`` and the (single) call node of each producer."""
    graph = trace(model, task)
    producers = {p for unit in topology.units for p in unit.producers}
    calls = module_calls(graph, producers)
    missing = sorted(name for name, nodes in calls.items() if not nodes)
    if missing:
        raise TopologyError(f"producers never called in the forward pass: {missing}")
    shared = sorted(name for name, nodes in calls.items() if len(nodes) > 1)
    if shared:
        raise TopologyError(f"producers called more than once are not neurons: {shared}")
    return graph, {name: nodes[0] for name, nodes in calls.items()}


def tapped(model: nn.Module, topology: Topology, task: int) -> fx.GraphModule:
    """``model`` for head ``task`` returning ``(logits, {producer: output})``.

    Call it as ``tapped(x, task)``. Shares the model's parameters and buffers; the model
    itself is not modified.
    """
    graph, nodes = _producer_calls(model, topology, task)
    return returning(model, graph, {name: nodes[name] for name in sorted(nodes)})


def _apply_gate(z: Tensor, gate: Tensor) -> Tensor:
    """``z [B, C, ...] * gate [B, C]``, the gate broadcast over positions."""
    return z * gate.view(gate.shape + (1,) * (z.dim() - 2))


def gated(model: nn.Module, topology: Topology, task: int) -> fx.GraphModule:
    """``model`` for head ``task`` with a gate ``[B, C]`` per unit on its producers' outputs.

    Call it as ``gated(x, task, gates)`` with ``gates = {unit name: Tensor [B, C]}``; with
    all gates 1 it computes exactly the model's logits. Shares the model's tensors.
    """
    graph, nodes = _producer_calls(model, topology, task)
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    with graph.inserting_after(placeholders[-1]):
        gates = graph.placeholder("gates", default_value=None)  # after task's default
    for unit in topology.units:
        for producer in unit.producers:
            node = nodes[producer]
            with graph.inserting_after(node):
                gate = graph.call_function(_getitem, (gates, unit.name))
            with graph.inserting_after(gate):
                out = graph.call_function(_apply_gate, (node, gate))
            redirect(node, out)
    graph.lint()
    return fx.GraphModule(model, graph)


def _getitem(mapping: dict[str, Tensor], key: str) -> Tensor:
    return mapping[key]


def per_sample_scores(
    model: nn.Module,
    state: EideticState,
    params: dict[str, Tensor],
    batches: Iterable[Batch],
    *,
    task: int,
    topology: Topology,
    implementation: Implementation = "fast",
    chunk_size: int | None = None,
    reduce: Reduce | None = None,
) -> dict[str, Tensor]:
    """Per-sample Taylor importance ``[C]`` per unit, averaged over every sample of ``batches``.

    ``chunk_size`` bounds how many samples' weight gradients ``vmap`` holds at once
    (default: the engine's, below 16 MiB per parameter). ``reduce(sums, count)`` combines
    partial sums across processes (data parallel).
    """
    implementation = check_implementation(implementation)
    module = gated(model, topology, task) if implementation == "fast" else model
    params, buffers = restrict(module, params, state.buffers)
    needed = _producer_params(topology, params)

    def contributions(x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """``{unit: [B, C]}``: each sample's ``Σ_{w∈θ_n} w · ∂L_i/∂w``."""
        if implementation == "fast":
            return _gate_contributions(module, (params, buffers), (x, y), task, topology)
        return per_sample_stats(
            model,
            params,
            buffers,
            x,
            y,
            task=task,
            loss=cross_entropy_loss,
            stat=lambda grads: _weight_contributions(topology, needed, grads),
            combine="stack",
            wrt=needed,
            implementation=implementation,
            chunk_size=chunk_size,
        )

    with train_mode(module, False):
        return accumulate_squares((contributions(x, y) for x, y in batches), reduce=reduce)


def accumulate_squares(
    per_batch: Iterable[dict[str, Tensor]], *, reduce: Reduce | None = None
) -> dict[str, Tensor]:
    """Mean over samples of the squared per-sample contributions ``{unit: [B, C]}``.

    Sums are kept in float64, so the order in which samples (or processes) are added does
    not reorder neurons whose scores differ by more than float64 rounding.
    """
    totals: dict[str, Tensor] = {}
    count = 0
    for contributions in per_batch:
        for name, c in contributions.items():
            square = c.detach().double().square().sum(0)
            totals[name] = totals[name] + square if name in totals else square
        count += next(iter(contributions.values())).shape[0]
    if reduce is not None:
        totals, count = reduce(totals, count)
    if count == 0:
        raise DataError("no samples to score: the batches were empty")
    scores = {name: total / count for name, total in totals.items()}
    check_finite(scores, "the per-sample Taylor importance", of="unit")
    return scores


def compile_scorer(
    model: nn.Module, topology: Topology, task: int, **compile_options: object
) -> Callable[[dict[str, Tensor], dict[str, Tensor], Tensor, Tensor], dict[str, Tensor]]:
    """The fast path under ``torch.compile``: ``scorer(params, buffers, x, y) -> {unit: [B, C]}``.

    Build once, call per batch (the first call compiles); feed its results to
    :func:`accumulate_squares`. The model must be in inference mode when called.
    ``compile_options`` go to ``torch.compile``; without a backend or options of their
    own, CPU models get the plain forward/backward partition
    (:func:`eidetic_func.core.compiling.compile_kwargs`).
    """
    module = gated(model, topology, task)

    def logits(
        params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor, gates: dict[str, Tensor]
    ) -> Tensor:
        return functional_call(module, (params, buffers), (x, task, gates))

    compiled = torch.compile(logits, **compile_kwargs(device_of(model), compile_options))

    def scorer(
        params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor, y: Tensor
    ) -> dict[str, Tensor]:
        gates = _ones_gates(params, topology, x.shape[0])
        out = compiled(*restrict(module, params, buffers), x, gates)
        loss = F.cross_entropy(out, y, reduction="sum")
        return dict(zip(gates, torch.autograd.grad(loss, list(gates.values()))))

    return scorer


def batch_scores(
    model: nn.Module,
    state: EideticState,
    params: dict[str, Tensor],
    batches: Iterable[Batch],
    *,
    task: int,
    topology: Topology,
    reduce: Reduce | None = None,
) -> dict[str, Tensor]:
    """The original EideticNet scores: per batch, mean of ``|z · ∂L_mean/∂z|``; summed."""
    module = tapped(model, topology, task)
    params, buffers = restrict(module, params, state.buffers)
    totals: dict[str, Tensor] = {}
    seen = False
    with train_mode(module, False):
        for x, y in batches:
            seen = True
            # x requires grad only so that the taps are part of a graph; autograd.grad
            # stops at the taps, so no weight gradient is computed.
            logits, taps = functional_call(
                module, (params, buffers), (x.detach().requires_grad_(True), task)
            )
            loss = F.cross_entropy(logits, y)
            grads = dict(zip(taps, torch.autograd.grad(loss, list(taps.values()))))
            for unit in topology.units:
                s = sum(_mean_abs(taps[p] * grads[p]).detach() for p in unit.producers)
                assert isinstance(s, Tensor)
                totals[unit.name] = totals[unit.name] + s if unit.name in totals else s
    if reduce is not None:
        totals, seen_count = reduce(totals, int(seen))
        seen = seen_count > 0
    if not seen:
        raise DataError("no samples to score: the batches were empty")
    check_finite(totals, "the batch-level Taylor importance", of="unit")
    return totals


def _ones_gates(params: dict[str, Tensor], topology: Topology, batch: int) -> dict[str, Tensor]:
    out = {}
    for unit in topology.units:
        w = params[f"{unit.producers[0]}.weight"]
        out[unit.name] = torch.ones(
            batch, w.shape[0], dtype=w.dtype, device=w.device, requires_grad=True
        )
    return out


def _gate_contributions(
    module: nn.Module, entries: Entries, batch: Batch, task: int, topology: Topology
) -> dict[str, Tensor]:
    """``{unit: [B, C]}`` by one backward to per-sample gates (``module`` is :func:`gated`,
    ``entries`` its ``(params, buffers)``)."""
    (params, _), (x, y) = entries, batch
    gates = _ones_gates(params, topology, x.shape[0])
    logits = functional_call(module, entries, (x, task, gates))
    loss = F.cross_entropy(logits, y, reduction="sum")
    return dict(zip(gates, torch.autograd.grad(loss, list(gates.values()))))


def _producer_params(topology: Topology, params: dict[str, Tensor]) -> dict[str, Tensor]:
    keys = [
        f"{p}.{leaf}" for u in topology.units for p in u.producers for leaf in ("weight", "bias")
    ]
    return {k: params[k] for k in keys if k in params}


def _weight_contributions(
    topology: Topology, params: dict[str, Tensor], grads: dict[str, Tensor]
) -> dict[str, Tensor]:
    """Σ over each neuron's weights and biases of ``w · ∂L/∂w`` for one sample: ``[C]``."""

    def one(p: str) -> Tensor:
        total = (params[f"{p}.weight"] * grads[f"{p}.weight"]).flatten(1).sum(1)
        bias = f"{p}.bias"
        return total + params[bias] * grads[bias] if bias in params else total

    return {unit.name: _sum_producers(unit, one) for unit in topology.units}


def _mean_abs(t: Tensor) -> Tensor:
    """``[B, C, ...]`` → ``[C]``: mean of ``|t|`` over samples and positions."""
    return t.abs().flatten(2).mean(2).mean(0) if t.dim() > 2 else t.abs().mean(0)


def _sum_producers(unit: Unit, fn: Callable[[str], Tensor]) -> Tensor:
    total = fn(unit.producers[0])
    for p in unit.producers[1:]:
        total = total + fn(p)
    return total
