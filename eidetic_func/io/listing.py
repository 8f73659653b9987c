"""How error messages of the io layer list many keys: the first few and a count."""

from __future__ import annotations

MAX_LISTED = 10  # differences listed in one error message


def listed(keys: list[str]) -> str:
    """``keys`` for a message: at most :data:`MAX_LISTED` of them, then how many more."""
    more = f" and {len(keys) - MAX_LISTED} more" if len(keys) > MAX_LISTED else ""
    return f"{keys[:MAX_LISTED]}{more}"
