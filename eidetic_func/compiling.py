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
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import fx


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
        from torch._functorch.partitioners import default_partition
        from torch._inductor import config
        from torch._inductor.custom_graph_pass import CustomPartitionerFn
    except ImportError:  # an older torch: keep its default partition
        return None
    if not hasattr(config, "custom_partitioner_fn"):
        return None

    class PlainPartition(CustomPartitionerFn):
        """AOTAutograd's plain partition: the forward saves what eager would."""

        def __call__(
            self, gm: fx.GraphModule, joint_inputs: Sequence[object], **kwargs: Any
        ) -> tuple[fx.GraphModule, fx.GraphModule]:
            return default_partition(
                gm,
                joint_inputs,
                num_fwd_outputs=kwargs["num_fwd_outputs"],
                static_lifetime_input_indices=kwargs.get("static_lifetime_input_indices"),
            )

        def uuid(self) -> str:
            return "eidetic_func.compiling.PlainPartition/1"

    return PlainPartition()
