"""``eidetic-func methods``: every method with the first sentence of its docstring and its
options."""

from __future__ import annotations

import dataclasses


def list_methods() -> None:
    """Print every method: its first sentence and its options."""
    from eidetic_func.methods.registry import METHODS

    for name, cls in METHODS.items():
        options = ", ".join(
            f"{f.name}={f.default!r}" for f in dataclasses.fields(cls) if f.name != "name"
        )
        print(f"{name:12s} {_first_sentence(cls.__doc__)}\n{'':12s} options: {options or 'none'}")
    print("Chain methods with +, e.g. --method ewc+er (options: member.option=value).")


def _first_sentence(doc: str | None) -> str:
    """The first sentence of a docstring's first paragraph, on one line (an abbreviation
    such as "et al." or "e.g." does not end it)."""
    paragraph = " ".join((doc or "").strip().split("\n\n")[0].split())
    start = 0
    while (end := paragraph.find(". ", start)) != -1:
        word = paragraph[:end].rsplit(" ", 1)[-1]
        if word not in _ABBREVIATIONS and not (len(word) == 1 and word.isupper()):
            return paragraph[: end + 1]
        start = end + 2
    return paragraph


_ABBREVIATIONS = frozenset({"al", "e.g", "i.e", "etc", "cf", "vs", "Fig", "Eq"})


__all__ = ["list_methods"]
