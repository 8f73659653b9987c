"""AOTAutograd's plain forward/backward partition as an inductor partitioner.

A module of its own because it imports inductor (slow), which only compiled paths need,
and because inductor pickles its options into its cache key: the class must be importable
by name (a class defined inside a function is not picklable, so every compile would skip
inductor's graph cache with a logged warning).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import fx
from torch._functorch.partitioners import default_partition
from torch._inductor.custom_graph_pass import CustomPartitionerFn


class PlainPartition(CustomPartitionerFn):
    """The forward saves what eager would (e.g. a ReLU's float output, not its bool mask)."""

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
        return "eidetic_func.core._plain_partition.PlainPartition/1"
