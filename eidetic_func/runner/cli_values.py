"""Values of the command line that need no torch: comma lists."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def comma_list(item: Callable[[str], Any]) -> Callable[[str], tuple[Any, ...]]:
    """A parser of ``"a,b,c"`` into a tuple of ``item``'s values."""

    def parse(text: str) -> tuple[Any, ...]:
        try:
            return tuple(item(v.strip()) for v in text.split(",") if v.strip())
        except ValueError:
            kind = "numbers" if item in (int, float) else "values"
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {kind}, got {text!r}"
            ) from None

    parse.__name__ = f"{getattr(item, '__name__', 'value')} list"
    return parse


__all__ = ["comma_list"]
