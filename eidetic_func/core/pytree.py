"""Frozen dataclasses registered as pytrees in optree *and* ``torch.utils._pytree``.

torch.func (``vmap``, ``grad``, ``functional_call``) only sees ``torch.utils._pytree``;
optree is what users and our own code use for fast tree maps. Registering in both keeps
the two views of a state identical. Fields marked with :func:`static_field` are part of
the tree structure (hashable metadata), never leaves.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, TypeVar

import optree
import torch.utils._pytree as torch_pytree
from typing_extensions import dataclass_transform

NAMESPACE = "eidetic_func"

T = TypeVar("T")


def static_field(**kwargs: Any) -> Any:
    """A dataclass field that is tree metadata (not a leaf)."""
    return dataclasses.field(metadata={"static": True}, **kwargs)


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field, static_field))
def pytree_dataclass(cls: type[T]) -> type[T]:
    """Make ``cls`` a frozen dataclass and register it in both pytree registries."""
    dc: Any = dataclasses.dataclass(frozen=True)(cls)
    fields = dataclasses.fields(dc)
    children_names = tuple(f.name for f in fields if not f.metadata.get("static"))
    static_names = tuple(f.name for f in fields if f.metadata.get("static"))

    def flatten(obj: Any) -> tuple[list[Any], tuple[Any, ...]]:
        return [getattr(obj, n) for n in children_names], tuple(
            getattr(obj, n) for n in static_names
        )

    def unflatten(static: Any, children: Any) -> Any:
        return dc(**dict(zip(children_names, children)), **dict(zip(static_names, static)))

    optree.register_pytree_node(
        dc,
        lambda obj: (*flatten(obj), children_names),
        unflatten,
        namespace=NAMESPACE,
    )
    torch_pytree.register_pytree_node(
        dc,
        flatten,
        lambda children, static: unflatten(static, list(children)),
        serialized_type_name=f"{dc.__module__}.{dc.__qualname__}",
    )
    return dc


tree_map: Callable[..., Any] = functools.partial(optree.tree_map, namespace=NAMESPACE)
tree_leaves: Callable[..., list[Any]] = functools.partial(optree.tree_leaves, namespace=NAMESPACE)
tree_flatten: Callable[..., Any] = functools.partial(optree.tree_flatten, namespace=NAMESPACE)
