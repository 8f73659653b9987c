"""Data: task sequences (MNIST, FashionMNIST, CIFAR, the embedded subset, image folders),
task splits, scenarios and loaders. Beside the layers: imports only the core."""

from eidetic_func.data.image_dataset import ImageDataset
from eidetic_func.data.loaders import TaskLoaders, batch_loader, loaders, split_validation
from eidetic_func.data.placement import on_device
from eidetic_func.data.sequences import (
    SEQUENCE_NAMES,
    Task,
    TaskSequence,
    load_sequence,
    pixel_permutations,
    split_classes,
)
from eidetic_func.data.sources import EMBEDDED_FILE

__all__ = [
    "EMBEDDED_FILE",
    "SEQUENCE_NAMES",
    "ImageDataset",
    "Task",
    "TaskLoaders",
    "TaskSequence",
    "batch_loader",
    "load_sequence",
    "loaders",
    "on_device",
    "pixel_permutations",
    "split_classes",
    "split_validation",
]
