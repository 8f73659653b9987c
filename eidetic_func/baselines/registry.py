"""Baselines by name, with their hyperparameters (what ``--method`` / ``--method-option`` pick)."""

from __future__ import annotations

import dataclasses
import importlib
import json
from typing import Any

from torch import Tensor

from ..errors import ConfigError
from .base import Method
from .dgr import DGR
from .ewc import EWC, OnlineEWC
from .finetune import FineTune
from .gem import AGEM, GEM
from .joint import Joint
from .lwf import LwF
from .mas import MAS
from .oml import OML
from .packnet import PackNet
from .progressive import Progressive
from .replay import DER, DERPP, ER
from .si import SI

METHODS: dict[str, type] = {
    cls.name: cls
    for cls in (
        FineTune,
        Joint,
        EWC,
        OnlineEWC,
        SI,
        MAS,
        LwF,
        ER,
        DER,
        DERPP,
        AGEM,
        GEM,
        DGR,
        OML,
        PackNet,
        Progressive,
    )
}


def create(name: str, *, seed: int = 0, **options: Any) -> Method:
    """The baseline ``name`` with ``options`` as hyperparameters; ``seed`` reaches its sampling."""
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; choose one of {sorted(METHODS)}")
    cls = METHODS[name]
    fields = {f.name for f in dataclasses.fields(cls)} - {"name"}
    unknown = set(options) - fields
    if unknown:
        raise ConfigError(
            f"{name} has no option {sorted(unknown)}; its options are {sorted(fields) or 'none'}"
        )
    if "seed" in fields:
        options.setdefault("seed", seed)
    try:
        method: Method = cls(**options)
    except TypeError as err:
        raise ConfigError(f"bad options for {name}: {err}") from None
    return method


def parse_option(text: str) -> tuple[str, Any]:
    """``"key=value"`` → ``(key, value)``; the value is read as JSON when it can be."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"method options look like key=value, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def encode_state(value: Any) -> Any:
    """A method state as nested dicts, lists and tensors (what a checkpoint can hold)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        return {
            "$dataclass": f"{cls.__module__}:{cls.__qualname__}",
            **{f.name: encode_state(getattr(value, f.name)) for f in dataclasses.fields(value)},
        }
    if isinstance(value, dict):
        return {k: encode_state(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(encode_state(v) for v in value)
    return value


def decode_state(value: Any) -> Any:
    """The inverse of :func:`encode_state`; only eidetic_func's own classes are rebuilt."""
    if isinstance(value, dict) and "$dataclass" in value:
        module, _, qualname = value["$dataclass"].partition(":")
        if not module.startswith("eidetic_func."):
            raise ConfigError(f"refusing to rebuild {value['$dataclass']!r} from a checkpoint")
        cls: Any = importlib.import_module(module)
        for part in qualname.split("."):
            cls = getattr(cls, part)
        return cls(**{k: decode_state(v) for k, v in value.items() if k != "$dataclass"})
    if isinstance(value, dict):
        return {k: decode_state(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(decode_state(v) for v in value)
    return value


def state_bytes(value: Any) -> int:
    """Bytes held by the tensors of a method state (its extra memory)."""
    if isinstance(value, Tensor):
        return value.numel() * value.element_size()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(state_bytes(getattr(value, f.name)) for f in dataclasses.fields(value))
    if isinstance(value, dict):
        return sum(state_bytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(state_bytes(v) for v in value)
    return 0
