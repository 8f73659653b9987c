"""The reservoir buffer rehearsal methods share: immutable, updated by pure functions.

The buffer holds a uniform sample of everything streamed into it (Vitter's algorithm R),
with each sample's task id, so that replayed samples run through their own head
(task-incremental). It is a pytree: adding a batch returns a new buffer and never writes
to the old one. Randomness is explicit: a ``torch.Generator`` passed in, or — inside a
method's step, whose signature carries none — a generator state threaded through the
method state (:func:`rng_init`, :func:`generator_from`), like a JAX key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from eidetic_func.core.errors import ConfigError, ShapeError
from eidetic_func.core.pytree import pytree_dataclass, static_field
from eidetic_func.core.types import Batch

__all__ = [
    "ReservoirBuffer",
    "Samples",
    "buffer_sample",
    "concat_samples",
    "generator_from",
    "grouped_by_task",
    "min_group",
    "reservoir_add",
    "reservoir_init",
    "rng_init",
    "sample",
    "sample_loader",
    "samples_take",
]


# --------------------------------------------------------------------------- samples


@pytree_dataclass
class Samples:
    """Stored examples: ``x [n, ...]``, ``y [n]`` int64, ``task [n]`` int64, ``logits [n, L]``.

    ``logits`` has ``L = 0`` columns when no logits are stored; narrower heads' logits are
    zero-padded to ``L`` (use the first ``num_classes[task]`` columns).
    """

    x: Tensor
    y: Tensor
    task: Tensor
    logits: Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @staticmethod
    def empty(logits_width: int = 0, device: torch.device | str | None = None) -> Samples:
        """No samples (what sampling an empty buffer returns)."""
        long = torch.empty(0, dtype=torch.int64, device=device)
        return Samples(
            x=torch.empty(0, device=device),
            y=long,
            task=long.clone(),
            logits=torch.empty(0, logits_width, device=device),
        )


def samples_take(samples: Samples, index: Tensor) -> Samples:
    """The samples at ``index`` (a 1-D int64 tensor), in that order; a new pytree."""
    index = index.to(samples.y.device)
    return Samples(
        x=samples.x[index],
        y=samples.y[index],
        task=samples.task[index],
        logits=samples.logits[index],
    )


def concat_samples(a: Samples, b: Samples) -> Samples:
    """``a`` followed by ``b`` (either may be empty); logits are padded to the wider one."""
    if len(a) == 0:
        return b
    if len(b) == 0:
        return a
    if a.x.shape[1:] != b.x.shape[1:]:
        raise ShapeError(f"cannot join samples of shapes {tuple(a.x.shape)} and {tuple(b.x.shape)}")
    width = max(a.logits.shape[1], b.logits.shape[1])
    return Samples(
        x=torch.cat([a.x, b.x]),
        y=torch.cat([a.y, b.y]),
        task=torch.cat([a.task, b.task]),
        logits=torch.cat([_pad(a.logits, width), _pad(b.logits, width)]),
    )


def grouped_by_task(samples: Samples, *, min_size: int = 1) -> list[tuple[int, Tensor]]:
    """``[(task, index)]``: the positions of each task's samples, tasks ascending.

    Task-incremental replay runs each group through its own head: ``apply(x[index], task)``.
    Groups smaller than ``min_size`` are left out.
    """
    if len(samples) == 0:
        return []
    tasks = samples.task.unique(sorted=True).tolist()
    groups = [(int(t), (samples.task == t).nonzero().squeeze(1)) for t in tasks]
    return [(t, index) for t, index in groups if index.numel() >= min_size]


def min_group(model: nn.Module) -> int:
    """Smallest replayed group a step can run: BatchNorm in training mode needs two samples.

    Replayed samples of a task run through the network together (their own head); with
    BatchNorm a task drawn only once in a step is skipped.
    """
    return 2 if any(isinstance(m, _BatchNorm) for m in model.modules()) else 1


def _pad(logits: Tensor, width: int) -> Tensor:
    if logits.shape[1] == width:
        return logits
    return F.pad(logits, (0, width - logits.shape[1]))


# --------------------------------------------------------------------------- reservoir


@pytree_dataclass
class ReservoirBuffer:
    """A uniform sample (without replacement) of at most ``capacity`` streamed examples.

    ``data`` holds ``capacity`` preallocated rows once the first batch arrives (before:
    zero rows); rows ``0 .. size - 1`` are valid, ``size = min(seen, capacity)``.
    ``seen`` counts every example ever streamed. Static fields: ``capacity``, ``seen``,
    ``logits_width`` (``0``: set by the first batch with logits, or none stored).
    """

    data: Samples
    capacity: int = static_field()
    seen: int = static_field(default=0)
    logits_width: int = static_field(default=0)

    @property
    def size(self) -> int:
        """How many rows of ``data`` hold samples."""
        return min(self.seen, self.capacity)

    def contents(self) -> Samples:
        """The valid samples (a view of the first ``size`` rows)."""
        if self.size == 0:
            return Samples.empty(self.logits_width, self.data.y.device)
        return Samples(
            x=self.data.x[: self.size],
            y=self.data.y[: self.size],
            task=self.data.task[: self.size],
            logits=self.data.logits[: self.size],
        )


def reservoir_init(capacity: int, *, logits_width: int = 0) -> ReservoirBuffer:
    """An empty buffer of ``capacity`` examples; storage is allocated by the first add.

    ``logits_width``: columns of stored logits (e.g. the widest head); ``0`` takes the
    width of the first logits added, or stores none.
    """
    _check_int("capacity", capacity, 1)
    _check_int("logits_width", logits_width, 0)
    return ReservoirBuffer(
        data=Samples.empty(logits_width), capacity=capacity, logits_width=logits_width
    )


def reservoir_add(
    buffer: ReservoirBuffer,
    x: Tensor,
    y: Tensor,
    task: int | Tensor,
    logits: Tensor | None = None,
    *,
    generator: torch.Generator,
) -> ReservoirBuffer:
    """``buffer`` after streaming the batch ``x [B, ...]``, ``y [B]`` (Vitter's algorithm R).

    Example ``n`` of the stream (0-based) fills slot ``n`` while ``n < capacity``; after
    that it replaces slot ``j ~ U{0..n}`` if ``j < capacity``, else is dropped. Hence every
    example seen so far is in the buffer with probability ``capacity / seen``, whatever the
    batch sizes. One uniform draw per example, in stream order, so adding a batch gives
    exactly the buffer that adding its examples one by one would (same generator state).
    ``task`` is an int (the whole batch) or ``[B]``; ``logits [B, C]`` (``C <= width``,
    zero-padded) are stored when the buffer keeps logits. Pure: ``buffer`` is not modified.
    """
    batch = int(x.shape[0]) if x.dim() > 0 else 0
    if y.shape != (batch,):
        raise ShapeError(f"y must have shape ({batch},) for {batch} inputs, got {tuple(y.shape)}")
    if y.is_floating_point():
        raise ShapeError(f"y must hold integer class indices, got {y.dtype}")
    tasks = _task_vector(task, batch, x.device)
    if batch == 0:
        return buffer
    width = buffer.logits_width
    if logits is not None:
        if logits.dim() != 2 or logits.shape[0] != batch:
            raise ShapeError(f"logits must have shape ({batch}, C), got {tuple(logits.shape)}")
        if buffer.seen == 0 and width == 0:
            width = int(logits.shape[1])
        if logits.shape[1] > width:
            raise ShapeError(
                f"logits have {logits.shape[1]} columns; this buffer stores {width} "
                "(create it with reservoir_init(capacity, logits_width=<widest head>))"
            )
    elif width > 0:
        raise ShapeError("this buffer stores logits: pass the batch's logits to reservoir_add")

    data = buffer.data
    if buffer.seen == 0:  # first batch: preallocate [capacity, ...] like the batch
        cap = buffer.capacity
        data = Samples(
            x=x.new_zeros((cap, *x.shape[1:])),
            y=torch.zeros(cap, dtype=torch.int64, device=x.device),
            task=torch.zeros(cap, dtype=torch.int64, device=x.device),
            logits=x.new_zeros((cap, width), dtype=_logits_dtype(logits, x)),
        )
    elif x.shape[1:] != data.x.shape[1:]:
        raise ShapeError(
            f"inputs of shape {tuple(x.shape[1:])} do not fit a buffer of "
            f"{tuple(data.x.shape[1:])} inputs"
        )

    items, slots = _reservoir_slots(buffer.seen, batch, buffer.capacity, generator)
    if items.numel() > 0:
        dev = data.y.device
        items, slots = items.to(x.device), slots.to(dev)
        new_logits = data.logits
        if width > 0 and logits is not None:
            stored = _pad(logits.detach()[items], width).to(data.logits.dtype)
            new_logits = data.logits.index_copy(0, slots, stored.to(dev))
        data = Samples(
            x=data.x.index_copy(0, slots, x.detach()[items].to(dev, data.x.dtype)),
            y=data.y.index_copy(0, slots, y[items].to(dev, torch.int64)),
            task=data.task.index_copy(0, slots, tasks[items].to(dev)),
            logits=new_logits,
        )
    return dataclasses.replace(buffer, data=data, seen=buffer.seen + batch, logits_width=width)


def _reservoir_slots(
    seen: int, batch: int, capacity: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """``(items, slots)`` (CPU int64): which batch items are written where, last writer wins."""
    position = seen + torch.arange(batch, dtype=torch.int64)
    u = torch.rand(batch, generator=generator, dtype=torch.float64, device=generator.device).cpu()
    # j ~ U{0..n}; float64 is exact far beyond any realistic stream length. The clamp only
    # guards the rounding of u * (n + 1) up to n + 1 when u is within 2^-53 of 1.
    j = torch.minimum((u * (position + 1).double()).floor().long(), position)
    slot = torch.where(position < capacity, position, j)
    accept = slot < capacity
    items = torch.arange(batch)[accept]
    slot = slot[accept]
    if items.numel() == 0:
        return items, slot
    # Several items of one batch may draw the same slot; in the sequential algorithm the
    # later one overwrites the earlier. Keep only each slot's last writer, so the scatter
    # has no duplicate indices (whose order index_copy does not define).
    last = torch.full((capacity,), -1, dtype=torch.int64).scatter_reduce(
        0, slot, items, reduce="amax"
    )
    winner = last[slot] == items
    return items[winner], slot[winner]


def buffer_sample(buffer: ReservoirBuffer, n: int, *, generator: torch.Generator) -> Samples:
    """``min(n, size)`` distinct stored samples, uniformly at random (without replacement).

    An empty buffer (or ``n == 0``) gives empty :class:`Samples`; check ``len(...)``.
    """
    return sample(buffer.contents(), n, generator)


def sample(samples: Samples, n: int, generator: torch.Generator) -> Samples:
    """``min(n, len(samples))`` distinct ``samples``, uniformly at random (``generator``)."""
    _check_int("n", n, 0)
    k = min(n, len(samples))
    if k == 0:
        return Samples.empty(samples.logits.shape[1], samples.y.device)
    index = torch.randperm(len(samples), generator=generator, device=generator.device)[:k]
    return samples_take(samples, index.cpu())


def sample_loader(
    loader: Iterable[Batch],
    n: int,
    *,
    task: int,
    generator: torch.Generator,
    device: torch.device | str | None = None,
) -> Samples:
    """A uniform sample of ``min(n, len(data))`` examples of one pass over ``loader``.

    Reservoir sampling over the stream (one pass, memory ``n``), all labelled ``task``;
    what episodic-memory methods store at the end of a task.
    """
    _check_int("n", n, 1)
    buffer = reservoir_init(n)
    for x, y in loader:
        if device is not None:
            x, y = x.to(device), y.to(device)
        buffer = reservoir_add(buffer, x, y, task, generator=generator)
    return buffer.contents()


# --------------------------------------------------------------------------- randomness


def rng_init(seed: int) -> Tensor:
    """The state of a CPU generator seeded with ``seed`` (a uint8 tensor: a pytree leaf)."""
    return torch.Generator().manual_seed(seed).get_state()


def generator_from(rng: Tensor) -> torch.Generator:
    """A fresh CPU generator in state ``rng``; read its new state back with ``get_state()``."""
    generator = torch.Generator()
    generator.set_state(rng)
    return generator


# --------------------------------------------------------------------------- checks


def _task_vector(task: int | Tensor, batch: int, device: torch.device) -> Tensor:
    if isinstance(task, Tensor):
        if task.shape != (batch,) or task.is_floating_point():
            raise ShapeError(f"task must be an int or an int tensor of shape ({batch},)")
        if batch and int(task.min()) < 0:
            raise ShapeError("task ids must be >= 0")
        return task.to(device, torch.int64)
    if not isinstance(task, int) or isinstance(task, bool) or task < 0:
        raise ShapeError(f"task must be an int >= 0, got {task!r}")
    return torch.full((batch,), task, dtype=torch.int64, device=device)


def _logits_dtype(logits: Tensor | None, x: Tensor) -> torch.dtype:
    if logits is not None and logits.is_floating_point():
        return logits.dtype
    return x.dtype if x.is_floating_point() else torch.float32


def _check_int(name: str, value: Any, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
