"""MNIST and FashionMNIST in torchvision's layout, written from the embedded subset.

The suite needs nothing outside the clone: the readers of ``DATA_ROOT/<Class>/raw/`` are
tested on files these helpers write in the exact formats (LeCun's idx, gzip-compressed as
distributed, or as torchvision extracts them), holding the real MNIST images the package
ships (``eidetic_func/data/embedded/``). FashionMNIST gets the same images inverted and their
labels rotated by one, so a reader that mixed the two datasets up would be caught.

Generated ``.gz`` files cannot have the original md5 sums; :func:`patched_checksums` makes
torchvision's tables name the generated files' sums for as long as it is active (the
checking itself stays the reader's, and is tested on corrupt files elsewhere).
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import io
import lzma
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import eidetic_func.data
from eidetic_func.data import EMBEDDED_FILE

EMBEDDED_DIR = Path(eidetic_func.data.__file__).parent / "embedded"  # where the loader reads

_PREFIX = {True: "train", False: "t10k"}


@functools.cache
def embedded_npz() -> dict[str, np.ndarray]:
    """The embedded subset's arrays as stored (see ``eidetic_func/data/embedded/README.md``)."""
    blob = (EMBEDDED_DIR / EMBEDDED_FILE).read_bytes()
    with np.load(io.BytesIO(lzma.decompress(blob)), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def idx_bytes(array: np.ndarray) -> bytes:
    """``array`` (uint8, 1 to 3 dimensions) in the idx format: magic ``00 00 08 ndim``, the
    dimensions as big-endian uint32, then the bytes in C order."""
    if array.dtype != np.uint8 or not 1 <= array.ndim <= 3:
        raise ValueError(f"idx files here hold uint8 arrays of 1-3 dimensions, got {array.dtype}")
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array).tobytes()


def dataset_arrays(name: str) -> dict[bool, tuple[np.ndarray, np.ndarray]]:
    """``{train: (images (N, 28, 28) uint8, labels (N,) uint8)}`` for ``name`` ("MNIST" is the
    embedded subset as it is; "FashionMNIST" its inverted images with labels ``(y + 1) % 10``)."""
    arrays = embedded_npz()
    out = {}
    for train in (True, False):
        split = "train" if train else "test"
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if name == "FashionMNIST":
            images, labels = 255 - images, (labels + 1) % 10
        elif name != "MNIST":
            raise ValueError(f"no generated data for {name!r}")
        out[train] = (images, labels)
    return out


def write_mnist_family(root: Path, name: str, *, extracted: bool = False) -> dict[str, str]:
    """Write ``root/name/raw/`` as torchvision expects it: the four ``.gz`` files (gzip with
    a zero timestamp, so the bytes are reproducible), or with ``extracted`` the four files
    torchvision extracts from them. Returns ``{file name: md5}`` of what was written."""
    raw = root / name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    sums = {}
    for train, (images, labels) in dataset_arrays(name).items():
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            file = f"{_PREFIX[train]}-{kind}-ubyte"
            data = idx_bytes(array)
            if not extracted:
                file += ".gz"
                data = gzip.compress(data, compresslevel=1, mtime=0)
            (raw / file).write_bytes(data)
            sums[file] = hashlib.md5(data).hexdigest()
    return sums


def write_data_root(root: Path, *, extracted: bool = False) -> dict[str, dict[str, str]]:
    """MNIST and FashionMNIST under ``root``; ``{class name: {file name: md5}}``."""
    return {
        name: write_mnist_family(root, name, extracted=extracted)
        for name in ("MNIST", "FashionMNIST")
    }


@contextlib.contextmanager
def patched_checksums(sums: dict[str, dict[str, str]]) -> Iterator[None]:
    """torchvision's md5 tables name the generated ``.gz`` files' sums inside the block."""
    import torchvision.datasets

    with pytest.MonkeyPatch.context() as patch:
        for name, files in sums.items():
            cls = getattr(torchvision.datasets, name)
            resources = [(file, files[file]) for file, _ in cls.resources]
            patch.setattr(cls, "resources", resources)
        yield


def expected_split(name: str, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """What a reader must return for ``name``: images (N, 1, 28, 28) uint8, labels int64."""
    images, labels = dataset_arrays(name)[train]
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).long()


def standardized(u8: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """The documented formula, per channel: (pixel / 255 - mean) / std."""
    return (u8.float() / 255 - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)
