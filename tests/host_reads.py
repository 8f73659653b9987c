"""A counter of host reads: every call that copies a tensor's value to the host."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import torch
from torch.overrides import TorchFunctionMode

READS = {
    torch.Tensor.item,
    torch.Tensor.tolist,
    torch.Tensor.__bool__,
    torch.Tensor.__float__,
    torch.Tensor.__int__,
    torch.Tensor.__index__,
    torch.Tensor.nonzero,
    torch.nonzero,
    torch.Tensor.numpy,
    torch.Tensor.cpu,
    torch.equal,
    torch.Tensor.equal,
}

T = TypeVar("T")


class HostReads(TorchFunctionMode):
    """Counts the calls that copy a tensor's value to the host (``count``)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func in READS:
            self.count += 1
        return func(*args, **(kwargs or {}))

    def between(self, items: Iterable[T], seen: list[int]) -> Iterator[T]:
        """``items``, appending to ``seen`` the count at each one handed out (the reads
        between two consecutive items are then the reads of one step)."""
        for item in items:
            seen.append(self.count)
            yield item
        seen.append(self.count)
