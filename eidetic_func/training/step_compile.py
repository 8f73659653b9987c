"""Compiled training steps: the model's forward and backward, and the optimizer's step,
under ``torch.compile``, built once per model and optimizer and kept for later steps."""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from eidetic_func.core.compiling import (
    compile_kwargs,
    device_of,
    optimizer_compile_kwargs,
    optimizer_device,
)

# Compiled callables per model and optimizer. torch.compile keeps a strong reference to
# what it compiles, so a weak cache could never drop them: keep the few most recent.
_COMPILED: collections.OrderedDict[tuple[str, int], tuple[object, Callable[..., Any]]] = (
    collections.OrderedDict()
)
_COMPILED_KEEP = 8


def _cached(
    kind: str, owner: object, build: Callable[[], Callable[..., Any]]
) -> Callable[..., Any]:
    key = (kind, id(owner))
    entry = _COMPILED.get(key)
    if entry is None or entry[0] is not owner:
        entry = (owner, build())
        _COMPILED[key] = entry
        while len(_COMPILED) > _COMPILED_KEEP:
            _COMPILED.popitem(last=False)
    _COMPILED.move_to_end(key)
    return entry[1]


# torch.compile's options for compiled steps (tests swap in a quicker backend).
COMPILE_OPTIONS: dict[str, Any] = {}


def _compiled_model(model: nn.Module) -> Callable[..., Tensor]:
    def build() -> Callable[..., Tensor]:
        return torch.compile(model, **compile_kwargs(device_of(model), COMPILE_OPTIONS))

    return _cached("model", model, build)


def _compiled_optimizer_step(optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    def build() -> Callable[[], None]:
        options = optimizer_compile_kwargs(optimizer_device(optimizer), COMPILE_OPTIONS)

        @torch.compile(fullgraph=False, **options)
        def step() -> None:
            optimizer.step()

        return step

    return _cached("optimizer", optimizer, build)
