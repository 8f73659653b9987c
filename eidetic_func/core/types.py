"""Type aliases shared across the package (one definition each)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

# (inputs [B, ...], targets [B] or [B, C]): one batch of a task's data
Batch = tuple[Tensor, Tensor]
# loss_fn(logits, targets) -> scalar loss
LossFn = Callable[[Tensor, Tensor], Tensor]
# one entry of a training history (phase, epoch, metric, ...)
Record = dict[str, Any]
