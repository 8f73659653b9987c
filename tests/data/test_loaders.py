"""Task loaders: a seeded training order, ordered evaluation, a stratified validation split."""

from __future__ import annotations

import pytest
import torch

from eidetic_func.core.errors import ConfigError, DataError
from eidetic_func.data import (
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


def test_test_loader_keeps_order() -> None:
    task = load_sequence(limit_per_class=10)[0]
    test = loaders(task, 7, eval_batch_size=6).test
    x = torch.cat([xb for xb, _ in test])
    assert test.batch_size == 6 and torch.equal(x, task.test.tensors()[0])


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
