"""Multi-layer perceptron with one head per task (the seed's ``MLP``)."""

from __future__ import annotations

from collections.abc import Sequence

from eidetic_func.models.base import TaskModel, check_flat, make_heads
from torch import Tensor, nn

from eidetic_func.core.errors import ConfigError
from eidetic_func.core.topology import Reader, Topology, Unit
from eidetic_func.nn.batchnorm import TaskBatchNorm1d


class Block(nn.Module):
    """Linear → BatchNorm (optional) → ReLU → Dropout (optional)."""

    def __init__(self, fan_in: int, width: int, bn: bool, dropout: float) -> None:
        super().__init__()
        self.linear = nn.Linear(fan_in, width, bias=not bn)
        self.norm = TaskBatchNorm1d(width) if bn else nn.Identity()
        self.act = nn.ReLU()
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.act(self.norm(self.linear(x))))


class MLP(TaskModel):
    """``num_layers`` hidden layers of ``width`` units; inputs are flattened.

    ``MLP(in_features=784, num_classes=[10, 10], num_layers=2, width=4096, dropout=0.0,
    bn=True)``. Hidden Linear layers have no bias when followed by BatchNorm.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: Sequence[int],
        num_layers: int = 2,
        width: int = 4096,
        dropout: float = 0.0,
        bn: bool = True,
    ) -> None:
        super().__init__(num_classes)
        if in_features < 1 or num_layers < 1 or width < 1:
            raise ConfigError(
                f"in_features, num_layers and width must be positive, got {in_features}, "
                f"{num_layers}, {width}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        self.in_features, self.bn = in_features, bn
        fan_ins = [in_features] + [width] * (num_layers - 1)
        self.blocks = nn.ModuleList(Block(f, width, bn, dropout) for f in fan_ins)
        self.heads = make_heads(width, self.num_classes)

    def features(self, x: Tensor) -> Tensor:
        h = x.flatten(1)
        for block in self.blocks:
            h = block(h)
        return h

    def check_input(self, x: Tensor) -> None:
        check_flat(x, self.in_features)

    def topology(self) -> Topology:
        units = []
        n = len(self.blocks)
        heads = tuple(f"heads.{t}" for t in range(self.num_tasks))
        for i in range(n):
            readers = (
                (Reader(f"blocks.{i + 1}.linear"),)
                if i + 1 < n
                else tuple(Reader(h) for h in heads)
            )
            units.append(
                Unit(
                    name=f"blocks.{i}",
                    producers=(f"blocks.{i}.linear",),
                    norms=(f"blocks.{i}.norm",) if self.bn else (),
                    readers=readers,
                )
            )
        return Topology(units=tuple(units), heads=heads)
