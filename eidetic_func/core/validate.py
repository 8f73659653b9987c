"""Argument checks shared by the public API: one place, one exception family, clear words."""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

import torch

from eidetic_func.core.errors import ConfigError, TaskError, closest

# run seeds derive generator seeds as ``seed * 1000 + t``: they must stay within int64
MAX_SEED = (2**63 - 1) // 1000 - 1


def task_id(value: Any, *, name: str = "task", num_tasks: int | None = None) -> int:
    """``value`` as a task id (an int ``>= 0``, ``< num_tasks`` when given), else TaskError."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TaskError(f"{name} must be an int task id, got {value!r}")
    task = int(value)
    if task < 0 or (num_tasks is not None and task >= num_tasks):
        limit = f"0..{num_tasks - 1}" if num_tasks else ">= 0"
        raise TaskError(f"{name} {task} is out of range: expected {limit}")
    return task


def integer(value: Any, name: str, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def number(
    value: Any,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a finite float within the given bounds, else ConfigError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    x = float(value)
    too_low = low is not None and (x <= low if low_open else x < low)
    too_high = high is not None and (x >= high if high_open else x > high)
    if too_low or too_high:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise ConfigError(f"{name} must be in {left}{lo}, {hi}{right}, got {value!r}")
    return x


def fraction(value: Any, name: str) -> float:
    """A fraction strictly between 0 and 1."""
    return number(value, name, low=0.0, high=1.0, low_open=True, high_open=True)


def boolean(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {value!r}")
    return value


def choice(value: Any, name: str, options: tuple[str, ...] | list[str]) -> str:
    if not isinstance(value, str) or value not in options:
        hint = closest(str(value), options)
        raise ConfigError(f"{name} must be one of {list(options)}, got {value!r}{hint}")
    return value


def device(value: Any, name: str = "device", *, allow_meta: bool = False) -> torch.device:
    """``value`` as a torch device this process can use, else ConfigError.

    Refuses names torch does not know, CUDA / MPS devices that are not available here,
    and (unless ``allow_meta``: shapes without data) the ``meta`` device.
    """
    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(
            f"{name} must name a torch device (cpu, cuda, cuda:1, ...), got {value!r}"
        ) from None
    if dev.type == "meta" and not allow_meta:
        raise ConfigError(f"{name} 'meta' holds no data: train on cpu or cuda")
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"{name} {str(dev)!r}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"{name} {str(dev)!r}: this machine has {count} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{name} 'mps' is not available on this machine")
    return dev


def generator(value: Any, name: str = "generator") -> torch.Generator:
    """``value`` if it is a ``torch.Generator``, else ConfigError."""
    if not isinstance(value, torch.Generator):
        raise ConfigError(
            f"{name} must be a torch.Generator (e.g. torch.Generator().manual_seed(0)), "
            f"got {value!r}"
        )
    return value
