"""Where a task sequence's in-memory data live: moved once onto the device a run trains on,
so that no batch is copied host-to-device (``x.to(device)`` of a batch already there is a
no-op)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from eidetic_func.data.image_dataset import ImageDataset
from eidetic_func.data.sequences import TaskSequence


def on_device(sequence: TaskSequence, device: torch.device | str) -> TaskSequence:
    """``sequence`` with every in-memory dataset (:class:`ImageDataset`) on ``device``.

    Images shared by several datasets (every task of a sequence views the same images) are
    copied once and stay shared. Datasets already on ``device`` are kept as they are (the
    same objects: nothing is copied); other datasets (image folders read from disk) too.
    Nothing is drawn from any random generator.
    """
    copies: dict[int, Tensor] = {}

    def placed(dataset: Any) -> Any:
        if not isinstance(dataset, ImageDataset):
            return dataset
        key = id(dataset.images)  # the originals stay alive (in sequence) meanwhile
        if key not in copies:
            copies[key] = dataset.to(device).images
        images = copies[key]
        return dataset if images is dataset.images else dataset.viewing(images)

    tasks = tuple(
        dataclasses.replace(task, train=placed(task.train), test=placed(task.test))
        for task in sequence
    )
    return dataclasses.replace(sequence, tasks=tasks)
