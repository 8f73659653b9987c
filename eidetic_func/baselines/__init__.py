"""Classic continual-learning methods in the same functional style, for comparison.

Every method is a :class:`Method`: a small frozen object whose pure functions thread an
immutable method state (importance, anchors, buffers) next to the :class:`EideticState`.
:func:`train_method_task` is the shell that trains one task with any of them, sharing the
epoch loop and stopping rule of :func:`eidetic_func.train.train_task`.
"""

from .base import BaseMethod, Method, advance, train_method_task

__all__ = ["BaseMethod", "Method", "advance", "train_method_task"]
