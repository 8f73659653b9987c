"""ImageDataset: single, batched and whole fetches agree and standardize; bad inputs refused."""

from __future__ import annotations

import pytest
import torch

from eidetic_func.core.errors import ShapeError
from eidetic_func.data import (
    ImageDataset,
)
from tests.torchvision_files import standardized


def test_dataset_single_batched_and_whole_fetches_agree_and_standardize() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 4, 4), dtype=torch.uint8, generator=g)
    perm = torch.randperm(16, generator=g)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    ds = ImageDataset(
        images,
        torch.tensor([2, 0, 1]),
        index=torch.tensor([5, 0, 3]),
        mean=mean,
        std=std,
        permutation=perm,
    )
    expected = standardized(images, mean, std)[[5, 0, 3]].flatten(2)[:, :, perm].view(3, 3, 4, 4)
    x, y = ds.tensors()
    torch.testing.assert_close(x, expected)
    assert y.tolist() == [2, 0, 1]
    for i in range(3):
        assert torch.equal(ds[i][0], x[i]) and torch.equal(ds[i][1], y[i])
    batched = ds.__getitems__([2, 0])
    assert torch.equal(batched[0][0], x[2]) and torch.equal(batched[1][1], y[0])
    sub = ds.subset(torch.tensor([2]))
    assert torch.equal(sub.tensors()[0], x[2:]) and sub.images is images


def test_dataset_rejects_bad_inputs() -> None:
    images = torch.zeros(3, 1, 2, 2, dtype=torch.uint8)
    with pytest.raises(ShapeError, match="uint8"):
        ImageDataset(images.float(), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ShapeError, match="one label per item"):
        ImageDataset(images, torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ShapeError, match="permutation"):
        ImageDataset(
            images, torch.zeros(3, dtype=torch.int64), permutation=torch.tensor([0, 0, 1, 2])
        )
