"""In-memory data move once onto the run's device; data already there are not copied."""

from __future__ import annotations

import dataclasses

import torch

from eidetic_func.data import ImageDataset, TaskSequence, load_sequence, loaders, on_device
from eidetic_func.runner.config import RunConfig
from eidetic_func.runner.setup import _placed


def _sequence_of(*pairs: tuple[ImageDataset, ImageDataset]) -> TaskSequence:
    base = load_sequence("embedded", num_tasks=len(pairs))
    tasks = tuple(
        dataclasses.replace(task, train=train, test=test)
        for task, (train, test) in zip(base, pairs)
    )
    return dataclasses.replace(base, tasks=tasks)


def _permuted() -> ImageDataset:
    images = torch.randint(0, 256, (10, 1, 2, 2), dtype=torch.uint8)
    return ImageDataset(
        images,
        torch.arange(10) % 2,
        mean=(0.5,),
        std=(0.25,),
        permutation=torch.tensor([3, 2, 1, 0]),
    )


def test_data_already_on_the_device_are_kept_as_they_are() -> None:
    sequence = load_sequence("embedded", num_tasks=2)
    placed = on_device(sequence, "cpu")
    for before, after in zip(sequence, placed):
        assert after.train is before.train and after.test is before.test


def test_datasets_sharing_images_share_one_copy_on_the_device() -> None:
    a = _permuted()
    b = a.subset(torch.tensor([1, 3]))
    other = ImageDataset(a.images.clone(), torch.zeros(10, dtype=torch.int64))
    t0, t1 = on_device(_sequence_of((a, b), (other, a)), "meta")
    assert t0.train.images is t0.test.images is t1.test.images  # one copy of a's images
    assert t1.train.images is not t0.train.images  # other images: a copy of their own
    for d in (t0.train, t0.test, t1.train, t1.test):
        assert d.images.is_meta and d.labels.is_meta and d.index.is_meta
        assert d._mean.is_meta and d._std.is_meta
    assert t0.train.permutation is not None and t0.train.permutation.is_meta
    assert (t0.test.mean, t0.test.std) == (a.mean, a.std)
    assert t0.test.labels.shape == b.labels.shape
    assert not a.images.is_meta and not a.labels.is_meta and not b.index.is_meta  # untouched


def test_batches_of_placed_data_come_out_on_the_device() -> None:
    (task,) = on_device(_sequence_of((_permuted(), _permuted())), "meta")
    train = loaders(task, batch_size=4, seed=0)
    for x, y in (next(iter(train.train)), next(iter(train.test))):
        assert x.is_meta and y.is_meta  # run_epoch's x.to(device) then copies nothing


def test_the_same_items_wherever_the_data_live() -> None:
    dataset = _permuted()
    moved = dataset.viewing(dataset.images.clone())  # "another device": another tensor
    positions = torch.tensor([4, 0, 9])
    for got, expected in zip(moved.batch(positions), dataset.batch(positions)):
        assert torch.equal(got, expected)


def test_a_run_places_its_data_unless_loader_workers_read_them() -> None:
    sequence = load_sequence("embedded", num_tasks=1)
    meta = torch.device("meta")
    assert _placed(sequence, RunConfig(num_workers=0), meta)[0].train.images.is_meta
    assert _placed(sequence, RunConfig(num_workers=1), meta) is sequence
