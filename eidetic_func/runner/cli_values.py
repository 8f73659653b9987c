"""Values of the command line that need no torch: comma lists, the closest valid value."""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Callable, Sequence
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


def closest(value: str, valid: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the valid value closest to ``value``, or ``""``."""
    match = difflib.get_close_matches(value, list(valid), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


__all__ = ["closest", "comma_list"]
