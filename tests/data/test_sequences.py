"""Task sequences: the embedded default, class splits, permutations, label remapping, refusals."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from eidetic_func.core.errors import ConfigError, DataError
from eidetic_func.data import (
    SEQUENCE_NAMES,
    ImageDataset,
    load_sequence,
    pixel_permutations,
    split_classes,
)
from tests.torchvision_files import EMBEDDED_DIR, embedded_npz


def _original_labels(dataset: ImageDataset, source_labels: torch.Tensor) -> torch.Tensor:
    return source_labels[dataset.index]


# --------------------------------------------------------------------------- embedded


def test_embedded_is_the_default_split_mnist_5x2() -> None:
    seq = load_sequence()
    assert seq.name == "embedded"
    assert len(seq) == 5
    assert seq.num_classes == (2, 2, 2, 2, 2)
    assert seq.input_shape == (1, 28, 28)
    assert [t.classes for t in seq] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    assert [t.index for t in seq] == list(range(5))
    x, y = seq[0].train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert y.shape == () and y.dtype == torch.int64


def test_embedded_is_stratified_and_small() -> None:
    arrays = embedded_npz()
    assert np.bincount(arrays["train_labels"], minlength=10).tolist() == [1500] * 10
    assert np.bincount(arrays["test_labels"], minlength=10).tolist() == [400] * 10
    for split, n in (("train", 60_000), ("test", 10_000)):
        index = arrays[f"{split}_index"].astype(np.int64)
        assert len(np.unique(index)) == len(index) and index.max() < n
    seq = load_sequence()
    assert [(len(t.train), len(t.test)) for t in seq] == [(3000, 800)] * 5
    for task in seq:
        assert torch.bincount(task.train.labels).tolist() == [1500, 1500]
    files = [p for p in EMBEDDED_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert sum(p.stat().st_size for p in files) <= 3 * 2**20


def test_labels_are_remapped_to_the_head_in_task_order() -> None:
    classes = [(3, 1), (7,), (0, 9, 4)]
    seq = load_sequence("embedded", classes=classes)
    original = torch.from_numpy(embedded_npz()["train_labels"].astype(np.int64))
    assert seq.num_classes == (2, 1, 3)
    for task, wanted in zip(seq, classes):
        assert task.classes == wanted
        head = task.train.labels
        assert torch.equal(torch.tensor(wanted)[head], _original_labels(task.train, original))
        assert torch.bincount(head).tolist() == [1500] * len(wanted)


@given(
    order=st.permutations(list(range(10))),
    cuts=st.lists(st.integers(1, 9), max_size=4, unique=True),
)
def test_any_valid_split_yields_every_class_exactly_where_asked(
    order: list[int], cuts: list[int]
) -> None:
    bounds = [0, *sorted(cuts), 10]
    classes = [tuple(order[a:b]) for a, b in itertools.pairwise(bounds)]
    seq = load_sequence(classes=classes, limit_per_class=20)
    original = torch.from_numpy(embedded_npz()["test_labels"].astype(np.int64))
    for task in seq:
        got = torch.tensor(task.classes)[task.test.labels]
        assert torch.equal(got, _original_labels(task.test, original))
        assert len(task.test) == 20 * task.num_classes


def test_limit_keeps_the_first_images_of_each_class_and_normalize_off_gives_unit_pixels() -> None:
    seq = load_sequence(limit_per_class=5, normalize=False, num_tasks=2, classes_per_task=2)
    assert [t.classes for t in seq] == [(0, 1), (2, 3)]
    arrays = embedded_npz()
    first_zeros = np.flatnonzero(arrays["train_labels"] == 0)[:5]
    assert seq[0].train.index[seq[0].train.labels == 0].tolist() == first_zeros.tolist()
    x, _ = seq[0].train.tensors()
    expected = torch.from_numpy(arrays["train_images"][seq[0].train.index.numpy()]) / 255.0
    assert torch.equal(x[:, 0], expected)
    assert seq.mean == (0.0,) and seq.std == (1.0,)


# --------------------------------------------------------------------------- permutations


def test_permutations_are_fixed_per_seed_distinct_per_task_and_prefix_stable() -> None:
    a = pixel_permutations(5, 784, seed=3)
    assert torch.equal(a, pixel_permutations(5, 784, seed=3))
    assert not torch.equal(a, pixel_permutations(5, 784, seed=4))
    assert torch.equal(pixel_permutations(2, 784, seed=3), a[:2])
    assert len({tuple(row.tolist()) for row in a}) == 5
    assert all(torch.equal(row.sort().values, torch.arange(784)) for row in a)
    assert not any(torch.equal(row, torch.arange(784)) for row in a)


def test_identity_first_replaces_only_task_zero() -> None:
    a = pixel_permutations(4, 100, seed=1)
    b = pixel_permutations(4, 100, seed=1, identity_first=True)
    assert torch.equal(b[0], torch.arange(100))
    assert torch.equal(a[1:], b[1:])


# --------------------------------------------------------------------------- splits


def test_split_classes_blocks() -> None:
    assert split_classes(10, num_tasks=5) == ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))
    assert split_classes(100, num_tasks=20)[-1] == (95, 96, 97, 98, 99)
    assert split_classes(100, classes_per_task=10)[1] == tuple(range(10, 20))
    assert split_classes(10, num_tasks=3, classes_per_task=2) == ((0, 1), (2, 3), (4, 5))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"classes": [(0, 1), (1, 2)]}, "class 1 appears in tasks 0 and 1"),
        ({"classes": [(0, 0)]}, "class 0 appears twice"),
        ({"classes": [(0, 10)]}, r"class 10 does not exist \(the dataset has classes 0..9\)"),
        ({"classes": [(0, -1)]}, "class -1 does not exist"),
        ({"classes": [(0, 1), ()]}, "task 1 of classes must be a non-empty"),
        ({"classes": []}, "non-empty list of tasks"),
        ({"classes": [(0, 1.5)]}, "must be integers"),
        ({"classes": [(True, 2)]}, "must be integers"),
        ({"classes": [(0, 1)], "num_tasks": 1}, "either classes or num_tasks"),
        ({"num_tasks": 3}, "cannot be split evenly into 3 tasks"),
        ({"classes_per_task": 3}, "tasks of 3"),
        ({"num_tasks": 6, "classes_per_task": 2}, "need 12 classes; the dataset has 10"),
        ({}, "give num_tasks"),
    ],
)
def test_impossible_splits_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(DataError, match=message):
        split_classes(10, **kwargs)  # type: ignore[arg-type]


def test_impossible_split_is_refused_before_reading_any_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="class 10 does not exist"):
        load_sequence("split-mnist", tmp_path, classes=[(0, 10)])
    with pytest.raises(ConfigError, match="num_tasks"):
        load_sequence("embedded", num_tasks=0)


# --------------------------------------------------------------------------- errors


def test_unknown_sequence_lists_the_valid_names() -> None:
    with pytest.raises(DataError, match="did you mean 'split-mnist'") as info:
        load_sequence("split_mnist")
    for name in SEQUENCE_NAMES:
        assert name in str(info.value)


def test_empty_data_and_misapplied_options_are_refused() -> None:
    with pytest.raises(DataError, match="limit_per_class=0"):
        load_sequence(limit_per_class=0)
    with pytest.raises(ConfigError, match="limit_per_class"):
        load_sequence(limit_per_class=-1)
    with pytest.raises(ConfigError, match="identity_first"):
        load_sequence(identity_first=True)
    with pytest.raises(ConfigError, match="do not apply"):
        load_sequence("permuted-mnist", "/nonexistent", classes=[(0, 1)])


def test_sequence_and_task_are_frozen() -> None:
    seq = load_sequence(limit_per_class=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        seq.name = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        seq[0].classes = (1,)  # type: ignore[misc]
