"""The README's worked example of a new method runs as written."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def _block_after(heading: str) -> str:
    text = README.read_text()
    section = text[text.index(heading) :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, f"no python block after {heading!r}"
    return match.group(1)


def test_the_readme_method_example_trains_two_tasks_chained_with_er(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = types.ModuleType("readme_example")  # dataclasses look their module up
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(_block_after("#### Writing a method"), str(README), "exec"), module.__dict__)
    namespace = module.__dict__
    mstate = namespace["mstate"]
    anchor = mstate["l2-anchor"]  # type: ignore[index]
    state = namespace["state"]
    # the anchor is the parameters the last task left: the final state's
    assert anchor.keys() == state.params.keys()  # type: ignore[attr-defined]
    assert all(anchor[k] is state.params[k] for k in anchor)  # type: ignore[attr-defined]


def test_the_block_finder_reads_the_first_block_after_a_heading(tmp_path: Path) -> None:
    text = "# a\n```python\nx = 1\n```\n#### b\ntext\n```python\ny = 2\n```\n"
    section = text[text.index("#### b") :]
    assert re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1) == "y = 2\n"  # type: ignore[union-attr]
