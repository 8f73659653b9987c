"""Task loaders: a seeded training order, ordered evaluation, a stratified validation split."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from eidetic_func.core.errors import ConfigError, DataError
from eidetic_func.data import (
    ImageDataset,
    batch_loader,
    load_sequence,
    loaders,
    split_validation,
)

# --------------------------------------------------------------------------- loaders


def _epoch(loader: torch.utils.data.DataLoader) -> list[torch.Tensor]:
    return [y for _, y in loader]


def test_seeded_loader_order_is_reproducible() -> None:
    task = load_sequence(limit_per_class=40)[2]
    a, b, c = (loaders(task, 16, seed=s).train for s in (7, 7, 8))
    first_a, first_b = _epoch(a), _epoch(b)
    assert all(torch.equal(p, q) for p, q in zip(first_a, first_b))
    assert not all(torch.equal(p, q) for p, q in zip(first_a, _epoch(c)))
    second_a = _epoch(a)
    assert not all(torch.equal(p, q) for p, q in zip(first_a, second_a))
    assert all(torch.equal(p, q) for p, q in zip(second_a, _epoch(b)))
    x, y = next(iter(a))
    assert x.shape == (16, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    g = torch.Generator().manual_seed(7)
    assert all(
        torch.equal(p, q) for p, q in zip(first_a, _epoch(loaders(task, 16, generator=g).train))
    )


@given(
    items=st.integers(1, 40),
    batch=st.integers(1, 12),
    shuffle=st.booleans(),
    drop_last=st.booleans(),
    permuted=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_a_batch_loader_yields_the_dataloaders_batches_bit_for_bit(
    items: int, batch: int, shuffle: bool, drop_last: bool, permuted: bool, seed: int
) -> None:
    """Fetching a batch at a time changes neither the batches, their order, nor what the
    generator has drawn afterwards (later epochs stay the same too)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (50, 2, 3, 3), dtype=torch.uint8, generator=g)
    permutation = torch.randperm(9, generator=g) if permuted else None
    dataset = ImageDataset(
        images,
        torch.randint(0, 3, (items,), generator=g),
        index=torch.randperm(50, generator=g)[:items],
        mean=(0.2, 0.4),
        std=(0.3, 0.5),
        permutation=permutation,
    )
    ours, theirs = (torch.Generator().manual_seed(seed) for _ in range(2))
    fast = batch_loader(dataset, batch, shuffle=shuffle, generator=ours, drop_last=drop_last)
    plain = DataLoader(dataset, batch, shuffle=shuffle, generator=theirs, drop_last=drop_last)
    for _ in range(2):
        got, expected = list(fast), list(plain)
        assert len(got) == len(expected) == len(fast) == len(plain)
        for (x, y), (u, v) in zip(got, expected):
            assert x.dtype == u.dtype and torch.equal(x, u) and torch.equal(y, v)
    assert torch.equal(ours.get_state(), theirs.get_state())


class _Flipped(ImageDataset):
    """A user's subclass with a per-item transform: its ``__getitem__`` takes one position."""

    def __getitem__(self, i):  # type: ignore[override]
        x, y = super().__getitem__(int(i))
        return x.flip(-1), y

    def __getitems__(self, indices):  # type: ignore[override]
        return [self[i] for i in indices]


def test_a_subclass_of_image_dataset_loads_through_its_own_items() -> None:
    task = load_sequence(limit_per_class=5)[0]
    flipped = _Flipped(
        task.train.images,
        task.train.labels,
        index=task.train.index,
        mean=task.train.mean,
        std=task.train.std,
    )
    (x, _), *_ = batch_loader(flipped, 4)
    assert torch.equal(x, task.train.batch(torch.arange(4))[0].flip(-1))


def test_test_loader_keeps_order() -> None:
    task = load_sequence(limit_per_class=10)[0]
    test = loaders(task, 7, eval_batch_size=6).test
    x = torch.cat([xb for xb, _ in test])
    assert [len(y) for _, y in test] == [6, 6, 6, 2] and torch.equal(x, task.test.tensors()[0])


def test_validation_split_is_seeded_stratified_and_disjoint() -> None:
    task = load_sequence(limit_per_class=50)[1]
    train, val = split_validation(task.train, 0.2, seed=0)
    assert torch.bincount(val.labels).tolist() == [10, 10]
    assert torch.bincount(train.labels).tolist() == [40, 40]
    both = torch.cat([train.index, val.index]).sort().values
    assert torch.equal(both, task.train.index.sort().values)
    assert torch.equal(split_validation(task.train, 0.2, seed=0)[1].index, val.index)
    assert not torch.equal(split_validation(task.train, 0.2, seed=1)[1].index, val.index)
    split = loaders(task, 8, val_fraction=0.2, seed=0)
    assert split.val is not None and len(split.train.dataset) == 80  # type: ignore[arg-type]
    assert torch.equal(split.val.dataset.index, val.index)  # type: ignore[attr-defined]
    assert loaders(task, 8).val is None
    with pytest.raises(ConfigError, match="fraction"):
        split_validation(task.train, 1.0)
    with pytest.raises(DataError, match="leaves no validation items"):
        split_validation(task.train, 0.001)
    with pytest.raises(ConfigError, match="batch_size"):
        loaders(task, 0)
