"""What every model in ``models/`` shares: task heads and input checks."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from eidetic_func.core.errors import ConfigError, ShapeError, TaskError
from eidetic_func.core.topology import Topology


class TaskModel(nn.Module):
    """A network with one Linear head per task; ``forward(x, task)`` returns task's logits.

    Subclasses build ``self.heads`` and implement ``features(x)`` and ``topology()``.
    """

    heads: nn.ModuleList

    def __init__(self, num_classes: Sequence[int]) -> None:
        super().__init__()
        if isinstance(num_classes, int):
            num_classes = [num_classes]
        if not num_classes or any(not isinstance(k, int) or k < 1 for k in num_classes):
            raise ConfigError(
                f"num_classes must be a non-empty list of positive ints, got {num_classes!r}"
            )
        self.num_classes = list(num_classes)

    @property
    def num_tasks(self) -> int:
        return len(self.num_classes)

    def features(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def topology(self) -> Topology:  # pragma: no cover - abstract
        raise NotImplementedError

    def check_input(self, x: Tensor) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: Tensor, task: int = 0) -> Tensor:
        """Logits of head ``task``: ``[batch, num_classes[task]]``."""
        return self.heads[task](self.features(x))


def make_heads(width: int, num_classes: Sequence[int]) -> nn.ModuleList:
    return nn.ModuleList(nn.Linear(width, k) for k in num_classes)


def check_image(x: Tensor, in_channels: int) -> None:
    if x.dim() != 4 or x.shape[1] != in_channels:
        raise ShapeError(
            f"x has shape {tuple(x.shape)}; the model expects images (batch, {in_channels}, H, W)"
        )


def check_flat(x: Tensor, in_features: int) -> None:
    if x.dim() < 2 or math.prod(x.shape[1:]) != in_features:
        raise ShapeError(
            f"x has shape {tuple(x.shape)}; the model expects (batch, ...) with {in_features} "
            "features per sample"
        )


def check_task_index(task: int, num_tasks: int) -> None:
    if not 0 <= task < num_tasks:
        raise TaskError(f"task {task} is out of range 0..{num_tasks - 1}")
