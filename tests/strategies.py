"""Model, optimizer and data generators shared by the property tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from eidetic_func.models import MLP, ConvNet, ResNet, TaskModel
from hypothesis import strategies as st
from torch import Tensor, nn

import eidetic_func as ef
from eidetic_func.methods.protocol import end_task, init_state


@dataclass(frozen=True)
class ModelSpec:
    """A small model to generate: kind, batch norm, width, depth, tasks."""

    kind: str
    bn: bool
    width: int
    num_layers: int
    num_tasks: int
    classes: int = 3

    def build(self, seed: int) -> TaskModel:
        torch.manual_seed(seed)
        heads = [self.classes] * self.num_tasks
        if self.kind == "mlp":
            return MLP(12, heads, num_layers=self.num_layers, width=self.width, bn=self.bn)
        if self.kind == "convnet":
            return ConvNet(2, heads, num_layers=self.num_layers, width=self.width, bn=self.bn)
        if self.kind == "convnet_flat":
            return ConvNet(2, heads, num_layers=1, width=self.width, bn=self.bn, image_size=8)
        if self.kind == "resnet":
            return ResNet(2, heads, n_blocks=[1, 2], width=self.width, bn=self.bn)
        if self.kind == "resnet_bottleneck":
            return ResNet(2, heads, n_blocks=[1, 1], expansion=4, width=self.width, bn=self.bn)
        raise ValueError(self.kind)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (12,) if self.kind == "mlp" else (2, 8, 8)


ALL_KINDS = ("mlp", "convnet", "convnet_flat", "resnet", "resnet_bottleneck")


def model_specs(kinds: tuple[str, ...] = ("mlp", "convnet")) -> st.SearchStrategy[ModelSpec]:
    return st.builds(
        ModelSpec,
        kind=st.sampled_from(kinds),
        bn=st.booleans(),
        width=st.integers(2, 6),
        num_layers=st.integers(1, 2),
        num_tasks=st.integers(2, 3),
    )


OptimizerFactory = Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]

OPTIMIZERS: dict[str, OptimizerFactory] = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.05),
    "sgd_momentum_wd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-2),
    "sgd_nesterov": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=1e-3, momentum=0.5),
    # fused kernels and .data writes change parameters without bumping version counters
    "adam_fused": lambda p: torch.optim.Adam(p, lr=1e-2, fused=True),
    "adamw_fused": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1, fused=True),
    # (torch's fused SGD with momentum fails once a tensor gets its first gradient late)
    "sgd_wd_fused": lambda p: torch.optim.SGD(p, lr=0.05, weight_decay=1e-2, fused=True),
    "sgd_through_data": lambda p: DataSGD(p, lr=0.05, weight_decay=1e-2),
}


class DataSGD(torch.optim.Optimizer):
    """SGD with weight decay written through ``.data``, as older code does: no version
    counter sees its writes, and it moves parameters that got no gradient."""

    def __init__(self, params: list[torch.nn.Parameter], lr: float, weight_decay: float) -> None:
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    def step(self, closure: None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                p.data.mul_(1 - group["lr"] * group["weight_decay"])
                if p.grad is not None:
                    p.data.add_(p.grad, alpha=-group["lr"])


def optimizer_names() -> st.SearchStrategy[str]:
    return st.sampled_from(sorted(OPTIMIZERS))


def batch(
    spec: ModelSpec, generator: torch.Generator, size: int = 6, device: str = "cpu"
) -> tuple[Tensor, Tensor]:
    """A batch drawn on the CPU (the same values on every device), then put on ``device``."""
    x = torch.randn(size, *spec.input_shape, generator=generator)
    y = torch.randint(0, spec.classes, (size,), generator=generator)
    return x.to(device), y.to(device)


# The devices the bit-identity properties run on: CUDA where there is one.
DEVICES = (
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
    ),
)


def prune_free_neurons(
    state: ef.EideticState,
    topology: ef.Topology,
    generator: torch.Generator,
    fraction: float,
    method: str = "random",
    model: TaskModel | None = None,
    data: list[tuple[Tensor, Tensor]] | None = None,
) -> ef.EideticState:
    """One pruning step (score, prune, bridge); a no-op when nothing is left to prune."""
    scores = ef.score(model, state, data, method=method, task=state.task, generator=generator)
    try:
        pruned = ef.prune(state, scores, fraction=fraction, method=method)
    except ef.NothingToPrune:
        return state
    return ef.bridge(pruned)


# How a task prunes each unit (cycled over tasks and units): the corners of ownership.
KEEP_ALL, PRUNE_SOME, KEEP_ONE = 0, 1, 2


def pruning_plans() -> st.SearchStrategy[tuple[int, ...]]:
    """Per (task, unit) pruning choices; ``KEEP_ALL`` makes a layer wholly owned by its task,
    which leaves the next layer's free neurons bias-only when forward transfer is off."""
    return st.lists(st.sampled_from((KEEP_ALL, PRUNE_SOME, KEEP_ONE)), min_size=1, max_size=8).map(
        tuple
    )


# A whole sequence to train: every model family, optimizer, forward transfer on and off,
# random pruning or a plan reaching the corners.
SEQUENCES: dict[str, st.SearchStrategy[Any]] = {
    "spec": model_specs(ALL_KINDS),
    "optimizer": optimizer_names(),
    "forward_transfer": st.booleans(),
    "seed": st.integers(0, 2**16),
    "plan": st.none() | pruning_plans(),
    "epochs": st.booleans(),
}


def prune_by_plan(
    state: ef.EideticState,
    topology: ef.Topology,
    plan: tuple[int, ...],
    generator: torch.Generator,
) -> ef.EideticState:
    """Prune each unit as ``plan`` says (``ef.prune_neurons`` + ``ef.bridge``)."""
    candidates = ef.prunable(state)
    chosen = {}
    for i, unit in enumerate(topology.units):
        free = candidates[unit.name]
        choice = plan[(state.task * len(topology.units) + i) % len(plan)]
        if choice == KEEP_ALL or int(free.sum()) < 2:
            continue
        if choice == PRUNE_SOME:
            drawn = torch.rand(free.shape, generator=generator).to(free.device)
            chosen[unit.name] = free & (drawn < 0.4)
        else:  # KEEP_ONE: every free neuron but the first
            first = int(free.nonzero()[0])
            chosen[unit.name] = free & (torch.arange(free.numel(), device=free.device) != first)
    if not chosen:  # a task that prunes nothing (as an unpruned last task): no bridge either
        return state
    return ef.bridge(ef.prune_neurons(state, chosen))


@dataclass
class Event:
    """One point of a task sequence: after a step, a prune, just before a finish
    (``finishing``), after a finish or a recycle."""

    kind: str
    task: int
    state: ef.EideticState


def run_sequence(
    model: TaskModel,
    spec: ModelSpec,
    optimizer: torch.optim.Optimizer,
    *,
    seed: int,
    steps: int,
    forward_transfer: bool,
    prune_fraction: float = 0.4,
    plan: tuple[int, ...] | None = None,
    compiled: bool = False,
    method: ef.Method | None = None,
    device: str = "cpu",
    on_step: Callable[[ef.EideticState, tuple[Tensor, Tensor], int, ef.EideticState], None]
    | None = None,
    epochs: bool = False,
) -> Iterator[Event]:
    """Train every task of ``spec`` in order with one optimizer; yield after every change.

    Without ``plan`` every task prunes ``prune_fraction`` of its neurons at random; with
    one, each unit is pruned as :func:`prune_by_plan` says. With ``method`` its steps
    (penalties, replayed losses, gradient transforms) train, and its end of task runs
    before each task is finished (EideticNet's freezing chained with the method).
    ``on_step(before, batch, task, after)`` sees every training step. Batches are drawn on
    the CPU and put on ``device`` (the model's). With ``epochs`` each phase's steps run as
    one epoch (``ef.train_epoch`` / ``ef.method_epoch``: the shell's path), yielding once.
    """
    assert not (epochs and on_step is not None), "on_step sees single steps"
    topology = model.topology()
    generator = torch.Generator().manual_seed(seed)
    state = ef.init(model)
    mstate = None if method is None else init_state(method, model, state)
    for task in range(spec.num_tasks):
        for phase in range(2):
            if epochs:
                data_list = [batch(spec, generator, device=device) for _ in range(steps)]
                if method is None:
                    state, _ = ef.train_epoch(
                        model, state, data_list, optimizer=optimizer, task=task, compiled=compiled
                    )
                else:
                    state, mstate, _ = ef.method_epoch(
                        method, model, state, mstate, data_list, optimizer=optimizer, task=task
                    )
                yield Event("step", task, state)
            for _ in range(0 if epochs else steps):
                data = batch(spec, generator, device=device)
                before = state
                if method is None:
                    state, _ = ef.train_step(
                        model, state, data, optimizer=optimizer, task=task, compiled=compiled
                    )
                else:
                    state, mstate, _ = ef.method_step(
                        method, model, state, mstate, data, optimizer=optimizer, task=task
                    )
                if on_step is not None:
                    on_step(before, data, task, state)
                yield Event("step", task, state)
            if phase == 0:
                if plan is None:
                    state = prune_free_neurons(state, topology, generator, prune_fraction)
                else:
                    state = prune_by_plan(state, topology, plan, generator)
                yield Event("prune", task, state)
        if method is not None:
            ctx = ef.TaskContext(
                [batch(spec, generator, device=device)], task=task, generator=generator
            )
            state, mstate, _ = end_task(method, model, state, mstate, ctx)
        yield Event("finishing", task, state)
        state = ef.finish_task(state, task=task, forward_transfer=forward_transfer)
        yield Event("finish", task, state)
        state = ef.recycle(state, generator=generator)
        yield Event("recycle", task, state)


def owned_snapshot(state: ef.EideticState) -> dict[str, tuple[Tensor, Tensor]]:
    """Every owned entry (parameters and BN statistics): ``{name: (mask, values)}``."""
    values = {**state.params, **state.buffers}
    return {k: (own >= 0, values[k].clone()) for k, own in state.owner.items()}


def assert_owned_unchanged(
    snapshot: dict[str, tuple[Tensor, Tensor]], state: ef.EideticState, where: str
) -> None:
    values = {**state.params, **state.buffers}
    for k, (mask, old) in snapshot.items():
        assert torch.equal(values[k][mask], old[mask]), f"owned entries of {k} moved ({where})"


def prune_rows(
    state: ef.EideticState, topology: ef.Topology, weight_key: str, indices: list[int]
) -> ef.EideticState:
    """Prune neurons ``indices`` of the unit produced by ``weight_key``'s layer, then bridge."""
    layer = weight_key.removesuffix(".weight")
    unit = next(u for u in topology.units if layer in u.producers)
    dead = torch.zeros(state.params[weight_key].shape[0], dtype=torch.bool)
    dead[indices] = True
    return ef.bridge(ef.prune_neurons(state, {unit.name: dead}))


def perturbed(model: nn.Module, seed: int) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Parameters and non-trivial BN statistics (fresh ones are 0 / 1), seeded."""
    g = torch.Generator().manual_seed(seed)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    buffers = {}
    for k, v in model.named_buffers():
        if k.endswith("running_mean"):
            v = v + 0.3 * torch.randn(v.shape, generator=g, dtype=v.dtype)
        elif k.endswith("running_var"):
            v = v + torch.rand(v.shape, generator=g, dtype=v.dtype)
        if not k.endswith("frozen_channels"):
            buffers[k] = v
    return params, buffers
