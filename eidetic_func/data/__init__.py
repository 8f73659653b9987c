"""Data: task sequences (MNIST, FashionMNIST, CIFAR, the embedded subset, image folders),
task splits, scenarios and loaders. Beside the layers: imports only the core."""

from eidetic_func.data.loading import (
    EMBEDDED_FILE,
    SEQUENCE_NAMES,
    ImageDataset,
    Task,
    TaskLoaders,
    TaskSequence,
    load_sequence,
    loaders,
    pixel_permutations,
    split_classes,
    split_validation,
)

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
