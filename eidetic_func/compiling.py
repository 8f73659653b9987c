"""``torch.compile`` options for the library's compiled paths (steps, Taylor scoring).

On CPU, inductor's default (min-cut) partition of a forward+backward graph saves each
ReLU's backward mask as a bool tensor written by the forward kernel, and inductor's
generated C++ writes bool tensors slowly on the AVX2 CPU we measured: a ReLU
forward+backward at 128×1000 took 3.5 ms compiled against 0.53 ms eager, and 0.67 ms
with the plain partition (``python -m benchmarks.inductor_masks``). AOTAutograd's plain
partition saves what the eager forward saves (the ReLU's float output) and recomputes the
mask inside the backward's fused kernel. GPUs keep the default partition.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import torch


def device_of(module: torch.nn.Module) -> torch.device:
    """Where ``module``'s parameters live (CPU for a module without any)."""
    first = next(iter(module.parameters()), None)
    return torch.device("cpu") if first is None else first.device


def compile_kwargs(device: torch.device, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Keyword arguments for ``torch.compile``: ``given``, plus on CPU with inductor (the
    default backend) the plain partition of forward and backward graphs.

    Nothing is added when ``given`` names a backend or inductor options of its own, or when
    this torch has no custom partitioner hook.
    """
    out = dict(given or {})
    if device.type != "cpu" or "backend" in out or "options" in out or "mode" in out:
        return out
    partitioner = _plain_partitioner()
    if partitioner is not None:
        out["options"] = {"custom_partitioner_fn": partitioner}
    return out


@functools.cache
def _plain_partitioner() -> Any:
    try:
        from torch._inductor import config

        if not hasattr(config, "custom_partitioner_fn"):
            return None
        from ._plain_partition import PlainPartition
    except ImportError:  # an older torch: keep its default partition
        return None
    return PlainPartition()
