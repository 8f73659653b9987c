"""``torch.compile`` options for the library's compiled paths (steps, Taylor scoring).

On CPU, inductor's default (min-cut) partition of a forward+backward graph saves each
ReLU's backward mask as a bool tensor written by the forward kernel, and inductor's
generated C++ writes bool tensors slowly on the AVX2 CPU we measured: a ReLU
forward+backward at 128×1000 took 3.5 ms compiled against 0.53 ms eager, and 0.67 ms
with the plain partition (``python -m benchmarks.inductor_masks``). AOTAutograd's plain
partition saves what the eager forward saves (the ReLU's float output) and recomputes the
mask inside the backward's fused kernel. GPUs keep the default partition.

A compiled optimizer step on CPU gets inductor's ``realize_opcount_threshold=1``: by
default inductor inlines Adam's bias corrections (``1 - β^step``: two ``pow``s, a square
root and divisions of the step counter) into the vectorized loop over each parameter,
where the C++ compiler cannot hoist them, so they are recomputed for every 8 entries;
the compiled AdamW step then took 2.5–3× torch's fused kernel. Realized, they are computed
once per step and the compiled step matches the fused kernel
(``python -m benchmarks.inductor_adam``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

import torch


def device_of(module: torch.nn.Module) -> torch.device:
    """Where ``module``'s parameters live (CPU for a module without any)."""
    return _first_device(module.parameters())


def compile_kwargs(device: torch.device, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Keyword arguments for ``torch.compile``: ``given``, plus on CPU with inductor (the
    default backend) the plain partition of forward and backward graphs.

    Nothing is added when ``given`` names a backend or inductor options of its own, or when
    this torch has no custom partitioner hook.
    """
    partitioner = _plain_partitioner()
    options = {"custom_partitioner_fn": partitioner}
    return _with_cpu_options(device, given, options, available=partitioner is not None)


def optimizer_compile_kwargs(
    device: torch.device, given: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Keyword arguments for ``torch.compile`` of an optimizer step: ``given``, plus on CPU
    with inductor the option that computes scalar subexpressions (Adam's bias corrections)
    once instead of inside every vectorized loop.

    Nothing is added when ``given`` names a backend, options or a mode of its own, or when
    this torch's inductor has no such option.
    """
    available = _has_inductor_option("realize_opcount_threshold")
    return _with_cpu_options(device, given, {"realize_opcount_threshold": 1}, available=available)


def _with_cpu_options(
    device: torch.device,
    given: Mapping[str, Any] | None,
    options: dict[str, Any],
    *,
    available: bool,
) -> dict[str, Any]:
    """``given``, plus inductor ``options`` on CPU when this torch has them (``available``)
    and ``given`` chooses no backend, options or mode of its own."""
    out = dict(given or {})
    if device.type != "cpu" or "backend" in out or "options" in out or "mode" in out:
        return out
    if available:
        out["options"] = options
    return out


def optimizer_device(optimizer: torch.optim.Optimizer) -> torch.device:
    """Where ``optimizer``'s parameters live (CPU for one without any)."""
    return _first_device(p for group in optimizer.param_groups for p in group["params"])


def _first_device(tensors: Iterable[torch.Tensor]) -> torch.device:
    first = next(iter(tensors), None)
    return torch.device("cpu") if first is None else first.device


@functools.cache
def _has_inductor_option(name: str) -> bool:
    try:
        from torch._inductor import config
    except ImportError:
        return False
    return hasattr(config, name)


@functools.cache
def _plain_partitioner() -> Any:
    if not _has_inductor_option("custom_partitioner_fn"):  # an older torch: its default
        return None
    from eidetic_func.core._plain_partition import PlainPartition

    return PlainPartition()
