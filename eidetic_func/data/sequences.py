"""Continual-learning task sequences from torchvision datasets, held in memory as tensors.

Sequences, by name (:func:`load_sequence`):

- ``split-*``: a dataset's classes divided among tasks — by default ``(0, 1), (2, 3), …``.
  Labels are remapped per task to ``0..k-1`` in the order the task lists its classes: one
  head per task (task-incremental).
- ``permuted-*``: every task has all classes, seen through its own fixed pixel permutation
  drawn from ``seed``.
- ``embedded`` (the default): Split-MNIST 5×2 from a stratified MNIST subset shipped in
  ``eidetic_func/data/embedded/`` (see its README); needs no data root and no download.

Items are ``(x, y)``: ``x`` float32 of image shape — (1, 28, 28) or (3, 32, 32); models
flatten themselves — standardized per channel as ``(pixel / 255 − mean) / std`` with the
mean and std of the dataset's *full* training set (fixed constants, so a subset or a split
is normalized exactly like the whole dataset); ``y`` an int64 scalar. Images are stored
once as uint8 and shared by every task of a sequence (a task is an index into them plus,
for permuted tasks, a permutation), so twenty permuted tasks cost the memory of one.

The files behind each sequence are read by :mod:`eidetic_func.data.sources`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path

import torch
from torch import Tensor

from eidetic_func.core.errors import ConfigError, DataError
from eidetic_func.data.image_dataset import ImageDataset
from eidetic_func.data.sources import (
    CIFAR10,
    CIFAR100,
    EMBEDDED,
    FASHION_MNIST,
    MNIST,
    Source,
    read_source,
)


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


@dataclass(frozen=True)
class _Kind:
    split: bool  # split by classes (else: permuted)
    source: Source
    default_tasks: int


_SEQUENCES: dict[str, _Kind] = {
    "embedded": _Kind(True, EMBEDDED, 5),
    "split-mnist": _Kind(True, MNIST, 5),
    "split-fashion-mnist": _Kind(True, FASHION_MNIST, 5),
    "split-cifar10": _Kind(True, CIFAR10, 5),
    "split-cifar100": _Kind(True, CIFAR100, 10),
    "permuted-mnist": _Kind(False, MNIST, 10),
    "permuted-fashion-mnist": _Kind(False, FASHION_MNIST, 10),
}
SEQUENCE_NAMES: tuple[str, ...] = tuple(_SEQUENCES)
"""Every name :func:`load_sequence` accepts."""


# --------------------------------------------------------------------------- splits


def int_at_least(value: object, name: str, minimum: int) -> int:
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
    num_classes = int_at_least(num_classes, "num_classes", 1)
    if classes is not None:
        if num_tasks is not None or classes_per_task is not None:
            raise DataError("pass either classes or num_tasks/classes_per_task, not both")
        return _check_split(classes, num_classes)
    if num_tasks is None and classes_per_task is None:
        raise DataError("give num_tasks, classes_per_task or classes")
    if num_tasks is not None:
        num_tasks = int_at_least(num_tasks, "num_tasks", 1)
    if classes_per_task is not None:
        classes_per_task = int_at_least(classes_per_task, "classes_per_task", 1)
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
    num_tasks = int_at_least(num_tasks, "num_tasks", 1)
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


def _kind(name: str) -> _Kind:
    """The sequence called ``name``; :class:`DataError` naming the closest valid name if none."""
    kind = _SEQUENCES.get(name)
    if kind is None:
        close = difflib.get_close_matches(str(name), SEQUENCE_NAMES, n=1)
        maybe = f" (did you mean {close[0]!r}?)" if close else ""
        raise DataError(
            f"unknown sequence {name!r}{maybe}; valid names: {', '.join(SEQUENCE_NAMES)}"
        )
    return kind


def _task_classes(
    name: str,
    kind: _Kind,
    num_tasks: int | None,
    classes_per_task: int | None,
    classes: Sequence[Sequence[int]] | None,
    identity_first: bool,
) -> tuple[tuple[int, ...], ...]:
    """The classes of each task of sequence ``name``: a class split, or every class per
    permuted task; refuses the options that do not apply to ``kind``."""
    source = kind.source
    if kind.split:
        if identity_first:
            raise ConfigError(f"identity_first applies to permuted sequences, not {name!r}")
        if num_tasks is None and classes_per_task is None and classes is None:
            num_tasks = kind.default_tasks
        return split_classes(
            source.num_classes,
            num_tasks=num_tasks,
            classes_per_task=classes_per_task,
            classes=classes,
        )
    if classes is not None or classes_per_task is not None:
        raise ConfigError(
            f"{name!r} gives every task all classes; classes/classes_per_task do not apply"
        )
    num_tasks = int_at_least(kind.default_tasks if num_tasks is None else num_tasks, "num_tasks", 1)
    return (tuple(range(source.num_classes)),) * num_tasks


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
    kind = _kind(name)
    source = kind.source
    if limit_per_class is not None and int_at_least(limit_per_class, "limit_per_class", 0) == 0:
        raise DataError("limit_per_class=0 leaves every task without data")
    split = _task_classes(name, kind, num_tasks, classes_per_task, classes, identity_first)
    (train_x, train_y), (test_x, test_y) = read_source(source, root, name)
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
