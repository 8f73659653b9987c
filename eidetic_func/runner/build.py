"""What a run is built from: its task sequence, network, prune topology and optimizer.

Each factory is a function of the :class:`RunConfig` (and the method, built once per run
by the caller); the global RNG they draw from is seeded by the caller.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from typing import Any

import torch
from torch import nn

from eidetic_func import data as data_module
from eidetic_func.core.errors import ConfigError
from eidetic_func.core.state import declared_topology
from eidetic_func.core.topology import Topology
from eidetic_func.data.scenario import SharedHead, head_sizes, scenario_sequence
from eidetic_func.data.task_split import image_folder
from eidetic_func.methods.protocol import Method, traits
from eidetic_func.nn.acceptance import check_network
from eidetic_func.nn.multihead import MultiHead, multihead
from eidetic_func.nn.traced_topology import trace_topology
from eidetic_func.runner.config import (
    IMAGEFOLDER,
    IMPORT,
    TORCHVISION,
    RunConfig,
    parse_task_order,
    torchvision_classifier,
)


def build_model(
    config: RunConfig, sequence: data_module.TaskSequence, method: Method | None = None
) -> nn.Module:
    """The network ``config.model`` for ``sequence``: one head per task, plus the router's;
    in the class- and domain-incremental scenarios one head, shared by every task.
    ``method``: the run's (default: ``config.build_method()``)."""
    method = config.build_method() if method is None else method
    router = [len(sequence)] if uses_router(config, method) else []
    network = _network(
        config, method, head_sizes(sequence, config.scenario) + router, sequence.input_shape
    )
    return network if config.scenario == "task" else SharedHead(network, len(sequence))


def _network(
    config: RunConfig, method: Method, heads: list[int], input_shape: tuple[int, ...]
) -> nn.Module:
    """``config.model`` with the given head sizes, for inputs of ``input_shape`` (C, H, W)."""
    from eidetic_func.models import MLP, ConvNet, ResNet

    channels = input_shape[0]
    if traits(method).network == "progressive":
        from eidetic_func.models.progressive import ProgressiveMLP

        return ProgressiveMLP(
            math.prod(input_shape),
            heads,
            num_layers=config.layers,
            width=config.width or 100,
        )
    if config.model.startswith(IMPORT):
        return _import_model(config.model.removeprefix(IMPORT), heads, input_shape)
    if config.model.startswith(TORCHVISION):
        backbone = torchvision_classifier(config.model.removeprefix(TORCHVISION))(weights=None)
        return multihead(backbone, heads, input_shape=input_shape)
    if config.model == "mlp":
        return MLP(
            math.prod(input_shape),
            heads,
            num_layers=config.layers,
            width=config.width or 400,
            dropout=config.dropout,
            bn=config.bn,
        )
    if config.model == "convnet":
        return ConvNet(
            channels,
            heads,
            num_layers=config.layers,
            width=config.width or 32,
            dropout=config.dropout,
            bn=config.bn,
        )
    blocks = {
        "resnet18": ([2, 2, 2, 2], 1),
        "resnet34": ([3, 4, 6, 3], 1),
        "resnet50": ([3, 4, 6, 3], 4),
        "resnet101": ([3, 4, 23, 3], 4),
    }[config.model]
    low_res = input_shape[1] <= 64
    return ResNet(
        channels,
        heads,
        n_blocks=blocks[0],
        expansion=blocks[1],
        width=config.width or 64,
        low_res=low_res,
        bn=config.bn,
    )


def _import_model(spec: str, heads: list[int], input_shape: tuple[int, ...]) -> nn.Module:
    """A user's network: ``package.module:factory`` called with the heads and input shape."""
    module_name, _, attribute = spec.rpartition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"cannot import the model factory {spec!r}: {e}") from e
    model = factory(num_classes=heads, input_shape=input_shape)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{spec} returned a {type(model).__name__}, not an nn.Module")
    return model


def model_topology(model: nn.Module, sequence: data_module.TaskSequence) -> Topology:
    """The model's declared topology (``model.topology()``), else one traced on a zero batch;
    either way the network passes :func:`eidetic_func.nn.acceptance.check_network` (a traced
    one inside the tracer)."""
    device = next(model.parameters()).device
    example = torch.zeros(2, *sequence.input_shape, device=device)
    declared = declared_topology(model)
    if declared is not None:
        if not isinstance(model, MultiHead):  # a MultiHead's topology() is traced: checked
            check_network(model, example)
        return declared
    return trace_topology(model, example)


def reorder(sequence: data_module.TaskSequence, task_order: str) -> data_module.TaskSequence:
    """``sequence`` with its tasks in ``task_order`` (see :func:`parse_task_order`).

    Tasks keep their names (their classes); ``index`` becomes the training position.
    """
    parsed, n = parse_task_order(task_order), len(sequence)
    if parsed == "reverse":
        order = list(range(n))[::-1]
    elif isinstance(parsed, int):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(parsed)).tolist()
    else:
        order = list(parsed)  # type: ignore[arg-type]
        if len(order) != n:
            raise ConfigError(f"task_order {task_order!r} orders {len(order)} tasks, not {n}")
    tasks = tuple(dataclasses.replace(sequence[t], index=i) for i, t in enumerate(order))
    return dataclasses.replace(sequence, tasks=tasks)


def load_run_sequence(config: RunConfig) -> data_module.TaskSequence:
    """``config``'s task sequence: a built-in one, or an image folder (``imagefolder:DIR``),
    in ``config.task_order``."""
    sequence = _load_sequence(config)
    if config.task_order is not None:
        sequence = reorder(sequence, config.task_order)
    return scenario_sequence(sequence, config.scenario)


def _load_sequence(config: RunConfig) -> data_module.TaskSequence:
    if not config.dataset.startswith(IMAGEFOLDER):
        return data_module.load_sequence(
            config.dataset,
            config.data_root,
            seed=config.seed,
            num_tasks=config.num_tasks,
            limit_per_class=config.limit_per_class,
        )
    sequence = image_folder(
        config.dataset.removeprefix(IMAGEFOLDER),
        classes_per_task=config.classes_per_task,
        image_size=config.image_size or 64,
        augment=config.augment,
    )
    if config.num_tasks is not None:
        if config.num_tasks > len(sequence):
            raise ConfigError(f"num_tasks={config.num_tasks}, but the folder makes {len(sequence)}")
        sequence = dataclasses.replace(sequence, tasks=sequence.tasks[: config.num_tasks])
    return sequence


def uses_router(config: RunConfig, method: Method) -> bool:
    """A task router is trained when asked and ``method`` freezes what it is built on."""
    return config.router and traits(method).router


def implementation(params: list[nn.Parameter], *, fused: bool = False) -> dict[str, bool]:
    """How a ``torch.optim`` optimizer over ``params`` steps them: ``{"fused": True}`` or
    ``{"foreach": True}`` (all tensors per operation) on CPU and CUDA, torch's choice
    elsewhere."""
    if not all(p.device.type in ("cpu", "cuda") for p in params):
        return {}
    return {"fused": True} if fused else {"foreach": True}


def build_optimizer(config: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The run's one optimizer over ``model``'s parameters.

    On CPU and CUDA every optimizer steps all parameters at once (``foreach``: on CPU torch
    would loop over them one by one, about 1.6× slower on the main job's MLP, with the same
    bits). Adam and AdamW use torch's fused kernel instead when ``config.fused_optimizer``.
    SGD never does: torch's fused SGD with momentum fails once a tensor (a later task's
    head) gets its first gradient after the others.
    """
    params = list(model.parameters())
    fused = config.fused_optimizer and config.optimizer in ("adam", "adamw")
    options: dict[str, Any] = {"lr": config.lr, "weight_decay": config.weight_decay}
    options |= implementation(params, fused=fused)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, **options)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, **options)
    return torch.optim.SGD(params, momentum=0.9, **options)
