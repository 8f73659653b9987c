"""What a training step measures, kept on the device until one read covers many steps.

A step leaves its loss, its correct predictions and the range of its class targets on the
device (:class:`StepValues`); :func:`read_steps` reads any number of steps at once — one
host read — and says, per step, whether its targets left the head. Targets are never
checked on the host before the loss: :func:`guard_targets` clamps them into the head on the
device (an identity for valid targets, so neither the loss nor a CUDA device assert can
fail on bad ones), and the read refuses the step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class StepValues:
    """One step's values on the device: the loss (a detached scalar), the correct
    predictions (a scalar), the class targets' ``[lowest, highest]`` (None for targets
    that are not class indices) and the head's width they must fit."""

    loss: Tensor
    correct: Tensor
    targets: Tensor | None
    classes: int


@dataclass(frozen=True)
class StepRead:
    """One step's values, read: its loss, correct predictions, and its class targets'
    ``(lowest, highest)`` if some lie outside the head (else None)."""

    loss: float
    correct: int
    outside: tuple[int, int] | None


def guard_targets(logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor | None]:
    """``(targets clamped into the head, their [lowest, highest])`` with no host read;
    targets that are not class indices come back as they are, with None."""
    if y.is_floating_point() or logits.dim() != 2 or y.dim() != 1 or y.dtype == torch.bool:
        return y, None
    return y.clamp(0, logits.shape[1] - 1), torch.stack(torch.aminmax(y))


def wide_float(device: torch.device) -> torch.dtype:
    """The widest float the device computes in: float64, or float32 on Apple's MPS (exact
    for a float32 loss, and for counts and class indices below 2**24)."""
    return torch.float32 if device.type == "mps" else torch.float64


def read_steps(
    steps: Sequence[StepValues], extra: Tensor | None = None
) -> tuple[list[StepRead], float | None]:
    """Every step's values and ``extra`` (a scalar, or None), in one host read."""
    device = steps[0].loss.device
    wide = wide_float(device)
    ranges = [s.targets for s in steps if s.targets is not None]
    parts = [
        torch.stack([s.loss.to(wide) for s in steps]),
        torch.stack([s.correct for s in steps]).to(wide),
    ]
    if ranges:
        parts.append(torch.stack(ranges).flatten().to(wide))
    if extra is not None:
        parts.append(extra.to(device=device, dtype=wide).view(1))
    flat = torch.cat(parts).tolist()
    n = len(steps)
    losses, corrects, rest = flat[:n], flat[n : 2 * n], iter(flat[2 * n :])
    read = []
    for s, loss, correct in zip(steps, losses, corrects):
        outside = None
        if s.targets is not None:
            low, high = int(next(rest)), int(next(rest))
            outside = (low, high) if low < 0 or high >= s.classes else None
        read.append(StepRead(loss=loss, correct=int(correct), outside=outside))
    return read, (next(rest) if extra is not None else None)
