"""One exception family for everything eidetic_func refuses to do.

Every error derives from :class:`EideticError`; most also derive from the builtin a
caller would naturally catch (``ValueError`` for bad arguments), so both styles work.
Messages name the argument and the value that was expected, and, where a value was
mistyped, the closest valid one (:func:`closest`).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence


def closest(value: str, valid: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the valid value closest to ``value``, or ``""``."""
    match = difflib.get_close_matches(value, list(valid), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


class EideticError(Exception):
    """Base class of every error raised by eidetic_func."""


class ConfigError(EideticError, ValueError):
    """A hyperparameter or option is outside its valid range."""


class TaskError(EideticError, ValueError):
    """A task id is unknown, out of order, or names a finished task."""


class StateMismatchError(EideticError, ValueError):
    """A state does not fit the model or topology it is used with."""


class TopologyError(EideticError, ValueError):
    """A prune topology does not describe the model's layers consistently."""


class NoTopology(TopologyError):
    """The network has no prune topology by design (progressive columns); unlike any other
    :class:`TopologyError`, a refusal by the tracer included, it is not a fault."""


class ShapeError(EideticError, ValueError):
    """An input tensor has the wrong shape or dtype."""


class NonFiniteError(EideticError, FloatingPointError):
    """A loss or score is NaN or infinite."""


class NothingToPrune(EideticError):
    """No neuron is left that this pruning step may remove."""


class DataError(EideticError, ValueError):
    """A dataset is missing, empty or cannot be split as asked."""


class CheckpointError(EideticError, ValueError):
    """A checkpoint file is corrupt, foreign, or does not fit the model."""


class OutputDirError(EideticError, OSError):
    """An output directory cannot be used: held by another run, not writable, not a directory,
    or holding a run that would be overwritten."""


class DistributedError(EideticError, RuntimeError):
    """A collective operation failed: another process of the run stopped, hung or diverged."""
