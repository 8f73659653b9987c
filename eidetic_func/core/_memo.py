"""Caching by exact tensor identity: a value is reused only for the very same, unmodified tensors.

States are immutable, so anything derived from a state's tensors (masks, frozen values)
can be cached as long as those tensor objects are alive and have not been written to.
Entries are keyed by ``id`` and checked against a weak reference and the tensor's version
counter (bumped by every in-place write), and vanish when a tensor is freed.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

from torch import Tensor


class TensorMemo:
    """A cache from a tuple of tensors (by identity and version) to a value."""

    def __init__(self) -> None:
        self._entries: dict[tuple[int, ...], Any] = {}

    def get(self, tensors: Sequence[Tensor]) -> Any:
        entry = self._entries.get(tuple(id(t) for t in tensors))
        if entry is None:
            return None
        refs, versions, value = entry
        if all(r() is t for r, t in zip(refs, tensors)) and versions == _versions(tensors):
            return value
        return None

    def put(self, tensors: Sequence[Tensor], value: Any) -> None:
        versions = _versions(tensors)
        if versions is None:
            return
        key = tuple(id(t) for t in tensors)

        def forget(_: object, key: tuple[int, ...] = key) -> None:
            entry = self._entries.get(key)
            if entry is not None and any(r() is None for r in entry[0]):
                del self._entries[key]

        self._entries[key] = (tuple(weakref.ref(t, forget) for t in tensors), versions, value)

    def __len__(self) -> int:
        return len(self._entries)


def _versions(tensors: Sequence[Tensor]) -> tuple[int, ...] | None:
    try:
        return tuple(t._version for t in tensors)
    except Exception:  # tensors inside a torch.func transform carry no version counter
        return None
