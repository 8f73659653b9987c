"""The README's worked example of a new method runs as written."""

from __future__ import annotations

import sys
import types

import pytest
from readme_blocks import README, block_after


def test_the_readme_method_example_trains_two_tasks_chained_with_er(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = types.ModuleType("readme_example")  # dataclasses look their module up
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(block_after("#### Writing a method"), str(README), "exec"), module.__dict__)
    namespace = module.__dict__
    mstate = namespace["mstate"]
    anchor = mstate["l2-anchor"]  # type: ignore[index]
    state = namespace["state"]
    # the anchor is the parameters the last task left: the final state's
    assert anchor.keys() == state.params.keys()  # type: ignore[attr-defined]
    assert all(anchor[k] is state.params[k] for k in anchor)  # type: ignore[attr-defined]


def test_the_block_finder_reads_the_first_block_after_a_heading() -> None:
    text = "# a\n```python\nx = 1\n```\n#### b\ntext\n```python\ny = 2\n```\n"
    assert block_after("#### b", text) == "y = 2\n"
