"""The README's code blocks, for the tests that execute them."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def block_after(heading: str, text: str | None = None) -> str:
    """The first ```python block after the first occurrence of ``heading``."""
    text = README.read_text() if text is None else text
    section = text[text.index(heading) :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, f"no python block after {heading!r}"
    return match.group(1)
