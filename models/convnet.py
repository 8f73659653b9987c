"""The seed's convolutional network with one head per task."""

from __future__ import annotations

from collections.abc import Sequence

from eidetic_func.models.base import TaskModel, check_image, make_heads
from torch import Tensor, nn

from eidetic_func.core.errors import ConfigError, ShapeError
from eidetic_func.core.topology import Reader, Topology, Unit
from eidetic_func.nn.batchnorm import TaskBatchNorm2d


class ConvBlock(nn.Module):
    """3×3 conv → BatchNorm (optional) → Dropout (optional) → ReLU → 2×2 max-pool (optional)."""

    def __init__(self, fan_in: int, width: int, bn: bool, dropout: float, pool: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(fan_in, width, kernel_size=3, padding=1, bias=not bn)
        self.norm = TaskBatchNorm2d(width) if bn else nn.Identity()
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.act(self.drop(self.norm(self.conv(x)))))


class ConvNet(TaskModel):
    """Four stages of ``width``, ``4·width``, ``8·width`` and ``32·width`` channels.

    Each stage after the first has ``num_layers`` convolutions; the first, third and
    fourth stages end with a 2×2 max-pool. Features are global-max-pooled (the seed's
    design), or, with ``image_size``, the final map is flattened so each channel feeds
    ``(image_size // 8) ** 2`` head inputs.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: Sequence[int],
        num_layers: int = 2,
        width: int = 32,
        dropout: float = 0.0,
        bn: bool = True,
        image_size: int | None = None,
    ) -> None:
        super().__init__(num_classes)
        if in_channels < 1 or num_layers < 1 or width < 1:
            raise ConfigError(
                f"in_channels, num_layers and width must be positive, got {in_channels}, "
                f"{num_layers}, {width}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        if image_size is not None and image_size < 8:
            raise ConfigError(f"image_size must be at least 8 (three 2×2 pools), got {image_size}")
        self.in_channels, self.bn, self.image_size = in_channels, bn, image_size
        plan = [(in_channels, width, True)]
        for fan_in, out, pool in (
            (width, 4 * width, False),
            (4 * width, 8 * width, True),
            (8 * width, 32 * width, True),
        ):
            plan.append((fan_in, out, pool))
            plan.extend((out, out, False) for _ in range(num_layers - 1))
        self.blocks = nn.ModuleList(ConvBlock(f, w, bn, dropout, p) for f, w, p in plan)
        self.spatial = 1 if image_size is None else (image_size // 8) ** 2
        self.pool = nn.AdaptiveMaxPool2d(1) if image_size is None else nn.Identity()
        self.heads = make_heads(32 * width * self.spatial, self.num_classes)

    def features(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return self.pool(x).flatten(1)

    def check_input(self, x: Tensor) -> None:
        check_image(x, self.in_channels)
        if self.image_size is not None and tuple(x.shape[2:]) != (self.image_size,) * 2:
            raise ShapeError(
                f"x has shape {tuple(x.shape)}; the model expects {self.image_size}×{self.image_size} images"
            )

    def topology(self) -> Topology:
        heads = tuple(f"heads.{t}" for t in range(self.num_tasks))
        n = len(self.blocks)
        units = []
        for i in range(n):
            if i + 1 < n:
                readers: tuple[Reader, ...] = (Reader(f"blocks.{i + 1}.conv"),)
            else:
                readers = tuple(Reader(h, repeat=self.spatial) for h in heads)
            units.append(
                Unit(
                    name=f"blocks.{i}",
                    producers=(f"blocks.{i}.conv",),
                    norms=(f"blocks.{i}.norm",) if self.bn else (),
                    readers=readers,
                )
            )
        return Topology(units=tuple(units), heads=heads)
