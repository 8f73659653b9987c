"""Continual-learning task sequences from torchvision datasets, held in memory as tensors.

Sequences, by name (:func:`load_sequence`):

- ``split-*``: a dataset's classes divided among tasks — by default ``(0, 1), (2, 3), …``.
  Labels are remapped per task to ``0..k-1`` in the order the task lists its classes: one
  head per task (task-incremental).
- ``permuted-*``: every task has all classes, seen through its own fixed pixel permutation
  drawn from ``seed``.
- ``embedded`` (the default): Split-MNIST 5×2 from a stratified MNIST subset shipped in
  ``eidetic_func/embedded/`` (see its README); needs no data root and no download.

Items are ``(x, y)``: ``x`` float32 of image shape — (1, 28, 28) or (3, 32, 32); models
flatten themselves — standardized per channel as ``(pixel / 255 − mean) / std`` with the
mean and std of the dataset's *full* training set (fixed constants, so a subset or a split
is normalized exactly like the whole dataset); ``y`` an int64 scalar. Images are stored
once as uint8 and shared by every task of a sequence (a task is an index into them plus,
for permuted tasks, a permutation), so twenty permuted tasks cost the memory of one.

Files are read from a data root in torchvision's layout and are **never downloaded**; the
original archives are checked against torchvision's md5 sums. MNIST and FashionMNIST are
read from torchvision's extracted files if present, else straight from the ``.gz`` files,
writing nothing (a read-only root is fine). CIFAR archives are extracted next to themselves
by torchvision on first use (``download=True`` with the archive present does only that), so
that root must be writable.
"""

from __future__ import annotations

import difflib
import functools
import gzip
import io
import lzma
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from numbers import Integral
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from eidetic_func.core.errors import ConfigError, DataError, ShapeError

__all__ = [
    "EMBEDDED_FILE",
    "SEQUENCE_NAMES",
    "ImageDataset",
    "Task",
    "TaskLoaders",
    "TaskSequence",
    "load_sequence",
    "loaders",
    "pixel_permutations",
    "split_classes",
    "split_validation",
]

EMBEDDED_FILE = "mnist-subset.npz.xz"
"""The embedded MNIST subset, under ``eidetic_func/embedded/``."""


# --------------------------------------------------------------------------- datasets


class ImageDataset(Dataset[tuple[Tensor, Tensor]]):
    """A view of in-memory uint8 images: item ``i`` is ``(x, y)``.

    - ``x``: float32 ``(C, H, W)``, ``(images[index[i]] / 255 − mean) / std`` per channel,
      with the ``H·W`` pixel positions reordered by ``permutation`` (the same for every
      channel) when one is given: ``x.flatten(1) == standardized.flatten(1)[:, permutation]``.
    - ``y``: int64 scalar, ``labels[i]`` (already remapped to the task's head).

    ``images`` is shared, never copied or written to: do not modify it in place.
    Batched fetches (``__getitems__``, used by ``DataLoader``) index and standardize a
    whole batch at once.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        index: Tensor | None = None,
        mean: Sequence[float] = (0.0,),
        std: Sequence[float] = (1.0,),
        permutation: Tensor | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ShapeError(
                f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        index = torch.arange(len(images)) if index is None else index.to(torch.int64)
        if labels.dim() != 1 or labels.shape != index.shape:
            raise ShapeError(
                f"labels must be 1-D with one label per item ({len(index)}), "
                f"got {tuple(labels.shape)}"
            )
        channels, height, width = images.shape[1:]
        if len(mean) not in (1, channels) or len(std) not in (1, channels) or min(std) <= 0:
            raise ShapeError(
                f"mean/std need 1 or {channels} entries and std > 0, got {mean}, {std}"
            )
        if permutation is not None and not torch.equal(
            permutation.sort().values, torch.arange(height * width)
        ):
            raise ShapeError(f"permutation must be a permutation of range({height * width})")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.index = index
        self.permutation = permutation
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self._mean = torch.tensor(self.mean).view(-1, 1, 1)
        self._std = torch.tensor(self.std).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self._standardize(self.images[self.index[i]].unsqueeze(0))[0], self.labels[i]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[Tensor, Tensor]]:
        """Items ``indices``, fetched as one batch (``DataLoader`` collates them back)."""
        x, y = self.batch(torch.as_tensor(indices, dtype=torch.int64))
        return list(zip(x.unbind(0), y.unbind(0)))

    def batch(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Items ``positions`` stacked: ``x`` (B, C, H, W) float32, ``y`` (B,) int64."""
        return self._standardize(self.images[self.index[positions]]), self.labels[positions]

    def tensors(self) -> tuple[Tensor, Tensor]:
        """Every item stacked (a fresh copy): ``x`` (N, C, H, W) float32, ``y`` (N,) int64."""
        return self.batch(torch.arange(len(self)))

    def subset(self, positions: Tensor) -> ImageDataset:
        """The items at ``positions`` (of this dataset), sharing its images."""
        return ImageDataset(
            self.images,
            self.labels[positions],
            index=self.index[positions],
            mean=self.mean,
            std=self.std,
            permutation=self.permutation,
        )

    def _standardize(self, u8: Tensor) -> Tensor:
        x = u8.to(torch.float32).div_(255.0).sub_(self._mean).div_(self._std)
        if self.permutation is None:
            return x
        return x.flatten(2)[:, :, self.permutation].view(x.shape)

    def __repr__(self) -> str:
        perm = "" if self.permutation is None else ", permuted"
        return f"ImageDataset({len(self)} items of {tuple(self.images.shape[1:])}{perm})"


@dataclass(frozen=True)
class Task:
    """One task of a sequence.

    ``classes[k]`` is the original class id that head output ``k`` predicts; ``train``
    and ``test`` yield labels in ``0..num_classes-1``.
    """

    index: int
    name: str
    classes: tuple[int, ...]
    train: ImageDataset
    test: ImageDataset

    @property
    def num_classes(self) -> int:
        """Outputs of this task's head."""
        return len(self.classes)


@dataclass(frozen=True)
class TaskSequence:
    """Tasks to learn in order, all with inputs of ``input_shape`` (C, H, W).

    ``mean``/``std`` are the per-channel constants inputs were standardized with.
    """

    name: str
    tasks: tuple[Task, ...]
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def num_classes(self) -> tuple[int, ...]:
        """Head sizes, one per task (what a multi-head model is built with)."""
        return tuple(t.num_classes for t in self.tasks)

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self) -> Iterator[Task]:
        return iter(self.tasks)

    def __getitem__(self, t: int) -> Task:
        return self.tasks[t]


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class _Source:
    """A dataset: its torchvision class name (``None``: embedded) and standardization."""

    title: str
    tv_class: str | None
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]


# Mean and std of each full training set (pixels in [0, 1]), population std per channel.
_MNIST = _Source("MNIST", "MNIST", 10, (1, 28, 28), (0.1307,), (0.3081,))
_FASHION = _Source("FashionMNIST", "FashionMNIST", 10, (1, 28, 28), (0.2860,), (0.3530,))
_CIFAR10 = _Source(
    "CIFAR-10", "CIFAR10", 10, (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
)
_CIFAR100 = _Source(
    "CIFAR-100", "CIFAR100", 100, (3, 32, 32), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
)
# The embedded subset is standardized like full MNIST, so both feed the same model alike.
_EMBEDDED = _Source("embedded MNIST subset", None, 10, (1, 28, 28), _MNIST.mean, _MNIST.std)


@dataclass(frozen=True)
class _Kind:
    split: bool  # split by classes (else: permuted)
    source: _Source
    default_tasks: int


_SEQUENCES: dict[str, _Kind] = {
    "embedded": _Kind(True, _EMBEDDED, 5),
    "split-mnist": _Kind(True, _MNIST, 5),
    "split-fashion-mnist": _Kind(True, _FASHION, 5),
    "split-cifar10": _Kind(True, _CIFAR10, 5),
    "split-cifar100": _Kind(True, _CIFAR100, 10),
    "permuted-mnist": _Kind(False, _MNIST, 10),
    "permuted-fashion-mnist": _Kind(False, _FASHION, 10),
}
SEQUENCE_NAMES: tuple[str, ...] = tuple(_SEQUENCES)
"""Every name :func:`load_sequence` accepts."""

_Split = tuple[Tensor, Tensor]  # images (N, C, H, W) uint8, labels (N,) int64


def _read(source: _Source, root: str | Path | None, sequence: str) -> tuple[_Split, _Split]:
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


def _tv(source: _Source) -> Any:
    # Imported on demand: torchvision adds ~1 s to import time, and 'embedded' needs none.
    import torchvision.datasets

    return getattr(torchvision.datasets, str(source.tv_class))


def _archives(source: _Source, root: Path) -> list[tuple[Path, str]]:
    """The original files torchvision expects under ``root``, with their md5 sums."""
    cls = _tv(source)
    if hasattr(cls, "resources"):  # the MNIST family: <root>/<Class>/raw/*.gz
        return [(root / cls.__name__ / "raw" / name, md5) for name, md5 in cls.resources]
    return [(root / cls.filename, cls.tgz_md5)]  # CIFAR: <root>/<archive>.tar.gz


def _read_files(source: _Source, root: Path, sequence: str, train: bool) -> _Split:
    cls = _tv(source)
    if hasattr(cls, "resources"):
        return _read_mnist_family(source, cls, root, sequence, train)
    return _read_cifar(source, cls, root, sequence, train)


def _read_mnist_family(source: _Source, cls: Any, root: Path, sequence: str, train: bool) -> _Split:
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


def _read_cifar(source: _Source, cls: Any, root: Path, sequence: str, train: bool) -> _Split:
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


def _check_archives(source: _Source, cls: Any, root: Path, sequence: str) -> None:
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
    source: _Source,
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


# --------------------------------------------------------------------------- splits


def _int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or int(value) < minimum:
        raise ConfigError(f"{name} must be an integer ≥ {minimum}, got {value!r}")
    return int(value)


def split_classes(
    num_classes: int,
    *,
    num_tasks: int | None = None,
    classes_per_task: int | None = None,
    classes: Sequence[Sequence[int]] | None = None,
) -> tuple[tuple[int, ...], ...]:
    """The classes of each task, validated.

    Either ``classes`` (explicit, e.g. ``[(0, 1), (2, 3)]``: non-empty tasks of distinct
    class ids in ``range(num_classes)``) or consecutive blocks: ``num_tasks`` tasks of
    ``classes_per_task`` classes. Given only one of the two, the other is derived and
    must divide ``num_classes`` exactly (no class is dropped silently); given both, the
    first ``num_tasks × classes_per_task`` classes are used.
    Raises :class:`DataError` for a split that cannot be made.
    """
    num_classes = _int(num_classes, "num_classes", 1)
    if classes is not None:
        if num_tasks is not None or classes_per_task is not None:
            raise DataError("pass either classes or num_tasks/classes_per_task, not both")
        return _check_split(classes, num_classes)
    if num_tasks is None and classes_per_task is None:
        raise DataError("give num_tasks, classes_per_task or classes")
    if num_tasks is not None:
        num_tasks = _int(num_tasks, "num_tasks", 1)
    if classes_per_task is not None:
        classes_per_task = _int(classes_per_task, "classes_per_task", 1)
    if classes_per_task is None:
        assert num_tasks is not None
        if num_classes % num_tasks:
            raise DataError(
                f"{num_classes} classes cannot be split evenly into {num_tasks} tasks; "
                "also pass classes_per_task (to use a prefix of the classes) or classes"
            )
        classes_per_task = num_classes // num_tasks
    if num_tasks is None:
        if num_classes % classes_per_task:
            raise DataError(
                f"{num_classes} classes cannot be split evenly into tasks of "
                f"{classes_per_task}; also pass num_tasks (to use a prefix) or classes"
            )
        num_tasks = num_classes // classes_per_task
    if num_tasks * classes_per_task > num_classes:
        raise DataError(
            f"{num_tasks} tasks of {classes_per_task} classes need {num_tasks * classes_per_task} "
            f"classes; the dataset has {num_classes}"
        )
    return tuple(
        tuple(range(t * classes_per_task, (t + 1) * classes_per_task)) for t in range(num_tasks)
    )


def _check_split(classes: Sequence[Sequence[int]], num_classes: int) -> tuple[tuple[int, ...], ...]:
    if isinstance(classes, str | bytes) or not isinstance(classes, Sequence) or not classes:
        raise DataError(f"classes must be a non-empty list of tasks, got {classes!r}")
    seen: dict[int, int] = {}
    split = []
    for t, task in enumerate(classes):
        if isinstance(task, str | bytes) or not isinstance(task, Sequence) or not task:
            raise DataError(
                f"task {t} of classes must be a non-empty tuple of class ids, got {task!r}"
            )
        for c in task:
            if isinstance(c, bool) or not isinstance(c, Integral):
                raise DataError(f"task {t}: class ids must be integers, got {c!r}")
            if not 0 <= int(c) < num_classes:
                raise DataError(
                    f"task {t}: class {c} does not exist "
                    f"(the dataset has classes 0..{num_classes - 1})"
                )
            if int(c) in seen:
                where = "twice" if seen[int(c)] == t else f"in tasks {seen[int(c)]} and {t}"
                raise DataError(f"class {c} appears {where}; tasks must have disjoint classes")
            seen[int(c)] = t
        split.append(tuple(int(c) for c in task))
    return tuple(split)


def pixel_permutations(
    num_tasks: int, num_pixels: int, *, seed: int = 0, identity_first: bool = False
) -> Tensor:
    """``(num_tasks, num_pixels)`` int64: row ``t`` is task ``t``'s pixel permutation.

    Fixed by ``seed`` and prefix-stable: row ``t`` does not depend on ``num_tasks``, nor
    (for ``t ≥ 1``) on ``identity_first``, which only replaces row 0 by the identity.
    """
    num_tasks = _int(num_tasks, "num_tasks", 1)
    g = torch.Generator().manual_seed(seed)
    perms = torch.stack([torch.randperm(num_pixels, generator=g) for _ in range(num_tasks)])
    if identity_first:
        perms[0] = torch.arange(num_pixels)
    return perms


def _first_per_class(labels: Tensor, classes: Sequence[int], limit: int | None) -> Tensor:
    """Positions of ``classes`` in ``labels``: the first ``limit`` of each, in file order."""
    parts = [torch.nonzero(labels == c).view(-1)[:limit] for c in classes]
    return torch.cat(parts).sort().values


# --------------------------------------------------------------------------- sequences


def load_sequence(
    name: str = "embedded",
    root: str | Path | None = None,
    *,
    seed: int = 0,
    num_tasks: int | None = None,
    classes_per_task: int | None = None,
    classes: Sequence[Sequence[int]] | None = None,
    limit_per_class: int | None = None,
    identity_first: bool = False,
    normalize: bool = True,
) -> TaskSequence:
    """The task sequence ``name`` (one of :data:`SEQUENCE_NAMES`) from the data ``root``.

    - ``num_tasks``/``classes_per_task``/``classes``: the class split of ``split-*`` and
      ``embedded`` (see :func:`split_classes`; default 5×2, Split-CIFAR-100 10×10);
      ``num_tasks`` alone for ``permuted-*`` (default 10).
    - ``seed``: the permutations of ``permuted-*`` (:func:`pixel_permutations`); class
      splits involve no randomness.
    - ``identity_first``: ``permuted-*`` task 0 sees unpermuted images.
    - ``limit_per_class``: keep only the first that many images of each class, in file
      order, in train and in test (for small, fast runs).
    - ``normalize``: standardize with the dataset's mean/std (else pixels are in [0, 1]).

    ``root`` is the directory holding torchvision's layout (e.g.
    ``<root>/MNIST/raw/train-images-idx3-ubyte.gz``); it is unused by ``embedded``.
    Raises :class:`DataError` for an unknown name, missing files, an impossible split or
    an empty task, and :class:`ConfigError` for out-of-range options.
    """
    kind = _SEQUENCES.get(name)
    if kind is None:
        close = difflib.get_close_matches(str(name), SEQUENCE_NAMES, n=1)
        maybe = f" (did you mean {close[0]!r}?)" if close else ""
        raise DataError(
            f"unknown sequence {name!r}{maybe}; valid names: {', '.join(SEQUENCE_NAMES)}"
        )
    source = kind.source
    if limit_per_class is not None and _int(limit_per_class, "limit_per_class", 0) == 0:
        raise DataError("limit_per_class=0 leaves every task without data")
    if kind.split:
        if identity_first:
            raise ConfigError(f"identity_first applies to permuted sequences, not {name!r}")
        if num_tasks is None and classes_per_task is None and classes is None:
            num_tasks = kind.default_tasks
        split = split_classes(
            source.num_classes,
            num_tasks=num_tasks,
            classes_per_task=classes_per_task,
            classes=classes,
        )
    else:
        if classes is not None or classes_per_task is not None:
            raise ConfigError(
                f"{name!r} gives every task all classes; classes/classes_per_task do not apply"
            )
        num_tasks = _int(kind.default_tasks if num_tasks is None else num_tasks, "num_tasks", 1)
        split = (tuple(range(source.num_classes)),) * num_tasks

    (train_x, train_y), (test_x, test_y) = _read(source, root, name)
    mean, std = (source.mean, source.std) if normalize else ((0.0,), (1.0,))

    def view(
        x: Tensor, y: Tensor, t: int, task: tuple[int, ...], what: str, perm: Tensor | None
    ) -> ImageDataset:
        counts = torch.bincount(y, minlength=source.num_classes)
        empty = [c for c in task if counts[c] == 0]
        if empty:
            raise DataError(f"{name!r} task {t}: classes {empty} have no {what} images")
        positions = _first_per_class(y, task, limit_per_class)
        head = torch.full((source.num_classes,), -1, dtype=torch.int64)
        head[list(task)] = torch.arange(len(task))
        return ImageDataset(
            x, head[y[positions]], index=positions, mean=mean, std=std, permutation=perm
        )

    perms: list[Tensor | None] = [None] * len(split)
    if not kind.split:
        hw = source.input_shape[1] * source.input_shape[2]
        perms = list(pixel_permutations(len(split), hw, seed=seed, identity_first=identity_first))
    tasks = []
    for t, task in enumerate(split):
        if kind.split:
            label = f"classes {','.join(map(str, task))}"
        else:
            label = "identity" if identity_first and t == 0 else f"permutation {t}"
        tasks.append(
            Task(
                index=t,
                name=label,
                classes=task,
                train=view(train_x, train_y, t, task, "training", perms[t]),
                test=view(test_x, test_y, t, task, "test", perms[t]),
            )
        )
    shape = source.input_shape
    return TaskSequence(name=name, tasks=tuple(tasks), input_shape=shape, mean=mean, std=std)


# --------------------------------------------------------------------------- loaders


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
    val_parts = []
    for c in torch.unique(dataset.labels).tolist():  # sorted: fixes the generator's use
        positions = torch.nonzero(dataset.labels == c).view(-1)
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
    batch_size = _int(batch_size, "batch_size", 1)
    eval_batch_size = batch_size if eval_batch_size is None else eval_batch_size
    eval_batch_size = _int(eval_batch_size, "eval_batch_size", 1)
    num_workers = _int(num_workers, "num_workers", 0)
    if generator is None:
        generator = torch.Generator().manual_seed(seed)
    train, val = task.train, None
    if val_fraction:
        train, val = split_validation(train, val_fraction, seed=seed)

    def evaluation(dataset: ImageDataset) -> DataLoader[tuple[Tensor, Tensor]]:
        return DataLoader(
            dataset, eval_batch_size, shuffle=False, num_workers=num_workers, pin_memory=pin_memory
        )

    return TaskLoaders(
        train=DataLoader(
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
