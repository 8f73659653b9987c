"""What installing the package puts on a user's import path: only ``eidetic_func``."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# build outputs, caches, environments and run outputs: not what a wheel is built from
_NOT_SOURCE = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*cache*")
_NOT_SOURCE += (".hypothesis", "runs", "data-cache", "results")
_PIP_WHEEL = (sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # from a copy of the checkout's files (an in-tree build/ would keep removed modules);
    # setuptools is in the test environment: build offline
    source = tmp_path_factory.mktemp("source") / "checkout"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*_NOT_SOURCE))
    subprocess.run(
        [*_PIP_WHEEL, "-w", str(out), str(source)],
        check=True,
        capture_output=True,
    )
    (found,) = out.glob("eidetic_func-*.whl")
    return found


def _top_level(names: list[str]) -> set[str]:
    return {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}


def test_the_wheel_claims_no_top_level_name_but_eidetic_func(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert _top_level(names) == {"eidetic_func"}
    # the repository's models/ folder is inside, under the package's namespace
    assert "eidetic_func/models/mlp.py" in names
    assert "eidetic_func/data/embedded/mnist-subset.npz.xz" in names


def test_the_top_level_reader_sees_a_stray_package() -> None:
    assert _top_level(["eidetic_func/a.py", "models/b.py", "x-1.dist-info/RECORD"]) == {
        "eidetic_func",
        "models",
    }
