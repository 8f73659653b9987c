"""The datasets task sequences are cut from, read into memory as uint8 images and labels.

Each :class:`Source` names its torchvision class and the per-channel mean and std of its
*full* training set (fixed constants, so a subset or a split is normalized exactly like the
whole dataset). The embedded subset (a stratified MNIST subset shipped in
``eidetic_func/data/embedded/``, see its README) needs no data root and no download.

Files are read from a data root in torchvision's layout and are **never downloaded**; the
original archives are checked against torchvision's md5 sums. MNIST and FashionMNIST are
read from torchvision's extracted files if present, else straight from the ``.gz`` files,
writing nothing (a read-only root is fine). CIFAR archives are extracted next to themselves
by torchvision on first use (``download=True`` with the archive present does only that), so
that root must be writable.
"""

from __future__ import annotations

import functools
import gzip
import io
import lzma
import math
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from eidetic_func.core.errors import DataError

EMBEDDED_FILE = "mnist-subset.npz.xz"
"""The embedded MNIST subset, under ``eidetic_func/data/embedded/``."""


@dataclass(frozen=True)
class Source:
    """A dataset: its torchvision class name (``None``: embedded) and standardization."""

    title: str
    tv_class: str | None
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]


# Mean and std of each full training set (pixels in [0, 1]), population std per channel.
MNIST = Source("MNIST", "MNIST", 10, (1, 28, 28), (0.1307,), (0.3081,))
FASHION_MNIST = Source("FashionMNIST", "FashionMNIST", 10, (1, 28, 28), (0.2860,), (0.3530,))
CIFAR10 = Source(
    "CIFAR-10", "CIFAR10", 10, (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
)
CIFAR100 = Source(
    "CIFAR-100", "CIFAR100", 100, (3, 32, 32), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
)
# The embedded subset is standardized like full MNIST, so both feed the same model alike.
EMBEDDED = Source("embedded MNIST subset", None, 10, (1, 28, 28), MNIST.mean, MNIST.std)

_Split = tuple[Tensor, Tensor]  # images (N, C, H, W) uint8, labels (N,) int64


def read_source(source: Source, root: str | Path | None, sequence: str) -> tuple[_Split, _Split]:
    """``(train, test)`` images and labels of ``source``."""
    if source.tv_class is None:
        arrays = _embedded_arrays()
        return (
            (arrays["train_images"], arrays["train_labels"]),
            (arrays["test_images"], arrays["test_labels"]),
        )
    if root is None:
        raise DataError(
            f"{sequence!r} needs a data root holding {source.title} in torchvision's layout "
            f"(root=None is only valid for 'embedded'); expected files: "
            f"{', '.join(str(p) for p, _ in _archives(source, Path('<root>')))}"
        )
    root = Path(root).expanduser()
    return _read_files(source, root, sequence, True), _read_files(source, root, sequence, False)


def _tv(source: Source) -> Any:
    # Imported on demand: torchvision adds ~1 s to import time, and 'embedded' needs none.
    import torchvision.datasets

    return getattr(torchvision.datasets, str(source.tv_class))


def _archives(source: Source, root: Path) -> list[tuple[Path, str]]:
    """The original files torchvision expects under ``root``, with their md5 sums."""
    cls = _tv(source)
    if hasattr(cls, "resources"):  # the MNIST family: <root>/<Class>/raw/*.gz
        return [(root / cls.__name__ / "raw" / name, md5) for name, md5 in cls.resources]
    return [(root / cls.filename, cls.tgz_md5)]  # CIFAR: <root>/<archive>.tar.gz


def _read_files(source: Source, root: Path, sequence: str, train: bool) -> _Split:
    cls = _tv(source)
    if hasattr(cls, "resources"):
        return _read_mnist_family(source, cls, root, sequence, train)
    return _read_cifar(source, cls, root, sequence, train)


def _read_mnist_family(source: Source, cls: Any, root: Path, sequence: str, train: bool) -> _Split:
    """MNIST or FashionMNIST from torchvision's extracted files, else from the ``.gz`` files.

    The ``.gz`` files are md5-checked and decompressed in memory: nothing is written under
    ``root``, so a read-only copy of the dataset works as it is.
    """
    prefix = "train" if train else "t10k"
    archives = [(p, md5) for p, md5 in _archives(source, root) if p.name.startswith(prefix)]
    if all(p.with_suffix("").is_file() for p, _ in archives):  # already extracted
        try:
            dataset = cls(root, train=train, download=False)
        except Exception as e:
            raise DataError(
                f"{source.title} under {root} cannot be read ({type(e).__name__}: {e}); delete "
                "the extracted files next to the .gz files to read those instead"
            ) from e
        return dataset.data.unsqueeze(1).contiguous(), dataset.targets.to(torch.int64)
    _check_archives(source, cls, root, sequence)
    images, labels = (_read_idx_gz(p) for p, _ in archives)  # resources list images first
    if images.dim() != 3 or labels.dim() != 1 or len(images) != len(labels):
        raise DataError(
            f"{archives[0][0]} and {archives[1][0]} hold {tuple(images.shape)} images and "
            f"{tuple(labels.shape)} labels; expected (N, H, W) and (N,)"
        )
    return images.unsqueeze(1), labels.to(torch.int64)


def _read_idx_gz(path: Path) -> Tensor:
    """A gzip-compressed idx file of uint8, as a uint8 tensor of the shape it declares.

    The idx format (LeCun's): magic bytes ``00 00 08 N``, ``N`` big-endian uint32
    dimensions, then the data.
    """
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3] if len(data) >= 4 and data[:3] == b"\x00\x00\x08" else 0
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if not 1 <= ndim <= 3 or len(data) != 4 + 4 * ndim + math.prod(shape):
        raise DataError(f"{path} is not an idx file of uint8 (or it is truncated)")
    return torch.from_numpy(
        np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape).copy()
    )


def _read_cifar(source: Source, cls: Any, root: Path, sequence: str, train: bool) -> _Split:
    """CIFAR from torchvision's extracted batches, extracting the archive first if needed."""
    try:
        dataset = cls(root, train=train, download=False)
    except Exception:  # not extracted yet (torchvision raises RuntimeError), or corrupt
        _check_archives(source, cls, root, sequence)
        if not _writable(root):
            raise DataError(
                f"{root} is read-only, and {root / cls.filename} must be extracted next to "
                "itself: copy it to a writable directory and pass that as root"
            ) from None
        try:
            # Every archive is present and verified, so torchvision's "download" only extracts.
            dataset = cls(root, train=train, download=True)
        except Exception as e:
            raise DataError(
                f"{source.title} under {root} cannot be extracted or read ({type(e).__name__}: {e})"
            ) from e
    images = torch.from_numpy(np.asarray(dataset.data)).permute(0, 3, 1, 2)  # HWC to CHW
    return images.contiguous(), torch.as_tensor(dataset.targets, dtype=torch.int64)


def _writable(path: Path) -> bool:
    # Mode bits too: as root, os.access says yes even to a directory marked r-x.
    return os.access(path, os.W_OK) and bool(path.stat().st_mode & 0o222)


def _check_archives(source: Source, cls: Any, root: Path, sequence: str) -> None:
    """Raise :class:`DataError` unless every original file is present with its md5 sum."""
    from torchvision.datasets.utils import check_integrity

    archives = _archives(source, root)
    missing = [p for p, _ in archives if not p.is_file()]
    if missing:
        raise DataError(_missing_message(source, cls, root, sequence, archives, missing))
    corrupt = [f"{p} (md5 should be {md5})" for p, md5 in archives if not check_integrity(p, md5)]
    if corrupt:
        raise DataError(f"{source.title} files are corrupt: {'; '.join(corrupt)}")


def _missing_message(
    source: Source,
    cls: Any,
    root: Path,
    sequence: str,
    archives: list[tuple[Path, str]],
    missing: list[Path],
) -> str:
    expected = "\n".join(f"  {p}" + ("   (missing)" if p in missing else "") for p, _ in archives)
    if hasattr(cls, "resources"):
        url, alt = cls.mirrors[0], ""
    else:
        url, alt = cls.url, f"\n(or the extracted directory {root / cls.base_folder}/)"
    hint = ""
    if (root / "raw").is_dir() or root.name in {cls.__name__, getattr(cls, "base_folder", "")} - {
        ""
    }:
        hint = f"\nroot should be the directory that contains {cls.__name__}/, not that directory"
    return (
        f"{sequence!r} needs the {source.title} files under the data root {root}; expected:\n"
        f"{expected}{alt}\n"
        f"eidetic_func never downloads. Fetch them from {url} (or run "
        f"torchvision.datasets.{cls.__name__}(root, download=True) where there is internet "
        f"access) and copy them there; or use load_sequence('embedded'), which needs no files."
        f"{hint}"
    )


@functools.cache
def _embedded_arrays() -> dict[str, Tensor]:
    """The embedded subset: ``{train,test}_images`` (N, 1, 28, 28) uint8, ``*_labels`` int64."""
    ref = resources.files(__package__ or "eidetic_func") / "embedded" / EMBEDDED_FILE
    try:
        blob = ref.read_bytes()
    except OSError as e:
        raise DataError(f"the embedded dataset {ref} is missing; reinstall eidetic_func") from e
    with np.load(io.BytesIO(lzma.decompress(blob)), allow_pickle=False) as npz:
        out = {}
        for split in ("train", "test"):
            out[f"{split}_images"] = torch.from_numpy(npz[f"{split}_images"]).unsqueeze(1)
            out[f"{split}_labels"] = torch.from_numpy(npz[f"{split}_labels"].astype(np.int64))
    return out
