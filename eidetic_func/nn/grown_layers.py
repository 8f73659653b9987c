"""Layers that were widened by growth and still compute their old outputs bit for bit.

A wider matrix product is not the same computation as the narrower one it extends: BLAS
blocks the reduction differently for another shape, so ``[W, 0] @ [x; x_new]`` may differ
from ``W @ x`` in the last bit. A grown layer therefore computes in *blocks*. Its output
rows come in *row groups* (the rows it had, then each group of added rows) and its input
columns in *column groups* (the columns it had, then each group added by a growth; a group
may span several ranges when columns were inserted inside it). Row group ``i`` is

    ``op(x[g_0], W[i, g_0], b[i]) + op(x[g_1], W[i, g_1]) + ...``

with every operand made contiguous, so the first term is exactly the product the layer
computed before it grew, with the same shapes. For a finished task every added entry is
zero, so each added term is exactly ``+0.0`` and the sum is unchanged. A grown BatchNorm
normalizes each channel group on its own in inference mode for the same reason; in
training mode (only the task being trained reads its outputs) it runs over all channels.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eidetic_func.nn.batchnorm import TaskBatchNorm1d, TaskBatchNorm2d, _TaskBatchNorm

Ranges = tuple[tuple[int, int], ...]


class GrownLinear(nn.Linear):
    """``nn.Linear`` computed in row × column groups (see module docstring)."""

    row_groups: Ranges
    column_groups: tuple[Ranges, ...]

    def forward(self, input: Tensor) -> Tensor:
        return blocked(input, self.weight, self.bias, self, F.linear, dim=-1)


class GrownConv2d(nn.Conv2d):
    """``nn.Conv2d`` (``groups == 1``) computed in row × column groups."""

    row_groups: Ranges
    column_groups: tuple[Ranges, ...]

    def forward(self, input: Tensor) -> Tensor:
        return blocked(input, self.weight, self.bias, self, self._conv_forward, dim=1)


class _GroupedInference(_TaskBatchNorm):
    """Inference mode: each channel group normalized on its own; training: all at once."""

    channel_groups: Ranges

    def forward(self, input: Tensor) -> Tensor:
        if self.training:
            return super().forward(input)
        return grouped_norm(self, input)


class GrownTaskBatchNorm1d(_GroupedInference, TaskBatchNorm1d):
    """:class:`TaskBatchNorm1d` normalizing each channel group on its own in eval mode."""


class GrownTaskBatchNorm2d(_GroupedInference, TaskBatchNorm2d):
    """:class:`TaskBatchNorm2d` normalizing each channel group on its own in eval mode."""


GROWN = (GrownLinear, GrownConv2d, GrownTaskBatchNorm1d, GrownTaskBatchNorm2d)


def blocked(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    layer: GrownLinear | GrownConv2d,
    op: Callable[[Tensor, Tensor, Tensor | None], Tensor],
    *,
    dim: int,
) -> Tensor:
    """``op(x, weight, bias)`` summed block by block in the layer's groups' order."""
    inputs = [gather(x, group, dim) for group in layer.column_groups]
    outputs = []
    for start, stop in layer.row_groups:
        rows = weight[start:stop]
        total: Tensor | None = None
        for j, (group, xj) in enumerate(zip(layer.column_groups, inputs)):
            b = bias[start:stop] if bias is not None and j == 0 else None
            term = op(xj, gather(rows, group, 1), b)
            total = term if total is None else total + term
        assert total is not None
        outputs.append(total)
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim)


def grouped_norm(norm: _GroupedInference, x: Tensor) -> Tensor:
    """Inference-mode BatchNorm of each channel group of ``x`` separately, concatenated."""
    assert norm.running_mean is not None and norm.running_var is not None
    parts = []
    for start, stop in norm.channel_groups:
        w = None if norm.weight is None else norm.weight[start:stop]
        b = None if norm.bias is None else norm.bias[start:stop]
        parts.append(
            F.batch_norm(
                gather(x, ((start, stop),), 1),
                norm.running_mean[start:stop],
                norm.running_var[start:stop],
                w,
                b,
                False,
                0.0,
                norm.eps,
            )
        )
    return parts[0] if len(parts) == 1 else torch.cat(parts, 1)


def gather(t: Tensor, ranges: Ranges, dim: int) -> Tensor:
    """The slices ``ranges`` of ``t`` along ``dim``, contiguous; ``t`` itself, as the layer
    read it before it grew, when ``ranges`` is all of it."""
    if len(ranges) == 1 and ranges[0] == (0, t.shape[dim]):
        return t
    parts = [t.narrow(dim, a, b - a) for a, b in ranges]
    return torch.cat(parts, dim) if len(parts) > 1 else parts[0].contiguous()


def is_grown(module: nn.Module) -> bool:
    return isinstance(module, GROWN)


__all__ = [
    "GROWN",
    "GrownConv2d",
    "GrownLinear",
    "GrownTaskBatchNorm1d",
    "GrownTaskBatchNorm2d",
    "is_grown",
]
