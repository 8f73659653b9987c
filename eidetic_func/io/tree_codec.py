"""The tree codec: nested Python values with tensors <-> JSON plus flat safetensors entries.

A tree is JSON in which a tensor is ``{"$tensor": key}`` (``key`` names it among the
safetensors entries, e.g. ``state/params/blocks.0.linear.weight``), a tuple is
``{"$tuple": [...]}``, a dict with non-string keys (optimizer state is keyed by ``int``)
is ``{"$dict": [[key, value], ...]}`` and a non-finite float is ``{"$float": "nan"}``,
so every value comes back with its type (tuples stay tuples, ``int`` keys stay ``int``).
Trees hold dicts, lists, tuples, tensors, ``str``, ``int``, ``float``, ``bool`` and ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import torch
from torch import Tensor

from eidetic_func.core.errors import CheckpointError
from eidetic_func.io.container import STORABLE

_TENSOR, _TUPLE, _DICT, _FLOAT = "$tensor", "$tuple", "$dict", "$float"


class TreeEncoder:
    """Turns a tree into JSON, collecting its tensors (contiguous, CPU, unshared) by key."""

    def __init__(self) -> None:
        self.tensors: dict[str, Tensor] = {}
        self._storages: set[int] = set()

    def encode(self, obj: Any, path: tuple[str, ...]) -> Any:
        if isinstance(obj, Tensor):
            return {_TENSOR: self._add(obj, path)}
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, int):
            return int(obj)
        if isinstance(obj, float):
            return float(obj) if math.isfinite(obj) else {_FLOAT: repr(float(obj))}
        if isinstance(obj, dict):
            if all(isinstance(k, str) and not k.startswith("$") for k in obj):
                return {k: self.encode(v, (*path, k)) for k, v in obj.items()}
            return {
                _DICT: [
                    [self._key(k, path), self.encode(v, (*path, str(k)))] for k, v in obj.items()
                ]
            }
        if isinstance(obj, tuple):
            return {_TUPLE: [self.encode(v, (*path, str(i))) for i, v in enumerate(obj)]}
        if isinstance(obj, list):
            return [self.encode(v, (*path, str(i))) for i, v in enumerate(obj)]
        raise CheckpointError(
            f"cannot store a {type(obj).__name__} at {'/'.join(path)}: checkpoints hold dicts, "
            "lists, tuples, tensors, str, int, float, bool and None"
        )

    def _key(self, key: Any, path: tuple[str, ...]) -> Any:
        if key is None or isinstance(key, (bool, str, int, float)):
            return self.encode(key, path)
        raise CheckpointError(
            f"cannot store a dict key of type {type(key).__name__} at {'/'.join(path)}"
        )

    def _add(self, tensor: Tensor, path: tuple[str, ...]) -> str:
        where = "/".join(path)
        if tensor.layout != torch.strided or tensor.is_quantized or tensor.is_nested:
            raise CheckpointError(
                f"cannot store the {tensor.layout} tensor at {where}: make it dense"
            )
        if tensor.dtype not in STORABLE:
            raise CheckpointError(f"cannot store the {tensor.dtype} tensor at {where}")
        if tensor.device.type == "meta":
            raise CheckpointError(f"cannot store the tensor at {where}: it is on the meta device")
        key = "/".join(quote(part, safe="") for part in path)
        base, n = key, 0
        while key in self.tensors:  # e.g. {1: a, "1": b} in one dict
            n += 1
            key = f"{base}~{n}"
        t = tensor.detach().resolve_conj().resolve_neg()
        storage = t.untyped_storage().data_ptr()
        # safetensors refuses shared or strided memory: copy only what needs it.
        if (
            t.device.type != "cpu"
            or not t.is_contiguous()
            or t.numel() == 0
            or storage in self._storages
        ):
            t = t.to("cpu", memory_format=torch.contiguous_format, copy=True)
        if t.numel():
            self._storages.add(t.untyped_storage().data_ptr())
        self.tensors[key] = t
        return key


def decode_tree(obj: Any, tensors: Mapping[str, Tensor], used: set[str]) -> Any:
    if isinstance(obj, list):
        return [decode_tree(v, tensors, used) for v in obj]
    if not isinstance(obj, dict):
        return obj
    tags = [k for k in obj if k.startswith("$")]
    if not tags:
        return {k: decode_tree(v, tensors, used) for k, v in obj.items()}
    if len(obj) != 1:
        raise CheckpointError(f"malformed manifest: tagged object with keys {sorted(obj)}")
    ((tag, value),) = obj.items()
    if tag == _TENSOR:
        if not isinstance(value, str) or value not in tensors:
            raise CheckpointError(f"malformed manifest: unknown tensor {value!r}")
        used.add(value)
        return tensors[value]
    if tag == _TUPLE and isinstance(value, list):
        return tuple(decode_tree(v, tensors, used) for v in value)
    if tag == _DICT and isinstance(value, list):
        return {decode_tree(k, tensors, used): decode_tree(v, tensors, used) for k, v in value}
    if tag == _FLOAT and value in ("nan", "inf", "-inf"):
        return float(value)
    raise CheckpointError(f"malformed manifest: bad {tag!r} value {value!r}")
