"""Data loaders of a task: seeded training order, ordered evaluation, a stratified
validation split carved from the training data."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from eidetic_func.core.errors import ConfigError, DataError
from eidetic_func.data.image_dataset import ImageDataset
from eidetic_func.data.sequences import Task, int_at_least


def split_validation(
    dataset: ImageDataset, fraction: float, *, seed: int = 0
) -> tuple[ImageDataset, ImageDataset]:
    """``(train, validation)``: a seeded split stratified by label.

    From each label, ``round(fraction × count)`` items (but at least one stays in train)
    go to validation; both parts keep the original item order and share ``dataset``'s
    images. Raises :class:`ConfigError` unless ``0 < fraction < 1``, and
    :class:`DataError` if the validation part would be empty.
    """
    if not 0.0 < float(fraction) < 1.0:
        raise ConfigError(f"validation fraction must be in (0, 1), got {fraction!r}")
    g = torch.Generator().manual_seed(seed)
    labels = dataset.labels.cpu()  # the split is drawn on the CPU, wherever the data are
    val_parts = []
    for c in torch.unique(labels).tolist():  # sorted: fixes the generator's use
        positions = torch.nonzero(labels == c).view(-1)
        n = min(round(float(fraction) * len(positions)), len(positions) - 1)
        val_parts.append(positions[torch.randperm(len(positions), generator=g)[:n]])
    val = torch.cat(val_parts).sort().values if val_parts else torch.empty(0, dtype=torch.int64)
    if len(val) == 0:
        raise DataError(
            f"a validation fraction of {fraction} leaves no validation items from {len(dataset)}"
        )
    in_val = torch.zeros(len(dataset), dtype=torch.bool)
    in_val[val] = True
    return dataset.subset(torch.nonzero(~in_val).view(-1)), dataset.subset(val)


class TaskLoaders(NamedTuple):
    """A task's data loaders; ``val`` is ``None`` without a validation split."""

    train: DataLoader[tuple[Tensor, Tensor]]
    test: DataLoader[tuple[Tensor, Tensor]]
    val: DataLoader[tuple[Tensor, Tensor]] | None


def loaders(
    task: Task,
    batch_size: int,
    *,
    seed: int = 0,
    generator: torch.Generator | None = None,
    shuffle: bool = True,
    val_fraction: float = 0.0,
    eval_batch_size: int | None = None,
    num_workers: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> TaskLoaders:
    """Train, test (and validation) loaders of ``task``; batches ``(x (B, C, H, W), y (B,))``.

    The training order comes from ``generator`` (default: a fresh one seeded with
    ``seed``): the same seed gives the same batches, epoch after epoch. ``val_fraction > 0``
    carves a stratified validation split from train (:func:`split_validation`, seeded
    with ``seed``). Test and validation loaders keep item order, with ``eval_batch_size``
    (default ``batch_size``) and no ``drop_last``.
    """
    batch_size = int_at_least(batch_size, "batch_size", 1)
    eval_batch_size = batch_size if eval_batch_size is None else eval_batch_size
    eval_batch_size = int_at_least(eval_batch_size, "eval_batch_size", 1)
    num_workers = int_at_least(num_workers, "num_workers", 0)
    if generator is None:
        generator = torch.Generator().manual_seed(seed)
    train, val = task.train, None
    if val_fraction:
        train, val = split_validation(train, val_fraction, seed=seed)

    def evaluation(dataset: ImageDataset) -> DataLoader[tuple[Tensor, Tensor]]:
        return batch_loader(
            dataset, eval_batch_size, num_workers=num_workers, pin_memory=pin_memory
        )

    return TaskLoaders(
        train=batch_loader(
            train,
            batch_size,
            shuffle=shuffle,
            generator=generator,
            num_workers=num_workers,
            # a last batch of one sample cannot be batch-normalized in training mode
            drop_last=drop_last or len(train) % batch_size == 1,
            pin_memory=pin_memory,
        ),
        test=evaluation(task.test),
        val=None if val is None else evaluation(val),
    )


def batch_loader(
    dataset: Dataset[tuple[Tensor, Tensor]],
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader[tuple[Tensor, Tensor]]:
    """``DataLoader(dataset, batch_size, shuffle=..., generator=..., drop_last=...)``: the
    same batches in the same order from the same ``generator``.

    An :class:`ImageDataset` is fetched a batch at a time (``dataset[positions]``) instead
    of item by item and stacked again, at about half the cost per batch on CPU; that
    loader's ``batch_size`` attribute is ``None`` (its sampler batches): ``len(loader)``
    counts batches. Other datasets (per-item transforms; a subclass of ImageDataset,
    whose ``__getitem__`` may take one position only) load as ``DataLoader`` loads them.
    """
    if type(dataset) is not ImageDataset:
        return DataLoader(
            dataset,
            batch_size,
            shuffle=shuffle,
            generator=generator,
            drop_last=drop_last,
            num_workers=num_workers,
            pin_memory=pin_memory,
        )
    order: Any = (
        RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    )
    return DataLoader(
        dataset,
        batch_size=None,
        sampler=BatchSampler(order, batch_size, drop_last),
        generator=generator,  # each pass draws its workers' base seed from it, as there
        num_workers=num_workers,
        pin_memory=pin_memory,
    )
