"""A method's hyperparameters: dataclass fields that carry their own check, and the one
validator that runs every check (``__post_init__`` calls :func:`validate_fields`).

    lambda_ewc: float = number(100.0, low=0.0)
    fisher_samples: int | None = integer(None, minimum=1)   # None passes: "not set"
    fisher: str = choice("true", ("true", "exact", "empirical"))

Errors are :class:`~eidetic_func.core.errors.ConfigError` naming the field
(:mod:`eidetic_func.core.validate`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial
from typing import Any

from eidetic_func.core import validate

# check(value, name): raises ConfigError when value is not allowed
Check = Callable[[Any, str], Any]
CHECK = "check"  # the metadata key of a field's check


def checked(default: Any, check: Check) -> Any:
    """A dataclass field with ``default`` whose values :func:`validate_fields` checks with
    ``check(value, name)``; None is allowed where the default is None (an unset option)."""
    return dataclasses.field(default=default, metadata={CHECK: check})


def number(default: float | None, **bounds: Any) -> Any:
    """A finite number field (``low``, ``high``, ``low_open``, ``high_open`` as
    :func:`eidetic_func.core.validate.number`)."""
    return checked(default, partial(validate.number, **bounds))


def integer(default: int | None, *, minimum: int | None = None) -> Any:
    """An integer field, at least ``minimum``."""
    return checked(default, partial(validate.integer, minimum=minimum))


def choice(default: str, options: tuple[str, ...]) -> Any:
    """A field that takes one of ``options``."""
    return checked(default, partial(validate.choice, options=options))


def validate_fields(method: Any) -> None:
    """Run every field's check on ``method``'s value (a dataclass); ConfigError on the first
    value it refuses."""
    for f in dataclasses.fields(method):
        check = f.metadata.get(CHECK)
        value = getattr(method, f.name)
        if check is None or (value is None and f.default is None):
            continue
        check(value, f.name)
