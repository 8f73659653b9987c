"""Image folders are scanned before any training: every way their files could shift labels,
multiply images or fail mid-run is a DataError naming the folder or file."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from image_folders import image_folder, task_folders
from PIL import Image

import eidetic_func as ef
from eidetic_func.data.image_scan import scan_split
from eidetic_func.data.task_split import image_folder as load_image_folder
from eidetic_func.runner.cli import main


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return image_folder(tmp_path / "images", classes=4, train=3, test=2)


def test_a_well_formed_folder_passes_and_lists_its_classes(root: Path) -> None:
    classes = [f"class_{c:02d}" for c in range(4)]
    assert scan_split(root / "train", root / "test", progress=False) == classes
    assert len(load_image_folder(root, classes_per_task=2)) == 2


def _break(root: Path, how: str) -> str:
    """Break ``root`` in one way; return what the error must name."""
    train, test = root / "train", root / "test"
    if how == "test class spelled differently":
        (test / "class_02").rename(test / "Class_02")
        return r"lacks \['class_02'\] and has \['Class_02'\]"
    if how == "extra test class":
        shutil.copytree(test / "class_03", test / "class_04")
        return r"lacks \[\] and has \['class_04'\]"
    if how == "empty class folder":
        for f in (train / "class_01").iterdir():
            f.unlink()
        return "class folder .*class_01 holds no image"
    if how == "link loop":
        os.symlink("..", train / "class_00" / "up")
        return "links back to a folder it is inside"
    if how == "image reached twice":
        os.symlink(train / "class_00", train / "class_01" / "again")
        return "one image file reached twice"
    if how == "text under a png name":
        (test / "class_03" / "0.png").write_text("not an image")
        return r"class_03/0\.png is not a readable image"
    if how == "no class folder":
        shutil.rmtree(test)
        test.mkdir()
        (test / "0.png").write_bytes((train / "class_00" / "0.png").read_bytes())
        return r"test holds no class folder"
    if how == "truncated image":
        path = train / "class_02" / "1.png"
        path.write_bytes(path.read_bytes()[:60])
        return r"class_02/1\.png is not a readable image"
    raise AssertionError(how)


HOWS = [
    "test class spelled differently",
    "extra test class",
    "empty class folder",
    "link loop",
    "image reached twice",
    "text under a png name",
    "truncated image",
    "no class folder",
]


@pytest.mark.parametrize("how", HOWS)
def test_a_broken_folder_is_refused_before_training_naming_the_cause(root: Path, how: str) -> None:
    message = _break(root, how)
    with pytest.raises(ef.DataError, match=message):
        load_image_folder(root, classes_per_task=2)


@pytest.mark.parametrize("how", ["test class spelled differently", "empty class folder"])
def test_the_task_folder_layout_is_scanned_too(tmp_path: Path, how: str) -> None:
    root = task_folders(tmp_path / "tasks")  # three classes a task
    message = _break(root / "task_1", how)
    with pytest.raises(ef.DataError, match=message):
        load_image_folder(root)


@pytest.mark.parametrize("limit", [100, 50], ids=["over-the-limit", "over-twice-the-limit"])
def test_an_image_beyond_pillows_size_limit_is_refused(
    root: Path, monkeypatch: pytest.MonkeyPatch, limit: int
) -> None:
    """Pillow warns above its limit and refuses above twice it; both are a DataError (the
    test images are 12×12 = 144 pixels)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(ef.DataError, match="larger than Pillow's limit"):
        load_image_folder(root, classes_per_task=2)


def test_the_cli_refuses_a_broken_folder_before_training(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _break(root, "extra test class")
    args = ["run", "--dataset", f"imagefolder:{root}", "--classes-per-task", "2"]
    assert main([*args, "--output-dir", str(tmp_path / "out"), "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert "class_04" in captured.err and "task 0" not in captured.out
