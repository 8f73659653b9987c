"""Any dataset as a task sequence: split by classes, labels remapped per head, streamed.

:func:`split_dataset` splits any map-style ``torch.utils.data.Dataset`` whose items are
``(input, class id)`` — torchvision datasets, an ``ImageFolder``, a user's own — into
tasks, by ``classes_per_task`` or by an explicit ``key_to_targets`` mapping (as the
Synapse seed's ``TaskDict``). Items are read lazily (one at a time, through
``DataLoader`` workers when asked), so data that does not fit in memory streams from
disk; per-split transforms (augmentation for training only) are applied per item.
:func:`image_folder` reads a directory of class folders (the MAS seed's Tiny-ImageNet
layout too). In-memory MNIST-sized sequences keep their batched fast path
(:func:`eidetic_func.data.sequences.load_sequence`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from eidetic_func.core.errors import ConfigError, DataError, ShapeError
from eidetic_func.data.image_scan import scan_split
from eidetic_func.data.sequences import Task, TaskSequence

Transform = Callable[[Any], Any]


class TaskView(Dataset[tuple[Tensor, Tensor]]):
    """Items ``indices`` of ``dataset``: ``(x float32 tensor, y int64 head label)``.

    ``labels[i]`` is item ``i``'s label in the task's head (``0..k-1``); ``transform`` is
    applied to the input of every item it reads (PIL images become float tensors in
    ``[0, 1]`` if it leaves them as images).
    """

    def __init__(
        self,
        dataset: Dataset[Any],
        indices: Tensor,
        labels: Tensor,
        transform: Transform | None = None,
    ) -> None:
        if indices.shape != labels.shape or indices.dim() != 1:
            raise ShapeError("indices and labels must be 1-D and of one length")
        self.dataset, self.indices, self.labels = dataset, indices, labels.to(torch.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        x = self.dataset[int(self.indices[i])][0]
        if self.transform is not None:
            x = self.transform(x)
        return _as_tensor(x), self.labels[i]

    def subset(self, positions: Tensor) -> TaskView:
        """The items at ``positions`` (of this view), with the same transform."""
        return TaskView(
            self.dataset, self.indices[positions], self.labels[positions], self.transform
        )

    def with_transform(self, transform: Transform | None) -> TaskView:
        return TaskView(self.dataset, self.indices, self.labels, transform)


def targets_of(dataset: Dataset[Any]) -> Tensor:
    """Every item's class id: ``dataset.targets`` (torchvision's convention) or ``.labels``."""
    for attribute in ("targets", "labels", "_labels", "y"):
        value = getattr(dataset, attribute, None)
        if value is not None:
            try:
                targets = torch.as_tensor(value).to(torch.int64).reshape(-1)
            except (TypeError, ValueError, RuntimeError):
                continue
            if len(targets) == len(dataset):  # type: ignore[arg-type]
                return targets
    raise DataError(
        f"{type(dataset).__name__} has no `targets` (or `labels`) with one class id per item; "
        "give the dataset a `targets` attribute"
    )


def split_dataset(
    train: Dataset[Any],
    test: Dataset[Any],
    *,
    classes_per_task: int | None = None,
    key_to_targets: Mapping[str, Sequence[int]] | None = None,
    train_transform: Transform | None = None,
    test_transform: Transform | None = None,
    name: str = "custom",
) -> TaskSequence:
    """Split ``train`` and ``test`` into tasks by class.

    ``key_to_targets`` maps task names to their classes (``{"1": [0, 1], "2": [2, 3]}``);
    or ``classes_per_task`` cuts the sorted class ids into consecutive groups (a last,
    smaller group is dropped with none of its classes reused). Head ``k`` of a task
    predicts its ``k``-th class. ``train_transform`` (e.g. with augmentation) and
    ``test_transform`` apply per item. Raises :class:`DataError` for a dataset without
    targets, an empty task, or classes missing from a split; :class:`ConfigError` unless
    exactly one of ``classes_per_task`` / ``key_to_targets`` is given.
    """
    if (classes_per_task is None) == (key_to_targets is None):
        raise ConfigError("give exactly one of classes_per_task and key_to_targets")
    train_y, test_y = targets_of(train), targets_of(test)
    if key_to_targets is not None:
        groups = [(str(k), tuple(int(c) for c in v)) for k, v in key_to_targets.items()]
    else:
        assert classes_per_task is not None
        if not isinstance(classes_per_task, int) or classes_per_task < 1:
            raise ConfigError(f"classes_per_task must be a positive int, got {classes_per_task!r}")
        classes = sorted(set(train_y.tolist()))
        n = len(classes) // classes_per_task
        if n == 0:
            raise DataError(f"{len(classes)} classes make no task of {classes_per_task}")
        groups = [
            ("classes " + ",".join(map(str, chunk)), tuple(chunk))
            for chunk in (
                classes[i * classes_per_task : (i + 1) * classes_per_task] for i in range(n)
            )
        ]
    seen: set[int] = set()
    tasks = []
    for t, (label, group) in enumerate(groups):
        if not group or len(set(group)) != len(group) or seen & set(group):
            raise DataError(f"task {label!r}: classes {list(group)} are empty, repeated or reused")
        seen |= set(group)
        views = []
        for split, y, transform in (
            ("training", train_y, train_transform),
            ("test", test_y, test_transform),
        ):
            inside = torch.isin(y, torch.tensor(group))
            missing = sorted(set(group) - set(y[inside].tolist()))
            if missing:
                raise DataError(f"task {label!r}: classes {missing} have no {split} items")
            positions = torch.nonzero(inside).view(-1)
            remap = {c: k for k, c in enumerate(group)}
            labels = torch.tensor([remap[int(c)] for c in y[positions].tolist()], dtype=torch.int64)
            views.append(
                TaskView(train if split == "training" else test, positions, labels, transform)
            )
        tasks.append(Task(index=t, name=label, classes=group, train=views[0], test=views[1]))  # type: ignore[arg-type]
    x, _ = tasks[0].train[0]
    if x.dim() != 3:
        raise ShapeError(
            f"items must be images (C, H, W) after the transform, got shape {tuple(x.shape)}; "
            "give a transform that resizes them to one size"
        )
    shape = (int(x.shape[0]), int(x.shape[1]), int(x.shape[2]))
    return TaskSequence(name=name, tasks=tuple(tasks), input_shape=shape, mean=(0.0,), std=(1.0,))


def image_folder(
    root: str | Path,
    *,
    classes_per_task: int | None = None,
    image_size: int = 64,
    augment: bool = False,
) -> TaskSequence:
    """A task sequence from a directory of images.

    Two layouts: ``root/train/<class>/*`` and ``root/test/<class>/*`` (or ``val``) split by
    ``classes_per_task``; or one folder per task, ``root/<task>/train/<class>/*`` and
    ``root/<task>/test/<class>/*`` (the MAS seed's Tiny-ImageNet split), tasks in name
    order. Every split is scanned first (:func:`eidetic_func.data.image_scan.scan_split`: the
    same class folders in train and test, no empty class, no link loop or image reached
    twice, every image readable and within Pillow's size limit), so that nothing about the
    files fails mid-run. Images are resized to ``image_size`` (shorter side, then a center crop);
    ``augment`` trains on ``RandomResizedCrop(image_size)`` and horizontal flips instead
    (the original's option). Read from disk item by item: use ``num_workers`` loaders.
    """
    from torchvision import datasets, transforms

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    plain = transforms.Compose(
        [transforms.Resize(image_size), transforms.CenterCrop(image_size), transforms.ToTensor()]
    )
    train_tf = (
        transforms.Compose(
            [
                transforms.RandomResizedCrop(image_size),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
            ]
        )
        if augment
        else plain
    )
    test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        if classes_per_task is None:
            raise ConfigError(f"{root} holds one dataset: give classes_per_task to split it")
        scan_split(root / "train", test_dir)
        return split_dataset(
            datasets.ImageFolder(str(root / "train")),
            datasets.ImageFolder(str(test_dir)),
            classes_per_task=classes_per_task,
            train_transform=train_tf,
            test_transform=plain,
            name=f"imagefolder:{root}",
        )
    task_dirs = sorted(d for d in root.iterdir() if (d / "train").is_dir())
    if not task_dirs:
        raise DataError(
            f"{root} has neither train/ and test/ class folders nor task folders with train/ "
            "and test/ inside"
        )
    tasks = []
    for t, d in enumerate(task_dirs):
        test = next((d / s for s in ("test", "val") if (d / s).is_dir()), None)
        if test is None:
            raise DataError(f"task folder {d} has train/ but no test/ (or val/)")
        scan_split(d / "train", test)
        part = split_dataset(
            datasets.ImageFolder(str(d / "train")),
            datasets.ImageFolder(str(test)),
            classes_per_task=len(datasets.ImageFolder(str(d / "train")).classes),
            train_transform=train_tf,
            test_transform=plain,
        )
        only = part.tasks[0]
        tasks.append(
            Task(index=t, name=d.name, classes=only.classes, train=only.train, test=only.test)
        )
    first = tasks[0].train[0][0]
    shape = (int(first.shape[0]), int(first.shape[1]), int(first.shape[2]))
    return TaskSequence(
        name=f"imagefolder:{root}", tasks=tuple(tasks), input_shape=shape, mean=(0.0,), std=(1.0,)
    )


def _as_tensor(x: Any) -> Tensor:
    if isinstance(x, Tensor):
        if x.dtype == torch.uint8:
            return x.to(torch.float32).div(255.0)
        return x if x.is_floating_point() else x.to(torch.float32)
    try:
        from torchvision.transforms.functional import to_tensor

        return to_tensor(x)
    except (TypeError, ValueError) as e:
        raise ShapeError(f"an item's input is a {type(x).__name__}, not an image or tensor") from e
