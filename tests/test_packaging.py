"""What installing the package puts on a user's import path: only ``eidetic_func``."""

from __future__ import annotations

import importlib
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


def test_every_console_script_names_a_callable_that_exists() -> None:
    # (no tomllib: Python 3.10 is supported) the [project.scripts] table's "name = target"
    table = (ROOT / "pyproject.toml").read_text().split("[project.scripts]\n", 1)[1]
    lines = table.split("\n[", 1)[0].splitlines()
    scripts = {
        k.strip(): v.strip().strip('"')
        for k, _, v in (ln.partition("=") for ln in lines if "=" in ln)
    }
    assert scripts  # the README's main job is the eidetic-func command
    for command, target in scripts.items():
        module, _, attribute = target.partition(":")
        assert callable(getattr(importlib.import_module(module), attribute)), command


def test_the_installed_command_runs(wheel: Path) -> None:
    # the wheel's entry point is the one pip writes into the environment's bin/
    entry = next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry).decode()
    target = text.split("eidetic-func", 1)[1].split("=", 1)[1].split()[0]
    module, _, attribute = target.partition(":")
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys; from {module} import {attribute}; sys.exit({attribute}(['--help']))",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage: eidetic-func" in done.stdout
