"""ResNet-18/34/50/101 (and smaller) with one head per task.

``n_blocks`` gives the blocks per stage, ``expansion`` picks the block: 1 → basic block
(two 3×3 convs), 4 → bottleneck (1×1, 3×3, 1×1). Stage ``s`` has ``width · 2**s`` planes.
Identity shortcuts tie the residual stream's channels across blocks: the topology makes
each stream (the stem or a projection shortcut, plus every block's last conv added into
it) one unit, so a stream channel is pruned, owned and scored as one neuron.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from eidetic_func.models.base import TaskModel, check_image, make_heads
from torch import Tensor, nn

from eidetic_func.core.errors import ConfigError
from eidetic_func.core.topology import Reader, Topology, Unit
from eidetic_func.nn.batchnorm import TaskBatchNorm2d


def _norm(channels: int, bn: bool) -> nn.Module:
    return TaskBatchNorm2d(channels) if bn else nn.Identity()


class ResidualBlock(nn.Module):
    """Basic (``expansion == 1``) or bottleneck (``expansion == 4``) residual block."""

    def __init__(self, fan_in: int, planes: int, stride: int, expansion: int, bn: bool) -> None:
        super().__init__()
        out = planes * expansion
        if expansion == 1:
            specs = [(fan_in, planes, 3, stride), (planes, planes, 3, 1)]
        else:
            specs = [(fan_in, planes, 1, 1), (planes, planes, 3, stride), (planes, out, 1, 1)]
        self.convs = nn.ModuleList(
            nn.Conv2d(i, o, k, stride=s, padding=k // 2, bias=not bn) for i, o, k, s in specs
        )
        self.norms = nn.ModuleList(_norm(o, bn) for _, o, _, _ in specs)
        self.projects = stride != 1 or fan_in != out
        if self.projects:
            self.shortcut = nn.Conv2d(fan_in, out, 1, stride=stride, bias=not bn)
            self.shortcut_norm = _norm(out, bn)

    def forward(self, x: Tensor) -> Tensor:
        h = x
        last = len(self.convs) - 1
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            h = norm(conv(h))
            if i < last:
                h = F.relu(h)
        skip = self.shortcut_norm(self.shortcut(x)) if self.projects else x
        return F.relu(h + skip)


class ResNet(TaskModel):
    """``ResNet(in_channels=3, num_classes=[10, 10], n_blocks=[2, 2, 2, 2], expansion=1)``.

    ``low_res=True`` (default) uses a 3×3 stem for 32×32 images; ``False`` the ImageNet
    stem (7×7 stride 2 and a max-pool). ``width`` is the first stage's planes (64).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: Sequence[int],
        n_blocks: Sequence[int] = (2, 2, 2, 2),
        expansion: int = 1,
        bn: bool = True,
        low_res: bool = True,
        width: int = 64,
    ) -> None:
        super().__init__(num_classes)
        if expansion not in (1, 4):
            raise ConfigError(
                f"expansion must be 1 (basic blocks) or 4 (bottlenecks), got {expansion}"
            )
        if not n_blocks or any(n < 1 for n in n_blocks) or width < 1 or in_channels < 1:
            raise ConfigError(
                f"n_blocks must be positive counts and width, in_channels positive; got "
                f"{list(n_blocks)}, {width}, {in_channels}"
            )
        self.in_channels, self.bn = in_channels, bn
        kernel, stride = (3, 1) if low_res else (7, 2)
        self.stem = nn.Conv2d(
            in_channels, width, kernel, stride=stride, padding=kernel // 2, bias=not bn
        )
        self.stem_norm = _norm(width, bn)
        self.stem_pool = nn.Identity() if low_res else nn.MaxPool2d(3, stride=2, padding=1)
        blocks = []
        fan_in = width
        for s, count in enumerate(n_blocks):
            planes = width * 2**s
            for b in range(count):
                blocks.append(
                    ResidualBlock(fan_in, planes, 2 if (s > 0 and b == 0) else 1, expansion, bn)
                )
                fan_in = planes * expansion
        self.blocks = nn.ModuleList(blocks)
        self.heads = make_heads(fan_in, self.num_classes)

    def features(self, x: Tensor) -> Tensor:
        h = self.stem_pool(F.relu(self.stem_norm(self.stem(x))))
        for block in self.blocks:
            h = block(h)
        return F.adaptive_avg_pool2d(h, 1).flatten(1)

    def check_input(self, x: Tensor) -> None:
        check_image(x, self.in_channels)

    def topology(self) -> Topology:
        heads = tuple(f"heads.{t}" for t in range(self.num_tasks))
        norms_of = (lambda *names: names) if self.bn else (lambda *names: ())
        units: list[Unit] = []
        producers, norms = ["stem"], list(norms_of("stem_norm"))
        readers: list[Reader] = []
        streams = 0

        def close_stream() -> None:
            nonlocal streams
            units.append(Unit(f"stream.{streams}", tuple(producers), tuple(norms), tuple(readers)))
            streams += 1

        for i, block in enumerate(self.blocks):
            assert isinstance(block, ResidualBlock)
            name = f"blocks.{i}"
            last = len(block.convs) - 1
            readers.append(Reader(f"{name}.convs.0"))
            for j in range(last):
                units.append(
                    Unit(
                        f"{name}.convs.{j}",
                        (f"{name}.convs.{j}",),
                        norms_of(f"{name}.norms.{j}"),
                        (Reader(f"{name}.convs.{j + 1}"),),
                    )
                )
            if block.projects:
                readers.append(Reader(f"{name}.shortcut"))
                close_stream()
                producers = [f"{name}.shortcut", f"{name}.convs.{last}"]
                norms = list(norms_of(f"{name}.shortcut_norm", f"{name}.norms.{last}"))
                readers = []
            else:
                producers.append(f"{name}.convs.{last}")
                norms.extend(norms_of(f"{name}.norms.{last}"))
        readers.extend(Reader(h) for h in heads)
        close_stream()
        return Topology(units=tuple(units), heads=heads)
