"""An up-front scan of image class folders, so that nothing about them fails mid-run.

``torchvision.datasets.ImageFolder`` numbers the class folders of each split on its own,
follows directory links without noticing loops, and opens files only when an item is
read. :func:`scan_split` checks a ``train``/``test`` pair before any training, and raises
:class:`DataError` naming the folder or file when:

- the two splits do not list the same class folders (a class spelled differently, one
  missing, one extra: labels would be silently shifted or swapped);
- a class folder holds no image;
- a directory link leads back into a folder it is in (a loop), or one image file is
  reached twice (through links): images would be multiplied;
- a file with an image extension is not a readable image (corrupt, truncated, text under
  a ``.png`` name), or is larger than Pillow's decompression-bomb limit.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path

from eidetic_func.core.errors import DataError


def scan_split(train: Path, test: Path, *, progress: bool | None = None) -> list[str]:
    """Check the class folders of ``train`` and ``test`` (see the module docstring); return
    their class names, sorted as ``ImageFolder`` numbers them. ``progress``: a progress bar
    over the files (``None``: only on a terminal)."""
    classes = _classes(train)
    other = _classes(test)
    if classes != other:
        missing, extra = sorted(set(classes) - set(other)), sorted(set(other) - set(classes))
        raise DataError(
            f"{train} and {test} must hold the same class folders (their labels are numbered "
            f"by sorted name): {test} lacks {missing} and has {extra} that {train} lacks"
        )
    files = [(folder, f) for split in (train, test) for folder, f in _images(split, classes)]
    _check_images(files, progress)
    return classes


def _classes(split: Path) -> list[str]:
    """The class folders of ``split`` as ``ImageFolder`` finds and numbers them."""
    from torchvision.datasets.folder import find_classes

    if not split.is_dir():
        raise DataError(f"image folder {split} does not exist")
    try:
        return find_classes(split)[0]
    except FileNotFoundError:
        raise DataError(f"{split} holds no class folder") from None


def _images(split: Path, classes: list[str]) -> Iterator[tuple[Path, Path]]:
    """``(class folder, image file)`` pairs, walking links but refusing loops and files
    reached twice."""
    from torchvision.datasets.folder import IMG_EXTENSIONS  # what ImageFolder loads

    seen_files: dict[tuple[int, int], Path] = {}
    for name in classes:
        folder = split / name
        count = 0
        for path in _walk(folder, ancestors=frozenset()):
            if path.suffix.lower() not in IMG_EXTENSIONS:
                continue
            info = path.stat()
            key = (info.st_dev, info.st_ino)
            if key in seen_files:
                raise DataError(
                    f"{path} and {seen_files[key]} are one image file reached twice (through "
                    "a link): it would be counted twice; remove the link"
                )
            seen_files[key] = path
            count += 1
            yield folder, path
        if count == 0:
            raise DataError(
                f"class folder {folder} holds no image (extensions: {', '.join(IMG_EXTENSIONS)})"
            )


def _walk(folder: Path, ancestors: frozenset[tuple[int, int]]) -> Iterator[Path]:
    info = folder.stat()
    key = (info.st_dev, info.st_ino)
    if key in ancestors:
        raise DataError(f"{folder} links back to a folder it is inside (a loop of links)")
    inside = ancestors | {key}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        path = Path(entry.path)
        if entry.is_dir():  # follows links, as ImageFolder does
            yield from _walk(path, inside)
        elif entry.is_file():
            yield path


def _check_images(files: list[tuple[Path, Path]], progress: bool | None) -> None:
    from PIL import Image
    from tqdm.auto import tqdm

    bar = tqdm(
        files,
        desc="checking images",
        unit="file",
        disable=None if progress is None else not progress,
        leave=False,
    )
    for _, path in bar:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                with Image.open(path) as image:
                    image.verify()
            except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
                raise DataError(
                    f"{path} is larger than Pillow's limit of {Image.MAX_IMAGE_PIXELS} pixels "
                    f"(a decompression bomb, or an image to shrink first): {e}"
                ) from None
            except Exception as e:  # Pillow raises many types for unreadable files
                raise DataError(
                    f"{path} is not a readable image ({type(e).__name__}: {e})"
                ) from None
