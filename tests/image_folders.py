"""Small image folders written by the tests (PNG files, class-coloured so tasks are learnable)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_split(root: Path, classes: int, per_class: int, seed: int, size: int = 12) -> None:
    """``root/<class name>/<i>.png``: RGB images whose mean colour depends on the class."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"class_{c:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        colour = np.array([(c * 67) % 256, (c * 131) % 256, (c * 29) % 256], dtype=np.float64)
        for i in range(per_class):
            pixels = colour + rng.normal(0, 20, (size, size, 3))
            image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
            image.save(folder / f"{i}.png")


def image_folder(root: Path, classes: int = 6, train: int = 8, test: int = 4) -> Path:
    """``root/train/<class>`` and ``root/test/<class>``."""
    write_split(root / "train", classes, train, seed=0)
    write_split(root / "test", classes, test, seed=1)
    return root


def task_folders(root: Path, tasks: int = 2, classes: int = 3) -> Path:
    """The MAS seed's layout: ``root/task_<t>/{train,test}/<class>``."""
    for t in range(tasks):
        write_split(root / f"task_{t}" / "train", classes, 6, seed=2 * t)
        write_split(root / f"task_{t}" / "test", classes, 3, seed=2 * t + 1)
    return root
