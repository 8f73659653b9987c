"""Task sequences: class splits, permutations, the embedded subset, loaders, and errors."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import itertools
import pickle
import re
import shutil
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torchvision.datasets import CIFAR10, CIFAR100

from eidetic_func.core.errors import ConfigError, DataError, ShapeError
from eidetic_func.data.loading import (
    SEQUENCE_NAMES,
    ImageDataset,
    _read_idx_gz,
    load_sequence,
    loaders,
    pixel_permutations,
    split_classes,
    split_validation,
)
from tests.torchvision_files import EMBEDDED_DIR, embedded_npz, expected_split


def _original_labels(dataset: ImageDataset, source_labels: torch.Tensor) -> torch.Tensor:
    return source_labels[dataset.index]


def _standardize(u8: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """The documented formula, per channel: (pixel / 255 - mean) / std."""
    return (u8.float() / 255 - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any download attempt (torchvision goes through urllib) fails the test at once."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


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


# --------------------------------------------------------------------------- datasets


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
    expected = _standardize(images, mean, std)[[5, 0, 3]].flatten(2)[:, :, perm].view(3, 3, 4, 4)
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


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("split-mnist", "MNIST/raw/train-images-idx3-ubyte.gz"),
        ("permuted-mnist", "MNIST/raw/t10k-labels-idx1-ubyte.gz"),
        ("split-fashion-mnist", "FashionMNIST/raw/train-labels-idx1-ubyte.gz"),
        ("split-cifar10", "cifar-10-python.tar.gz"),
        ("split-cifar100", "cifar-100-python.tar.gz"),
    ],
)
def test_missing_files_are_named_exactly(tmp_path: Path, name: str, expected: str) -> None:
    with pytest.raises(DataError) as info:
        load_sequence(name, tmp_path)
    message = str(info.value)
    assert str(tmp_path / expected) in message
    assert "never downloads" in message and "embedded" in message
    with pytest.raises(DataError, match=r"needs a data root"):
        load_sequence(name, None)


def test_root_pointing_inside_the_dataset_gets_a_hint(tmp_path: Path) -> None:
    (tmp_path / "MNIST" / "raw").mkdir(parents=True)
    with pytest.raises(DataError, match="contains MNIST/, not that directory"):
        load_sequence("split-mnist", tmp_path / "MNIST")


def test_corrupt_archives_are_reported(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        (raw / f"{name}.gz").write_bytes(gzip.compress(b"not mnist"))
    with pytest.raises(DataError, match=re.escape("t10k-labels-idx1-ubyte.gz   (missing)")):
        load_sequence("split-mnist", tmp_path)
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"not mnist"))
    with pytest.raises(DataError, match=r"corrupt: .*md5 should be"):
        load_sequence("split-mnist", tmp_path)


def test_empty_data_and_misapplied_options_are_refused() -> None:
    with pytest.raises(DataError, match="limit_per_class=0"):
        load_sequence(limit_per_class=0)
    with pytest.raises(ConfigError, match="limit_per_class"):
        load_sequence(limit_per_class=-1)
    with pytest.raises(ConfigError, match="identity_first"):
        load_sequence(identity_first=True)
    with pytest.raises(ConfigError, match="do not apply"):
        load_sequence("permuted-mnist", "/nonexistent", classes=[(0, 1)])


# --------------------------------------------------------------------------- fake CIFAR


def _fake_cifar(
    root: Path, monkeypatch: pytest.MonkeyPatch, *, hundred: bool, missing: int | None = None
) -> None:
    """A tiny CIFAR-10/100 in torchvision's extracted layout; md5 checks patched away."""
    cls = CIFAR100 if hundred else CIFAR10
    num_classes, key = (100, "fine_labels") if hundred else (10, "labels")
    folder = root / cls.base_folder
    folder.mkdir(parents=True)
    g = np.random.default_rng(0)
    for name, _ in cls.train_list + cls.test_list:
        labels = [c for c in range(num_classes) if c != missing] * 2
        data = g.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        (folder / name).write_bytes(pickle.dumps({"data": data, key: labels}))
    names = [f"c{c}" for c in range(num_classes)]
    (folder / cls.meta["filename"]).write_bytes(pickle.dumps({cls.meta["key"]: names}))
    monkeypatch.setattr(cls, "train_list", [[n, None] for n, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[n, None] for n, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": None})


def test_split_cifar_layout_channels_and_remap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_cifar(tmp_path, monkeypatch, hundred=False)
    seq = load_sequence("split-cifar10", tmp_path)
    assert seq.input_shape == (3, 32, 32) and seq.num_classes == (2,) * 5
    task = seq[1]
    assert task.classes == (2, 3) and len(task.train) == 5 * 2 * 2 and len(task.test) == 2 * 2
    # CIFAR stores rows as 3 planes of 32×32 (CHW): item 0 of task 1 is row 2 of batch 1.
    row = pickle.loads((tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes())["data"][2]
    x, y = task.train[0]
    expected = _standardize(torch.from_numpy(row).view(3, 32, 32), seq.mean, seq.std)
    torch.testing.assert_close(x, expected)
    assert y.item() == 0


def test_cifar_archive_is_verified_and_extracted_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_cifar(tmp_path, monkeypatch, hundred=False)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    extracted = load_sequence("split-cifar10", tmp_path)[0].train.tensors()
    shutil.rmtree(tmp_path / "cifar-10-batches-py")
    with pytest.raises(DataError, match=r"cifar-10-python.tar.gz \(md5 should be"):
        load_sequence("split-cifar10", tmp_path)
    monkeypatch.setattr(CIFAR10, "tgz_md5", hashlib.md5(archive.read_bytes()).hexdigest())
    again = load_sequence("split-cifar10", tmp_path)[0].train.tensors()
    assert (tmp_path / "cifar-10-batches-py" / "data_batch_5").is_file()
    assert all(torch.equal(a, b) for a, b in zip(extracted, again))


def test_cifar_is_not_extracted_into_a_read_only_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"an archive")
    monkeypatch.setattr(CIFAR10, "tgz_md5", hashlib.md5(b"an archive").hexdigest())
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(DataError, match="is read-only"):
            load_sequence("split-cifar10", tmp_path)
    finally:
        tmp_path.chmod(0o755)


def test_idx_reader_refuses_truncated_files(tmp_path: Path) -> None:
    header = bytes([0, 0, 8, 2]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big")
    (tmp_path / "ok.gz").write_bytes(gzip.compress(header + bytes(range(6))))
    assert _read_idx_gz(tmp_path / "ok.gz").tolist() == [[0, 1, 2], [3, 4, 5]]
    (tmp_path / "short.gz").write_bytes(gzip.compress(header + bytes(5)))
    with pytest.raises(DataError, match="truncated"):
        _read_idx_gz(tmp_path / "short.gz")


def test_split_cifar100_defaults_to_10x10(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_cifar(tmp_path, monkeypatch, hundred=True)
    seq = load_sequence("split-cifar100", tmp_path)
    assert seq.num_classes == (10,) * 10 and seq[9].classes == tuple(range(90, 100))
    assert load_sequence("split-cifar100", tmp_path, num_tasks=20).num_classes == (5,) * 20


def test_a_class_without_images_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_cifar(tmp_path, monkeypatch, hundred=False, missing=7)
    with pytest.raises(DataError, match=r"task 3: classes \[7\] have no training images"):
        load_sequence("split-cifar10", tmp_path)
    assert len(load_sequence("split-cifar10", tmp_path, num_tasks=3, classes_per_task=2)) == 3


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


def test_sequence_and_task_are_frozen() -> None:
    seq = load_sequence(limit_per_class=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        seq.name = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        seq[0].classes = (1,)  # type: ignore[misc]


# --------------------------------------------------------------------------- torchvision layout
# ``mnist_root`` holds MNIST and FashionMNIST in torchvision's layout, written from the
# embedded subset (tests/torchvision_files.py): the readers run on the exact file formats
# without anything from outside the clone.


def _extracted_copy(mnist_root: Path, tmp_path: Path, name: str = "MNIST") -> Path:
    """A copy of ``mnist_root/name`` that torchvision itself has extracted."""
    from torchvision import datasets

    shutil.copytree(mnist_root / name, tmp_path / name)
    for p in [tmp_path / name, *(tmp_path / name).rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)  # the source may be marked read-only
    for train in (True, False):  # the .gz files are present and verified: no download
        getattr(datasets, name)(tmp_path, train=train, download=True)
    return tmp_path


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_split_mnist_reads_the_gz_files_as_torchvision_reads_them(
    mnist_root: Path, tmp_path: Path
) -> None:
    from torchvision.datasets import MNIST

    before = _snapshot(mnist_root)
    seq = load_sequence("split-mnist", mnist_root, limit_per_class=30)
    assert _snapshot(mnist_root) == before  # read in memory: nothing written under root
    assert seq.num_classes == (2,) * 5 and [len(t.train) for t in seq] == [60] * 5
    reference = MNIST(_extracted_copy(mnist_root, tmp_path), train=True)
    images, labels = expected_split("MNIST", train=True)
    assert torch.equal(reference.data.unsqueeze(1), images)  # the files hold what was written
    assert torch.equal(reference.targets, labels)
    task = seq[4]
    x, y = task.train.tensors()
    expected = _standardize(reference.data[task.train.index].unsqueeze(1), (0.1307,), (0.3081,))
    torch.testing.assert_close(x, expected)
    assert torch.equal(torch.tensor(task.classes)[y], reference.targets[task.train.index])


def test_files_extracted_by_torchvision_read_the_same(mnist_root: Path, tmp_path: Path) -> None:
    root = _extracted_copy(mnist_root, tmp_path, "FashionMNIST")
    for p in root.rglob("*.gz"):
        p.unlink()  # only torchvision's extracted files remain
    a = load_sequence("split-fashion-mnist", root, limit_per_class=20, num_tasks=2)
    b = load_sequence("split-fashion-mnist", mnist_root, limit_per_class=20, num_tasks=2)
    assert a.num_classes == (5, 5) and a.mean == (0.2860,)
    for ta, tb in zip(a, b):
        for da, db in ((ta.train, tb.train), (ta.test, tb.test)):
            assert all(torch.equal(u, v) for u, v in zip(da.tensors(), db.tensors()))
            assert torch.equal(da.index, db.index)


@pytest.mark.parametrize(
    ("sequence", "name"), [("split-mnist", "MNIST"), ("split-fashion-mnist", "FashionMNIST")]
)
def test_each_sequence_reads_its_own_dataset(mnist_root: Path, sequence: str, name: str) -> None:
    """FashionMNIST's generated files differ from MNIST's in pixels and labels: a reader that
    took one dataset's files for the other's would fail here."""
    seq = load_sequence(sequence, mnist_root, normalize=False)
    for train in (True, False):
        images, labels = expected_split(name, train)
        for task in seq:
            split = task.train if train else task.test
            x, y = split.tensors()
            assert torch.equal((x * 255).round().to(torch.uint8), images[split.index])
            assert torch.equal(torch.tensor(task.classes)[y], labels[split.index])


def test_permuted_mnist_from_the_gz_files(mnist_root: Path) -> None:
    seq = load_sequence(
        "permuted-mnist", mnist_root, num_tasks=3, seed=5, limit_per_class=10, identity_first=True
    )
    assert [t.name for t in seq] == ["identity", "permutation 1", "permutation 2"]
    assert seq.num_classes == (10, 10, 10) and seq[0].classes == tuple(range(10))
    perms = pixel_permutations(3, 784, seed=5, identity_first=True)
    base, labels = seq[0].test.tensors()
    for task, perm in zip(seq, perms):
        x, y = task.test.tensors()
        assert torch.equal(y, labels)
        assert torch.equal(x.flatten(1), base.flatten(1)[:, perm])
    assert seq[1].train.images is seq[2].train.images  # one copy of the images, shared


def test_generated_gz_files_are_md5_checked_like_the_originals(
    mnist_root: Path, tmp_path: Path
) -> None:
    """The generated root passes the reader's md5 check only through the patched table: one
    changed byte in a copy is reported as corrupt, naming the file."""
    shutil.copytree(mnist_root / "MNIST", tmp_path / "MNIST")
    labels = tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(gzip.decompress(labels.read_bytes())[:-1] + b"\x07", mtime=0))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz \(md5 should be"):
        load_sequence("split-mnist", tmp_path)
