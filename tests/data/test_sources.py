"""Reading the datasets: missing and corrupt files named, CIFAR archives, idx files, and the
MNIST-family files in torchvision's layout read exactly as torchvision reads them."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.datasets import CIFAR10, CIFAR100

from eidetic_func.core.errors import DataError
from eidetic_func.data import load_sequence, pixel_permutations
from eidetic_func.data.sources import _read_idx_gz
from tests.torchvision_files import expected_split, standardized

# --------------------------------------------------------------------------- missing files


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
    expected = standardized(torch.from_numpy(row).view(3, 32, 32), seq.mean, seq.std)
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
    expected = standardized(reference.data[task.train.index].unsqueeze(1), (0.1307,), (0.3081,))
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
